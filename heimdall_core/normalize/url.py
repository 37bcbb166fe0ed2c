"""URLs (kind ``url``).

Rules:

1. The value is parsed by the WHATWG URL Standard parser (the ``ada-url``
   package), as a browser would, with no base URL: relative and scheme-less
   values (``example.com/x``) are rejected (code ``no_scheme``), not guessed.
   The parser already lowercases the scheme, maps the host (IDNA to
   A-labels, lowercase; IPv4 in any form browsers accept, such as
   ``0x7f.1``, to dotted decimal; IPv6 to compressed form), drops the
   scheme's default port, removes dot segments, gives an empty path as
   ``/`` and percent-encodes characters that must be.
2. Only the WHATWG special schemes that name a network resource are
   indicators: ``http``, ``https``, ``ftp``, ``ws``, ``wss``. Other schemes
   (``file:``, ``data:``, ``javascript:``, ``blob:``, ``mailto:``, any
   non-special scheme) are rejected with code ``scheme``: their hosts are
   opaque to the parser (not case-folded, not IDNA-mapped), so they have no
   canonical form to speak of. Store such values as kind ``other``.
3. On top of that, RFC 3986 section 6.2.2 syntax-based normalization:
   percent-encoded octets get uppercase hex digits (``%2f`` -> ``%2F``), and
   percent-encoded unreserved characters (``A-Z a-z 0-9 - . _ ~``) are
   decoded (``%7E`` -> ``~``), in every component. The fragment (``#...``)
   is dropped: it never leaves the client, so it does not identify what is
   served. Should the result contain something refanging would rewrite
   (``[%2E]`` decodes to ``[.]``; nested ``[[.]]`` refangs to ``[.]``), the
   brackets of that marker are percent-encoded (``%5B.%5D``), so that the
   canonical text is stable when it is fed back through the dispatcher.
4. The host must also be a valid host for our other kinds: a domain host
   must pass the domain canonicalizer (so ``http://a!b.example/``, which the
   WHATWG parser allows, is rejected with code ``host.invalid_char``, and so
   are IDNA 2008-invalid names such as emoji domains). The host keeps the
   parser's spelling in the value (a trailing dot included).
5. Attributes: ``scheme``; ``host``, the canonical domain or IP address of
   the host (an IPv4-mapped IPv6 host gives its IPv4 address, as kind
   ``ip`` does), which links a URL to its domain or ip indicator; and
   ``registrable_domain`` for domain hosts. ``display`` is the URL with the
   U-label host when the host is an IDN.
"""

from __future__ import annotations

import re
import string

import ada_url

from heimdall_core.normalize.domain import canonicalize_domain
from heimdall_core.normalize.ip import canonicalize_ip
from heimdall_core.normalize.model import KIND_URL, Canonical, Rejected, Result, rejected
from heimdall_core.normalize.refang import escape_markers

URL_SCHEMES = frozenset({"http", "https", "ftp", "ws", "wss"})

_PARSE_ATTRIBUTES = ("href", "protocol", "hostname", "host_type")
_HAS_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")


def _percent_table() -> dict[str, str]:
    """Every two-hex-digit spelling -> its RFC 3986 normal form."""
    table: dict[str, str] = {}
    for octet in range(256):
        upper = f"{octet:02X}"
        char = chr(octet)
        normal = char if char in _UNRESERVED else f"%{upper}"
        for spelling in {upper, upper.lower(), upper[0] + upper[1].lower(), upper[0].lower() + upper[1]}:
            table[spelling] = normal
    return table


_PERCENT_NORMAL = _percent_table()

_NO_SCHEME = rejected(KIND_URL, "no_scheme", "relative or scheme-less URL; give an absolute URL")
_INVALID = rejected(KIND_URL, "invalid", "not a valid URL (WHATWG URL Standard)")
_SCHEME = rejected(
    KIND_URL, "scheme", f"scheme is not an indicator scheme ({', '.join(sorted(URL_SCHEMES))})"
)


def canonicalize_url(raw: str) -> Result:
    """Canonicalize an absolute URL (see the module docstring)."""
    text = raw.strip()
    try:
        parts = ada_url.parse_url(text, attributes=_PARSE_ATTRIBUTES)
    except ValueError:
        return _INVALID if _HAS_SCHEME.match(text) else _NO_SCHEME
    scheme = parts["protocol"][:-1]
    if scheme not in URL_SCHEMES:
        return _SCHEME
    value = parts["href"].partition("#")[0]
    if "%" in value:
        value = _PERCENT.sub(_percent_normal, value)
    # Decoding, nested markers or the parser dropping tabs can leave a marker ("[%2E]").
    value = escape_markers(value)
    host = _host(parts["hostname"], parts["host_type"])
    if isinstance(host, Rejected):
        return host
    attrs = [("host", host.value), ("scheme", scheme)]
    registrable = host.attr("registrable_domain")
    if registrable:
        attrs.append(("registrable_domain", registrable))
    display = _display(value, host.display) if host.display else None
    return Canonical(KIND_URL, value, display, tuple(sorted(attrs)))


def _percent_normal(match: re.Match[str]) -> str:
    return _PERCENT_NORMAL[match.group(1)]


def _host(hostname: str, host_type: ada_url.HostType) -> Canonical | Rejected:
    if host_type == ada_url.HostType.DEFAULT:
        result = canonicalize_domain(hostname)
    else:
        result = canonicalize_ip(hostname)
    if isinstance(result, Rejected):
        return Rejected(KIND_URL, f"host.{result.reason}")
    return result


def _display(value: str, host_display: str) -> str:
    """``value`` with its host in U-labels (the host follows ``://`` and any userinfo)."""
    scheme, _, rest = value.partition("://")
    authority, slash, path = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    host, colon, port = hostport.partition(":")
    root = "." if host.endswith(".") else ""
    return f"{scheme}://{userinfo}{at}{host_display}{root}{colon}{port}{slash}{path}"
