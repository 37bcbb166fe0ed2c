"""E-mail canonicalizer."""

from __future__ import annotations

import pytest

from heimdall_core.errors import NormalizeError
from heimdall_core.normalize import Canonical, NormalizeOptions, Rejected, canonicalize

GMAIL = NormalizeOptions(
    email_fold_dots_domains=frozenset({"gmail.com"}),
    email_strip_plus_domains=frozenset({"gmail.com"}),
)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("John.Doe@Example.COM", "john.doe@example.com"),
        ("  a+tag@example.com. ", "a+tag@example.com"),
        ("o'neil!#$%&*/=?^_`{|}~-@example.org", "o'neil!#$%&*/=?^_`{|}~-@example.org"),
        ("a@b", "a@b"),
        ("Ünïcode@example.com", "ünïcode@example.com"),
        ("user[@]example[.]com", "user@example.com"),
        ("user (at) example (dot) com", "user@example.com"),
        ("a" * 64 + "@example.com", "a" * 64 + "@example.com"),
    ],
)
def test_canonical_emails(raw: str, value: str) -> None:
    result = canonicalize("email", raw)
    assert isinstance(result, Canonical), result
    assert result.value == value


def test_attributes_and_idn_display() -> None:
    result = canonicalize("email", "Info@Bücher.example.co.uk")
    assert result == Canonical(
        "email",
        "info@xn--bcher-kva.example.co.uk",
        "info@bücher.example.co.uk",
        (("domain", "xn--bcher-kva.example.co.uk"), ("registrable_domain", "example.co.uk")),
    )


def test_keep_local_case_option() -> None:
    opts = NormalizeOptions(email_keep_local_case=True)
    result = canonicalize("email", "John.Doe@EXAMPLE.com", opts)
    assert isinstance(result, Canonical)
    assert result.value == "John.Doe@example.com"


def test_provider_folding_only_for_configured_domains() -> None:
    folded = canonicalize("email", "J.Doe+Newsletter@GMail.com", GMAIL)
    assert isinstance(folded, Canonical)
    assert folded.value == "jdoe@gmail.com"
    other = canonicalize("email", "J.Doe+Newsletter@example.com", GMAIL)
    assert isinstance(other, Canonical)
    assert other.value == "j.doe+newsletter@example.com"
    plain = canonicalize("email", "J.Doe+Newsletter@GMail.com")
    assert isinstance(plain, Canonical)
    assert plain.value == "j.doe+newsletter@gmail.com"


def test_dots_fold_before_the_tag_is_stripped() -> None:
    result = canonicalize("email", "0.+x@gmail.com", GMAIL)
    assert isinstance(result, Canonical)
    assert result.value == "0@gmail.com"


def test_plus_strip_keeps_tag_when_nothing_valid_would_be_left() -> None:
    only_plus = NormalizeOptions(email_strip_plus_domains=frozenset({"example.com"}))
    for raw, value in (("+tag@example.com", "+tag@example.com"), ("a.+b@example.com", "a.+b@example.com")):
        result = canonicalize("email", raw, only_plus)
        assert isinstance(result, Canonical)
        assert result.value == value
        assert canonicalize("email", result.value, only_plus) == result


@pytest.mark.parametrize(("raw", "opts"), [("{a.t}@gmail.com", GMAIL), ("a{{.}}b@x.com", None)])
def test_a_marker_left_in_the_local_part_is_rejected(raw: str, opts: NormalizeOptions | None) -> None:
    result = canonicalize("email", raw, opts or NormalizeOptions())
    assert isinstance(result, Rejected)
    assert result.code == "defang_marker"


def test_option_domains_are_canonicalized_or_refused() -> None:
    opts = NormalizeOptions(email_fold_dots_domains=frozenset({" GMail.com. ", "Bücher.de"}))
    assert opts.email_fold_dots_domains == {"gmail.com", "xn--bcher-kva.de"}
    result = canonicalize("email", "a.b@bücher.de", opts)
    assert isinstance(result, Canonical)
    assert result.value == "ab@xn--bcher-kva.de"
    with pytest.raises(NormalizeError, match=r"email_strip_plus_domains: 'a\.\.b'"):
        NormalizeOptions(email_strip_plus_domains=frozenset({"a..b"}))
    with pytest.raises(NormalizeError, match="value_chars_max"):
        NormalizeOptions(value_chars_max=0)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("", "missing_at"),
        ("john.example.com", "missing_at"),
        ("@example.com", "empty_local"),
        ("john@", "empty_domain"),
        ("john@ ", "empty_domain"),
        ("john@.", "domain.empty"),
        ('"john doe"@example.com', "quoted_local"),
        ("a@b@example.com", "invalid_local"),
        (".john@example.com", "invalid_local"),
        ("john.@example.com", "invalid_local"),
        ("jo..hn@example.com", "invalid_local"),
        ("jo hn@example.com", "invalid_local"),
        ("jo(hn@example.com", "invalid_local"),
        ("jo\u00a0hn@example.com", "invalid_local"),
        ("a" * 65 + "@example.com", "local_too_long"),
        ("ü" * 33 + "@example.com", "local_too_long"),
        ("john@[192.0.2.1]", "address_literal"),
        ("john@exa mple.com", "domain.invalid_char"),
        ("john@example..com", "domain.empty_label"),
        ("a" * 10 + "@" + ".".join(["b" * 61] * 4) + ".com", "too_long"),
    ],
)
def test_rejected_emails(raw: str, code: str) -> None:
    result = canonicalize("email", raw)
    assert isinstance(result, Rejected), result
    assert result.code == code
