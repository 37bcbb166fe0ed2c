"""Password hashes (kind ``password_hash``): what a dump's password column holds when it
is not clear text. Every form the ingest mapping calls a password hash
(``heimdall_core.ingest.mapping``: its crypt-style rule, and hex digests in a password
column) has a scheme here and one canonical text, so none is thrown away as unknown.

Canonical forms (idempotent; the attribute ``scheme`` names the format):

* modular crypt and PHC strings (``$id$...``): kept exactly, trimmed only; their base64
  alphabets are case-sensitive;
* Django strings (``pbkdf2_sha256$...``, ``sha1$salt$hex``): kept exactly, except the
  hex digest of ``sha1$``, lowercased;
* LDAP ``{SCHEME}...`` values (RFC 2307 userPassword): the scheme label upper-cased
  (labels are case-insensitive, ``{ssha}`` is ``{SSHA}``), the rest kept exactly;
* a bare hex digest (an unsalted MD5, SHA-1... of the password): lowercased, scheme
  ``raw-<algo>`` told by the length (as for kind ``hash``, length is the common reading,
  not proof: 32 hex digits may also be NTLM).

Shapes are checked (lengths of digests, salts, the base64 of LDAP values decodes to a
digest of the scheme's size), so a truncated or mangled value is rejected
(``unknown_scheme``) rather than kept as something no site could ever match again.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable
from typing import Final

from heimdall_core.normalize.model import KIND_PASSWORD_HASH, Canonical, Result, rejected

_C64: Final = "[./A-Za-z0-9]"  # the crypt(3) base64 alphabet
_B64: Final = "[A-Za-z0-9+/]"  # RFC 4648 base64, unpadded (PHC strings)
_AB64: Final = "[./A-Za-z0-9+]"  # passlib's "adapted" base64 of pbkdf2 ("." for "+")
_SALT_CHARS_MAX: Final = 128
"""Longest salt of the Django and LDAP pbkdf2 forms; real ones are 12-32 characters."""
_FREE_SALT: Final = rf"[^$\s]{{1,{_SALT_CHARS_MAX}}}"
_PHC_PARAMS: Final = r"[a-z]+=[0-9]+(?:,[a-z]+=[0-9]+)*"
_PBKDF2_DIGESTS: Final = "(?:sha1|sha224|sha256|sha384|sha512)"

# Modular crypt format, by the id between the first two "$": (scheme, the whole string).
_MODULAR: Final[dict[str, tuple[str, re.Pattern[str]]]] = {
    **{ident: ("bcrypt", re.compile(rf"\${ident}\$(?:0[4-9]|[12][0-9]|3[01])\${_C64}{{53}}"))
       for ident in ("2", "2a", "2b", "2x", "2y")},
    **{f"argon2{variant}": (f"argon2{variant}", re.compile(
        rf"\$argon2{variant}\$(?:v=[0-9]+\$)?m=[0-9]+,t=[0-9]+,p=[0-9]+\${_B64}+\${_B64}+"))
       for variant in ("id", "i", "d")},
    "1": ("md5-crypt", re.compile(rf"\$1\${_C64}{{0,8}}\${_C64}{{22}}")),
    "apr1": ("apr1-md5-crypt", re.compile(rf"\$apr1\${_C64}{{0,8}}\${_C64}{{22}}")),
    # Sun's MD5 crypt: "$md5$rounds=N$" (Solaris) or "$md5,rounds=N$" (passlib); "$$" before
    # the digest in one variant.
    "md5": ("sun-md5-crypt", re.compile(
        rf"\$md5(?:[$,]rounds=[0-9]+)?\${_C64}{{0,16}}\$\$?{_C64}{{22}}")),
    "sha1": ("sha1-crypt", re.compile(rf"\$sha1\$[0-9]+\${_C64}{{0,64}}\${_C64}{{28}}")),
    "5": ("sha256-crypt", re.compile(rf"\$5\$(?:rounds=[0-9]+\$)?{_C64}{{0,16}}\${_C64}{{43}}")),
    "6": ("sha512-crypt", re.compile(rf"\$6\$(?:rounds=[0-9]+\$)?{_C64}{{0,16}}\${_C64}{{86}}")),
    # scrypt in libxcrypt/libsodium form: N, r, p packed in 11 characters, salt, hash.
    "7": ("scrypt", re.compile(rf"\$7\${_C64}{{11}}{_C64}{{0,64}}\${_C64}{{43}}")),
    "y": ("yescrypt", re.compile(rf"\$y\${_C64}+\${_C64}{{0,86}}\${_C64}{{43}}")),
    "gy": ("gost-yescrypt", re.compile(rf"\$gy\${_C64}+\${_C64}{{0,86}}\${_C64}{{43}}")),
    "scrypt": ("scrypt", re.compile(rf"\$scrypt\$(?:v=[0-9]+\$)?{_PHC_PARAMS}\${_B64}+\${_B64}+")),
    **{ident: (ident, re.compile(
        rf"\${ident}\$(?:[0-9]+|{_PHC_PARAMS})\${_AB64}+={{0,2}}\${_AB64}+={{0,2}}"))
       for ident in ("pbkdf2", "pbkdf2-sha1", "pbkdf2-sha224", "pbkdf2-sha256", "pbkdf2-sha384",
                     "pbkdf2-sha512")},
}

_DJANGO_PBKDF2: Final = re.compile(rf"pbkdf2_({_PBKDF2_DIGESTS})\$[0-9]+\${_FREE_SALT}\${_B64}+={{0,2}}")
_DJANGO_SHA1: Final = re.compile(rf"sha1\$([^$\s]{{0,{_SALT_CHARS_MAX}}})\$([0-9A-Fa-f]{{40}})")

_HEX_DIGITS: Final = "0123456789abcdef"
_RAW_BY_HEX_DIGITS: Final = {32: "raw-md5", 40: "raw-sha1", 56: "raw-sha224", 64: "raw-sha256",
                             96: "raw-sha384", 128: "raw-sha512"}

# LDAP schemes whose value is base64 of digest + salt: the digest size in bytes, and
# whether a salt must follow it.
_LDAP_DIGESTS: Final[dict[str, tuple[int, bool]]] = {
    "MD5": (16, False), "SMD5": (16, True), "SHA": (20, False), "SSHA": (20, True),
    "SHA256": (32, False), "SSHA256": (32, True), "SHA512": (64, False), "SSHA512": (64, True),
}
_LDAP_PBKDF2_LABEL: Final = re.compile(r"PBKDF2(?:[-_]SHA(?:1|256|512))?")
# OpenLDAP's pw-pbkdf2 (and passlib): rounds$salt$hash in adapted base64; 389 Directory
# Server: one standard base64 blob.
_LDAP_PBKDF2_BODY: Final = re.compile(
    rf"[0-9]+\${_AB64}+={{0,2}}\${_AB64}+={{0,2}}|(?:{_B64}{{4}})+(?:{_B64}{{2}}==|{_B64}{{3}}=)?")
_DES_CRYPT: Final = re.compile(rf"{_C64}{{13}}")
_LDAP_LABEL_CHARS_MAX: Final = 16
"""Longest label between the braces ({PBKDF2-SHA512} is 13)."""

_UNKNOWN_SCHEME: Final = rejected(
    KIND_PASSWORD_HASH,
    "unknown_scheme",
    "not a recognized password hash (modular crypt $id$, LDAP {SCHEME}, Django, or a hex "
    "digest of 32, 40, 56, 64, 96 or 128 digits) or one of the wrong shape",
)


def canonicalize_password_hash(raw: str) -> Result:
    """Recognize a password hash and give its canonical text (see the module docstring)."""
    text = raw.strip()
    head = text[:1]
    if head == "$":
        return _modular(text)
    if head == "{":
        return _ldap(text)
    if "$" in text:
        return _django(text)
    return _raw_digest(text)


def looks_like_password_hash(text: str) -> bool:
    """Whether ``text`` has a password hash's outer shape (starts with ``$`` or ``{``, or
    holds a ``$``): then it is never a file hash, whether or not it is well formed."""
    return text[:1] in ("$", "{") or "$" in text


def _found(scheme: str, value: str) -> Canonical:
    return Canonical(KIND_PASSWORD_HASH, value, None, (("scheme", scheme),))


def _modular(text: str) -> Result:
    # The id ends at the next "$", or at "," in Sun's "$md5,rounds=N$".
    ident = text[1:].partition("$")[0].partition(",")[0]
    known = _MODULAR.get(ident)
    if known is None or not known[1].fullmatch(text):
        return _UNKNOWN_SCHEME
    return _found(known[0], text)


def _django(text: str) -> Result:
    match = _DJANGO_PBKDF2.fullmatch(text)
    if match:
        return _found(f"django-pbkdf2-{match[1]}", text)
    match = _DJANGO_SHA1.fullmatch(text)
    if match:
        return _found("django-sha1", f"sha1${match[1]}${match[2].lower()}")
    return _UNKNOWN_SCHEME


def _raw_digest(text: str) -> Result:
    scheme = _RAW_BY_HEX_DIGITS.get(len(text))
    value = text.lower()
    # str.strip with a character set runs in C: empty rest means all hex.
    if scheme is None or not value.isascii() or value.strip(_HEX_DIGITS):
        return _UNKNOWN_SCHEME
    return _found(scheme, value)


def _ldap(text: str) -> Result:
    close = text.find("}", 1, _LDAP_LABEL_CHARS_MAX + 2)
    if close < 0:
        return _UNKNOWN_SCHEME
    label, body = text[1:close].upper(), text[close + 1:]
    check = _ldap_check(label)
    if check is None or not check(body):
        return _UNKNOWN_SCHEME
    return _found(f"ldap-{label.lower()}", f"{{{label}}}{body}")


def _ldap_check(label: str) -> Callable[[str], bool] | None:
    """The test of an LDAP value's body for scheme ``label``, or None for an unknown label."""
    if label == "CRYPT":
        return _is_crypt
    if _LDAP_PBKDF2_LABEL.fullmatch(label):
        return lambda body: _LDAP_PBKDF2_BODY.fullmatch(body) is not None
    digest = _LDAP_DIGESTS.get(label)
    if digest is None:
        return None
    size, salted = digest
    return lambda body: _is_digest_base64(body, size, salted=salted)


def _is_crypt(body: str) -> bool:
    """{CRYPT} holds a crypt(3) string: a modular one, or traditional 13-character DES."""
    return bool(_DES_CRYPT.fullmatch(body)) or (
        body[:1] == "$" and isinstance(_modular(body), Canonical))


def _is_digest_base64(body: str, size: int, *, salted: bool) -> bool:
    """Whether ``body`` is padded base64 of a ``size``-byte digest, followed by a salt
    of at least one byte when ``salted`` and by nothing otherwise."""
    if not body.isascii():  # a2b_base64 raises ValueError, not binascii.Error, on other text
        return False
    try:
        decoded = binascii.a2b_base64(body, strict_mode=True)
    except binascii.Error:
        return False
    return len(decoded) > size if salted else len(decoded) == size
