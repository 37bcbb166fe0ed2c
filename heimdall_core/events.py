"""Events and their canonical encoding (pure: no I/O).

An event is one fact a site records. On the wire and on disk it is a *frame*:

    offset  size  field
    0       2     magic b"HE"
    2       1     frame format version (1)
    3       1     flags (0; reserved, must be 0)
    4       32    feed id (the feed's Ed25519 public key)
    36      8     sequence number, unsigned big-endian, 0-based (= Merkle leaf index)
    44      8     HLC physical time, ms since the Unix epoch, unsigned big-endian (< 2**63)
    52      4     HLC logical counter, unsigned big-endian
    56      n     body: canonical msgpack array [kind: str, version: int, payload: map]

The fixed header lets the verifier check feed and position with a few byte compares, and
because the HLC is stored big-endian, comparing its 12 bytes compares the timestamps.

The body is canonical msgpack: maps have ``str`` keys, sorted by code point (the same
as UTF-8 byte order) and unique; integers use the shortest form; every length prefix
is the shortest; ``bytes`` are msgpack bin, ``str`` are msgpack str (valid UTF-8); no
floats (use integers or decimal strings), no extension types (timestamps included);
containers nest at most ``NESTING_MAX`` levels, the payload map being level 1. The same
event always encodes to the same bytes, and decoding rejects anything that would not
re-encode to the very same bytes (``EncodingError``).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from heimdall_core.clock import Hlc
from heimdall_core.errors import EncodingError

FRAME_MAGIC = b"HE"
FRAME_VERSION = 1
FEED_ID_BYTES = 32
HEADER = struct.Struct(">2sBB32sQQI")
HEADER_BYTES = HEADER.size  # 56
# The first 4 bytes of every frame of this format: magic, version, flags.
FRAME_PREFIX = FRAME_MAGIC + bytes([FRAME_VERSION, 0])
FRAME_BYTES_MAX_DEFAULT = 1 << 20
NESTING_MAX = 16
KIND_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
KIND_CHARS_MAX = 64
VERSION_MAX = 0xFFFF
SEQ_MAX = (1 << 63) - 1
INT_MIN = -(1 << 63)
INT_MAX = (1 << 64) - 1
# Known-good (kind, version) pairs, so the verifier matches the kind regex once per kind,
# not once per frame. Bounded: a peer sending endless new kinds cannot grow it.
_KINDS_CACHED_MAX = 1024

Payload = Mapping[str, Any]

_SCALAR_TYPES = frozenset({str, bytes, int, bool, type(None)})
_good_kinds: set[tuple[str, int]] = set()
# Key tuples of maps already found sorted and all str: events of one kind repeat their
# keys, and a set lookup is cheaper than sorting again. Bounded like _good_kinds; only
# tuples that passed the full check are ever added.
_KEY_TUPLES_CACHED_MAX = 4096
_good_keys: set[tuple[Any, ...]] = set()


@dataclass(frozen=True, slots=True)
class Event:
    feed: bytes
    seq: int
    hlc: Hlc
    kind: str
    version: int
    payload: Payload

    def __repr__(self) -> str:
        # Payloads can be large and hold ciphertext; keep reprs short and free of values.
        return (f"Event(feed={self.feed.hex()[:16]}…, seq={self.seq}, hlc={self.hlc}, "
                f"kind={self.kind!r}, version={self.version})")


@dataclass(frozen=True, slots=True)
class FrameHeader:
    feed: bytes
    seq: int
    hlc: Hlc


class CanonicalBody(bytes):
    """Body bytes made by :func:`encode_body`, canonical by construction.

    The log re-checks every body before signing it, except these: checking our own
    codec's output again would only double the cost of appending.
    """

    __slots__ = ()


class BodyError(EncodingError):
    """A body in a run of bodies is not canonical; ``index`` says which one."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


