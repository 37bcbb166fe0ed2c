"""Tell an indicator's kind from its value alone (for ``heimdall query VALUE``).

First, a value with a password hash's outer shape (``$2b$...``, ``{SSHA}...``,
``pbkdf2_sha256$...``) that canonicalizes as one is a ``password_hash``; one that starts
with ``$`` and is none gives None. The value is then trimmed and refanged, and tried in
an order where no earlier kind can swallow a later one:

1. ``hash``: 32, 40, 64 or 128 hex digits (before domain: a hex digest is a valid
   single DNS label; a bare hex digest is read as a file hash, never as an unsalted
   password hash: say ``--kind password_hash`` for that);
2. ``url``: contains ``://``;
3. ``email``: contains ``@``;
4. ``cidr``: contains ``/``;
5. ``ip``: canonicalizes as an IPv4 or IPv6 address;
6. ``domain``: canonicalizes as a domain name of at least two labels whose top-level
   label holds a letter (so a bare word is not a domain).

A value of kinds 2-4 is that kind if it canonicalizes as it. A value *shaped* like an
address or a network that fails their rules (``010.0.0.1``, ``10.1.2.3/8``,
``fe80::1%eth0``, ``256.0.0.1``) is still given its kind, ``ip`` or ``cidr``, so the
caller reports that kind's precise reason (``leading_zero``, ``host_bits_set``,
``zone_id``) instead of not knowing what the value is. The shapes are narrow on purpose
(four dotted parts; IPv6 with ``::``, eight groups or a zone), so that a version number,
a phone number or a MAC address is not called an address.

Anything else (a username, a phone number, a name, a word, the shorthand ``127.1``) gives
None: the caller must say the kind.
"""

from __future__ import annotations

import re
from typing import Final

from heimdall_core.normalize.dispatch import canonicalize
from heimdall_core.normalize.model import (
    KIND_CIDR,
    KIND_DOMAIN,
    KIND_EMAIL,
    KIND_HASH,
    KIND_IP,
    KIND_PASSWORD_HASH,
    KIND_URL,
    Canonical,
)
from heimdall_core.normalize.passwords import looks_like_password_hash
from heimdall_core.normalize.refang import refang

_IPV4_PART: Final = r"(?:0[xX][0-9a-fA-F]{1,2}|[0-9]{1,3})"
_IPV4_SHAPE: Final = rf"{_IPV4_PART}(?:\.{_IPV4_PART}){{3}}\.?"
# IPv6 with a "::" or eight groups (seven colons), maybe bracketed, maybe with a zone id:
# a MAC address (five colons, no "::") or a time of day is not shaped like one.
_IPV6_SHAPE: Final = (r"\[?(?=[0-9A-Fa-f:.]*::|(?:[0-9A-Fa-f.]*:){7}[0-9A-Fa-f.]*(?:[%\]/]|$))"
                      r"[0-9A-Fa-f:.]+(?:%[^\s/%\]]+)?\]?")
_IP_SHAPE: Final = re.compile(f"{_IPV4_SHAPE}|{_IPV6_SHAPE}")
_CIDR_SHAPE: Final = re.compile(rf"(?:{_IPV4_SHAPE}|{_IPV6_SHAPE})/[0-9]+")


def detect_kind(raw: str) -> str | None:
    """The kind ``raw`` canonicalizes as, or is shaped like (an address or network that
    fails its rules), or None if it is not an indicator we can tell."""
    stripped = raw.strip()
    if not stripped:
        return None
    if looks_like_password_hash(stripped):
        if _ok(KIND_PASSWORD_HASH, stripped):
            return KIND_PASSWORD_HASH
        if stripped[0] == "$":
            return None
    text = refang(stripped)
    if _ok(KIND_HASH, text):
        return KIND_HASH
    for kind, marker in ((KIND_URL, "://"), (KIND_EMAIL, "@"), (KIND_CIDR, "/")):
        if marker in text:
            return kind if _ok(kind, text) or _shaped_as(kind, text) else None
    if _ok(KIND_IP, text) or _shaped_as(KIND_IP, text):
        return KIND_IP
    result = canonicalize(KIND_DOMAIN, text)
    if isinstance(result, Canonical) and "." in result.value:
        top = result.value.rpartition(".")[2]
        if any(char.isalpha() for char in top):
            return KIND_DOMAIN
    return None


def _ok(kind: str, text: str) -> bool:
    result = canonicalize(kind, text)
    return isinstance(result, Canonical) and result.kind == kind


def _shaped_as(kind: str, text: str) -> bool:
    """Whether ``text`` looks like an address (kind ip) or a network (kind cidr)."""
    if kind == KIND_IP:
        return _IP_SHAPE.fullmatch(text) is not None
    return kind == KIND_CIDR and _CIDR_SHAPE.fullmatch(text) is not None
