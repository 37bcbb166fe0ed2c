"""Password hashes: every form the ingest mapping calls ``password_hash`` is accepted.

The mapping (``sniff_value``'s crypt-style regex, and hex digests in a password column)
decides a column is hashed passwords; a canonicalizer that then refuses its values threw
whole columns away. The table below holds real values for every alternative of that
regex, and a test checks the table covers the regex, so a scheme added there without
one here fails.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pytest
from ingest_helpers import cli, cli_json, events_of

from heimdall_core.ingest.mapping import _CRYPT, _HEX_HASH, infer_mapping, sniff_value
from heimdall_core.normalize import Canonical, Rejected, canonicalize

PASSWORD = b"correct horse"
SALT = b"NaCl4u!\x00"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _ldap(label: str, algo: str, *, salted: bool) -> str:
    salt = SALT if salted else b""
    return f"{{{label}}}" + _b64(hashlib.new(algo, PASSWORD + salt).digest() + salt)


BCRYPT = "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW"
SHA512_CRYPT = ("$6$rounds=5000$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3u"
                "BnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1")
YESCRYPT = "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7"
DJANGO_PBKDF2 = "pbkdf2_sha256$260000$Qx2nZ9UxrtHmE5gB$" + _b64(
    hashlib.pbkdf2_hmac("sha256", PASSWORD, b"Qx2nZ9UxrtHmE5gB", 1000))
DJANGO_SHA1 = "sha1$a1b2c$" + hashlib.sha1(b"a1b2c" + PASSWORD).hexdigest()

# The alternatives of the mapping's crypt-style regex, as written there, each with real
# values and the scheme they are canonicalized as.
BY_ALTERNATIVE: dict[str, list[tuple[str, str]]] = {
    "2[abxy]?": [(BCRYPT.replace("$2b$", f"${v}$"), "bcrypt") for v in ("2", "2a", "2b", "2x", "2y")],
    "argon2(?:id|i|d)": [
        ("$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG", "argon2id"),
        ("$argon2i$m=4096,t=3,p=1$c29tZXNhbHQ$aGFzaA", "argon2i"),
        ("$argon2d$v=19$m=4096,t=3,p=1$c29tZXNhbHQ$aGFzaA", "argon2d"),
    ],
    "1": [("$1$saltsalt$qjXMvbEw8oaL.CzflDugX/", "md5-crypt")],
    "5": [("$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZF4xMQ.DB", "sha256-crypt")],
    "6": [(SHA512_CRYPT, "sha512-crypt")],
    "7": [("$7$C6..../....SodiumChloride$kBGj9fHznVYFQMEn/qDCfrDevf9YDtcDdKvEqHJLV8D", "scrypt")],
    "y": [(YESCRYPT, "yescrypt")],
    "gy": [(YESCRYPT.replace("$y$", "$gy$"), "gost-yescrypt")],
    "sha1": [("$sha1$40000$jtNX3nZ2$hBNaIXkt4wBI2o5rsi8KejSjNqIq", "sha1-crypt")],
    "md5": [("$md5$rounds=904$Vc3VgyFx44iS8.Yu$Scf90iLWN6O6mT9TA06NK/", "sun-md5-crypt"),
            ("$md5$3UqYqndY$$6P.aaWOoucxxq.l00SS9k0", "sun-md5-crypt")],
    "apr1": [("$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/", "apr1-md5-crypt")],
    r"pbkdf2[\w-]*": [
        ("$pbkdf2-sha256$29000$N2YMIWQsBWBMae09x1jrPQ$1t8iyB2A.WF/Z5JZv.lfCIhXXN33N23OSgQYThBYRfk",
         "pbkdf2-sha256"),
        ("$pbkdf2$1212$OB.dtnSEXZK8U5cgxU/GYQ$y5LKPOplRmok7CZp/aqVDVg8zGI", "pbkdf2"),
        ("$pbkdf2-sha512$i=25000,l=64$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo", "pbkdf2-sha512"),
    ],
    "scrypt": [("$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJx"
                "D+iCs5E", "scrypt")],
    "SSHA": [(_ldap("SSHA", "sha1", salted=True), "ldap-ssha")],
    "SHA": [(_ldap("SHA", "sha1", salted=False), "ldap-sha")],
    "SMD5": [(_ldap("SMD5", "md5", salted=True), "ldap-smd5")],
    "MD5": [(_ldap("MD5", "md5", salted=False), "ldap-md5")],
    "CRYPT": [("{CRYPT}" + SHA512_CRYPT, "ldap-crypt"), ("{CRYPT}abJnggxhB/yWI", "ldap-crypt")],
    "SSHA256": [(_ldap("SSHA256", "sha256", salted=True), "ldap-ssha256")],
    "SSHA512": [(_ldap("SSHA512", "sha512", salted=True), "ldap-ssha512")],
    r"PBKDF2[\w-]*": [
        ("{PBKDF2-SHA256}29000$N2YMIWQsBWBMae09x1jrPQ$1t8iyB2A.WF/Z5JZv.lfCIhXXN33N23OSgQYThBYRfk",
         "ldap-pbkdf2-sha256"),
        ("{PBKDF2_SHA256}" + _b64(b"\x00\x00\x20\x00" + SALT * 8 + bytes(256)), "ldap-pbkdf2_sha256"),
    ],
    r"pbkdf2_sha\d+\$\S+": [(DJANGO_PBKDF2, "django-pbkdf2-sha256")],
    r"sha1\$\S+": [(DJANGO_SHA1, "django-sha1")],
}


def _split_top(pattern: str) -> list[str]:
    """``pattern`` split at its top-level ``|`` (not inside a group or a class)."""
    parts, depth, start, i = [], 0, 0, 0
    in_class = False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            parts.append(pattern[start:i])
            start = i + 1
        i += 1
    return [*parts, pattern[start:]]


def _crypt_alternatives() -> dict[str, str]:
    """Each alternative of the mapping's crypt regex -> a regex matching just it."""
    found: dict[str, str] = {}
    for branch in _split_top(_CRYPT.pattern):
        group = re.fullmatch(r"(\\\$|\\\{)\(\?:(.*)\)(\\\$|\\\})\\S\+", branch)
        if group is None:
            found[branch] = branch
            continue
        opener, inner, closer = group.groups()
        for alternative in _split_top(inner):
            found[alternative] = rf"{opener}(?:{alternative}){closer}\S+"
    return found


