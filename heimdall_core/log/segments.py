"""The files of one feed directory, below the feed logic (I/O).

Segment files hold records (records.py): one segment header, then batches, each being
frame records followed by one checkpoint record. ``index`` has one fixed-size entry per
frame, ``checkpoints.idx`` one per checkpoint; both can be rebuilt from the segments.
The ``head`` file holds the durable signed head in two alternating slots, so a torn
write of one slot leaves the previous head readable. docs/formats.md has the bytes.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from heimdall_core.clock import Hlc
from heimdall_core.errors import EncodingError, IntegrityError
from heimdall_core.events import FRAME_PREFIX, HEADER_BYTES
from heimdall_core.log.checkpoint import Checkpoint
from heimdall_core.log.merkle import Frontier, leaf_hash
from heimdall_core.log.records import (
    RECORD_HEADER_BYTES,
    T_CHECKPOINT,
    T_FRAME,
    T_HEAD,
    T_SEGMENT_HEADER,
    BadRecord,
    ShortRecord,
    decode_record,
    encode_record,
    iter_records,
)
from heimdall_core.log.verify import FeedState, verify_note

log = logging.getLogger("heimdall.log")

SEGMENT_MAGIC = b"HMDSEG1\x00"
SEGMENT_HEADER = struct.Struct(">8s32sQ")  # magic, feed id, first sequence number
SEGMENT_HEADER_RECORD_BYTES = RECORD_HEADER_BYTES + SEGMENT_HEADER.size
INDEX_ENTRY = struct.Struct(">QQ32s")  # segment first seq, record offset, leaf hash
CHECKPOINT_ENTRY = struct.Struct(">QQQ")  # tree size, segment first seq, record offset
HEAD_SLOT_BYTES = 8192
HEAD_SLOTS = 2
# generation, HLC physical ms, HLC logical, note length; then the note, then the frontier.
HEAD_PAYLOAD = struct.Struct(">QQII")
NOTE_BYTES_MAX = 16 * 1024
_POSITION = struct.Struct(">QQI")  # seq, HLC physical, HLC logical at frame offset 36

INDEX_FILE = "index"
CHECKPOINT_INDEX_FILE = "checkpoints.idx"


def segment_name(first_seq: int) -> str:
    return f"seg-{first_seq:020d}.log"


def segment_first_seq(path: Path) -> int | None:
    name = path.name
    if name.startswith("seg-") and name.endswith(".log") and name[4:-4].isdigit():
        return int(name[4:-4])
    return None


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in directory.glob("seg-*.log"):
        first = segment_first_seq(path)
        if first is not None:
            found.append((first, path))
    return sorted(found)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def truncate(path: Path, size: int, *, fsync: bool = True) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, size)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def segment_header_record(feed: bytes, first_seq: int) -> bytes:
    return encode_record(T_SEGMENT_HEADER, SEGMENT_HEADER.pack(SEGMENT_MAGIC, feed, first_seq))


def check_segment_header(payload: bytes, feed: bytes, first_seq: int) -> str | None:
    """None if the header payload names this feed and first sequence, else what is wrong."""
    if len(payload) != SEGMENT_HEADER.size:
        return "segment header has the wrong size"
    magic, header_feed, first = SEGMENT_HEADER.unpack(payload)
    if magic != SEGMENT_MAGIC:
        return "segment header has the wrong magic bytes"
    if header_feed != feed or first != first_seq:
        return "segment header does not match its file name or feed"
    return None


# ----------------------------------------------------------------------- scanning
class MisplacedFrame(BadRecord):
    """An intact frame record at the wrong place: another feed's, or the wrong sequence."""


@dataclass(slots=True)
class Scan:
    """What one pass over a segment found, up to its first damaged record.

    ``frames[i]`` is frame ``first_seq + i``: (record offset, leaf hash, (physical, logical)).
    ``checkpoints`` are (tree size after the batch, record offset, record end, note).
    """

    path: Path
    first_seq: int
    length: int
    header_end: int = 0
    frames: list[tuple[int, bytes, tuple[int, int]]] = field(default_factory=list)
    checkpoints: list[tuple[int, int, int, bytes]] = field(default_factory=list)
    error: str | None = None
    error_offset: int = 0
    error_type: int | None = None  # the record type byte at the error, when readable
    error_seq: int | None = None  # set when the bad record is an intact, misplaced frame

    @property
    def end(self) -> int:
        """Where the good records end (the error offset, or the file length)."""
        return self.error_offset if self.error is not None else self.length

    def frames_before(self, offset: int) -> int:
        """How many scanned frames start before ``offset``."""
        low, high = 0, len(self.frames)
        while low < high:
            mid = (low + high) // 2
            if self.frames[mid][0] < offset:
                low = mid + 1
            else:
                high = mid
        return low


