"""Username, password, phone, name and other canonicalizers."""

from __future__ import annotations

import pytest

from heimdall_core.normalize import Canonical, Rejected, canonicalize


@pytest.mark.parametrize(
    ("kind", "raw", "value"),
    [
        ("username", "  JohnDoe ", "JohnDoe"),
        ("username", "Jose\u0301", "José"),
        ("username", "a[.]b", "a[.]b"),
        ("password", "  Secret [.] 1 ", "  Secret [.] 1 "),
        ("phone", "+1 (555) 123-4567", "+15551234567"),
        ("phone", "030/1234.5678", "03012345678"),
        ("phone", "0044 20 7946 0958", "00442079460958"),
        ("phone", "12345", "12345"),
        ("name", "  Jane \t\n  Q.   Public ", "Jane Q. Public"),
        ("name", "Zoe\u0308", "Zoë"),
        ("other", "  anything [.] at all ", "anything [.] at all"),
    ],
)
def test_canonical_text(kind: str, raw: str, value: str) -> None:
    result = canonicalize(kind, raw)
    assert result == Canonical(kind, value)


@pytest.mark.parametrize(
    ("kind", "raw", "code"),
    [
        ("username", "   ", "empty"),
        ("username", "a\x00b", "control_char"),
        ("password", "", "empty"),
        ("phone", "1234", "digit_count"),
        ("phone", "+1234567890123456", "digit_count"),
        ("phone", "+1 555 123 4567 x12", "invalid_char"),
        ("phone", "++15551234567", "invalid_char"),
        ("phone", "\uff15\uff15\uff15\uff11\uff12\uff13\uff14", "invalid_char"),
        ("phone", "", "digit_count"),
        ("name", " \t ", "empty"),
        ("name", "a\x07b", "control_char"),
        ("other", "  ", "empty"),
    ],
)
def test_rejected_text(kind: str, raw: str, code: str) -> None:
    result = canonicalize(kind, raw)
    assert isinstance(result, Rejected), result
    assert (result.kind, result.code) == (kind, code)
