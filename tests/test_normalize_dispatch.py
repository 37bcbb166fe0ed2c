"""The dispatcher and the shared model."""

from __future__ import annotations

import pytest

from heimdall_core.errors import NormalizeError
from heimdall_core.normalize import (
    KINDS,
    REFANG_KINDS,
    Canonical,
    NormalizeOptions,
    Rejected,
    UnknownKind,
    canonicalize,
)


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