def scan_segment(path: Path, feed: bytes, first_seq: int, payload_bytes_max: int) -> Scan:
    """Read a segment record by record, checking CRCs and frame placement; never raises
    for damage: the scan stops at the first bad record and says where."""
    with open(path, "rb") as handle:
        length = os.fstat(handle.fileno()).st_size
        scan = Scan(path, first_seq, length)
        try:
            _scan_records(scan, handle.read, feed, payload_bytes_max)
        except (ShortRecord, BadRecord) as exc:
            scan.error, scan.error_offset = strip_position(exc), exc.offset or 0
            if isinstance(exc, MisplacedFrame):
                scan.error_seq = first_seq + len(scan.frames)
            handle.seek(scan.error_offset + 4)
            type_byte = handle.read(1)
            scan.error_type = type_byte[0] if type_byte else None
    return scan


def _scan_records(scan: Scan, read: Callable[[int], bytes], feed: bytes,
                  payload_bytes_max: int) -> None:
    records = iter_records(read, 0, payload_bytes_max)
    header = next(records, None)
    if header is None:
        raise ShortRecord("segment is empty", offset=0)
    record_type, _, payload = header
    problem = ("not a segment header" if record_type != T_SEGMENT_HEADER
               else check_segment_header(payload, feed, scan.first_seq))
    if problem is not None:
        raise BadRecord(problem, offset=0)
    scan.header_end = SEGMENT_HEADER_RECORD_BYTES
    prefix = FRAME_PREFIX + feed
    frames, checkpoints = scan.frames, scan.checkpoints
    seq = scan.first_seq
    for record_type, offset, payload in records:
        if record_type == T_FRAME:
            if len(payload) <= HEADER_BYTES or not payload.startswith(prefix):
                raise MisplacedFrame("frame of another feed, or malformed", offset=offset)
            frame_seq, physical, logical = _POSITION.unpack_from(payload, 36)
            if frame_seq != seq:
                raise MisplacedFrame(f"frame out of place: sequence {frame_seq} where {seq} belongs",
                                     offset=offset)
            frames.append((offset, leaf_hash(payload), (physical, logical)))
            seq += 1
        elif record_type == T_CHECKPOINT:
            end = offset + RECORD_HEADER_BYTES + len(payload)
            checkpoints.append((seq, offset, end, payload))
        else:
            raise BadRecord(f"unexpected record type {record_type:#x} in a segment", offset=offset)


def strip_position(exc: IntegrityError) -> str:
    """An IntegrityError's message without the '(feed=…, offset=…)' part errors.py appends."""
    text = str(exc)
    where = [f"{name}={value}" for name, value in (
        ("feed", exc.feed), ("segment", exc.segment), ("offset", exc.offset), ("seq", exc.seq))
        if value is not None]
    suffix = f" ({', '.join(where)})"
    return text[:-len(suffix)] if where and text.endswith(suffix) else text


def read_records(path: Path, offset: int, payload_bytes_max: int,
                 ) -> Iterator[tuple[int, int, bytes]]:
    """Stream (type, offset, payload) of a segment from ``offset`` (raises on damage)."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        yield from iter_records(handle.read, offset, payload_bytes_max)


def read_record_at(path: Path, offset: int, payload_bytes_max: int) -> tuple[int, bytes]:
    """The one record at ``offset`` of a file: (type, payload)."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        head = handle.read(RECORD_HEADER_BYTES)
        length = int.from_bytes(head[:4], "big") if len(head) == RECORD_HEADER_BYTES else 0
        if length > payload_bytes_max:
            raise BadRecord(f"record length {length} exceeds the limit {payload_bytes_max}",
                            offset=offset)
        data = head + handle.read(length)
    record = decode_record(data, 0, payload_bytes_max)
    return record.type, record.payload


# ----------------------------------------------------------------------- fixed-size indexes
class EntryFile:
    """A file of fixed-size big-endian entries (``index``, ``checkpoints.idx``)."""

    def __init__(self, path: Path, entry: struct.Struct) -> None:
        self.path = path
        self.entry = entry

    def count(self) -> int:
        try:
            return self.path.stat().st_size // self.entry.size
        except FileNotFoundError:
            return 0

    def read(self, start: int, stop: int) -> bytes:
        """Raw entries ``start..stop-1`` (shorter if the file is)."""
        if stop <= start:
            return b""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(start * self.entry.size)
                return handle.read((stop - start) * self.entry.size)
        except FileNotFoundError:
            return b""

    def get(self, index: int) -> tuple[int, ...] | None:
        raw = self.read(index, index + 1)
        return self.entry.unpack(raw) if len(raw) == self.entry.size else None

    def bisect_right(self, field_index: int, value: int) -> int:
        """Entries whose field ``field_index`` is <= value (the field must be sorted)."""
        low, high = 0, self.count()
        while low < high:
            mid = (low + high) // 2
            entry = self.get(mid)
            if entry is None:
                return mid
            if entry[field_index] <= value:
                low = mid + 1
            else:
                high = mid
        return low


