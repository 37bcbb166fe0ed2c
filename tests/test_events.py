"""Events: canonical msgpack bodies and frames (pure, no disk)."""

from __future__ import annotations

import random
import string
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heimdall_core.clock import Hlc
from heimdall_core.errors import EncodingError
from heimdall_core.events import (
    FRAME_BYTES_MAX_DEFAULT,
    HEADER_BYTES,
    KIND_CHARS_MAX,
    NESTING_MAX,
    BodyError,
    Event,
    canonical,
    check_bodies,
    decode_body,
    decode_frame,
    decode_header,
    encode_body,
    encode_frame,
    encode_header,
)

FEED = bytes(range(32))

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20)
           | st.binary(max_size=20))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
payloads = st.dictionaries(st.text(max_size=8), values, max_size=6)
kinds = st.from_regex(r"[a-z][a-z0-9_]{0,8}(\.[a-z][a-z0-9_]{0,8}){0,2}", fullmatch=True)
hlcs = st.builds(Hlc, st.integers(0, 2**63 - 1), st.integers(0, 2**32 - 1))


def _raw(obj: Any) -> bytes:
    """msgpack as Python packs it (dict insertion order kept: may be non-canonical)."""
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


@settings(max_examples=200, deadline=None)
@given(kinds, st.integers(1, 0xFFFF), payloads)
def test_body_round_trip_is_exact(kind: str, version: int, payload: dict[str, Any]) -> None:
    body = encode_body(kind, version, payload)
    assert decode_body(body) == (kind, version, payload)
    assert encode_body(kind, version, decode_body(body)[2]) == body
    check_bodies([body], 0)


@settings(max_examples=100, deadline=None)
@given(hlcs, st.integers(0, 2**63 - 1), payloads)
def test_frame_round_trip(hlc: Hlc, seq: int, payload: dict[str, Any]) -> None:
    event = Event(FEED, seq, hlc, "note", 1, payload)
    frame = encode_frame(event)
    assert frame[:HEADER_BYTES] == encode_header(FEED, seq, hlc)
    assert decode_frame(frame) == event
    assert decode_header(frame).hlc == hlc


@settings(max_examples=100, deadline=None)
@given(payloads, st.randoms(use_true_random=False))
def test_key_order_does_not_change_the_bytes(payload: dict[str, Any], rnd: random.Random) -> None:
    def shuffled(value: Any) -> Any:
        if isinstance(value, dict):
            items = list(value.items())
            rnd.shuffle(items)
            return {k: shuffled(v) for k, v in items}
        if isinstance(value, list):
            return [shuffled(v) for v in value]
        return value

    assert encode_body("note", 1, shuffled(payload)) == encode_body("note", 1, payload)


def test_same_event_same_bytes_and_tuples_are_lists() -> None:
    payload = {"b": [1, (2, 3)], "a": {"y": b"\x00", "x": None}}
    one = encode_body("dump.started", 1, payload)
    assert one == encode_body("dump.started", 1, dict(payload))
    assert decode_body(one)[2] == {"a": {"x": None, "y": b"\x00"}, "b": [1, [2, 3]]}


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=6), scalars, min_size=2, max_size=6))
def test_unsorted_map_is_rejected(payload: dict[str, Any]) -> None:
    ordered = sorted(payload)
    reverse = {key: payload[key] for key in reversed(ordered)}
    with pytest.raises(EncodingError, match="not sorted"):
        decode_body(_raw(["note", 1, reverse]))


# Hand-made non-canonical encodings of ["note", 1, {...}].
_HEAD = b"\x93\xa4note"