def test_the_table_covers_every_alternative_of_the_mapping() -> None:
    assert set(_crypt_alternatives()) == set(BY_ALTERNATIVE)


@pytest.mark.parametrize(
    ("alternative", "raw", "scheme"),
    [(alt, raw, scheme) for alt, cases in BY_ALTERNATIVE.items() for raw, scheme in cases],
)
def test_every_hash_the_mapping_calls_a_password_hash_is_accepted(
    alternative: str, raw: str, scheme: str
) -> None:
    assert re.fullmatch(_crypt_alternatives()[alternative], raw), "the value is of that alternative"
    assert sniff_value(raw) == "password_hash"
    result = canonicalize("password_hash", f" {raw}\t")
    assert result == Canonical("password_hash", raw, None, (("scheme", scheme),))
    assert canonicalize("password_hash", result.value) == result  # idempotent
    # A hash column holding them hands back a password hash, never a file hash.
    assert canonicalize("hash", raw) == result


@pytest.mark.parametrize("digits", sorted({int(n) for n in re.findall(r"\{(\d+)\}", _HEX_HASH.pattern)}))
def test_hex_digests_in_a_password_column_are_unsalted_password_hashes(digits: int) -> None:
    raw = hashlib.sha512(PASSWORD).hexdigest().upper()[:digits]
    assert infer_mapping(["password"], [[raw]] * 5) == {"password": "password_hash"}
    result = canonicalize("password_hash", raw)
    assert isinstance(result, Canonical), result
    assert result.value == raw.lower()
    assert result.attr("scheme") == {32: "raw-md5", 40: "raw-sha1", 56: "raw-sha224", 64: "raw-sha256",
                                       96: "raw-sha384", 128: "raw-sha512"}[digits]
    assert canonicalize("password_hash", result.value) == result


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("{ssha}" + _ldap("SSHA", "sha1", salted=True)[6:], _ldap("SSHA", "sha1", salted=True)),
        ("{Crypt}abJnggxhB/yWI", "{CRYPT}abJnggxhB/yWI"),
        (DJANGO_SHA1.upper().replace("SHA1$", "sha1$"), "sha1$A1B2C$" + DJANGO_SHA1[-40:]),
    ],
)
def test_case_is_folded_only_where_it_means_nothing(raw: str, canonical: str) -> None:
    """LDAP scheme labels are case-insensitive and hex is hex; base64 and salts are not."""
    result = canonicalize("password_hash", raw)
    assert isinstance(result, Canonical) and result.value == canonical


