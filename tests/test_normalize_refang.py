"""Refanging of defanged indicators."""

from __future__ import annotations

import pytest

from heimdall_core.normalize import refang
from heimdall_core.normalize.refang import escape_markers, has_marker


@pytest.mark.parametrize(
    ("raw", "plain"),
    [
        ("hxxp://evil[.]example/a", "http://evil.example/a"),
        ("HXXPS://evil[.]example", "https://evil.example"),
        ("hxxps[:]//evil(.)example", "https://evil.example"),
        ("fxp://files{.}example", "ftp://files.example"),
        ("  hxxp[://]a[dot]b", "http://a.b"),
        ("evil [.] example (DOT) com", "evil.example.com"),
        ("evil\\.example", "evil.example"),
        ("user[@]example[.]com", "user@example.com"),
        ("user [at] example{.}com", "user@example.com"),
        ("user(at)example{dot}com", "user@example.com"),
        ("user{@}example(@)x", "user@example@x"),
        ("192[.]0[.]2[.]1", "192.0.2.1"),
        ("2001[:]db8[:][:]1", "2001:db8::1"),
    ],
)
def test_refang(raw: str, plain: str) -> None:
    assert refang(raw) == plain


@pytest.mark.parametrize(
    "raw",
    [
        "http://example.com/",
        "[2001:db8::1]",
        "http://[::1]:80/",
        "hxxpx://not-a-scheme",
        "the hxxp: scheme only counts at the start",
        "a(b)c{d}e[f]",
        "plain.example.com",
    ],
)
def test_values_without_markers_are_unchanged(raw: str) -> None:
    assert refang(raw) == raw
    assert not has_marker(raw)


def test_escape_markers_makes_refang_a_no_op() -> None:
    escaped = escape_markers("http://x/[.]/(dot)?a\\.b")
    assert escaped == "http://x/%5B.%5D/%28dot%29?a%5C.b"
    assert refang(escaped) == escaped
    assert escape_markers("http://x/(a)") == "http://x/(a)"
