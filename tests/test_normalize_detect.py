"""detect_kind: the kind of a query value from the value alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from ingest_helpers import cli

from heimdall_core.errors import QueryError
from heimdall_core.graph.query import parse_query
from heimdall_core.normalize import detect_kind


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ("192.0.2.1", "ip"),
        ("2001:db8::1", "ip"),
        ("::ffff:192.0.2.1", "ip"),
        ("192[.]0[.]2[.]1", "ip"),
        ("10.0.0.0/8", "cidr"),
        ("2001:db8::/32", "cidr"),
        ("example.com", "domain"),
        ("evil[.]example", "domain"),
        ("Bücher.de", "domain"),
        ("_dmarc.example.com", "domain"),
        ("john@example.com", "email"),
        ("john[@]example[.]com", "email"),
        ("https://example.com/x", "url"),
        ("hxxp://evil[.]example/x", "url"),
        ("d41d8cd98f00b204e9800998ecf8427e", "hash"),
        ("DA39A3EE5E6B4B0D3255BFEF95601890AFD80709", "hash"),
        ("$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW", "password_hash"),
        ("{SSHA}6kAEvjAvfE6aV4D+nZQDCDnbcWlOYUNsNHUhAA==", "password_hash"),
        ("pbkdf2_sha256$260000$Qx2nZ9UxrtHmE5gB$bzGxJlWZXvgHNy6TwykDV0iyN2ZCsgb0v0S9ic0ImNo=",
         "password_hash"),
        ("http://a.example/$x", "url"),
    ],
)
def test_detected(raw: str, kind: str) -> None:
    assert detect_kind(raw) == kind


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "johndoe",
        "localhost",
        "127.1",
        "1.2.3.4.5",
        "example.1-2",
        "00:1a:2b:3c:4d:5e",  # a MAC address is no IPv6 address of the wrong shape
        "12:30:45",
        "1.555.123.4567",
        "{SSHA}not base64",
        "not an@email",
        "file:///etc/passwd",
        "example.com/path",
        "+1 555 123 4567",
        "$2b$12$short",
        "d41d8cd98f00b204e9800998ecf8427",
    ],
)
def test_not_detected(raw: str) -> None:
    assert detect_kind(raw) is None


@pytest.mark.parametrize(
    ("raw", "kind", "code"),
    [
        ("010.0.0.1", "ip", "leading_zero"),
        ("256.0.0.1", "ip", "octet_range"),
        ("0x7f.0.0.1", "ip", "hex_octet"),
        ("192.0.2.1.", "ip", "trailing_dot"),
        ("fe80::1%eth0", "ip", "zone_id"),
        ("[fe80::1%eth0]", "ip", "zone_id"),
        ("2001:db8::1::2", "ip", "invalid"),
        ("10.1.2.3/8", "cidr", "host_bits_set"),
        ("2001:db8::1/32", "cidr", "host_bits_set"),
        ("2001:db8:0:0:0:0:0:1/64", "cidr", "host_bits_set"),
        ("2001:db8:0:0:0:0:0:1%eth0", "ip", "zone_id"),
        ("10.0.0.0/08", "cidr", "bad_prefix"),
        ("10.0.0.0/33", "cidr", "bad_prefix"),
    ],
)
def test_an_address_of_the_wrong_shape_gets_its_kind_and_precise_reason(raw: str, kind: str,
                                                                         code: str) -> None:
    """Shaped like an address or network but failing its rules: the kind is told, so the
    question is answered with that kind's reason, not "cannot tell what kind"."""
    assert detect_kind(raw) == kind
    with pytest.raises(QueryError, match=f"^not a valid {kind}: {code}: "):
        parse_query(raw, None)


def test_the_cli_says_why_an_address_is_not_valid(tmp_path: Path) -> None:
    site = tmp_path / "site"
    cli(site, "init")
    for raw, code in (("10.1.2.3/8", "host_bits_set"), ("010.0.0.1", "leading_zero"),
                      ("fe80::1%eth0", "zone_id")):
        proc = cli(site, "query", raw, check=False)
        assert proc.returncode == 2, proc
        assert code in proc.stderr and "cannot tell" not in proc.stderr