@pytest.mark.parametrize(("raw", "why"), [
    (_HEAD + b"\xcc\x01\x80", "version 1 as uint8: non-minimal int"),
    (_HEAD + b"\xcf" + (1).to_bytes(8, "big") + b"\x80", "version 1 as uint64"),
    (_HEAD + b"\x01\x81\xa1a\xd0\x05", "5 as int8"),
    (_HEAD + b"\x01\x81\xa1a\xd9\x01x", "short str as str8"),
    (_HEAD + b"\x01\x81\xa1a\xc5\x00\x01x", "short bin as bin16"),
    (_HEAD + b"\x01\xde\x00\x01\xa1a\x01", "small map as map16"),
    (_HEAD + b"\x01\x81\xa1a\xdc\x00\x01\x01", "small array as array16"),
    (_HEAD + b"\x01\x81\xa1a\xca" + b"\x3f\xc0\x00\x00", "float32"),
    (_HEAD + b"\x01\x81\xa1a\xcb" + b"\x3f\xf8" + bytes(6), "float64"),
    (_HEAD + b"\x01\x81\xa1a\xd4\x01\x00", "ext type"),
    (_HEAD + b"\x01\x81\xa1a" + _raw(msgpack.Timestamp(1, 0)), "timestamp ext"),
    (_HEAD + b"\x01\x81\xc4\x01a\x01", "bin map key"),
    (b"\x93\xc4\x04note\x01\x80", "kind as bin"),
    (_HEAD + b"\x01\x82\xa1a\x01\xa1a\x02", "repeated key"),
    (_HEAD + b"\x01\x80\x00", "trailing bytes"),
    (_HEAD + b"\x01", "truncated"),
    (_HEAD + b"\x01\x81\xa1a\xa2\xff\xfe", "invalid UTF-8"),
    (_HEAD + b"\xc3\x80", "version true"),
    (_HEAD + b"\x00\x80", "version 0"),
    (b"\x92\xa4note\x01", "two elements"),
    (b"\x93\xa4Note\x01\x80", "kind upper case"),
    (_HEAD + b"\x01\x90", "payload not a map"),
    (b"", "empty"),
])
def test_non_canonical_bodies_are_rejected(raw: bytes, why: str) -> None:
    with pytest.raises(EncodingError):
        decode_body(raw)
    with pytest.raises(BodyError) as caught:
        check_bodies([encode_body("note", 1, {}), raw], 0)
    assert caught.value.index == 1, why


def test_canonical_hand_made_body_is_accepted() -> None:
    assert decode_body(_HEAD + b"\x01\x81\xa1a\x05") == ("note", 1, {"a": 5})


def _nested(levels: int) -> dict[str, Any]:
    value: Any = 1
    for _ in range(levels - 1):
        value = [value]
    return {"deep": value}


def test_nesting_limit_is_the_same_both_ways() -> None:
    ok = encode_body("note", 1, _nested(NESTING_MAX))
    assert decode_body(ok)[2] == _nested(NESTING_MAX)
    with pytest.raises(EncodingError, match="nested deeper"):
        encode_body("note", 1, _nested(NESTING_MAX + 1))
    with pytest.raises(EncodingError, match="nested deeper"):
        decode_body(_raw(["note", 1, _nested(NESTING_MAX + 1)]))


def test_size_limits() -> None:
    event = Event(FEED, 0, Hlc(1, 0), "note", 1, {"blob": b"x" * 2000})
    frame = encode_frame(event)
    with pytest.raises(EncodingError, match="exceeds"):
        encode_frame(event, frame_bytes_max=len(frame) - 1)
    with pytest.raises(EncodingError, match="exceeds"):
        decode_frame(frame, frame_bytes_max=len(frame) - 1)
    assert decode_frame(frame, frame_bytes_max=len(frame)) == event
    with pytest.raises(EncodingError, match="exceeds"):
        decode_body(frame[HEADER_BYTES:], frame_bytes_max=100)
    assert FRAME_BYTES_MAX_DEFAULT == 1 << 20


@pytest.mark.parametrize("payload", [
    {"x": 1.5}, {"x": [0.0]}, {"x": {"y": float("nan")}}, {1: "int key"}, {"x": 2**64},
    {"x": -(2**63) - 1}, {"x": {b"k": 1}}, {"x": object()}, {"x": "\udc80"}, {"x": {1, 2}},
])
def test_unencodable_payloads(payload: dict[Any, Any]) -> None:
    with pytest.raises(EncodingError):
        encode_body("note", 1, payload)