@pytest.mark.parametrize(
    "raw",
    [
        _ldap("SHA", "sha1", salted=True).replace("{SSHA}", "{SHA}"),  # a salt where none goes
        _ldap("SSHA", "sha1", salted=False).replace("{SHA}", "{SSHA}"),  # a salted scheme, no salt
        _ldap("SSHA", "sha1", salted=True)[:-2],  # truncated base64
        "{SSHA}",
        "{NOPE}abcd",
        "{CRYPT}$6$short",
        "{CRYPT}abc",
        YESCRYPT[:-1],
        "$7$C6..../....SodiumChloride$short",
        DJANGO_PBKDF2.replace("pbkdf2_sha256", "pbkdf2_sha999"),
        DJANGO_SHA1[:-1],
        "d41d8cd98f00b204e9800998ecf8427",  # 31 hex digits
        "z" * 32,
        "$y$j9T$salt",
        "{SSHA}é",  # not ASCII: the base64 decoder raises ValueError, not binascii.Error
        "{SHA}\u00e9\u00e9\u00e9\u00e9",
    ],
)
def test_malformed_password_hashes_are_rejected_without_the_value(raw: str) -> None:
    result = canonicalize("password_hash", raw)
    assert isinstance(result, Rejected) and result.code == "unknown_scheme"
    assert raw not in result.reason


def test_a_dump_of_such_hashes_loses_no_field(tmp_path: Path) -> None:
    """End to end: unsalted MD5, yescrypt, {SSHA} and Django columns, and a combo list of
    usernames and MD5s, are ingested with no field rejected, each kept only as a keyed
    fingerprint (the default policy)."""
    site = tmp_path / "site"
    cli(site, "init")
    hashes = [hashlib.md5(b"pw%d" % i).hexdigest() for i in range(60)]
    csv_dump = tmp_path / "users.csv"
    csv_dump.write_text("email,password,ldap,django\n" + "".join(
        f"u{i}@example.com,{md5},{_ldap('SSHA', 'sha1', salted=True)},{DJANGO_PBKDF2}\n"
        for i, md5 in enumerate(hashes)))
    combo = tmp_path / "combo.txt"
    combo.write_text("".join(f"jsmith{i};{md5}\n" for i, md5 in enumerate(hashes)))
    crypts = tmp_path / "crypt.csv"
    crypts.write_text("email,password\n" + "".join(
        f"v{i}@example.com,{YESCRYPT if i % 2 else '$y$j9T$' + 'a' * 22 + '$' + 'b' * 43}\n"
        for i in range(60)))
    for path in (csv_dump, combo, crypts):
        summary = cli_json(site, "ingest", str(path), "--source", path.stem, "--json", "--no-progress")
        assert summary["records"] == 60 and summary["rejected_fields"] == 0, summary
    fields = [f for e in events_of(site, "records.ingested") for _, fs in e.payload["records"]
              for f in fs if f["kind"] == "password_hash"]
    assert len(fields) == 60 * 3 + 60 + 60
    assert all("bi" in f and "v" not in f and "ct" not in f for f in fields)
