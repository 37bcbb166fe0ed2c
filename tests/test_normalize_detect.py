"""detect_kind: the kind of a query value from the value alone."""

from __future__ import annotations

import pytest

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
        "010.0.0.1",
        "1.2.3.4.5",
        "example.1-2",
        "10.1.2.3/8",
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
