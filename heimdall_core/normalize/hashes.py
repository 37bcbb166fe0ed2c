"""File and content hashes (kind ``hash``).

Kind ``hash``: surrounding whitespace trimmed, hex digits lowercased (OpenCTI
had to fix SHA-256 case duplicates after the fact). The algorithm is told by
the length, as attribute ``algo``: 32 hex digits ``md5``, 40 ``sha1``, 64
``sha256``, 128 ``sha512``. Length is the common reading, not proof: 32 hex
digits may also be an NTLM or MD4 hash, 64 a SHA3-256. Any other length, or
any non-hex character, is rejected; prefixes such as ``0x`` or ``sha256:``
are not guessed away.

Kind ``password_hash`` is :mod:`heimdall_core.normalize.passwords`. A password hash is
never read as a file hash: a ``hash`` value with a password hash's outer shape (a ``$``
anywhere, or a leading ``{``: ``$2b$...``, ``{SSHA}...``, ``pbkdf2_sha256$...``) is
checked as a password hash, and if it is one the result is a :class:`Canonical` of kind
``password_hash``.
"""

from __future__ import annotations

from heimdall_core.normalize.model import KIND_HASH, Canonical, Result, new_canonical, rejected
from heimdall_core.normalize.passwords import canonicalize_password_hash

_ALGO_BY_HEX_DIGITS = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}
_ALGO_ATTRS = {length: (("algo", algo),) for length, algo in _ALGO_BY_HEX_DIGITS.items()}
_HEX_DIGITS = "0123456789abcdef"

_BAD_LENGTH = rejected(
    KIND_HASH, "bad_length", "hex digest length is not 32, 40, 64 or 128 (md5, sha1, sha256, sha512)"
)
_NOT_HEX = rejected(KIND_HASH, "not_hex", "a hash is hexadecimal digits only")
_EMPTY = rejected(KIND_HASH, "empty", "no hash")
_CRYPT_IN_HASH = rejected(
    KIND_HASH,
    "unknown_crypt",
    "shaped like a password hash ($ or {SCHEME}) but of no recognized format",
)


def canonicalize_hash(raw: str) -> Result:
    """Canonicalize a hex digest; crypt-style strings become kind password_hash."""
    text = raw.strip()
    if "$" in text or text[:1] == "{":  # looks_like_password_hash, inlined: once per field
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

