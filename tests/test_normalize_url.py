"""URL canonicalizer: WHATWG URL test data, plus our own rules."""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path
from typing import Any

import pytest

from heimdall_core.normalize import Canonical, Rejected, canonicalize
from heimdall_core.normalize.url import URL_SCHEMES

# Our normalizations on top of the WHATWG href, written here independently of
# the code under test: fragment dropped; percent-encodings of unreserved
# characters decoded, the others with uppercase hex digits (RFC 3986 6.2.2).
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_TRIPLET = re.compile(r"%([0-9a-fA-F]{2})")


def expected_value(href: str) -> str:
    without_fragment = href.split("#", 1)[0]

    def octet(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return _TRIPLET.sub(octet, without_fragment)


# Inputs the WHATWG parser accepts whose host our domain rules reject, each
# with the reason. Listed one by one so that nothing is skipped silently.
STRICTER_HOST = {
    "http://./": "host is the root alone: no domain name",
    "http://../": "host has an empty label",
    "http://foo.09..": "host has an empty label",
    "http://!\"$&'()*+,-.;=_`{}~/": "host characters outside letters, digits, - and _",
    "wss://!\"$&'()*+,-.;=_`{}~/": "host characters outside letters, digits, - and _",
    "ftp://%e2%98%83": "host is U+2603 SNOWMAN: IDNA 2008 disallows symbols",
    "https://%e2%98%83": "host is U+2603 SNOWMAN: IDNA 2008 disallows symbols",
}

# Counts for the urltestdata.json in shared testdata. They change only with
# that file, and then this test says what to look at again.
EXPECTED_COUNTS = {
    "matched": 133,
    "failure_rejected": 213,
    "out_of_scope_needs_base": 328,
    "out_of_scope_scheme": 188,
    "stricter_host": 7,
}


def _entries(testdata_dir: Path) -> list[dict[str, Any]]:
    data = json.loads((testdata_dir / "url" / "urltestdata.json").read_text(encoding="utf-8"))
    return [entry for entry in data if isinstance(entry, dict)]


def _check(entry: dict[str, Any]) -> str:
    """Check one entry; return the bucket it was counted in."""
    if entry["base"] is not None:
        # Relative references (and about:blank bases) need a base URL; an
        # indicator is always absolute.
        return "out_of_scope_needs_base"
    result = canonicalize("url", entry["input"])
    if "failure" in entry:
        assert isinstance(result, Rejected), entry
        return "failure_rejected"
    if entry["protocol"][:-1] not in URL_SCHEMES:
        # file:, data:, javascript:, blob:, mailto: and non-special schemes.
        assert isinstance(result, Rejected), entry
        assert result.code == "scheme"
        return "out_of_scope_scheme"
    if entry["input"] in STRICTER_HOST:
        assert isinstance(result, Rejected), entry
        assert result.code.startswith("host.")
        return "stricter_host"
    assert isinstance(result, Canonical), (entry, result)
    assert result.value == expected_value(entry["href"]), entry
    return "matched"


def test_whatwg_url_test_data(testdata_dir: Path) -> None:
    counts = collections.Counter(_check(entry) for entry in _entries(testdata_dir))
    print("urltestdata:", dict(counts))
    assert dict(counts) == EXPECTED_COUNTS


def test_expected_value_transformation_itself() -> None:
    assert expected_value("http://a/%7e%2f%41?%2a#%41") == "http://a/~%2FA?%2A"


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("HTTP://WWW.Example.COM:80/a/./b/../c?q=1#frag", "http://www.example.com/a/c?q=1"),
        ("https://example.com:443", "https://example.com/"),
        ("https://example.com:8443/x", "https://example.com:8443/x"),
        ("http://example.com/%7euser/%2a%2F", "http://example.com/~user/%2A%2F"),
        ("http://example.com/a b", "http://example.com/a%20b"),
        ("ftp://files.example.org/pub/", "ftp://files.example.org/pub/"),
        ("wss://ws.example.net/socket", "wss://ws.example.net/socket"),
        ("http://0x7f.1/", "http://127.0.0.1/"),
        ("http://[::FFFF:1.2.3.4]/", "http://[::ffff:102:304]/"),
        ("http://user:pass@example.com/", "http://user:pass@example.com/"),
        ("http://example.com./", "http://example.com./"),
        ("  https://example.com/  ", "https://example.com/"),
        ("https://example.com/?", "https://example.com/?"),
    ],
)
def test_canonical_urls(raw: str, value: str) -> None:
    result = canonicalize("url", raw)
    assert isinstance(result, Canonical), result
    assert result.value == value


def test_attributes_link_to_domain_and_ip() -> None:
    result = canonicalize("url", "https://a.b.Example.co.uk/x")
    assert isinstance(result, Canonical)
    assert result.attrs == (
        ("host", "a.b.example.co.uk"),
        ("registrable_domain", "example.co.uk"),
        ("scheme", "https"),
    )
    mapped = canonicalize("url", "http://[::ffff:1.2.3.4]:8080/")
    assert isinstance(mapped, Canonical)
    assert mapped.attr("host") == "1.2.3.4"
    assert mapped.attr("registrable_domain") is None
    trailing = canonicalize("url", "http://example.com./")
    assert isinstance(trailing, Canonical)
    assert trailing.attr("host") == "example.com"


def test_idn_host_display() -> None:
    result = canonicalize("url", "https://user@Bücher.de:8080/ü?x#y")
    assert isinstance(result, Canonical)
    assert result.value == "https://user@xn--bcher-kva.de:8080/%C3%BC?x"
    assert result.display == "https://user@bücher.de:8080/%C3%BC?x"
    assert canonicalize("url", "https://example.com/").display is None  # type: ignore[union-attr]


def test_defanged_url() -> None:
    result = canonicalize("url", "hxxps[:]//evil[.]example(.)com/bins/mirai[.]x86")
    assert isinstance(result, Canonical)
    assert result.value == "https://evil.example.com/bins/mirai.x86"


@pytest.mark.parametrize("raw", ["http://example.com/[%2E]", "http://example.com/[[.]]"])
def test_marker_left_in_the_value_is_escaped(raw: str) -> None:
    result = canonicalize("url", raw)
    assert isinstance(result, Canonical)
    assert result.value == "http://example.com/%5B.%5D"
    assert canonicalize("url", result.value) == result


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("example.com/path", "no_scheme"),
        ("/just/a/path", "no_scheme"),
        ("file:///etc/passwd", "scheme"),
        ("javascript:alert(1)", "scheme"),
        ("data:text/plain,hi", "scheme"),
        ("mailto:a@example.com", "scheme"),
        ("ldap://example.com/", "scheme"),
        ("http://", "invalid"),
        ("http://exa mple.com/", "invalid"),
        ("http://a!b.example/", "host.invalid_char"),
        ("http://💩.la/", "host.invalid_idna"),
    ],
)
def test_rejected_urls(raw: str, code: str) -> None:
    result = canonicalize("url", raw)
    assert isinstance(result, Rejected)
    assert result.code == code
