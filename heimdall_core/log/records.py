"""The record codec shared by segment files, head files and bundles (pure).

    offset  size  field
    0       4     payload length n, unsigned big-endian
    4       1     record type
    5       4     CRC-32 (zlib/IEEE) over bytes 0..5 and the payload
    9       n     payload

The CRC is for torn writes and bit rot, not for authenticity: frames are authenticated
by the Merkle root in a signed checkpoint. A record whose length runs past the end of
the data is *short* (a torn tail when it is at the end of a file).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from heimdall_core.errors import IntegrityError

RECORD_HEADER = struct.Struct(">IB")
RECORD_HEADER_BYTES = 9
RECORD_PAYLOAD_BYTES_MAX = 32 << 20

T_SEGMENT_HEADER = 0x01
T_FRAME = 0x02
T_CHECKPOINT = 0x03
T_HEAD = 0x04
T_BUNDLE_HEADER = 0x10
T_BUNDLE_FEED = 0x11
T_BUNDLE_END = 0x1F
RECORD_TYPES = frozenset(
    {T_SEGMENT_HEADER, T_FRAME, T_CHECKPOINT, T_HEAD, T_BUNDLE_HEADER, T_BUNDLE_FEED, T_BUNDLE_END})


def encode_record(record_type: int, payload: bytes) -> bytes:
    if len(payload) > RECORD_PAYLOAD_BYTES_MAX:
        raise ValueError(f"record payload of {len(payload)} bytes exceeds {RECORD_PAYLOAD_BYTES_MAX}")
    head = RECORD_HEADER.pack(len(payload), record_type)
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + crc.to_bytes(4, "big") + payload


@dataclass(frozen=True, slots=True)
class Record:
    type: int
    offset: int  # where the record starts in its container
    payload: bytes

    @property
    def end(self) -> int:
        return self.offset + RECORD_HEADER_BYTES + len(self.payload)


class ShortRecord(IntegrityError):
    """The data ends inside a record (a torn write when it is the end of a file)."""


class BadRecord(IntegrityError):
    """A complete record whose CRC, type or length is wrong."""


def decode_record(data: bytes | memoryview, offset: int, payload_bytes_max: int) -> Record:
    """Decode the record at ``offset``; raise ShortRecord or BadRecord with the offset."""
    end = len(data)
    if offset + RECORD_HEADER_BYTES > end:
        raise ShortRecord("record header cut short", offset=offset)
    length, record_type = RECORD_HEADER.unpack_from(data, offset)
    if length > payload_bytes_max:
        raise BadRecord(f"record length {length} exceeds the limit {payload_bytes_max}", offset=offset)
    if record_type not in RECORD_TYPES:
        raise BadRecord(f"unknown record type {record_type:#x}", offset=offset)
    start = offset + RECORD_HEADER_BYTES
    if start + length > end:
        raise ShortRecord(f"record of {length} bytes cut short", offset=offset)
    payload = bytes(data[start:start + length])
    stored = int.from_bytes(data[offset + 5:offset + 9], "big")
    crc = zlib.crc32(payload, zlib.crc32(bytes(data[offset:offset + 5])))
    if crc != stored:
        raise BadRecord("record checksum mismatch", offset=offset)
    return Record(record_type, offset, payload)
