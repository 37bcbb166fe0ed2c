"""Tell an indicator's kind from its value alone (for ``heimdall query VALUE``).

The value is trimmed and refanged, then tried in an order where no earlier
kind can swallow a later one:

1. ``password_hash``: a recognized crypt-style string (``$2b$...``);
2. ``hash``: 32, 40, 64 or 128 hex digits (before domain: a hex digest is a
   valid single DNS label);
3. ``url``: contains ``://`` and canonicalizes as a URL;
4. ``email``: contains ``@`` and canonicalizes as an e-mail address;
5. ``cidr``: contains ``/`` and canonicalizes as a network;
6. ``ip``: canonicalizes as an IPv4 or IPv6 address;
7. ``domain``: canonicalizes as a domain name of at least two labels whose
   top-level label holds a letter (so a bare word is not a domain).

Anything else (a username, a phone number, a name, a word) gives None: the
caller must say the kind. Ambiguous IPv4 forms (``127.1``, ``010.0.0.1``) give
None too, for the same reason the ip canonicalizer rejects them.
"""

from __future__ import annotations

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
from heimdall_core.normalize.refang import refang


def detect_kind(raw: str) -> str | None:
    """The kind ``raw`` canonicalizes as, or None if it is not an indicator we can tell."""
    text = refang(raw.strip())
    if not text:
        return None
    if text[0] == "$":
        return KIND_PASSWORD_HASH if _ok(KIND_PASSWORD_HASH, text) else None
    for kind, marker in ((KIND_URL, "://"), (KIND_EMAIL, "@"), (KIND_CIDR, "/")):
        if marker in text:
            return kind if _ok(kind, text) else None
    for kind in (KIND_HASH, KIND_IP):
        if _ok(kind, text):
            return kind
    result = canonicalize(KIND_DOMAIN, text)
    if isinstance(result, Canonical) and "." in result.value:
        top = result.value.rpartition(".")[2]
        if any(char.isalpha() for char in top):
            return KIND_DOMAIN
    return None


def _ok(kind: str, text: str) -> bool:
    result = canonicalize(kind, text)
    return isinstance(result, Canonical) and result.kind == kind
