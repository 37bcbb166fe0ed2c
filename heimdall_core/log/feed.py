"""One feed on disk: segment files, the sequence index, and the durable signed head (I/O).

Layout of a feed directory (docs/formats.md has the bytes; segments.py the codecs):

    seg-<first seq, 20 digits>.log   records: segment header, then batches (frames, checkpoint)
    index                            48 bytes per frame: segment first seq, offset, leaf hash
    checkpoints.idx                  24 bytes per checkpoint: size, segment first seq, offset
    head                             the last signed head, two alternating slots (own feeds
                                     keep it beside their key instead: keys/site.head)
    STOPPED                          present when the feed is stopped (integrity failure, fork)
    lock                             flock'ed by the one process that writes the feed

Write path of one batch: frames and their signed checkpoint are written to the current
segment with one write and one fdatasync; the index entries are appended (no sync);
then the head slot is written and fdatasync'd; only then is the batch acknowledged.
Index entries need no sync of their own: those of the last segment are rewritten from
the segment at every open, and the index files are synced whenever a segment is closed,
so the prefix before the last segment is durable. They are written before the head so
that a reader in another process that sees a head finds its entries. A batch never
spans two segments.

Recovery at open (:meth:`FeedLog._recover`) reads the durable head and scans the last
segment. The head marks what was acknowledged:

* damage (a short, unreadable or misplaced record) *before* the head's checkpoint is
  corruption of acknowledged data: never repaired; the feed is stopped (``STOPPED``) and
  ``IntegrityError`` names feed, segment, offset and sequence;
* complete batches after the head are verified (signature and Merkle root) and kept;
  a complete batch that fails verification is corruption as above;
* anything else after the last good checkpoint is a torn tail and is cut off;
* a log that ends cleanly before its head is *behind* (a restored backup, a lost
  segment, a copied key): ``StaleLogError``, and nothing of our own is written until
  the missing batches come back from a peer or a bundle (``allow_behind``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise
from pathlib import Path
from typing import NoReturn

from heimdall_core.clock import ZERO, Clock, Hlc, HybridClock
from heimdall_core.config import LogSettings
from heimdall_core.errors import (
    EncodingError,
    FeedBroken,
    FeedBusy,
    FeedStopped,
    HeimdallError,
    IntegrityError,
    StaleLogError,
)
from heimdall_core.events import (
    FEED_ID_BYTES,
    FRAME_BYTES_MAX_DEFAULT,
    BodyError,
    CanonicalBody,
    check_bodies,
    decode_header,
    encode_header,
)
from heimdall_core.keys import SigningKey
from heimdall_core.log.checkpoint import Checkpoint, NoteSigner
from heimdall_core.log.merkle import Frontier, leaf_hash, root_from_leaf_hashes
from heimdall_core.log.records import (
    T_CHECKPOINT,
    T_FRAME,
    T_SEGMENT_HEADER,
    BadRecord,
    ShortRecord,
    encode_record,
    iter_records,
)
from heimdall_core.log.segments import (
    CHECKPOINT_ENTRY,
    CHECKPOINT_INDEX_FILE,
    INDEX_ENTRY,
    INDEX_FILE,
    NOTE_BYTES_MAX,
    SEGMENT_HEADER_RECORD_BYTES,
    EntryFile,
    Head,
    HeadFile,
    MisplacedFrame,
    Scan,
    check_segment_header,
    fsync_dir,
    list_segments,
    read_record_at,
    scan_segment,
    segment_header_record,
    segment_name,
    strip_position,
    truncate,
    write_all,
)
from heimdall_core.log.verify import FeedState, VerifiedBatch, origin_for, verify_batch, verify_note

__all__ = [
    "NOTE_BYTES_MAX", "SEGMENT_BYTES_MAX_DEFAULT", "AppendResult", "FeedLog", "LogOptions",
    "segment_name",
]

log = logging.getLogger("heimdall.log")

SEGMENT_BYTES_MAX_DEFAULT = 64 << 20
STOPPED_FILE = "STOPPED"
LOCK_FILE = "lock"


@dataclass(frozen=True, slots=True)
class LogOptions:
    fsync: bool = True
    segment_bytes_max: int = SEGMENT_BYTES_MAX_DEFAULT
    frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT
    batch_events_max: int = 10_000

    @classmethod
    def from_settings(cls, log: LogSettings) -> LogOptions:
        """The one translation of the ``[log]`` configuration section."""
        return cls(fsync=log.fsync, segment_bytes_max=log.segment_bytes_max,
                   frame_bytes_max=log.frame_bytes_max, batch_events_max=log.batch_events_max)


@dataclass(frozen=True, slots=True)
class AppendResult:
    first_seq: int
    count: int
    checkpoint: Checkpoint


@dataclass(frozen=True, slots=True)
class _Position:
    """A verified batch boundary in the last segment: recovery continues from here."""

    size: int
    end: int  # offset in the last segment where the records after this boundary start
    frontier: Frontier
    note: bytes | None
    hlc: Hlc


_PROC_LOCKS = Path("/proc/locks")
"""Linux's table of file locks: who holds the flock of a feed's lock file."""

# The commands that write a feed: the only words of a holder's command line a message
# names (its other arguments may be personal data: `pii shred --kind email VALUE`).
_WRITING_COMMANDS = frozenset({"serve", "ingest", "log", "pii", "import", "init"})
_GLOBAL_OPTIONS = frozenset({b"--config", b"--data-dir"})
_PROGRAM_WORDS_MAX = 3
"""Words of a command line that may name the program: `heimdall`, or `python -m
heimdall_core.cli.main`."""


def _lock_holder(fd: int) -> str:
    """Who holds the flock on ``fd``, for a message: its pid and heimdall command if
    known (Linux), else "pid unknown"."""
    stat = os.fstat(fd)
    key = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    try:
        table = _PROC_LOCKS.read_text()
    except OSError:
        return "pid unknown"
    for line in table.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 4242 08:01:1312 0 EOF"; a waiter's line has "->"
        words = line.split()
        if "FLOCK" in words and "->" not in words and key in words[1:]:
            pid = words[words.index(key) - 1]
            if pid.isdigit() and pid != "0":  # 0: a process of another pid namespace
                return f"pid {pid}{_command_of(int(pid))}"
    return "pid unknown"


def _command_of(pid: int) -> str:
    """", 'heimdall serve'" when ``pid`` runs a heimdall command that writes; else ""."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    if not any(b"heimdall" in word for word in argv[:_PROGRAM_WORDS_MAX]):
        return ""  # another program holds it: its words mean nothing here
    words = iter(argv[1:])
    for word in words:
        if word in _GLOBAL_OPTIONS:
            next(words, None)  # its value (a path), never a command
        elif (name := word.decode("ascii", "replace")) in _WRITING_COMMANDS:
            return f", 'heimdall {name}'"
    return ""


