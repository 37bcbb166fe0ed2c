"""IP address and CIDR canonicalizers."""

from __future__ import annotations

import pytest

from heimdall_core.normalize import Canonical, Rejected, canonicalize


@pytest.mark.parametrize(
    ("raw", "value", "version"),
    [
        ("192.0.2.1", "192.0.2.1", "4"),
        (" 10.0.0.255\n", "10.0.0.255", "4"),
        ("0.0.0.0", "0.0.0.0", "4"),
        ("255.255.255.255", "255.255.255.255", "4"),
        ("2001:DB8::1", "2001:db8::1", "6"),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1", "6"),
        # RFC 5952 4.2.2: a single zero group is not compressed.
        ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1", "6"),
        # RFC 5952 4.2.3: the longest run is compressed, the first if tied.
        ("2001:0:0:1:0:0:0:1", "2001:0:0:1::1", "6"),
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1", "6"),
        ("::", "::", "6"),
        ("[2001:db8::1]", "2001:db8::1", "6"),
        ("64:ff9b::192.0.2.1", "64:ff9b::c000:201", "6"),
        ("::192.0.2.1", "::c000:201", "6"),
    ],
)
def test_canonical_addresses(raw: str, value: str, version: str) -> None:
    result = canonicalize("ip", raw)
    assert isinstance(result, Canonical), result
    assert (result.kind, result.value, result.attrs) == ("ip", value, (("version", version),))


@pytest.mark.parametrize("raw", ["::ffff:192.0.2.1", "::FFFF:c000:0201", "[::ffff:192.0.2.1]"])
def test_ipv4_mapped_folds_to_ipv4(raw: str) -> None:
    result = canonicalize("ip", raw)
    assert result == Canonical("ip", "192.0.2.1", None, (("mapped_from", "ipv6"), ("version", "4")))


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("", "empty"),
        ("010.0.0.1", "leading_zero"),
        ("192.168.01.1", "leading_zero"),
        ("00.0.0.0", "leading_zero"),
        ("::ffff:01.2.3.4", "leading_zero"),
        ("127.1", "shorthand"),
        ("10.1.1", "shorthand"),
        ("2130706433", "shorthand"),
        ("1.2.3.4.5", "shorthand"),
        ("0x7f.0.0.1", "hex_octet"),
        ("0x7f000001", "hex_octet"),
        ("256.1.1.1", "octet_range"),
        ("1.2.3.4.", "trailing_dot"),
        ("fe80::1%eth0", "zone_id"),
        ("fe80::1%25eth0", "zone_id"),
        ("10.0.0.0/8", "has_prefix"),
        ("1.2.3.\uff14", "invalid"),
        ("2001:db8::g", "invalid"),
        ("1:2:3:4:5:6:7:8:9", "invalid"),
        ("example.com", "invalid"),
    ],
)
def test_rejected_addresses(raw: str, code: str) -> None:
    result = canonicalize("ip", raw)
    assert isinstance(result, Rejected), result
    assert result.code == code


@pytest.mark.parametrize(
    ("raw", "value", "attrs"),
    [
        ("10.0.0.0/8", "10.0.0.0/8", (("prefix_len", "8"), ("version", "4"))),
        ("192.0.2.1/32", "192.0.2.1/32", (("prefix_len", "32"), ("version", "4"))),
        ("0.0.0.0/0", "0.0.0.0/0", (("prefix_len", "0"), ("version", "4"))),
        ("2001:DB8::/32", "2001:db8::/32", (("prefix_len", "32"), ("version", "6"))),
        ("[2001:db8::]/48", "2001:db8::/48", (("prefix_len", "48"), ("version", "6"))),
        (
            "::ffff:10.0.0.0/104",
            "10.0.0.0/8",
            (("mapped_from", "ipv6"), ("prefix_len", "8"), ("version", "4")),
        ),
        (
            "::ffff:0.0.0.0/96",
            "0.0.0.0/0",
            (("mapped_from", "ipv6"), ("prefix_len", "0"), ("version", "4")),
        ),
    ],
)
def test_canonical_networks(raw: str, value: str, attrs: tuple[tuple[str, str], ...]) -> None:
    result = canonicalize("cidr", raw)
    assert result == Canonical("cidr", value, None, attrs)


def test_cidr_without_prefix_is_an_address() -> None:
    assert canonicalize("cidr", "192.0.2.1") == canonicalize("ip", "192.0.2.1")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("10.1.2.3/8", "host_bits_set"),
        ("2001:db8::1/32", "host_bits_set"),
        ("::ffff:0:0/80", "host_bits_set"),
        ("10.0.0.0/33", "bad_prefix"),
        ("2001:db8::/129", "bad_prefix"),
        ("10.0.0.0/08", "bad_prefix"),
        ("10.0.0.0/", "bad_prefix"),
        ("10.0.0.0/a", "bad_prefix"),
        ("010.0.0.0/8", "leading_zero"),
        ("10.0/8", "shorthand"),
    ],
)
def test_rejected_networks(raw: str, code: str) -> None:
    result = canonicalize("cidr", raw)
    assert isinstance(result, Rejected), result
    assert result.kind == "cidr"
    assert result.code == code
