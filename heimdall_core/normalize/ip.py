"""IP addresses (kind ``ip``) and networks (kind ``cidr``).

Rules:

* IPv4 is four dotted decimal octets 0-255, written without leading zeros:
  ``192.0.2.1``. Forms that parsers disagree on are rejected, never guessed:
  a leading zero (``010.0.0.1``: octal 8 for inet_aton, decimal 10 for others),
  shorthand with fewer than four parts (``127.1``), hexadecimal or octal
  octets (``0x7f.0.0.1``), and a single integer (``2130706433``).
* IPv6 is written as RFC 5952 text: lowercase hex, leading zeros of each
  group dropped, the longest run of two or more zero groups (the first if
  tied) compressed to ``::``. Brackets around an IPv6 address
  (``[2001:db8::1]``, the URL-host form) are removed. Zone ids
  (``fe80::1%eth0``) are rejected: they name an interface of the observing
  host, not an address anyone else can see.
* IPv4-mapped IPv6 (``::ffff:192.0.2.1``) is canonicalized to the IPv4
  address with the attribute ``("mapped_from", "ipv6")``. It is the same host:
  dual-stack sockets report IPv4 peers in that form, and keeping two spellings
  apart would split the sightings of one address over two vertices. The
  attribute keeps the fact that the observation was IPv6-mapped; it is the
  one attribute that describes the input rather than the value, so
  canonicalizing the canonical text again gives the same kind and value
  without it. Other IPv6 forms that embed IPv4 (NAT64 ``64:ff9b::/96``, 6to4,
  the deprecated IPv4-compatible ``::a.b.c.d``) are distinct addresses and
  stay IPv6.
* Attribute ``version``: ``"4"`` or ``"6"``.

CIDR (kind ``cidr``): ``address/prefix``, the address as above and the
prefix a decimal 0-32 (IPv4) or 0-128 (IPv6) without leading zeros. The
address must be the network address: host bits set (``10.1.2.3/8``) is
rejected with code ``host_bits_set`` rather than masked, because that form is
usually an interface address with its netmask, and masking would invent an
indicator for a whole range the source never named. A value without a prefix
is an address and comes back as kind ``ip``. An IPv4-mapped network with a
prefix of at least 96 folds to its IPv4 network like addresses do.
Attributes: ``version``, ``prefix_len``.
"""

from __future__ import annotations

import functools
import ipaddress
import re

from heimdall_core.normalize.model import (
    KIND_CIDR,
    KIND_IP,
    Canonical,
    Rejected,
    Result,
    new_canonical,
    rejected,
)

IPV4_PREFIX_LEN_MAX = 32
IPV6_PREFIX_LEN_MAX = 128
# IPv4-mapped IPv6 addresses are ::ffff:0:0/96.
_MAPPED_PREFIX_LEN = 96
# Distinct IPv6 spellings are few next to IPv4 but each costs ~3 us to parse.
_IP_CACHE_ENTRIES_MAX = 1 << 16

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# [0-9], never \d: \d also matches non-ASCII digits.
_IPV4_CANONICAL = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_IPV4_LIKE = re.compile(r"(?:0[xX][0-9a-fA-F]*|[0-9]+)(?:\.(?:0[xX][0-9a-fA-F]*|[0-9]+))*\.?")
_PREFIX_LEN = re.compile(r"0|[1-9][0-9]{0,2}")

_V4_ATTRS = (("version", "4"),)
_V6_ATTRS = (("version", "6"),)
_MAPPED_ATTRS = (("mapped_from", "ipv6"), ("version", "4"))

_EMPTY = rejected(KIND_IP, "empty", "no address")
_HOST_BITS_SET = rejected(
    KIND_CIDR,
    "host_bits_set",
    "host bits set; give the network address (an address with netmask is not a range)",
)
_BAD = rejected(KIND_IP, "invalid", "not an IPv4 or IPv6 address")


def canonicalize_ip(raw: str) -> Result:
    """Canonicalize an IPv4 or IPv6 address (see the module docstring)."""
    text = raw.strip()
    if _IPV4_CANONICAL.fullmatch(text):
        # Hot path: already canonical dotted decimal, no parse needed.
        return new_canonical(Canonical, (KIND_IP, text, None, _V4_ATTRS))
    return _canonicalize_ip_slow(text)