# ----------------------------------------------------------------------- head file
@dataclass(frozen=True, slots=True)
class Head:
    generation: int
    note: bytes
    checkpoint: Checkpoint
    frontier: Frontier
    last_hlc: Hlc

    @property
    def size(self) -> int:
        return self.checkpoint.size


_EMPTY_FRONTIER = Frontier().to_bytes()


class HeadFile:
    """The durable signed head of a feed: two slots, the higher valid generation wins."""

    def __init__(self, path: Path, feed: bytes) -> None:
        self.path = path
        self.feed = feed
        self._fd: int | None = None

    def read(self, *, concurrent: bool = False) -> Head | None:
        """The newest readable head. ``concurrent``: a writer may be writing a slot right now
        (a reader in another process), so a torn slot is expected and not worth a warning."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        best: Head | None = None
        for slot in range(HEAD_SLOTS):
            chunk = data[slot * HEAD_SLOT_BYTES:(slot + 1) * HEAD_SLOT_BYTES]
            head = self._parse_slot(chunk, slot, concurrent)
            if head is not None and (best is None or head.generation > best.generation):
                best = head
        return best

    def _parse_slot(self, chunk: bytes, slot: int, concurrent: bool) -> Head | None:
        if not chunk.strip(b"\0"):
            return None  # never written
        try:
            record = decode_record(chunk, 0, HEAD_SLOT_BYTES - RECORD_HEADER_BYTES)
        except (ShortRecord, BadRecord) as exc:
            # A torn slot write: the other slot holds the previous head.
            log.log(logging.DEBUG if concurrent else logging.WARNING,
                    "head file %s: slot %d unreadable (%s); using the other slot",
                    self.path, slot, strip_position(exc))
            return None
        if record.type != T_HEAD or len(record.payload) < HEAD_PAYLOAD.size:
            raise IntegrityError("head file slot is not a head record", feed=self.feed.hex(),
                                 segment=str(self.path), offset=slot * HEAD_SLOT_BYTES)
        generation, physical, logical, note_len = HEAD_PAYLOAD.unpack_from(record.payload)
        note = record.payload[HEAD_PAYLOAD.size:HEAD_PAYLOAD.size + note_len]
        if not note and record.payload[HEAD_PAYLOAD.size:] == _EMPTY_FRONTIER:
            # Written by builds before 2026-11 when a feed was killed inside its first batch:
            # a head of nothing, without a checkpoint. It says no more than no head.
            return None
        try:
            frontier = Frontier.from_bytes(record.payload[HEAD_PAYLOAD.size + note_len:])
            hlc = Hlc(physical, logical)
        except (EncodingError, ValueError) as exc:
            raise IntegrityError(f"head file slot is damaged: {exc}", feed=self.feed.hex(),
                                 segment=str(self.path), offset=slot * HEAD_SLOT_BYTES) from None
        checkpoint = verify_note(FeedState(self.feed), note)
        if checkpoint.size != frontier.size or checkpoint.root != frontier.root():
            raise IntegrityError("head file: frontier does not match its signed checkpoint",
                                 feed=self.feed.hex(), segment=str(self.path),
                                 offset=slot * HEAD_SLOT_BYTES)
        return Head(generation, note, checkpoint, frontier, hlc)

    def write(self, generation: int, note: bytes, frontier: Frontier, last_hlc: Hlc,
              *, fsync: bool) -> None:
        payload = (HEAD_PAYLOAD.pack(generation, last_hlc.physical_ms, last_hlc.logical, len(note))
                   + note + frontier.to_bytes())
        record = encode_record(T_HEAD, payload)
        if len(record) > HEAD_SLOT_BYTES:
            raise EncodingError(f"signed head of {len(record)} bytes does not fit a head slot")
        if self._fd is None:
            created = not self.path.exists()
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            if created and fsync:
                fsync_dir(self.path.parent)
        slot = generation % HEAD_SLOTS
        os.pwrite(self._fd, record.ljust(HEAD_SLOT_BYTES, b"\0"), slot * HEAD_SLOT_BYTES)
        if fsync:
            os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
