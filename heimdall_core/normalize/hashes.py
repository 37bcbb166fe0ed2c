"""File and content hashes (kind ``hash``) and password hashes (kind ``password_hash``).

Kind ``hash``: surrounding whitespace trimmed, hex digits lowercased (OpenCTI
had to fix SHA-256 case duplicates after the fact). The algorithm is told by
the length, as attribute ``algo``: 32 hex digits ``md5``, 40 ``sha1``, 64
``sha256``, 128 ``sha512``. Length is the common reading, not proof: 32 hex
digits may also be an NTLM or MD4 hash, 64 a SHA3-256. Any other length, or
any non-hex character, is rejected; prefixes such as ``0x`` or ``sha256:``
are not guessed away.

Kind ``password_hash``: crypt-style strings in the modular crypt format or
the PHC string format, kept exactly as given (case matters in their base64
alphabet), trimmed only. Recognized, as attribute ``scheme``:

* ``$2a$``, ``$2b$``, ``$2y$``: ``bcrypt`` (cost 04-31, 53 characters of salt
  and hash);
* ``$argon2id$``, ``$argon2i$``, ``$argon2d$``: ``argon2id`` / ``argon2i`` /
  ``argon2d`` (PHC string: optional ``v=``, then ``m=,t=,p=``, salt, hash);
* ``$6$``: ``sha512-crypt``; ``$5$``: ``sha256-crypt`` (optional
  ``rounds=N$``, salt of at most 16 characters);
* ``$1$``: ``md5-crypt`` (salt of at most 8 characters).

A password hash is never read as a file hash: a ``hash`` value starting with
``$`` is checked as a password hash, and if it is one the result is a
:class:`Canonical` of kind ``password_hash``.
"""

from __future__ import annotations

import re

from heimdall_core.normalize.model import (
    KIND_HASH,
    KIND_PASSWORD_HASH,
    Canonical,
    Result,
    new_canonical,
    rejected,
)

_ALGO_BY_HEX_DIGITS = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}
_ALGO_ATTRS = {length: (("algo", algo),) for length, algo in _ALGO_BY_HEX_DIGITS.items()}
_HEX_DIGITS = "0123456789abcdef"

_CRYPT64 = "[./A-Za-z0-9]"
_B64 = "[A-Za-z0-9+/]"
_PASSWORD_HASHES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("bcrypt", re.compile(rf"\$2[aby]\$(?:0[4-9]|[12][0-9]|3[01])\${_CRYPT64}{{53}}")),
    ("argon2id", re.compile(rf"\$argon2id\$(?:v=[0-9]+\$)?m=[0-9]+,t=[0-9]+,p=[0-9]+\${_B64}+\${_B64}+")),
    ("argon2i", re.compile(rf"\$argon2i\$(?:v=[0-9]+\$)?m=[0-9]+,t=[0-9]+,p=[0-9]+\${_B64}+\${_B64}+")),
    ("argon2d", re.compile(rf"\$argon2d\$(?:v=[0-9]+\$)?m=[0-9]+,t=[0-9]+,p=[0-9]+\${_B64}+\${_B64}+")),
    ("sha512-crypt", re.compile(rf"\$6\$(?:rounds=[0-9]+\$)?{_CRYPT64}{{0,16}}\${_CRYPT64}{{86}}")),
    ("sha256-crypt", re.compile(rf"\$5\$(?:rounds=[0-9]+\$)?{_CRYPT64}{{0,16}}\${_CRYPT64}{{43}}")),
    ("md5-crypt", re.compile(rf"\$1\${_CRYPT64}{{0,8}}\${_CRYPT64}{{22}}")),
)

_BAD_LENGTH = rejected(
    KIND_HASH, "bad_length", "hex digest length is not 32, 40, 64 or 128 (md5, sha1, sha256, sha512)"
)
_NOT_HEX = rejected(KIND_HASH, "not_hex", "a hash is hexadecimal digits only")
_EMPTY = rejected(KIND_HASH, "empty", "no hash")
_CRYPT_IN_HASH = rejected(
    KIND_HASH, "unknown_crypt", "starts with $ but is no recognized password hash format"
)
_UNKNOWN_SCHEME = rejected(
    KIND_PASSWORD_HASH,
    "unknown_scheme",
    "not a recognized password hash (bcrypt, argon2, sha512/sha256/md5-crypt) or malformed",
)


def canonicalize_hash(raw: str) -> Result:
    """Canonicalize a hex digest; crypt-style strings become kind password_hash."""
    text = raw.strip()
    if text[:1] == "$":
        result = canonicalize_password_hash(text)
        return result if isinstance(result, Canonical) else _CRYPT_IN_HASH
    attrs = _ALGO_ATTRS.get(len(text))
    if attrs is None:
        return _EMPTY if not text else _BAD_LENGTH
    value = text.lower()
    # str.strip with a character set runs in C: empty rest means all hex.
    if not value.isascii() or value.strip(_HEX_DIGITS):
        return _NOT_HEX
    return new_canonical(Canonical, (KIND_HASH, value, None, attrs))


def canonicalize_password_hash(raw: str) -> Result:
    """Recognize a crypt-style password hash; the value is kept exactly."""
    text = raw.strip()
    if text[:1] == "$":
        for scheme, pattern in _PASSWORD_HASHES:
            if pattern.fullmatch(text):
                return Canonical(KIND_PASSWORD_HASH, text, None, (("scheme", scheme),))
    return _UNKNOWN_SCHEME
