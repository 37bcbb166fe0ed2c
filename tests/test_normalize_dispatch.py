"""The dispatcher and the shared model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heimdall_core.errors import NormalizeError
from heimdall_core.normalize import (
    KINDS,
    REFANG_KINDS,
    Canonical,
    NormalizeOptions,
    Rejected,
    UnknownKind,
    canonicalize,
    refang,
)
from heimdall_core.normalize.dispatch import canonicalizer_for
from heimdall_core.normalize.email import canonicalize_plain_email
from heimdall_core.normalize.ip import canonicalize_plain_ip
from heimdall_core.normalize.refang import maybe_defanged


def test_every_kind_is_dispatched() -> None:
    for kind in KINDS:
        result = canonicalize(kind, "x" * 3000)
        assert isinstance(result, Rejected)
        assert (result.kind, result.code) == (kind, "too_long")


def test_unknown_kind_raises() -> None:
    with pytest.raises(UnknownKind, match="'ipv4'") as info:
        canonicalize("ipv4", "192.0.2.1")
    assert isinstance(info.value, NormalizeError)


def test_value_chars_max_option() -> None:
    opts = NormalizeOptions(value_chars_max=10)
    assert isinstance(canonicalize("other", "x" * 10, opts), Canonical)
    result = canonicalize("other", "x" * 11, opts)
    assert isinstance(result, Rejected)
    assert result.reason == "too_long: value over 10 characters"


def test_only_indicator_kinds_are_refanged() -> None:
    assert {"email", "ip", "cidr", "domain", "url"} == REFANG_KINDS
    assert canonicalize("domain", "a[.]com") == canonicalize("domain", "a.com")
    assert canonicalize("other", "a[.]com") == Canonical("other", "a[.]com")


def test_canonical_attr_lookup_and_reason_code() -> None:
    canonical = Canonical("hash", "00", None, (("algo", "md5"), ("z", "1")))
    assert canonical.attr("algo") == "md5"
    assert canonical.attr("missing") is None
    assert Rejected("ip", "leading_zero: text: more").code == "leading_zero"


_DEFANG_PARTS = st.sampled_from(
    ["a", "B", ".", "@", ":", "/", " ", "\t", "\u2003", "[.]", "(dot)", "{at}", "[:]", "\\.",
     "hxxp", "HXXPS", "fxp", "hXxP", "[", "(", "{", "\\", "x", "1", "ä", "İ", "K"]
)
_DEFANG_TEXT = st.lists(_DEFANG_PARTS, max_size=12).map("".join)


@settings(deadline=None, max_examples=300)
@given(kind=st.sampled_from(sorted(KINDS)), raw=_DEFANG_TEXT | st.text(max_size=30),
       chars_max=st.sampled_from([5, 2048]))
def test_canonicalizer_for_gives_what_canonicalize_gives(kind: str, raw: str, chars_max: int) -> None:
    opts = NormalizeOptions(value_chars_max=chars_max)
    assert canonicalizer_for(kind, opts)(raw) == canonicalize(kind, raw, opts)


def test_canonicalizer_for_unknown_kind_raises() -> None:
    with pytest.raises(UnknownKind, match="'ipv4'"):
        canonicalizer_for("ipv4")


@settings(deadline=None, max_examples=300)
@given(raw=_DEFANG_TEXT | st.text(max_size=30))
def test_the_defang_prefilter_misses_no_marker(raw: str) -> None:
    if refang(raw) != raw:
        assert maybe_defanged(raw)


# Text near the fast paths' plain forms (see dispatch._fast_path): mostly their own
# characters, with a few that must send a value down the general path.
_NEAR_PLAIN = st.text(alphabet="abz09._+-@@..Z:[( \u00e9", min_size=1, max_size=40)
_NEAR_IPV4 = st.lists(st.sampled_from(["0", "1", "25", "255", "256", "010", "x", ""]),
                      min_size=1, max_size=5).map(".".join)


@settings(deadline=None, max_examples=500)
@given(kind=st.sampled_from(["email", "ip"]), raw=_NEAR_PLAIN | _NEAR_IPV4,
       folds=st.booleans(), keep_case=st.booleans(), chars_max=st.sampled_from([8, 2048]))
def test_the_fast_paths_give_what_canonicalize_gives(kind: str, raw: str, folds: bool,
                                                     keep_case: bool, chars_max: int) -> None:
    domains = frozenset({"b.a", "ab.z"}) if folds else frozenset()
    opts = NormalizeOptions(value_chars_max=chars_max, email_keep_local_case=keep_case,
                            email_fold_dots_domains=domains, email_strip_plus_domains=domains)
    assert canonicalizer_for(kind, opts)(raw) == canonicalize(kind, raw, opts)


def test_the_fast_paths_take_plain_values_and_leave_others() -> None:
    assert canonicalize_plain_email("user_1@example.com") == canonicalize("email", "user_1@example.com")
    assert canonicalize_plain_email("a@EXAMPLE.com") is None
    assert canonicalize_plain_email("a[.]b@example.com") is None
    folding = NormalizeOptions(email_fold_dots_domains=frozenset({"x.com"}))
    assert canonicalize_plain_email("a@x.com", folding) is None
    assert canonicalize_plain_ip("10.0.0.1") == canonicalize("ip", "10.0.0.1")
    assert canonicalize_plain_ip("10[.]0.0.1") is None