def canonicalize_plain_ip(raw: str) -> Result | None:
    """The result of ``canonicalize_ip(refang(raw))`` if ``raw`` is canonical dotted decimal
    as given (digits and dots only: no marker to refang, nothing to trim), else None.
    Lets the ingest path skip the refang prefilter for the common IPv4 column."""
    if _IPV4_CANONICAL.fullmatch(raw):
        return new_canonical(Canonical, (KIND_IP, raw, None, _V4_ATTRS))
    return None


@functools.lru_cache(maxsize=_IP_CACHE_ENTRIES_MAX)
def _canonicalize_ip_slow(text: str) -> Result:
    if not text:
        return _EMPTY
    if "/" in text:
        return rejected(KIND_IP, "has_prefix", "a network in CIDR notation; use kind cidr")
    if ":" in text:
        return _ipv6(text)
    return _ipv4_reason(text)


def _ipv4_reason(text: str) -> Rejected:
    """Why ``text`` (not canonical dotted decimal, no colon) is rejected."""
    if not _IPV4_LIKE.fullmatch(text) or not text.isascii():
        return _BAD
    parts = text.rstrip(".").split(".")
    if any(p[:2].lower() == "0x" for p in parts):
        return rejected(KIND_IP, "hex_octet", "hexadecimal octets are ambiguous; write decimal")
    if len(parts) != 4:
        return rejected(
            KIND_IP, "shorthand", "IPv4 needs exactly four dotted decimal octets (no 127.1 forms)"
        )
    if any(len(p) > 1 and p[0] == "0" for p in parts):
        return rejected(
            KIND_IP, "leading_zero", "an octet with a leading zero is ambiguous (octal or decimal)"
        )
    if text.endswith("."):
        return rejected(KIND_IP, "trailing_dot", "IPv4 address with a trailing dot")
    return rejected(KIND_IP, "octet_range", "an IPv4 octet is above 255")


def _ipv6(text: str) -> Result:
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if "%" in text:
        return rejected(KIND_IP, "zone_id", "IPv6 zone ids name a local interface; drop them")
    if not text.isascii():
        return _BAD
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        if re.search(r"(?:^|[:.])0[0-9]", text.rpartition(":")[2]):
            return rejected(
                KIND_IP, "leading_zero", "an octet with a leading zero is ambiguous (octal or decimal)"
            )
        return _BAD
    mapped = address.ipv4_mapped
    if mapped is not None:
        return Canonical(KIND_IP, str(mapped), None, _MAPPED_ATTRS)
    return Canonical(KIND_IP, address.compressed, None, _V6_ATTRS)


def canonicalize_cidr(raw: str) -> Result:
    """Canonicalize a network in CIDR notation (see the module docstring)."""
    return _canonicalize_cidr_cached(raw.strip())


@functools.lru_cache(maxsize=_IP_CACHE_ENTRIES_MAX)
def _canonicalize_cidr_cached(text: str) -> Result:
    address_text, slash, prefix_text = text.partition("/")
    address = canonicalize_ip(address_text)
    if isinstance(address, Rejected):
        return Rejected(KIND_CIDR, address.reason)
    if not slash:
        return address
    if not _PREFIX_LEN.fullmatch(prefix_text):
        return rejected(KIND_CIDR, "bad_prefix", "prefix length must be a decimal without leading zeros")
    prefix_len = int(prefix_text)
    mapped = address.attr("mapped_from") is not None
    if mapped:
        if prefix_len < _MAPPED_PREFIX_LEN:
            # The ffff in bits 80-95 of every mapped address is then a host bit.
            return _HOST_BITS_SET
        prefix_len -= _MAPPED_PREFIX_LEN
    attrs = (("mapped_from", "ipv6"),) if mapped else ()
    return _network(address.value, prefix_len, attrs)


def _network(address: str, prefix_len: int, extra: tuple[tuple[str, str], ...]) -> Result:
    version = "6" if ":" in address else "4"
    prefix_len_max = IPV6_PREFIX_LEN_MAX if version == "6" else IPV4_PREFIX_LEN_MAX
    if prefix_len > prefix_len_max:
        return rejected(KIND_CIDR, "bad_prefix", f"prefix length above {prefix_len_max}")
    try:
        network = ipaddress.ip_network(f"{address}/{prefix_len}", strict=True)
    except ValueError:
        return _HOST_BITS_SET
    attrs = (*extra, ("prefix_len", str(prefix_len)), ("version", version))
    value = f"{network.network_address.compressed}/{prefix_len}"
    return Canonical(KIND_CIDR, value, None, tuple(sorted(attrs)))
