"""Hash and password-hash canonicalizers."""

from __future__ import annotations

import pytest

from heimdall_core.normalize import Canonical, Rejected, canonicalize

MD5 = "d41d8cd98f00b204e9800998ecf8427e"
SHA1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SHA512 = (
    "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
    "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
)
BCRYPT = "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW"
ARGON2ID = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG"
SHA512_CRYPT = (
    "$6$rounds=5000$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3u"
    "BnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
)
SHA256_CRYPT = "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZF4xMQ.DB"
MD5_CRYPT = "$1$saltsalt$qjXMvbEw8oaL.CzflDugX/"


@pytest.mark.parametrize(
    ("raw", "algo"),
    [(MD5, "md5"), (SHA1, "sha1"), (SHA256, "sha256"), (SHA512, "sha512")],
)
def test_hex_digests(raw: str, algo: str) -> None:
    result = canonicalize("hash", f"  {raw.upper()}\t")
    assert result == Canonical("hash", raw, None, (("algo", algo),))


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("", "empty"),
        (MD5[:-1], "bad_length"),
        (MD5 + "0", "bad_length"),
        ("0x" + MD5[2:], "not_hex"),
        (MD5[:-1] + "g", "not_hex"),
        ("sha256:" + SHA256, "bad_length"),
        ("$2b$12$tooshort", "unknown_crypt"),
        ("$9$something", "unknown_crypt"),
    ],
)
def test_rejected_hashes(raw: str, code: str) -> None:
    result = canonicalize("hash", raw)
    assert isinstance(result, Rejected), result
    assert result.code == code


@pytest.mark.parametrize(
    ("raw", "scheme"),
    [
        (BCRYPT, "bcrypt"),
        (BCRYPT.replace("$2b$", "$2a$"), "bcrypt"),
        (BCRYPT.replace("$2b$", "$2y$"), "bcrypt"),
        (ARGON2ID, "argon2id"),
        (ARGON2ID.replace("argon2id", "argon2i"), "argon2i"),
        ("$argon2i$m=4096,t=3,p=1$c29tZXNhbHQ$aGFzaA", "argon2i"),
        (SHA512_CRYPT, "sha512-crypt"),
        (SHA256_CRYPT, "sha256-crypt"),
        (MD5_CRYPT, "md5-crypt"),
    ],
)
def test_password_hashes_keep_their_exact_text(raw: str, scheme: str) -> None:
    expected = Canonical("password_hash", raw, None, (("scheme", scheme),))
    assert canonicalize("password_hash", f" {raw} ") == expected
    # Never a file hash: kind hash hands back a password_hash.
    assert canonicalize("hash", raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        MD5[:-1],  # a whole MD5 is an unsalted password hash (raw-md5): tests/test_normalize_passwords.py
        "",
        BCRYPT.replace("$12$", "$03$"),
        BCRYPT[:-1],
        BCRYPT.replace("$2b$", "$2c$"),
        "$argon2id$v=19$m=65536,t=3$c29tZXNhbHQ$aGFzaA",
        "$1$toolongsalt$qjXMvbEw8oaL.CzflDugX/",
        SHA256_CRYPT[:-1],
    ],
)
def test_unrecognized_password_hashes(raw: str) -> None:
    result = canonicalize("password_hash", raw)
    assert isinstance(result, Rejected)
    assert result.code == "unknown_scheme"
