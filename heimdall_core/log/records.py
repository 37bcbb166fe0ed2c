"""The record codec shared by segment files, head files and bundles (pure).

    offset  size  field
    0       4     payload length n, unsigned big-endian
    4       1     record type
    5       4     CRC-32 (zlib/IEEE) over bytes 0..5 and the payload
    9       n     payload

The CRC is for torn writes and bit rot, not for authenticity: frames are authenticated
by the Merkle root in a signed checkpoint. A record whose length runs past the end of
the data is *short* (a torn tail when it is at the end of a file). The CRC covers the
length and type bytes too, so a damaged header is a bad record, never a different one.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from heimdall_core.errors import IntegrityError

RECORD_HEADER = struct.Struct(">IB")
_RECORD_PREFIX = struct.Struct(">IBI")  # length, type, CRC
RECORD_HEADER_BYTES = 9
RECORD_PAYLOAD_BYTES_MAX = 32 << 20
READ_CHUNK_BYTES = 4 << 20

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
    record_type, payload = _decode_at(data, offset, payload_bytes_max, 0)
    return Record(record_type, offset, payload)


def _decode_at(data: bytes | memoryview, offset: int, payload_bytes_max: int,
               base: int) -> tuple[int, bytes]:
    """(type, payload) of the record at ``offset``; errors name ``base + offset``."""
    end = len(data)
    if offset + RECORD_HEADER_BYTES > end:
        raise ShortRecord("record header cut short", offset=base + offset)
    length, record_type, stored = _RECORD_PREFIX.unpack_from(data, offset)
    if length > payload_bytes_max:
        raise BadRecord(f"record length {length} exceeds the limit {payload_bytes_max}",
                        offset=base + offset)
    if record_type not in RECORD_TYPES:
        raise BadRecord(f"unknown record type {record_type:#x}", offset=base + offset)
    start = offset + RECORD_HEADER_BYTES
    if start + length > end:
        raise ShortRecord(f"record of {length} bytes cut short", offset=base + offset)
    payload = bytes(data[start:start + length])
    if zlib.crc32(payload, zlib.crc32(data[offset:offset + 5])) != stored:
        raise BadRecord("record checksum mismatch", offset=base + offset)
    return record_type, payload


def iter_records(read: Callable[[int], bytes], offset: int, payload_bytes_max: int,
                 ) -> Iterator[tuple[int, int, bytes]]:
    """Stream (type, offset, payload) from ``read`` (a file's read method) positioned at ``offset``.

    Memory stays within one read chunk plus one record. Errors carry absolute offsets:
    ``ShortRecord`` when the data ends inside a record, ``BadRecord`` for damage.
    """
    buffer = b""
    base = offset  # absolute offset of buffer[0]
    pos = 0
    eof = False
    unpack, crc32, types = _RECORD_PREFIX.unpack_from, zlib.crc32, RECORD_TYPES
    while True:
        # The hot path, inlined: one unpack, two CRC calls and a slice per record.
        avail = len(buffer)
        if pos + RECORD_HEADER_BYTES <= avail:
            length, record_type, stored = unpack(buffer, pos)
            end = pos + RECORD_HEADER_BYTES + length
            plausible = length <= payload_bytes_max and record_type in types
            if plausible and end <= avail:
                payload = buffer[pos + RECORD_HEADER_BYTES:end]
                if crc32(payload, crc32(buffer[pos:pos + 5])) != stored:
                    raise BadRecord("record checksum mismatch", offset=base + pos)
                yield record_type, base + pos, payload
                pos = end
                continue
            refill = plausible and not eof
        else:
            refill = not eof
        if refill:
            chunk = read(READ_CHUNK_BYTES)
            eof = not chunk
            base += pos
            buffer = buffer[pos:] + chunk
            pos = 0
            continue
        if pos == avail:
            return
        _decode_at(buffer, pos, payload_bytes_max, base)  # raises ShortRecord or BadRecord
        raise AssertionError("unreachable: a complete record was not decoded")
