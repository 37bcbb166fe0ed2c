"""One feed on disk: segment files, the sequence index, and the durable signed head (I/O).

Layout of a feed directory (see docs/formats.md for bytes):

    seg-<first seq, 20 digits>.log   records: segment header, frames, checkpoints
    index                            48 bytes per frame: segment first seq, offset, leaf hash
    checkpoints.idx                  24 bytes per checkpoint: size, segment first seq, offset
    head                             the last signed head, two alternating slots
    STOPPED                          present when the feed is stopped (integrity failure, fork)
    lock                             flock'ed by the one process that writes the feed

Write path of one batch: frames and their signed checkpoint are written to the current
segment with one write and one fdatasync; then the head slot is written and fdatasync'd;
then the index files are appended (not synced: they are rebuilt from segments when they
disagree). A batch never spans two segments, so a segment holds at most
``segment_bytes_max`` plus one batch.

Recovery at open scans the last segment: a torn tail after the last valid signed
checkpoint is cut off; corruption inside acknowledged data is never repaired, it stops the
feed with its position; a log shorter than its own durable signed head is refused
(``StaleLogError``: a restored backup or a copied key).
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from heimdall_core.clock import ZERO, Clock, Hlc, HybridClock
from heimdall_core.errors import (
    EncodingError,
    FeedStopped,
    HeimdallError,
    IntegrityError,
    StaleLogError,
)
from heimdall_core.events import (
    FEED_ID_BYTES,
    FRAME_BYTES_MAX_DEFAULT,
    decode_header,
    encode_header,
)
from heimdall_core.keys import SigningKey
from heimdall_core.log.checkpoint import Checkpoint, NoteSigner
from heimdall_core.log.merkle import Frontier, leaf_hash, root_from_leaf_hashes
from heimdall_core.log.records import (
    RECORD_HEADER_BYTES,
    T_CHECKPOINT,
    T_FRAME,
    T_HEAD,
    T_SEGMENT_HEADER,
    BadRecord,
    Record,
    ShortRecord,
    decode_record,
    encode_record,
)
from heimdall_core.log.verify import FeedState, VerifiedBatch, origin_for, verify_batch, verify_note

SEGMENT_MAGIC = b"HMDSEG1\x00"
SEGMENT_HEADER = struct.Struct(">8s32sQ")
INDEX_ENTRY = struct.Struct(">QQ32s")
CHECKPOINT_ENTRY = struct.Struct(">QQQ")
HEAD_SLOT_BYTES = 8192
HEAD_PAYLOAD = struct.Struct(">QI")  # generation, note length; then note, then frontier bytes
NOTE_BYTES_MAX = 16 * 1024
SEGMENT_BYTES_MAX_DEFAULT = 64 << 20


@dataclass(frozen=True, slots=True)
class LogOptions:
    fsync: bool = True
    segment_bytes_max: int = SEGMENT_BYTES_MAX_DEFAULT
    frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT
    batch_events_max: int = 10_000


@dataclass(frozen=True, slots=True)
class AppendResult:
    first_seq: int
    count: int
    checkpoint: Checkpoint


@dataclass(slots=True)
class _Scan:
    """What recovery found in the last segment."""

    path: Path
    first_seq: int
    data: bytes
    header_end: int = 0
    # (seq, offset, leaf hash, hlc) per frame; (frames before, offset, end, note) per checkpoint
    frames: list[tuple[int, int, bytes, Hlc]] = field(default_factory=list)
    checkpoints: list[tuple[int, int, int, bytes]] = field(default_factory=list)
    error: str | None = None
    error_offset: int = 0
    error_short: bool = False


@dataclass(frozen=True, slots=True)
class Head:
    generation: int
    note: bytes
    checkpoint: Checkpoint
    frontier: Frontier


def segment_name(first_seq: int) -> str:
    return f"seg-{first_seq:020d}.log"


def _segment_first_seq(path: Path) -> int | None:
    name = path.name
    if name.startswith("seg-") and name.endswith(".log") and name[4:-4].isdigit():
        return int(name[4:-4])
    return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class FeedLog:
    """A feed's files. Reading is safe from any process; writing needs ``lock_for_writing``."""

    def __init__(self, directory: Path, feed: bytes, *, head_path: Path | None = None,
                 options: LogOptions | None = None) -> None:
        if len(feed) != FEED_ID_BYTES:
            raise ValueError("feed id must be 32 bytes")
        self.directory = directory
        self.feed = feed
        self.feed_hex = feed.hex()
        self.head_path = head_path or directory / "head"
        self.options = options or LogOptions()
        self.state = FeedState(feed)
        self._lock_fd: int | None = None
        self._seg_fd: int | None = None
        self._seg_first = 0
        self._seg_size = 0
        self._index_fd: int | None = None
        self._cp_index_fd: int | None = None
        self._head_generation = 0
        self._signer: NoteSigner | None = None
        self._clock: HybridClock | None = None

    # ----------------------------------------------------------------- opening
    @classmethod
    def open_for_writing(cls, directory: Path, feed: bytes, *, head_path: Path | None = None,
                         options: LogOptions | None = None, key: SigningKey | None = None,
                         clock: Clock | None = None) -> FeedLog:
        """Open, lock and recover the feed; with ``key`` it can append its own events."""
        log = cls(directory, feed, head_path=head_path, options=options)
        directory.mkdir(parents=True, exist_ok=True)
        log._lock()
        try:
            log._check_not_stopped()
            log._recover()
            if key is not None:
                if key.public != feed:
                    raise HeimdallError(f"key {key.public.hex()} does not sign feed {log.feed_hex}")
                log._signer = NoteSigner(origin_for(feed), key.private)
                log._clock = HybridClock(clock, log.state.last_hlc)
        except BaseException:
            log.close()
            raise
        return log

    @classmethod
    def open_for_reading(cls, directory: Path, feed: bytes, *, head_path: Path | None = None,
                         options: LogOptions | None = None) -> FeedLog:
        """A read-only view up to the durable signed head (safe while another process writes)."""
        log = cls(directory, feed, head_path=head_path, options=options)
        head = log._read_head()
        if head is not None:
            log.state = FeedState(feed, head.checkpoint.size, head.frontier, ZERO, head.note)
        return log

    def _lock(self) -> None:
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise HeimdallError(
                f"feed {self.feed_hex} is being written by another process "
                f"(lock {self.directory / 'lock'}); stop it first") from None
        self._lock_fd = fd

    def close(self) -> None:
        for name in ("_seg_fd", "_index_fd", "_cp_index_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)

    def __enter__(self) -> FeedLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- stopping
    @property
    def stopped_path(self) -> Path:
        return self.directory / "STOPPED"

    def stopped_reason(self) -> str | None:
        try:
            return str(json.loads(self.stopped_path.read_text())["reason"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError):
            return "stopped (reason file unreadable)"

    def stop(self, reason: str) -> None:
        """Stop the feed for good: nothing more is appended or accepted until an operator acts."""
        record = {"feed": self.feed_hex, "reason": reason, "at_ms": time.time_ns() // 1_000_000}
        tmp = self.stopped_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, self.stopped_path)
        _fsync_dir(self.directory)

    def _check_not_stopped(self) -> None:
        reason = self.stopped_reason()
        if reason is not None:
            raise FeedStopped(f"feed {self.feed_hex} is stopped: {reason} "
                              f"(see {self.stopped_path})")

    # ----------------------------------------------------------------- head file
    def _read_head(self) -> Head | None:
        try:
            data = self.head_path.read_bytes()
        except FileNotFoundError:
            return None
        best: Head | None = None
        for slot in range(2):
            chunk = data[slot * HEAD_SLOT_BYTES:(slot + 1) * HEAD_SLOT_BYTES]
            head = self._parse_head_slot(chunk)
            if head is not None and (best is None or head.generation > best.generation):
                best = head
        return best

    def _parse_head_slot(self, chunk: bytes) -> Head | None:
        try:
            record = decode_record(chunk, 0, HEAD_SLOT_BYTES)
        except (ShortRecord, BadRecord):
            return None  # a torn slot: the other one holds the previous head
        if record.type != T_HEAD or len(record.payload) < HEAD_PAYLOAD.size:
            return None
        generation, note_len = HEAD_PAYLOAD.unpack_from(record.payload)
        note = record.payload[HEAD_PAYLOAD.size:HEAD_PAYLOAD.size + note_len]
        frontier = Frontier.from_bytes(record.payload[HEAD_PAYLOAD.size + note_len:])
        checkpoint = verify_note(FeedState(self.feed), note)
        if checkpoint.size != frontier.size or checkpoint.root != frontier.root():
            raise IntegrityError("head file: frontier does not match its signed checkpoint",
                                 feed=self.feed_hex, segment=str(self.head_path))
        return Head(generation, note, checkpoint, frontier)

    def _write_head(self, note: bytes, frontier: Frontier) -> None:
        self._head_generation += 1
        payload = HEAD_PAYLOAD.pack(self._head_generation, len(note)) + note + frontier.to_bytes()
        record = encode_record(T_HEAD, payload)
        if len(record) > HEAD_SLOT_BYTES:
            raise HeimdallError(f"signed head of {len(record)} bytes does not fit a head slot")
        slot = self._head_generation % 2
        fd = os.open(self.head_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, record.ljust(HEAD_SLOT_BYTES, b"\0"), slot * HEAD_SLOT_BYTES)
            if self.options.fsync:
                os.fdatasync(fd)
        finally:
            os.close(fd)

    # ----------------------------------------------------------------- recovery
    def segments(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.directory.glob("seg-*.log"):
            first = _segment_first_seq(path)
            if first is not None:
                found.append((first, path))
        return sorted(found)

    def _recover(self) -> None:
        head = self._read_head()
        if head is not None:
            self._head_generation = head.generation
        head_size = head.checkpoint.size if head else 0
        segments = self.segments()
        if not segments:
            if head_size > 0:
                raise StaleLogError(
                    f"feed {self.feed_hex}: no segment files, but its last signed head covers "
                    f"{head_size} events; refusing to write (restored backup or copied key?)")
            self._open_index_files(0, 0)
            return
        last_first, last_path = segments[-1]
        scan = self._scan_segment(last_path, last_first)
        self._settle(scan, head, last_first, last_path)

    def _scan_segment(self, path: Path, first_seq: int) -> _Scan:
        data = path.read_bytes()
        scan = _Scan(path, first_seq, data)
        offset = 0
        try:
            header = decode_record(data, 0, 1024)
            self._check_segment_header(header.payload, path, first_seq)
            offset = header.end
            scan.header_end = offset
            seq = first_seq
            while offset < len(data):
                record = decode_record(data, offset, self.options.frame_bytes_max + NOTE_BYTES_MAX)
                if record.type == T_FRAME:
                    frame_header = decode_header(record.payload)
                    if frame_header.feed != self.feed or frame_header.seq != seq:
                        raise BadRecord("frame of another feed or out of sequence", offset=offset)
                    scan.frames.append((seq, offset, leaf_hash(record.payload), frame_header.hlc))
                    seq += 1
                elif record.type == T_CHECKPOINT:
                    scan.checkpoints.append((seq, offset, record.end, record.payload))
                else:
                    raise BadRecord(f"unexpected record type {record.type:#x}", offset=offset)
                offset = record.end
        except ShortRecord:
            scan.error, scan.error_offset, scan.error_short = "torn record", offset, True
        except (BadRecord, EncodingError) as exc:
            scan.error, scan.error_offset = str(exc), offset
        return scan

    def _check_segment_header(self, payload: bytes, path: Path, first_seq: int) -> None:
        if len(payload) != SEGMENT_HEADER.size:
            raise BadRecord("segment header has the wrong size", offset=0)
        magic, feed, first = SEGMENT_HEADER.unpack(payload)
        if magic != SEGMENT_MAGIC or feed != self.feed or first != first_seq:
            raise IntegrityError("segment header does not match its file name or feed",
                                 feed=self.feed_hex, segment=path.name, offset=0)

    def _settle(self, scan: _Scan, head: Head | None, last_first: int, last_path: Path) -> None:
        head_size = head.checkpoint.size if head else 0
        good = self._best_checkpoint(scan, head)
        if good is None:
            self._no_checkpoint_in_last_segment(scan, head, last_first, last_path)
            return
        size, cut, note, frontier = good
        if scan.error is not None and not scan.error_short and scan.error_offset < cut:
            self._corrupt(scan, f"corrupt record: {scan.error}")
        if size < head_size:
            self._fail_behind(scan, size, head_size)
        if cut < len(scan.data):
            self._truncate(last_path, cut)
        if head is None or head.note != note:
            self._write_head(note, frontier)
        self._sync_indexes(scan, size)
        last_hlc = next((hlc for seq, _, _, hlc in reversed(scan.frames) if seq < size), None)
        if last_hlc is None:
            last_hlc = self._hlc_of(size - 1) if size else ZERO
        self.state = FeedState(self.feed, size, frontier, last_hlc, note)
        self._open_segment_for_append(last_first, last_path, cut)

    def _best_checkpoint(self, scan: _Scan, head: Head | None
                         ) -> tuple[int, int, bytes, Frontier] | None:
        """The last checkpoint of the scan that verifies and is not behind the head."""
        head_size = head.checkpoint.size if head else 0
        for seq_after, offset, end, note in reversed(scan.checkpoints):
            if scan.error is not None and offset >= scan.error_offset:
                continue
            if seq_after < head_size:
                self._fail_behind(scan, seq_after, head_size)
            frontier = self._frontier_for(scan, head, seq_after)
            if frontier is None:
                continue
            try:
                checkpoint = verify_note(FeedState(self.feed, seq_after), note)
            except IntegrityError:
                continue
            if checkpoint.size == seq_after and checkpoint.root == frontier.root():
                return seq_after, end, note, frontier
            if offset < (scan.error_offset if scan.error is not None else len(scan.data)):
                self._corrupt(scan, "a stored checkpoint does not match the frames before it",
                              offset=offset, seq=seq_after)
        return None

    def _frontier_for(self, scan: _Scan, head: Head | None, size: int) -> Frontier | None:
        if head is not None and head.checkpoint.size <= size:
            frontier = head.frontier.copy()
            start = head.checkpoint.size
        else:
            start = scan.first_seq
            frontier = self._frontier_from_index(start)
        needed = [h for seq, _, h, _ in scan.frames if start <= seq < size]
        if len(needed) != size - start:
            return None
        frontier.extend(needed)
        return frontier

    def _frontier_from_index(self, size: int) -> Frontier:
        return Frontier.from_leaf_hashes(self.leaf_hashes(0, size))

    def _no_checkpoint_in_last_segment(self, scan: _Scan, head: Head | None,
                                       last_first: int, last_path: Path) -> None:
        head_size = head.checkpoint.size if head else 0
        if scan.header_end == 0:
            # The segment header itself is torn: the segment was being created.
            if last_first < head_size:
                self._corrupt(scan, "segment header is unreadable")
            last_path.unlink()
            _fsync_dir(self.directory)
            self._recover()
            return
        if last_first < head_size:
            if scan.error is not None and not scan.error_short:
                self._corrupt(scan, f"corrupt record: {scan.error}")
            self._fail_behind(scan, last_first + len(scan.frames), head_size)
        # Only unacknowledged frames in this segment: cut back to its header.
        if head is not None and head.checkpoint.size == last_first:
            frontier, note = head.frontier, head.note
        elif last_first == 0:
            frontier, note = Frontier(), b""
        else:
            raise IntegrityError("no signed checkpoint covers the start of the last segment",
                                 feed=self.feed_hex, segment=last_path.name, seq=last_first)
        self._truncate(last_path, scan.header_end)
        self._sync_indexes(scan, last_first)
        self.state = FeedState(self.feed, last_first, frontier,
                               self._hlc_of(last_first - 1) if last_first else ZERO, note or None)
        self._open_segment_for_append(last_first, last_path, scan.header_end)

    def _fail_behind(self, scan: _Scan, size: int, head_size: int) -> NoReturn:
        if scan.error is not None and not scan.error_short:
            self._corrupt(scan, f"corrupt record: {scan.error}")
        raise StaleLogError(
            f"feed {self.feed_hex}: the log holds {size} events but its last signed head covers "
            f"{head_size}; refusing to write (restored backup or copied key?). "
            "Fetch the missing events from a peer or an export bundle.")

    def _corrupt(self, scan: _Scan, reason: str, *, offset: int | None = None,
                 seq: int | None = None) -> NoReturn:
        at = scan.error_offset if offset is None else offset
        if seq is None:
            seq = scan.first_seq + sum(1 for _, off, _, _ in scan.frames if off < at)
        message = (f"{reason} in acknowledged data: feed {self.feed_hex}, segment "
                   f"{scan.path.name}, offset {at}, sequence {seq}; not repaired")
        self.stop(message)
        raise IntegrityError(reason + " in acknowledged data; feed stopped, not repaired",
                             feed=self.feed_hex, segment=scan.path.name, offset=at, seq=seq)

    def _truncate(self, path: Path, size: int) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    # ----------------------------------------------------------------- indexes
    def _sync_indexes(self, scan: _Scan, size: int) -> None:
        """Make index files agree with the segments up to ``size``; rebuild if they cannot."""
        index_path = self.directory / "index"
        count = index_path.stat().st_size // INDEX_ENTRY.size if index_path.exists() else 0
        if count < scan.first_seq or not self._index_prefix_ok(scan.first_seq):
            self.rebuild_indexes(size)
            return
        entries = [INDEX_ENTRY.pack(scan.first_seq, off, h)
                   for seq, off, h, _ in scan.frames if seq < size]
        self._rewrite_tail(index_path, scan.first_seq * INDEX_ENTRY.size, b"".join(entries))
        cp_path = self.directory / "checkpoints.idx"
        kept = self._checkpoint_entries_before(scan.first_seq)
        tail = [CHECKPOINT_ENTRY.pack(seq_after, scan.first_seq, off)
                for seq_after, off, _, _ in scan.checkpoints if seq_after <= size and
                (seq_after > scan.first_seq or off > 0)]
        self._rewrite_tail(cp_path, kept * CHECKPOINT_ENTRY.size, b"".join(tail))
        self._open_index_files(size, kept + len(tail))

    def _index_prefix_ok(self, first_seq: int) -> bool:
        if first_seq == 0:
            return True
        entry = self._index_entry(first_seq - 1)
        return entry is not None and entry[0] <= first_seq - 1

    def _checkpoint_entries_before(self, first_seq: int) -> int:
        path = self.directory / "checkpoints.idx"
        if not path.exists():
            return 0
        data = path.read_bytes()
        count = 0
        for index in range(len(data) // CHECKPOINT_ENTRY.size):
            _, segment, _ = CHECKPOINT_ENTRY.unpack_from(data, index * CHECKPOINT_ENTRY.size)
            if segment >= first_seq:
                break
            count += 1
        return count

    @staticmethod
    def _rewrite_tail(path: Path, keep_bytes: int, tail: bytes) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, keep_bytes)
            os.pwrite(fd, tail, keep_bytes)
        finally:
            os.close(fd)

    def _open_index_files(self, size: int, checkpoints: int) -> None:
        for name, attr in (("index", "_index_fd"), ("checkpoints.idx", "_cp_index_fd")):
            fd = os.open(self.directory / name, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            setattr(self, attr, fd)
        assert self._index_fd is not None
        if os.fstat(self._index_fd).st_size != size * INDEX_ENTRY.size:
            raise IntegrityError("index length disagrees with the recovered log",
                                 feed=self.feed_hex, seq=size)

    def rebuild_indexes(self, size: int | None = None) -> int:
        """Rebuild ``index`` and ``checkpoints.idx`` from the segment files; return frames seen."""
        index_parts: list[bytes] = []
        cp_parts: list[bytes] = []
        seq = 0
        for first, path in self.segments():
            if first != seq:
                raise IntegrityError(f"segment starts at {first}, expected {seq}",
                                     feed=self.feed_hex, segment=path.name, seq=seq)
            for record, frame_seq in self._records_in(path, first, 0, first):
                if size is not None and frame_seq >= size and record.type == T_FRAME:
                    break
                if record.type == T_FRAME:
                    index_parts.append(INDEX_ENTRY.pack(first, record.offset,
                                                        leaf_hash(record.payload)))
                    seq += 1
                elif record.type == T_CHECKPOINT and (size is None or frame_seq <= size):
                    cp_parts.append(CHECKPOINT_ENTRY.pack(frame_seq, first, record.offset))
        for name, parts in (("index", index_parts), ("checkpoints.idx", cp_parts)):
            tmp = self.directory / (name + ".tmp")
            tmp.write_bytes(b"".join(parts))
            os.replace(tmp, self.directory / name)
        for attr in ("_index_fd", "_cp_index_fd"):
            fd = getattr(self, attr)
            if fd is not None:
                os.close(fd)
                setattr(self, attr, None)
        self._open_index_files(seq, len(cp_parts))
        return seq

    def _index_entry(self, seq: int) -> tuple[int, int, bytes] | None:
        try:
            with open(self.directory / "index", "rb") as handle:
                handle.seek(seq * INDEX_ENTRY.size)
                raw = handle.read(INDEX_ENTRY.size)
        except FileNotFoundError:
            return None
        if len(raw) != INDEX_ENTRY.size:
            return None
        first, offset, digest = INDEX_ENTRY.unpack(raw)
        return first, offset, digest

    def leaf_hashes(self, start: int, stop: int) -> list[bytes]:
        """Leaf hashes of frames ``start..stop-1`` from the index."""
        if stop <= start:
            return []
        with open(self.directory / "index", "rb") as handle:
            handle.seek(start * INDEX_ENTRY.size)
            raw = handle.read((stop - start) * INDEX_ENTRY.size)
        if len(raw) != (stop - start) * INDEX_ENTRY.size:
            raise IntegrityError("index is shorter than the log; run 'heimdall log reindex'",
                                 feed=self.feed_hex, seq=start + len(raw) // INDEX_ENTRY.size)
        return [raw[i + 16:i + 48] for i in range(0, len(raw), INDEX_ENTRY.size)]

    def root_at(self, size: int) -> bytes:
        if size == self.state.size:
            return self.state.frontier.root()
        return root_from_leaf_hashes(self.leaf_hashes(0, size))

    def _hlc_of(self, seq: int) -> Hlc:
        for _, frame in self.read_frames(seq, seq + 1):
            return decode_header(frame).hlc
        raise IntegrityError("frame missing", feed=self.feed_hex, seq=seq)

    # ----------------------------------------------------------------- appending
    def _open_segment_for_append(self, first: int, path: Path, size: int) -> None:
        self._seg_fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._seg_first = first
        self._seg_size = size

    def _roll_segment(self) -> None:
        if self._seg_fd is not None:
            os.close(self._seg_fd)
        first = self.state.size
        path = self.directory / segment_name(first)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        header = encode_record(T_SEGMENT_HEADER, SEGMENT_HEADER.pack(SEGMENT_MAGIC, self.feed, first))
        _write_all(fd, header)
        if self.options.fsync:
            os.fdatasync(fd)
            _fsync_dir(self.directory)
        self._seg_fd, self._seg_first, self._seg_size = fd, first, len(header)

    def append_bodies(self, bodies: Sequence[bytes]) -> AppendResult:
        """Append events of this site's own feed (bodies from ``events.encode_body``).

        Returns after the frames and the signed checkpoint are durable.
        """
        if self._signer is None or self._clock is None:
            raise HeimdallError(f"feed {self.feed_hex} is not this site's to write")
        if not bodies:
            raise ValueError("empty batch")
        if len(bodies) > self.options.batch_events_max:
            raise ValueError(f"batch of {len(bodies)} exceeds {self.options.batch_events_max}")
        first = self.state.size
        hlcs = self._clock.tick_many(len(bodies))
        feed, limit = self.feed, self.options.frame_bytes_max
        frames = []
        for offset, (body, hlc) in enumerate(zip(bodies, hlcs, strict=True)):
            frame = encode_header(feed, first + offset, hlc) + body
            if len(frame) > limit:
                raise EncodingError(f"event of {len(frame)} bytes exceeds the frame limit {limit}")
            frames.append(frame)
        hashes = [leaf_hash(frame) for frame in frames]
        frontier = self.state.frontier.copy()
        frontier.extend(hashes)
        checkpoint = Checkpoint(origin_for(feed), frontier.size, frontier.root())
        note = self._signer.sign(checkpoint)
        after = FeedState(feed, frontier.size, frontier, hlcs[-1], note)
        self._write_batch(frames, hashes, note, after)
        return AppendResult(first, len(frames), checkpoint)

    def append_verified(self, batch: VerifiedBatch) -> None:
        """Append a batch the verifier accepted (foreign feeds, imports)."""
        self._check_not_stopped()
        if batch.feed != self.feed or batch.first_seq != self.state.size:
            raise HeimdallError("verified batch does not continue this feed")
        self._write_batch(list(batch.frames), list(batch.leaf_hashes), batch.note, batch.state)

    def _write_batch(self, frames: list[bytes], hashes: list[bytes], note: bytes,
                     after: FeedState) -> None:
        # Assert before writing (TigerBeetle style): the new head must extend the old one.
        assert after.size == self.state.size + len(frames)
        records = [encode_record(T_FRAME, frame) for frame in frames]
        batch_bytes = sum(map(len, records)) + RECORD_HEADER_BYTES + len(note)
        if self._seg_fd is None or (self._seg_size > 4096 and
                                    self._seg_size + batch_bytes > self.options.segment_bytes_max):
            self._roll_segment()
        assert self._seg_fd is not None and self._index_fd is not None
        base = self._seg_size
        offsets = []
        for record in records:
            offsets.append(base)
            base += len(record)
        cp_offset = base
        records.append(encode_record(T_CHECKPOINT, note))
        blob = b"".join(records)
        _write_all(self._seg_fd, blob)
        if self.options.fsync:
            os.fdatasync(self._seg_fd)
        self._seg_size += len(blob)
        self._write_head(note, after.frontier)
        seg = self._seg_first
        os.write(self._index_fd, b"".join(
            INDEX_ENTRY.pack(seg, off, digest) for off, digest in zip(offsets, hashes, strict=True)))
        assert self._cp_index_fd is not None
        os.write(self._cp_index_fd, CHECKPOINT_ENTRY.pack(after.size, seg, cp_offset))
        self.state = after

    # ----------------------------------------------------------------- reading
    def durable_size(self) -> int:
        """Frames covered by the durable signed head (what readers may read)."""
        head = self._read_head()
        return head.checkpoint.size if head else 0

    def read_frames(self, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
        """Frames ``start..stop-1`` in order, each checked against its CRC and position."""
        for record, seq in self._records(start):
            if record.type != T_FRAME:
                continue
            if seq >= stop:
                return
            yield seq, record.payload

    def iter_batches(self, start: int = 0, stop: int | None = None
                     ) -> Iterator[tuple[int, list[bytes], bytes]]:
        """Stored batches (first seq, frames, signed note) that end after ``start``."""
        stop = self.state.size if stop is None else stop
        frames: list[bytes] = []
        batch_first: int | None = None
        for record, seq in self._records(start, from_segment_start=True):
            if record.type == T_FRAME:
                if seq >= stop:
                    return
                if batch_first is None:
                    batch_first = seq
                frames.append(record.payload)
            elif record.type == T_CHECKPOINT:
                if batch_first is not None and seq > start:
                    yield batch_first, frames, record.payload
                frames, batch_first = [], None

    def _records(self, start: int, *, from_segment_start: bool = False
                 ) -> Iterator[tuple[Record, int]]:
        """Records from the frame ``start`` (or its segment's start) to the end of the log."""
        segments = self.segments()
        if not segments:
            return
        entry = self._index_entry(start) if start > 0 else None
        if entry is None and start > 0:
            if start >= self.durable_size():
                return
            raise IntegrityError("frame not in the index; run 'heimdall log reindex'",
                                 feed=self.feed_hex, seq=start)
        first, offset = (entry[0], entry[1]) if entry else (segments[0][0], 0)
        seq = start if entry else first
        if from_segment_start or entry is None:
            offset, seq = 0, first
        for seg_first, path in segments:
            if seg_first < first:
                continue
            if seg_first != first and seq != seg_first:
                raise IntegrityError(f"segment starts at {seg_first}, expected {seq}",
                                     feed=self.feed_hex, segment=path.name, seq=seq)
            for record, record_seq in self._records_in(path, seg_first, offset, seq):
                seq = record_seq + (1 if record.type == T_FRAME else 0)
                yield record, record_seq
            offset = 0

    def _records_in(self, path: Path, first: int, offset: int, seq: int,
                    ) -> Iterator[tuple[Record, int]]:
        """Stream records of one segment from ``offset``; every record is checked."""
        limit = self.options.frame_bytes_max + NOTE_BYTES_MAX
        with open(path, "rb") as handle:
            if offset == 0:
                head = handle.read(RECORD_HEADER_BYTES + SEGMENT_HEADER.size)
                try:
                    header = decode_record(head, 0, 1024)
                except (ShortRecord, BadRecord) as exc:
                    raise IntegrityError(f"damaged segment header: {exc}", feed=self.feed_hex,
                                         segment=path.name, offset=0, seq=first) from None
                self._check_segment_header(header.payload, path, first)
                offset = header.end
            handle.seek(offset)
            buffer, position, eof = b"", offset, False
            while not eof:
                chunk = handle.read(1 << 20)
                eof = not chunk
                buffer += chunk
                local = 0
                while local < len(buffer):
                    try:
                        record = decode_record(buffer, local, limit)
                    except ShortRecord:
                        if eof:
                            raise IntegrityError("segment ends inside a record",
                                                 feed=self.feed_hex, segment=path.name,
                                                 offset=position + local, seq=seq) from None
                        break
                    except BadRecord as exc:
                        raise IntegrityError(f"damaged record: {exc}", feed=self.feed_hex,
                                             segment=path.name, offset=position + local,
                                             seq=seq) from None
                    placed = Record(record.type, position + local, record.payload)
                    if record.type == T_FRAME:
                        self._check_frame_place(record.payload, path, placed.offset, seq)
                        yield placed, seq
                        seq += 1
                    elif record.type == T_CHECKPOINT:
                        yield placed, seq
                    else:
                        raise IntegrityError(f"unexpected record type {record.type:#x}",
                                             feed=self.feed_hex, segment=path.name,
                                             offset=placed.offset, seq=seq)
                    local = record.end
                buffer = buffer[local:]
                position += local

    def _check_frame_place(self, frame: bytes, path: Path, offset: int, seq: int) -> None:
        try:
            header = decode_header(frame)
        except EncodingError as exc:
            raise IntegrityError(f"malformed frame: {exc}", feed=self.feed_hex,
                                 segment=path.name, offset=offset, seq=seq) from None
        if header.seq != seq or header.feed != self.feed:
            raise IntegrityError(f"frame out of place (found sequence {header.seq})",
                                 feed=self.feed_hex, segment=path.name, offset=offset, seq=seq)

    def checkpoints(self) -> list[tuple[int, bytes]]:
        """(size, signed note) of every stored checkpoint, oldest first."""
        out = []
        data = (self.directory / "checkpoints.idx").read_bytes() \
            if (self.directory / "checkpoints.idx").exists() else b""
        for index in range(len(data) // CHECKPOINT_ENTRY.size):
            size, first, offset = CHECKPOINT_ENTRY.unpack_from(data, index * CHECKPOINT_ENTRY.size)
            path = self.directory / segment_name(first)
            with open(path, "rb") as handle:
                handle.seek(offset)
                head = handle.read(RECORD_HEADER_BYTES)
                length = int.from_bytes(head[:4], "big")
                record = decode_record(head + handle.read(length), 0, NOTE_BYTES_MAX)
            out.append((size, record.payload))
        return out

    def verify(self, *, deep: bool = True) -> FeedState:
        """Verify every stored batch from the first frame; raise at the first bad one."""
        state = FeedState(self.feed)
        for first, frames, note in self.iter_batches(0):
            if first != state.size:
                raise IntegrityError("batches do not follow each other", feed=self.feed_hex,
                                     seq=state.size)
            batch = verify_batch(state, frames, note, frame_bytes_max=self.options.frame_bytes_max,
                                 deep=deep)
            state = batch.state
        head = self._read_head()
        if head is not None and head.checkpoint.size > state.size:
            raise StaleLogError(f"feed {self.feed_hex}: log verifies up to {state.size} but its "
                                f"signed head covers {head.checkpoint.size}")
        if head is not None and head.checkpoint.root != root_from_leaf_hashes(
                self.leaf_hashes(0, head.checkpoint.size)):
            raise IntegrityError("index leaf hashes disagree with the signed head",
                                 feed=self.feed_hex)
        return state


