"""Domain canonicalizer and registrable domains (Public Suffix List test data)."""

from __future__ import annotations

import re
from pathlib import Path

import idna
import pytest

from heimdall_core.normalize import Canonical, Rejected, canonicalize
from heimdall_core.normalize import domain as domain_module
from heimdall_core.normalize.domain import canonicalize_domain

_PSL_CASE = re.compile(r"checkPublicSuffix\((null|'[^']*'), (null|'[^']*')\);")
PSL_CASES = 78  # checkPublicSuffix lines in the file, commented-out ones excluded


def _literal(text: str) -> str | None:
    return None if text == "null" else text[1:-1]


def test_public_suffix_list_test_data(testdata_dir: Path) -> None:
    checked = 0
    null_inputs = 0
    for line in (testdata_dir / "psl" / "test_psl.txt").read_text(encoding="utf-8").splitlines():
        match = _PSL_CASE.fullmatch(line.strip())
        if not match:
            continue
        raw, expected = (_literal(group) for group in match.groups())
        if raw is None:
            null_inputs += 1  # "null input": there is no string to canonicalize
            continue
        result = canonicalize("domain", raw)
        got = result.attr("registrable_domain") if isinstance(result, Canonical) else None
        # The file writes IDN expectations in U-labels; our attribute is A-labels.
        want = idna.encode(expected, uts46=True).decode("ascii") if expected else None
        assert got == want, (raw, expected, result)
        checked += 1
    assert (checked, null_inputs) == (PSL_CASES - 1, 1)


def test_private_section_is_used() -> None:
    result = canonicalize("domain", "evil.github.io")
    assert isinstance(result, Canonical)
    assert result.attr("registrable_domain") == "evil.github.io"


@pytest.mark.parametrize(
    ("raw", "value", "display"),
    [
        ("Example.COM", "example.com", None),
        ("  www.example.co.uk.  ", "www.example.co.uk", None),
        ("_dmarc.example.com", "_dmarc.example.com", None),
        ("r3---sn-abc.googlevideo.com", "r3---sn-abc.googlevideo.com", None),
        ("localhost", "localhost", None),
        ("Bücher.DE", "xn--bcher-kva.de", "bücher.de"),
        ("XN--BCHER-KVA.de", "xn--bcher-kva.de", "bücher.de"),
        ("faß.de", "xn--fa-hia.de", "faß.de"),
        # Fullwidth "example" + ideographic full stop + fullwidth "com".
        ("\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\u3002\uff43\uff4f\uff4d", "example.com", None),
        ("食狮.中国", "xn--85x722f.xn--fiqs8s", "食狮.中国"),
        ("a" * 63 + ".com", "a" * 63 + ".com", None),
        (".".join(["a" * 61] * 4) + ".com", ".".join(["a" * 61] * 4) + ".com", None),
    ],
)
def test_canonical_domains(raw: str, value: str, display: str | None) -> None:
    result = canonicalize("domain", raw)
    assert isinstance(result, Canonical), result
    assert (result.value, result.display) == (value, display)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (".", "empty"),
        ("a..b", "empty_label"),
        (".example.com", "empty_label"),
        ("example.com..", "empty_label"),
        ("a" * 64 + ".com", "label_too_long"),
        (".".join(["a" * 62] * 4) + ".com", "name_too_long"),
        ("-bad.com", "hyphen_edge"),
        ("bad-.com", "hyphen_edge"),
        ("ex ample.com", "invalid_char"),
        ("*.example.com", "invalid_char"),
        ("example.com/path", "invalid_char"),
        ("example.c_m", "invalid_char"),
        ("1.2.3.4", "numeric_tld"),
        ("example.123", "numeric_tld"),
        ("xn--zz.com", "invalid_idna"),
        ("☃.com", "invalid_idna"),
        ("a_ü.com", "invalid_idna"),
    ],
)
def test_rejected_domains(raw: str, code: str) -> None:
    result = canonicalize("domain", raw)
    assert isinstance(result, Rejected), result
    assert result.code == code


def test_bidi_rule_covers_every_label_of_a_bidi_domain() -> None:
    # "0a" alone is fine; next to a Hebrew label it breaks RFC 5893 rule 1.
    assert isinstance(canonicalize_domain("0a.com"), Canonical)
    result = canonicalize_domain("0a.\u05d0\u05d1")
    assert isinstance(result, Rejected)
    assert result.code == "invalid_idna"


def test_ascii_fast_path_never_calls_idna(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*_args: object, **_kwargs: object) -> object:
        raise AssertionError("idna called on the ASCII fast path")

    for name in ("uts46_remap", "alabel", "ulabel", "encode", "check_bidi"):
        monkeypatch.setattr(idna, name, forbidden)
    domain_module._canonicalize_cached.cache_clear()
    for raw in ("www.example.com", "MAIL.Example.Org.", "_sip._tcp.example.net", "a-b.c-d.e"):
        assert isinstance(canonicalize_domain(raw), Canonical)
    for raw in ("a..b", "-a.com", "1.2.3.4", "a b.com"):
        assert isinstance(canonicalize_domain(raw), Rejected)
    domain_module._canonicalize_cached.cache_clear()