class FeedLog:
    """A feed's files. Reading is safe from any process; writing needs ``open_for_writing``."""

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
        self._head_file = HeadFile(self.head_path, feed)
        self._index = EntryFile(directory / INDEX_FILE, INDEX_ENTRY)
        self._cp_index = EntryFile(directory / CHECKPOINT_INDEX_FILE, CHECKPOINT_ENTRY)
        self._record_max = self.options.frame_bytes_max + NOTE_BYTES_MAX
        self._lock_fd: int | None = None
        self._seg_fd: int | None = None
        self._seg_first = 0
        self._seg_size = 0
        self._index_fd: int | None = None
        self._cp_index_fd: int | None = None
        self._head_generation = 0
        self._signer: NoteSigner | None = None
        self._clock: HybridClock | None = None
        self._behind: Head | None = None
        self._broken: str | None = None
        self._stopped: str | None = None
        self._write_lock = threading.Lock()

    # ----------------------------------------------------------------- opening
    @classmethod
    def open_for_writing(cls, directory: Path, feed: bytes, *, head_path: Path | None = None,
                         options: LogOptions | None = None, key: SigningKey | None = None,
                         clock: Clock | None = None, hlc: HybridClock | None = None,
                         allow_behind: bool = False) -> FeedLog:
        """Open, lock and recover the feed; with ``key`` it can append its own events.

        ``hlc`` shares one hybrid clock between feeds (a store passes its own); without
        it the feed gets a clock of its own on ``clock``. With ``allow_behind`` a log that
        is behind its durable head opens anyway, accepting only verified batches
        (``append_verified``) until it has caught up; without it, ``StaleLogError``.
        """
        log_ = cls(directory, feed, head_path=head_path, options=options)
        directory.mkdir(parents=True, exist_ok=True)
        log_._check_not_stopped()  # before the lock: a stopped feed says so even while held
        log_._lock()
        try:
            log_._check_not_stopped()
            log_._recover(allow_behind=allow_behind)
            if key is not None:
                if key.public != feed:
                    raise HeimdallError(f"key {key.public.hex()} does not sign feed {log_.feed_hex}")
                log_._signer = NoteSigner(origin_for(feed), key.private)
                log_._clock = hlc or HybridClock(clock)
                log_._clock.ensure_after(log_.state.last_hlc)
        except BaseException:
            log_.close()
            raise
        return log_

    @classmethod
    def open_for_reading(cls, directory: Path, feed: bytes, *, head_path: Path | None = None,
                         options: LogOptions | None = None) -> FeedLog:
        """A read-only view up to the durable signed head (safe while another process writes)."""
        log_ = cls(directory, feed, head_path=head_path, options=options)
        head = log_._head_file.read(concurrent=True)
        if head is not None:
            log_.state = FeedState(feed, head.size, head.frontier, head.last_hlc, head.note)
        return log_

    def _lock(self) -> None:
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise FeedBusy(
                f"feed {self.feed_hex} is being written by another process ({holder}; lock "
                f"{self.directory / LOCK_FILE}); one writer per feed",
                "wait for that process to end, or stop it (the service: systemctl stop heimdall), "
                "then run this command again (docs/operations.md)") from None
        self._lock_fd = fd

    def close(self) -> None:
        with self._write_lock:
            for name in ("_seg_fd", "_index_fd", "_cp_index_fd", "_lock_fd"):
                fd = getattr(self, name)
                if fd is not None:
                    os.close(fd)
                    setattr(self, name, None)
            self._head_file.close()

    def __enter__(self) -> FeedLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_writable_own(self) -> bool:
        return self._signer is not None

    @property
    def behind(self) -> Head | None:
        """The durable head this log has not caught up with yet (None: not behind)."""
        return self._behind

    # ----------------------------------------------------------------- stopping
    @property
    def stopped_path(self) -> Path:
        return self.directory / STOPPED_FILE

    def stopped_reason(self) -> str | None:
        try:
            return str(json.loads(self.stopped_path.read_text())["reason"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return "stopped (reason file unreadable)"

    def stop(self, reason: str) -> None:
        """Stop the feed for good: nothing more is appended or accepted until an operator acts."""
        self.directory.mkdir(parents=True, exist_ok=True)
        record = {"feed": self.feed_hex, "reason": reason, "at_ms": time.time_ns() // 1_000_000}
        tmp = self.stopped_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, self.stopped_path)
        fsync_dir(self.directory)
        self._stopped = reason
        log.error("feed %s stopped: %s", self.feed_hex, reason)

    def _check_not_stopped(self) -> None:
        reason = self._stopped or self.stopped_reason()
        if reason is not None:
            raise FeedStopped(f"feed {self.feed_hex} is stopped: {reason} "
                              f"(see {self.stopped_path})")

    def _check_writable(self) -> None:
        if self._seg_fd is None and self._index_fd is None:
            raise HeimdallError(f"feed {self.feed_hex} is not open for writing")
        if self._broken is not None:
            raise FeedBroken(f"feed {self.feed_hex}: an earlier write failed ({self._broken}); "
                             "close and reopen the feed to recover")
        self._check_not_stopped()

    # ----------------------------------------------------------------- recovery
    def segments(self) -> list[tuple[int, Path]]:
        return list_segments(self.directory)

    def _recover(self, *, allow_behind: bool) -> None:
        head = self._head_file.read()
        self._head_generation = head.generation if head else 0
        segments = self.segments()
        if not segments:
            self._recover_empty(head, allow_behind)
            return
        if segments[0][0] != 0:
            self._fail(f"the first segment is {segments[0][1].name}, not {segment_name(0)}",
                       segment=segments[0][1].name, offset=0, seq=0)
        last_first, last_path = segments[-1]
        self._ensure_index_prefix(segments)
        scan = scan_segment(last_path, self.feed, last_first, self._record_max)
        if scan.header_end == 0:
            self._recover_torn_segment(scan, head, allow_behind)
            return
        start = self._start_position(scan, head)
        good = self._walk(scan, start)
        if head is not None and good.size < head.size:
            # Damage before the head stopped the feed in _start_position: this log simply
            # ends early.
            assert scan.error is None
            self._fall_behind(head, good, allow_behind)
        if good.end < scan.length:
            self._cut_tail(scan, good)
        # A head is a signed checkpoint: a feed killed inside its first batch has none yet
        # (good.note is None at size 0), and stays without a head until a batch commits.
        if self._behind is None and good.note is not None and (head is None or good.size > head.size):
            self._head_generation += 1
            self._head_file.write(self._head_generation, good.note, good.frontier,
                                  good.hlc, fsync=self.options.fsync)
        self._write_last_segment_indexes(scan, good.size)
        self.state = FeedState(self.feed, good.size, good.frontier, good.hlc, good.note)
        self._seg_fd = os.open(last_path, os.O_WRONLY | os.O_APPEND)
        self._seg_first, self._seg_size = last_first, good.end

    def _recover_empty(self, head: Head | None, allow_behind: bool) -> None:
        if head is not None:
            self._fall_behind(head, _Position(0, 0, Frontier(), None, ZERO), allow_behind)
        for entries in (self._index, self._cp_index):
            entries.path.unlink(missing_ok=True)
        self._open_index_files()

    def _recover_torn_segment(self, scan: Scan, head: Head | None, allow_behind: bool) -> None:
        """The last segment's header is unreadable: a crash while the segment was created."""
        head_size = head.size if head else 0
        if scan.first_seq < head_size or scan.length > SEGMENT_HEADER_RECORD_BYTES:
            self._corrupt(scan, f"segment header unreadable: {scan.error}", 0)
        log.warning("feed %s: removing %s, whose header was torn while it was created",
                    self.feed_hex, scan.path.name)
        scan.path.unlink()
        if self.options.fsync:
            fsync_dir(self.directory)
        self._recover(allow_behind=allow_behind)

    def _start_position(self, scan: Scan, head: Head | None) -> _Position:
        """The verified boundary in the last segment from which recovery walks on."""
        if head is not None and head.size > scan.first_seq:
            for size, offset, end, note in scan.checkpoints:
                if size == head.size:
                    self._check_same_head(scan, head, note, offset)
                    return _Position(size, end, head.frontier.copy(), head.note, head.last_hlc)
            if scan.error is not None:
                # The head covers records we cannot read: acknowledged data is damaged.
                self._corrupt(scan, scan.error, scan.error_offset)
            if scan.checkpoints and scan.checkpoints[-1][0] > head.size:
                self._corrupt(scan, f"no checkpoint at the size {head.size} of the durable head",
                              scan.checkpoints[-1][1])
            # The log ends cleanly before its head: behind. Walk what there is.
        elif head is not None and head.size == scan.first_seq:
            return _Position(head.size, scan.header_end, head.frontier.copy(), head.note,
                             head.last_hlc)
        elif head is not None:
            log.warning("feed %s: durable head (size %d) is older than the last segment %s",
                        self.feed_hex, head.size, scan.path.name)
        return self._position_from_index(scan)

    def _check_same_head(self, scan: Scan, head: Head, note: bytes, offset: int) -> None:
        if note == head.note:
            return
        try:
            checkpoint = verify_note(FeedState(self.feed, head.size), note)
        except IntegrityError as exc:
            self._corrupt(scan, f"checkpoint does not verify: {strip_position(exc)}", offset)
        if checkpoint.root != head.checkpoint.root:
            self._corrupt(scan, "the stored checkpoint and the durable head sign different roots "
                                "at the same size (a forked copy of this log?)", offset)

    def _position_from_index(self, scan: Scan) -> _Position:
        """The boundary at the start of the last segment, from the index (slow: hashes every
        leaf before it; only when the durable head is missing or older than the segment)."""
        first = scan.first_seq
        if first == 0:
            return _Position(0, scan.header_end, Frontier(), None, ZERO)
        note = self.checkpoint_at(first)
        if note is None:
            self._corrupt(scan, f"no signed checkpoint at the start (size {first}) of the segment", 0)
        frontier = Frontier.from_leaf_hashes(self.leaf_hashes(0, first))
        checkpoint = verify_note(FeedState(self.feed, first), note)
        if checkpoint.size != first or checkpoint.root != frontier.root():
            self._corrupt(scan, "the checkpoint before this segment does not match the index", 0)
        return _Position(first, scan.header_end, frontier, note, self.hlc_before(first))

    def _walk(self, scan: Scan, start: _Position) -> _Position:
        """Verify every complete batch after ``start``; return the last good boundary."""
        good = start
        frontier = start.frontier.copy()
        for size, offset, end, note in scan.checkpoints:
            if offset < start.end:
                continue
            frames = scan.frames[good.size - scan.first_seq:size - scan.first_seq]
            hlcs = [hlc for _, _, hlc in frames]
            previous = (good.hlc.physical_ms, good.hlc.logical)
            if not frames or any(b <= a for a, b in zip([previous, *hlcs], hlcs, strict=False)):
                self._corrupt(scan, "a stored batch is empty or its HLC does not increase", offset,
                              seq=good.size)
            frontier.extend([digest for _, digest, _ in frames])
            try:
                checkpoint = verify_note(FeedState(self.feed, good.size), note)
            except IntegrityError as exc:
                self._corrupt(scan, f"checkpoint does not verify: {strip_position(exc)}", offset,
                              seq=good.size)
            if checkpoint.size != size or checkpoint.root != frontier.root():
                self._corrupt(scan, "a stored checkpoint does not match the frames before it",
                              offset, seq=good.size)
            good = _Position(size, end, frontier.copy(), note, Hlc(*hlcs[-1]))
        return good

    def _fall_behind(self, head: Head, good: _Position, allow_behind: bool) -> None:
        message = (f"feed {self.feed_hex}: the log holds {good.size} events but its last signed "
                   f"head covers {head.size}; refusing to write (restored backup, lost segment "
                   "or copied key?). Import the missing events from a peer or an export bundle.")
        if not allow_behind:
            raise StaleLogError(message)
        log.error("%s", message)
        self._behind = head

    def _cut_tail(self, scan: Scan, good: _Position) -> None:
        cut_frames = len(scan.frames) - (good.size - scan.first_seq)
        log.warning("feed %s: cutting a torn tail of %d bytes (%d unacknowledged frames%s) from %s "
                    "after the checkpoint of size %d", self.feed_hex, scan.length - good.end,
                    cut_frames, f"; {scan.error} at offset {scan.error_offset}" if scan.error else "",
                    scan.path.name, good.size)
        truncate(scan.path, good.end, fsync=self.options.fsync)

    def _corrupt(self, scan: Scan, reason: str, offset: int, *, seq: int | None = None) -> NoReturn:
        """Damage inside acknowledged data: stop the feed and say where (never repaired)."""
        if seq is None and scan.error_seq is not None and offset == scan.error_offset:
            seq = scan.error_seq
        if seq is None:
            seq = self._damaged_seq(scan, offset)
        self._fail(reason, segment=scan.path.name, offset=offset, seq=seq)

    def _fail(self, reason: str, *, segment: str, offset: int, seq: int) -> NoReturn:
        message = (f"{reason}: feed {self.feed_hex}, segment {segment}, offset {offset}, "
                   f"sequence {seq}; acknowledged data is damaged and is not repaired")
        self.stop(message)
        raise IntegrityError(f"{reason}; feed stopped, not repaired", feed=self.feed_hex,
                             segment=segment, offset=offset, seq=seq)

    def _damaged_seq(self, scan: Scan, offset: int) -> int:
        """The sequence a damaged record at ``offset`` belongs to (see :meth:`_attribute`)."""
        next_seq = scan.first_seq + scan.frames_before(offset)
        batch_first = scan.first_seq
        for size, cp_offset, _, _ in scan.checkpoints:
            if cp_offset < offset:
                batch_first = size
        return self._attribute(scan.first_seq, offset, next_seq, batch_first, scan.error_type)

    def _attribute(self, seg_first: int, offset: int, next_seq: int, batch_first: int,
                   type_byte: int | None) -> int:
        """A damaged frame record is reported at its own sequence, a damaged checkpoint at the
        first sequence of its batch. The index (written when the batch was appended) tells
        which one lies at ``offset``; the record's own type byte is the fallback."""
        if offset < SEGMENT_HEADER_RECORD_BYTES:
            return seg_first
        entry = self._index.get(next_seq)
        if entry is not None and entry[0] == seg_first:
            return next_seq if entry[1] == offset else batch_first
        return next_seq if type_byte == T_FRAME else batch_first

    # ----------------------------------------------------------------- indexes
    def _ensure_index_prefix(self, segments: list[tuple[int, Path]]) -> None:
        """The index entries of every segment but the last must be there; rebuild if not.

        Each boundary is checked: the entry before a segment's first frame points into the
        previous segment, and the checkpoint entries end exactly at the boundary.
        """
        last_first = segments[-1][0]
        ok = self._index.count() >= last_first
        for (first, _), (next_first, _) in pairwise(segments):
            if not ok:
                break
            entry = self._index.get(next_first - 1)
            ok = entry is not None and entry[0] == first
        if ok and last_first > 0:
            kept = self._cp_index.bisect_right(1, last_first - 1)
            entry = self._cp_index.get(kept - 1) if kept else None
            ok = entry is not None and entry[0] == last_first
        if not ok:
            log.warning("feed %s: index files do not match the segments; rebuilding them",
                        self.feed_hex)
            try:
                self._rebuild_index_files(segments[:-1])
            except IntegrityError as exc:
                self._fail(strip_position(exc), segment=exc.segment or "", offset=exc.offset or 0,
                           seq=exc.seq or 0)

    def _write_last_segment_indexes(self, scan: Scan, size: int) -> None:
        """Rewrite the index entries of the last segment from its scan (they are not synced)."""
        first = scan.first_seq
        entries = [INDEX_ENTRY.pack(first, offset, digest)
                   for offset, digest, _ in scan.frames[:size - first]]
        _rewrite_tail(self._index.path, first * INDEX_ENTRY.size, b"".join(entries))
        kept = self._cp_index.bisect_right(1, first - 1) if first else 0
        checkpoints = [CHECKPOINT_ENTRY.pack(cp_size, first, offset)
                       for cp_size, offset, _, _ in scan.checkpoints if cp_size <= size]
        _rewrite_tail(self._cp_index.path, kept * CHECKPOINT_ENTRY.size, b"".join(checkpoints))
        self._open_index_files()

    def _open_index_files(self) -> None:
        for path, attr in ((self._index.path, "_index_fd"), (self._cp_index.path, "_cp_index_fd")):
            if getattr(self, attr) is None:
                setattr(self, attr, os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644))

    def rebuild_indexes(self) -> int:
        """Rebuild ``index`` and ``checkpoints.idx`` from the segment files; return frames seen.

        Safe on a feed open for writing (``heimdall log reindex``); every record is checked.
        """
        with self._write_lock:
            for attr in ("_index_fd", "_cp_index_fd"):
                fd = getattr(self, attr)
                if fd is not None:
                    os.close(fd)
                    setattr(self, attr, None)
            count = self._rebuild_index_files(self.segments())
            if self._lock_fd is not None:
                self._open_index_files()
            return count

    def _rebuild_index_files(self, segments: list[tuple[int, Path]]) -> int:
        """Write both index files for ``segments`` (a prefix of the log's segments)."""
        index_parts: list[bytes] = []
        cp_parts: list[bytes] = []
        count = 0
        if segments:
            records = self._records_from(0, 0, 0, 0, seg_stop=segments[-1][0] + 1)
            for record_type, seg, offset, payload, seq in records:
                if record_type == T_FRAME:
                    index_parts.append(INDEX_ENTRY.pack(seg, offset, leaf_hash(payload)))
                    count = seq + 1
                else:
                    cp_parts.append(CHECKPOINT_ENTRY.pack(seq, seg, offset))
        for entries, parts in ((self._index, index_parts), (self._cp_index, cp_parts)):
            tmp = entries.path.with_suffix(".tmp")
            with open(tmp, "wb") as handle:
                handle.write(b"".join(parts))
                handle.flush()
                if self.options.fsync:
                    os.fsync(handle.fileno())
            os.replace(tmp, entries.path)
        if self.options.fsync:
            fsync_dir(self.directory)
        return count

    # ----------------------------------------------------------------- appending
    def append_bodies(self, bodies: Sequence[bytes], *, checked: bool = False) -> AppendResult:
        """Append events of this site's own feed (bodies from ``events.encode_body``).

        Every body is checked to be canonical before it is signed (a signed bad frame
        could never be removed from the feed), unless the caller did it (``checked``).
        Returns once the frames and their signed checkpoint are durable.
        """
        if self._signer is None or self._clock is None:
            raise HeimdallError(f"feed {self.feed_hex} is not this site's to write")
        if not bodies:
            raise ValueError("empty batch")
        if len(bodies) > self.options.batch_events_max:
            raise ValueError(f"batch of {len(bodies)} exceeds {self.options.batch_events_max}")
        if not checked:
            check_body_batch(bodies)
        with self._write_lock:
            if self._behind is not None:
                raise StaleLogError(
                    f"feed {self.feed_hex} is behind its durable head ({self.state.size} of "
                    f"{self._behind.size} events); import the missing events first")
            self._check_writable()
            return self._append_own(bodies, self._signer, self._clock)

    def _append_own(self, bodies: Sequence[bytes], signer: NoteSigner,
                    clock: HybridClock) -> AppendResult:
        first = self.state.size
        hlcs = clock.tick_many(len(bodies))
        feed, limit = self.feed, self.options.frame_bytes_max
        frames = [encode_header(feed, first + index, hlc) + body
                  for index, (body, hlc) in enumerate(zip(bodies, hlcs, strict=True))]
        too_big = [len(frame) for frame in frames if len(frame) > limit]
        if too_big:
            raise EncodingError(f"event of {too_big[0]} bytes exceeds the frame limit {limit}")
        hashes = list(map(leaf_hash, frames))
        frontier = self.state.frontier.copy()
        frontier.extend(hashes)
        checkpoint = Checkpoint(origin_for(feed), frontier.size, frontier.root())
        note = signer.sign(checkpoint)
        after = FeedState(feed, frontier.size, frontier, hlcs[-1], note)
        self._write_batch(frames, hashes, note, after)
        return AppendResult(first, len(frames), checkpoint)

    def append_verified(self, batch: VerifiedBatch) -> None:
        """Append a batch the verifier accepted (foreign feeds, imports, catching up)."""
        with self._write_lock:
            self._check_writable()
            if batch.feed != self.feed or batch.first_seq != self.state.size:
                raise HeimdallError("verified batch does not continue this feed")
            behind = self._behind
            if behind is not None and batch.state.size >= behind.size:
                self._check_catches_up(batch, behind)
            self._write_batch(list(batch.frames), list(batch.leaf_hashes), batch.note, batch.state)
            if behind is not None and self.state.size >= behind.size:
                log.warning("feed %s caught up with its durable head (size %d)", self.feed_hex,
                            behind.size)
                self._behind = None
            if self._clock is not None:
                self._clock.ensure_after(batch.state.last_hlc)

    def _check_catches_up(self, batch: VerifiedBatch, behind: Head) -> None:
        frontier = self.state.frontier.copy()
        frontier.extend(batch.leaf_hashes[:behind.size - self.state.size])
        if frontier.root() != behind.checkpoint.root:
            raise IntegrityError("batch disagrees with this feed's durable signed head",
                                 feed=self.feed_hex, seq=batch.first_seq)

    def _write_batch(self, frames: list[bytes], hashes: list[bytes], note: bytes,
                     after: FeedState) -> None:
        # Assert before writing (TigerBeetle style): the new head must extend the old one.
        assert after.size == self.state.size + len(frames) == self.state.size + len(hashes)
        assert self._index_fd is not None and self._cp_index_fd is not None
        records = [encode_record(T_FRAME, frame) for frame in frames]
        records.append(encode_record(T_CHECKPOINT, note))
        lengths = list(map(len, records))
        if self._seg_fd is None or (self._seg_size > SEGMENT_HEADER_RECORD_BYTES and
                                    self._seg_size + sum(lengths) > self.options.segment_bytes_max):
            self._roll_segment()
        assert self._seg_fd is not None
        offsets = list(accumulate(lengths, initial=self._seg_size))
        blob = b"".join(records)
        seg = self._seg_first
        try:
            write_all(self._seg_fd, blob)
            if self.options.fsync:
                os.fdatasync(self._seg_fd)
            self._seg_size += len(blob)
            # Index entries before the head: a reader in another process that sees the new
            # head must find them (they need no sync: open rewrites the last segment's).
            write_all(self._index_fd, b"".join(
                INDEX_ENTRY.pack(seg, offset, digest)
                for offset, digest in zip(offsets, hashes, strict=False)))
            write_all(self._cp_index_fd, CHECKPOINT_ENTRY.pack(after.size, seg, offsets[-2]))
            if self._behind is None or after.size >= self._behind.size:
                self._head_generation += 1
                self._head_file.write(self._head_generation, note, after.frontier, after.last_hlc,
                                      fsync=self.options.fsync)
        except BaseException as exc:
            # The files may now hold part of a batch: only recovery at open may touch them.
            self._broken = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, OSError) and exc.filename is None:  # a full disk: say where
                raise OSError(exc.errno, f"{exc.strerror or exc} (appending to the log; nothing "
                              "of this batch was acknowledged)", str(self.directory)) from exc
            raise
        self.state = after

    def _roll_segment(self) -> None:
        assert self._index_fd is not None and self._cp_index_fd is not None
        if self._seg_fd is not None:
            if self.options.fsync:
                # Index entries of a finished segment are never rewritten at open: sync them now.
                os.fdatasync(self._index_fd)
                os.fdatasync(self._cp_index_fd)
            os.close(self._seg_fd)
            self._seg_fd = None
        first = self.state.size
        path = self.directory / segment_name(first)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            header = segment_header_record(self.feed, first)
            write_all(fd, header)
            if self.options.fsync:
                os.fdatasync(fd)
                fsync_dir(self.directory)
        except BaseException as exc:
            os.close(fd)
            self._broken = f"{type(exc).__name__}: {exc}"
            raise
        self._seg_fd, self._seg_first, self._seg_size = fd, first, len(header)

    # ----------------------------------------------------------------- reading
    def durable_size(self) -> int:
        """Frames covered by the durable signed head (what readers may read)."""
        head = self._head_file.read(concurrent=True)
        return head.size if head else 0

    def read_frames(self, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
        """Frames ``start..stop-1`` in order, each checked against its CRC and position.

        Never reads past what is known durable (a reader's ``stop`` is clamped to the
        durable head), so a batch another process is writing is never read half-way.
        """
        stop = min(stop, self._readable_size(stop))
        if stop <= start:
            return
        seg_first, offset = self._locate(start)
        for record_type, _, _, payload, seq in self._records_from(seg_first, offset, start, start):
            if record_type == T_FRAME:
                yield seq, payload
                if seq + 1 >= stop:
                    return

    def _readable_size(self, wanted: int) -> int:
        """How far a read may go: the writer owns its files; a reader stops at the head."""
        if self._lock_fd is not None or wanted <= self.state.size:
            return wanted
        return max(self.state.size, self.durable_size())

    def iter_batches(self, start: int = 0, stop: int | None = None
                     ) -> Iterator[tuple[int, list[bytes], bytes]]:
        """Stored batches (first seq, frames, signed note) that end after ``start``, up to ``stop``.

        The first batch may begin before ``start``: a batch is only verifiable whole.
        """
        for first, frames, _, note in self._batches(start, stop):
            yield first, frames, note

    def _batches(self, start: int, stop: int | None
                 ) -> Iterator[tuple[int, list[bytes], list[tuple[int, int]], bytes]]:
        """Batches with the (segment, offset) of each frame record."""
        stop = self.state.size if stop is None else min(stop, self._readable_size(stop))
        first = self._batch_start(start)
        if first >= stop:
            return
        seg_first, offset = self._locate(first)
        frames: list[bytes] = []
        places: list[tuple[int, int]] = []
        for record_type, seg, at, payload, seq in self._records_from(seg_first, offset, first, first):
            if record_type == T_FRAME:
                frames.append(payload)
                places.append((seg, at))
                continue
            yield seq - len(frames), frames, places, payload
            if seq >= stop:
                return
            frames, places = [], []

    def _batch_start(self, seq: int) -> int:
        """The first sequence of the stored batch holding ``seq`` (0 if none is known)."""
        index = self._cp_index.bisect_right(0, seq)
        if index == 0:
            return 0
        entry = self._cp_index.get(index - 1)
        assert entry is not None
        size, seg_first, offset = entry
        _, note = read_record_at(self.directory / segment_name(seg_first), offset, NOTE_BYTES_MAX)
        if _note_size(note) != size:
            raise IntegrityError("checkpoints.idx does not match the segments; run "
                                 "'heimdall log reindex'", feed=self.feed_hex, seq=seq)
        return int(size)

    def _locate(self, seq: int) -> tuple[int, int]:
        """(segment first seq, record offset) of frame ``seq``; for 0, the first segment's start."""
        if seq == 0:
            return 0, 0
        entry = self._index.get(seq)
        if entry is None:
            raise IntegrityError(f"frame {seq} is not in the index; run 'heimdall log reindex'",
                                 feed=self.feed_hex, seq=seq)
        return int(entry[0]), int(entry[1])

    def _records_from(self, seg_first: int, offset: int, seq: int, batch_first: int, *,
                      seg_stop: int | None = None) -> Iterator[tuple[int, int, int, bytes, int]]:
        """(type, segment, offset, payload, seq) from a place to the end of the log.

        For a frame ``seq`` is its own sequence, for a checkpoint the size it covers.
        Every record is checked: CRC, frame placement, segment headers and continuity.
        One flat loop: this is the read path of verify, export and replay.
        """
        segments = [(first, path) for first, path in self.segments()
                    if first >= seg_first and (seg_stop is None or first < seg_stop)]
        if not segments or segments[0][0] != seg_first:
            raise IntegrityError(f"segment {segment_name(seg_first)} is missing",
                                 feed=self.feed_hex, segment=segment_name(seg_first), seq=seq)
        feed = self.feed
        for first, path in segments:
            if first != seg_first and first != seq:
                raise IntegrityError(f"segment {path.name} starts at {first}, expected {seq} "
                                     "(a segment is missing)", feed=self.feed_hex,
                                     segment=path.name, seq=seq)
            try:
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    records = iter_records(handle.read, offset, self._record_max)
                    if offset == 0:
                        self._check_header_record(next(records, None), first)
                    for record_type, at, payload in records:
                        if record_type == T_FRAME:
                            if payload[4:36] != feed or int.from_bytes(payload[36:44], "big") != seq:
                                raise MisplacedFrame(_misplaced(payload, seq), offset=at)
                            yield record_type, first, at, payload, seq
                            seq += 1
                        elif record_type == T_CHECKPOINT:
                            yield record_type, first, at, payload, seq
                            batch_first = seq
                        else:
                            raise BadRecord(f"unexpected record type {record_type:#x}", offset=at)
            except (ShortRecord, BadRecord) as exc:
                at = exc.offset or 0
                seq_at = seq if isinstance(exc, MisplacedFrame) else self._attribute(
                    first, at, seq, batch_first, _type_byte_at(path, at))
                raise IntegrityError(f"damaged record: {strip_position(exc)}", feed=self.feed_hex,
                                     segment=path.name, offset=at, seq=seq_at) from None
            offset = 0

    def _check_header_record(self, header: tuple[int, int, bytes] | None, first: int) -> None:
        problem = ("segment is empty" if header is None
                   else "not a segment header" if header[0] != T_SEGMENT_HEADER
                   else check_segment_header(header[2], self.feed, first))
        if problem is not None:
            raise BadRecord(problem, offset=0)

    def checkpoints(self) -> list[tuple[int, bytes]]:
        """(size, signed note) of every stored checkpoint, oldest first."""
        out = []
        for index in range(self._cp_index.count()):
            entry = self._cp_index.get(index)
            assert entry is not None
            size, seg_first, offset = entry
            _, note = read_record_at(self.directory / segment_name(seg_first), offset,
                                     NOTE_BYTES_MAX)
            out.append((int(size), note))
        return out

    def checkpoint_at(self, size: int) -> bytes | None:
        """The stored signed note of exactly ``size`` frames, if a batch ended there."""
        index = self._cp_index.bisect_right(0, size)
        entry = self._cp_index.get(index - 1) if index else None
        if entry is None or entry[0] != size:
            return None
        record_type, note = read_record_at(self.directory / segment_name(entry[1]), entry[2],
                                           NOTE_BYTES_MAX)
        return note if record_type == T_CHECKPOINT else None

    def leaf_hashes(self, start: int, stop: int) -> list[bytes]:
        """Leaf hashes of frames ``start..stop-1`` from the index."""
        raw = self._index.read(start, stop)
        if len(raw) != max(0, stop - start) * INDEX_ENTRY.size:
            raise IntegrityError("index is shorter than the log; run 'heimdall log reindex'",
                                 feed=self.feed_hex, seq=start + len(raw) // INDEX_ENTRY.size)
        return [raw[i + 16:i + 48] for i in range(0, len(raw), INDEX_ENTRY.size)]

    def root_at(self, size: int) -> bytes:
        """The Merkle root of the first ``size`` frames."""
        if size == self.state.size:
            return self.state.frontier.root()
        note = self.checkpoint_at(size)
        if note is not None:
            return verify_note(FeedState(self.feed, size), note).root
        return root_from_leaf_hashes(self.leaf_hashes(0, size))

    def hlc_before(self, seq: int) -> Hlc:
        """The HLC of frame ``seq - 1`` (ZERO for 0): what frame ``seq`` must exceed."""
        if seq == 0:
            return ZERO
        for _, frame in self.read_frames(seq - 1, seq):
            return decode_header(frame).hlc
        raise IntegrityError("frame missing", feed=self.feed_hex, seq=seq - 1)

    # ----------------------------------------------------------------- verifying
    def verify(self, *, deep: bool = True) -> FeedState:
        """Verify every stored batch from the first frame; raise at the first bad one.

        Also checks that the index agrees with the segments and that the log reaches its
        durable signed head (``StaleLogError`` if not).
        """
        state = FeedState(self.feed)
        for first, frames, places, note in self._batches(0, None):
            try:
                batch = verify_batch(state, frames, note, frame_bytes_max=self.options.frame_bytes_max,
                                     deep=deep)
            except IntegrityError as exc:
                raise self._pinpoint(exc, first, frames) from None
            self._check_index(first, places, batch.leaf_hashes)
            state = batch.state
        head = self._head_file.read(concurrent=True)
        if head is not None and head.size > state.size:
            raise StaleLogError(f"feed {self.feed_hex}: log verifies up to {state.size} but its "
                                f"signed head covers {head.size}")
        if head is not None and head.size == state.size and head.checkpoint.root != state.frontier.root():
            raise IntegrityError("the log and its durable signed head sign different roots",
                                 feed=self.feed_hex, seq=state.size)
        return state

    def _pinpoint(self, exc: IntegrityError, first: int, frames: list[bytes]) -> IntegrityError:
        """A batch-level failure narrowed to the first frame whose hash the index disagrees with."""
        if exc.seq != first:
            return exc
        recorded = self._index.read(first, first + len(frames))
        for index, frame in enumerate(frames):
            start = index * INDEX_ENTRY.size + 16
            if recorded[start:start + 32] != leaf_hash(frame):
                if len(recorded) < start + 32:
                    break
                return IntegrityError(
                    f"{strip_position(exc)}; frame {first + index} differs from the leaf hash "
                    "recorded when it was appended", feed=self.feed_hex, seq=first + index)
        return exc

    def _check_index(self, first: int, places: list[tuple[int, int]], hashes: Sequence[bytes]) -> None:
        pack = INDEX_ENTRY.pack
        expected = b"".join([pack(seg, offset, digest)
                             for (seg, offset), digest in zip(places, hashes, strict=True)])
        if self._index.read(first, first + len(places)) != expected:
            raise IntegrityError("index does not match the segments; run 'heimdall log reindex'",
                                 feed=self.feed_hex, seq=first)


def check_body_batch(bodies: Sequence[bytes]) -> None:
    """Raise EncodingError naming the first body that is not canonical.

    Bodies made by ``encode_body`` (``CanonicalBody``) are canonical by construction."""
    if set(map(type, bodies)) == {CanonicalBody}:
        return
    try:
        check_bodies(bodies, 0)
    except BodyError as exc:
        raise EncodingError(f"event {exc.index} of the batch: {exc}") from None


def _rewrite_tail(path: Path, keep_bytes: int, tail: bytes) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, keep_bytes)
        os.pwrite(fd, tail, keep_bytes)
    finally:
        os.close(fd)


def _misplaced(frame: bytes, seq: int) -> str:
    found = int.from_bytes(frame[36:44], "big") if len(frame) >= 44 else None
    return (f"frame out of place: sequence {found} of feed {frame[4:36].hex()[:16]}… "
            f"where {seq} belongs")


def _note_size(note: bytes) -> int | None:
    """The tree size a signed note states (unverified; used to cross-check an index)."""
    lines = note.split(b"\n", 2)
    return int(lines[1]) if len(lines) == 3 and lines[1].isdigit() else None


def _type_byte_at(path: Path, offset: int) -> int | None:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset + 4)
            data = handle.read(1)
    except OSError:
        return None
    return data[0] if data else None