# ------------------------------------------------------------------------- encoding
def canonical(obj: Any, level: int = 1) -> Any:
    """Return ``obj`` with maps in canonical key order; reject what has no canonical form.

    ``level`` is the container nesting level of ``obj`` (the payload map is level 1).
    Work is per container (sorted, join and a type set run in C), so a flat payload
    costs one call. Integers beyond 64 bits are left to the packer, which refuses them.
    """
    kind = type(obj)
    if kind in _SCALAR_TYPES:
        return obj
    if kind is float:
        raise EncodingError("floats are not allowed in events; use an integer or a decimal string")
    is_map = kind is dict or isinstance(obj, Mapping)
    if not (is_map or kind is list or kind is tuple):
        raise EncodingError(f"type {kind.__name__} cannot be encoded in an event")
    if level > NESTING_MAX:
        raise EncodingError(f"payload nested deeper than {NESTING_MAX} levels")
    keys: list[Any] | None = None
    if is_map:
        keys = list(obj)
        try:
            "".join(keys)  # TypeError unless every key is a str
        except TypeError:
            bad = next(type(key).__name__ for key in keys if not isinstance(key, str))
            raise EncodingError(f"map key of type {bad}: only str keys allowed") from None
        keys.sort()
        values = [obj[key] for key in keys]
    else:
        values = list(obj)
    if not set(map(type, values)) <= _SCALAR_TYPES:
        scalar = _SCALAR_TYPES
        values = [value if type(value) in scalar else canonical(value, level + 1)
                  for value in values]
    return values if keys is None else dict(zip(keys, values, strict=True))


def encode_body(kind: str, version: int, payload: Payload) -> bytes:
    """The canonical body bytes of an event (the part after the fixed header)."""
    check_kind(kind, version)
    if not isinstance(payload, Mapping):
        raise EncodingError("event payload must be a map")
    try:
        packed: bytes = msgpack.packb([kind, version, canonical(payload)], use_bin_type=True)
    except OverflowError:
        raise EncodingError("integer out of the 64-bit range") from None
    except ValueError as exc:  # UnicodeEncodeError: a lone surrogate in a str
        raise EncodingError(f"event payload cannot be encoded: {type(exc).__name__}") from None
    return CanonicalBody(packed)


def check_kind(kind: str, version: int) -> None:
    if type(kind) is str and type(version) is int and (kind, version) in _good_kinds:
        return
    if type(kind) is not str or len(kind) > KIND_CHARS_MAX or not KIND_RE.match(kind):
        raise EncodingError(
            f"event kind {str(kind)[:KIND_CHARS_MAX]!r} is malformed; use dotted lower-case words "
            "like 'dump.started'"
        )
    if type(version) is not int or not 1 <= version <= VERSION_MAX:
        raise EncodingError(f"event schema version {version!r} must be an integer 1..{VERSION_MAX}")
    if len(_good_kinds) < _KINDS_CACHED_MAX:
        _good_kinds.add((kind, version))


def encode_header(feed: bytes, seq: int, hlc: Hlc) -> bytes:
    if len(feed) != FEED_ID_BYTES:
        raise EncodingError(f"feed id must be {FEED_ID_BYTES} bytes, got {len(feed)}")
    if not 0 <= seq <= SEQ_MAX:
        raise EncodingError(f"sequence number {seq} out of range")
    return HEADER.pack(FRAME_MAGIC, FRAME_VERSION, 0, feed, seq, hlc.physical_ms, hlc.logical)


def encode_frame(event: Event, frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT) -> bytes:
    frame = encode_header(event.feed, event.seq, event.hlc) + encode_body(
        event.kind, event.version, event.payload)
    if len(frame) > frame_bytes_max:
        raise EncodingError(f"event of {len(frame)} bytes exceeds the frame limit of {frame_bytes_max}")
    return frame


# ------------------------------------------------------------------------- decoding
def decode_header(frame: bytes) -> FrameHeader:
    """Parse and check the fixed header only."""
    if len(frame) < HEADER_BYTES + 1:
        raise EncodingError(f"frame of {len(frame)} bytes is shorter than its header")
    magic, version, flags, feed, seq, physical, logical = HEADER.unpack_from(frame)
    if magic != FRAME_MAGIC:
        raise EncodingError("frame does not start with the magic bytes 'HE'")
    if version != FRAME_VERSION:
        raise EncodingError(f"frame format version {version} is not supported (this build: 1)")
    if flags != 0:
        raise EncodingError(f"frame flags {flags:#x} are reserved and must be 0")
    if seq > SEQ_MAX or physical > (1 << 63) - 1:
        raise EncodingError("frame sequence or time out of range")
    return FrameHeader(feed, seq, Hlc(physical, logical))


def decode_frame(frame: bytes, frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT) -> Event:
    """Decode a frame, rejecting anything non-canonical or oversized."""
    if len(frame) > frame_bytes_max:
        raise EncodingError(f"frame of {len(frame)} bytes exceeds the limit of {frame_bytes_max}")
    header = decode_header(frame)
    kind, version, payload = decode_body(frame[HEADER_BYTES:], frame_bytes_max)
    return Event(header.feed, header.seq, header.hlc, kind, version, payload)