@pytest.mark.parametrize(("kind", "version"), [
    ("", 1), ("Note", 1), ("note.", 1), ("1note", 1), ("a" * (KIND_CHARS_MAX + 1), 1),
    ("note", 0), ("note", 0x10000), ("note", True), ("note", "1"),
])
def test_bad_kinds_and_versions(kind: str, version: Any) -> None:
    with pytest.raises(EncodingError):
        encode_body(kind, version, {})


def test_payload_must_be_a_map() -> None:
    with pytest.raises(EncodingError, match="map"):
        encode_body("note", 1, [1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize(("mutate", "match"), [
    (lambda f: b"XE" + f[2:], "magic"),
    (lambda f: f[:2] + b"\x02" + f[3:], "version"),
    (lambda f: f[:3] + b"\x01" + f[4:], "flags"),
    (lambda f: f[:44] + b"\x80" + f[45:], "out of range"),
    (lambda f: f[:HEADER_BYTES], "shorter"),
])
def test_bad_headers(mutate: Any, match: str) -> None:
    frame = encode_frame(Event(FEED, 3, Hlc(5, 6), "note", 1, {}))
    with pytest.raises(EncodingError, match=match):
        decode_header(mutate(frame))


def test_header_field_limits() -> None:
    with pytest.raises(EncodingError):
        encode_header(b"short", 0, Hlc(0, 0))
    with pytest.raises(EncodingError):
        encode_header(FEED, 2**63, Hlc(0, 0))


@settings(max_examples=300, deadline=None)
@given(payloads, st.data())
def test_mutated_bodies_raise_only_encoding_errors(payload: dict[str, Any], data: st.DataObject) -> None:
    """Fuzz: whatever a damaged body decodes to must itself be canonical, and the batch
    checker must agree with the single-body decoder."""
    body = bytearray(encode_body("note", 1, payload))
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(body) - 1))
        body[position] = data.draw(st.integers(0, 255))
    _check_mutated(bytes(body))


def _check_mutated(mutated: bytes) -> None:
    try:
        kind, version, decoded = decode_body(mutated)
    except EncodingError:
        with pytest.raises(BodyError):
            check_bodies([mutated], 0)
        return
    assert encode_body(kind, version, decoded) == mutated
    check_bodies([mutated], 0)


def test_body_whose_kind_is_a_map_is_an_encoding_error() -> None:
    # Found by the fuzz test above: an unhashable kind reached the known-kinds cache.
    _check_mutated(_raw([{}, 1, {}]))
    _check_mutated(_raw([["note"], 1, {}]))
    with pytest.raises(EncodingError):
        decode_body(_raw([{"a": 1}, 1, {}]))


def test_check_bodies_names_the_first_bad_body() -> None:
    good = [encode_body("note", 1, {"i": i}) for i in range(5)]
    bad = _raw(["note", 1, {"b": 1, "a": 2}])
    with pytest.raises(BodyError) as caught:
        check_bodies([*good[:3], bad, good[3], bad], 0)
    assert caught.value.index == 3
    frames = [encode_header(FEED, i, Hlc(1, i)) + b for i, b in enumerate(good)]
    check_bodies(frames)


def test_canonical_sorts_by_code_point() -> None:
    keys = ["b", "a", "Z", "é", "\u00e9a", "\U0001f600", "aa"]
    assert list(canonical(dict.fromkeys(keys, 1))) == sorted(keys)
    encoded = [k.encode() for k in sorted(keys)]
    assert encoded == sorted(encoded)  # code point order is UTF-8 byte order


def test_event_repr_hides_payload() -> None:
    secret = "".join(random.choices(string.ascii_letters, k=24))
    event = Event(FEED, 0, Hlc(1, 2), "note", 1, {"v": secret})
    assert secret not in repr(event)
