"""Events and their canonical encoding (pure: no I/O).

An event is one fact a site records. On the wire and on disk it is a *frame*:

    offset  size  field
    0       2     magic b"HE"
    2       1     frame format version (1)
    3       1     flags (0; reserved, must be 0)
    4       32    feed id (the feed's Ed25519 public key)
    36      8     sequence number, unsigned big-endian, 0-based (= Merkle leaf index)
    44      8     HLC physical time, ms since the Unix epoch, unsigned big-endian
    52      4     HLC logical counter, unsigned big-endian
    56      n     body: canonical msgpack array [kind: str, version: int, payload: map]

The fixed header lets the verifier check feed and position with one ``struct`` call.
The body is canonical msgpack: maps have ``str`` keys, sorted by code point (the same
as UTF-8 byte order) and unique; integers use the shortest form; ``bytes`` are msgpack
bin, ``str`` are msgpack str; no floats (use integers or decimal strings), no extension
types; nesting and sizes are bounded. The same event always encodes to the same bytes,
and decoding rejects anything that would not re-encode to the very same bytes.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
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
FRAME_BYTES_MAX_DEFAULT = 1 << 20
NESTING_MAX = 16
KIND_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
KIND_CHARS_MAX = 64
SEQ_MAX = (1 << 63) - 1
INT_MIN = -(1 << 63)
INT_MAX = (1 << 64) - 1

Payload = Mapping[str, Any]


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


def canonical(obj: Any, depth: int = 0) -> Any:
    """Return ``obj`` with maps in canonical key order; reject what has no canonical form."""
    if depth > NESTING_MAX:
        raise EncodingError(f"payload nested deeper than {NESTING_MAX} levels")
    kind = type(obj)
    if kind is str or kind is bytes or kind is bool or obj is None:
        return obj
    if kind is int:
        if not INT_MIN <= obj <= INT_MAX:
            raise EncodingError("integer out of the 64-bit range")
        return obj
    if kind is dict or isinstance(obj, Mapping):
        for key in obj:
            if type(key) is not str:
                raise EncodingError(f"map key of type {type(key).__name__}: only str keys allowed")
        return {key: canonical(obj[key], depth + 1) for key in sorted(obj)}
    if kind is list or kind is tuple:
        return [canonical(item, depth + 1) for item in obj]
    if kind is float:
        raise EncodingError("floats are not allowed in events; use an integer or a decimal string")
    raise EncodingError(f"type {kind.__name__} cannot be encoded in an event")


def encode_body(kind: str, version: int, payload: Payload) -> bytes:
    """The canonical body bytes of an event (the part after the fixed header)."""
    check_kind(kind, version)
    if not isinstance(payload, Mapping):
        raise EncodingError("event payload must be a map")
    return msgpack.packb([kind, version, canonical(payload)], use_bin_type=True)


def check_kind(kind: str, version: int) -> None:
    if len(kind) > KIND_CHARS_MAX or not KIND_RE.match(kind):
        raise EncodingError(
            f"event kind {kind[:KIND_CHARS_MAX]!r} is malformed; use dotted lower-case words "
            "like 'dump.started'"
        )
    if type(version) is not int or not 1 <= version <= 0xFFFF:
        raise EncodingError(f"event schema version {version!r} must be an integer 1..65535")


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


def decode_header(frame: bytes) -> FrameHeader:
    """Parse and check the fixed header only (cheap; used on every verified frame)."""
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
    body = frame[HEADER_BYTES:]
    kind, version, payload = decode_body(body, frame_bytes_max)
    return Event(header.feed, header.seq, header.hlc, kind, version, payload)


def decode_body(body: bytes, frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT) -> tuple[str, int, Any]:
    try:
        obj = msgpack.unpackb(
            body, raw=False, strict_map_key=True, use_list=True,
            max_str_len=frame_bytes_max,
            max_bin_len=frame_bytes_max, max_array_len=frame_bytes_max,
            max_map_len=frame_bytes_max, max_ext_len=0, ext_hook=_reject_ext,
        )
    except EncodingError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise EncodingError(f"event body is not valid msgpack: {type(exc).__name__}") from None
    if not (isinstance(obj, list) and len(obj) == 3):
        raise EncodingError("event body must be the array [kind, version, payload]")
    kind, version, payload = obj
    if not isinstance(kind, str) or not isinstance(payload, dict):
        raise EncodingError("event body must be [kind: str, version: int, payload: map]")
    check_kind(kind, version)
    if encode_body(kind, version, payload) != body:
        raise EncodingError(f"event body of kind {kind!r} is not in canonical form")
    return kind, version, payload


def _reject_ext(code: int, data: bytes) -> Any:
    raise EncodingError(f"msgpack extension type {code} is not allowed in events")