def decode_body(body: bytes, frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT) -> tuple[str, int, Any]:
    """Decode one body; raise ``EncodingError`` unless it is canonical and within limits."""
    if len(body) > frame_bytes_max:
        raise EncodingError(f"event body of {len(body)} bytes exceeds the limit of {frame_bytes_max}")
    obj = _unpack(body)
    _check_tree(obj)
    if msgpack.packb(obj, use_bin_type=True) != body:
        raise EncodingError(_NOT_CANONICAL.format(kind=obj[0]))
    kind, version, payload = obj
    return kind, version, payload


def check_bodies(frames: Sequence[bytes], start: int = HEADER_BYTES) -> None:
    """Check that ``frame[start:]`` of every frame is a canonical body (the verifier's hot path).

    Raises ``BodyError`` naming the index of the first bad one. Equivalent to calling
    :func:`decode_body` on each, with the per-body work kept to a few C calls.
    """
    bodies = [frame[start:] for frame in frames] if start else list(frames)
    unpackb = msgpack.unpackb
    objs: list[Any] = []  # len(objs) is the index of the body being checked
    try:
        for body in bodies:
            obj = unpackb(body, raw=False, strict_map_key=True, max_ext_len=0)
            # Fast path for a known kind; anything unusual takes the full check.
            if (type(obj) is list and len(obj) == 3 and type(obj[0]) is str
                    and type(obj[1]) is int and type(obj[2]) is dict
                    and (obj[0], obj[1]) in _good_kinds):
                _check_container(obj[2], 1)
            else:
                _check_tree(obj)
            objs.append(obj)
    except EncodingError as exc:
        raise BodyError(str(exc), len(objs)) from None
    except TypeError:  # sorted() on str and bin keys of one map
        raise BodyError("map keys must be str (msgpack str), not bin", len(objs)) from None
    except (ValueError, msgpack.UnpackException) as exc:
        raise BodyError(f"event body is not valid msgpack: {type(exc).__name__}", len(objs)) from None
    pack = msgpack.Packer(use_bin_type=True).pack
    if list(map(pack, objs)) != bodies:
        for index, (obj, body) in enumerate(zip(objs, bodies, strict=True)):
            if pack(obj) != body:
                raise BodyError(_NOT_CANONICAL.format(kind=obj[0]), index)


_NOT_CANONICAL = ("event body of kind {kind!r} is not in canonical form "
                  "(non-minimal integer or length, or a repeated map key)")


def _unpack(body: bytes) -> Any:
    try:
        # Length limits default to len(body), so nothing larger than the body is allocated;
        # max_ext_len=0 rejects every extension type, the built-in timestamp included, so
        # only str, bytes, int, bool, None, float, list and dict can come out.
        return msgpack.unpackb(body, raw=False, strict_map_key=True, max_ext_len=0)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise EncodingError(f"event body is not valid msgpack: {type(exc).__name__}") from None


def _check_tree(obj: Any) -> None:
    """Check the shape [kind, version, payload] and every container of the payload."""
    if type(obj) is not list or len(obj) != 3:
        raise EncodingError("event body must be the array [kind, version, payload]")
    kind, version, payload = obj
    if type(kind) is not str or type(payload) is not dict:
        raise EncodingError("event body must be [kind: str, version: int, payload: map]")
    check_kind(kind, version)
    _check_container(payload, 1)


def _check_container(obj: dict[Any, Any] | list[Any], level: int) -> None:
    # Work per container, not per element: sorted() and the type set run in C.
    if level > NESTING_MAX:
        raise EncodingError(f"payload nested deeper than {NESTING_MAX} levels")
    if type(obj) is dict:
        keys = tuple(obj)
        if keys not in _good_keys:
            # Keys from msgpack are str or bytes; sorted() raises TypeError on a mix, so
            # once they are sorted the first key's type is every key's type.
            if list(keys) != sorted(keys):
                raise EncodingError("map keys are not sorted by code point")
            if keys and type(keys[0]) is not str:
                raise EncodingError("map keys must be str (msgpack str), not bin")
            if len(_good_keys) < _KEY_TUPLES_CACHED_MAX:
                _good_keys.add(keys)
        values: Any = obj.values()
    else:
        values = obj
    types = set(map(type, values))
    if float in types:
        raise EncodingError("floats are not allowed in events")
    if dict in types or list in types:
        for value in values:
            if type(value) is dict or type(value) is list:
                _check_container(value, level + 1)
