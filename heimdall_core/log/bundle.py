"""Export/import bundles: verified frames and their signed checkpoints in one file.

A bundle is the same frames and notes a peer would send, in a file, for sites with no
link. Import goes through :meth:`LogStore.accept`, the same verifier as network sync.

    8 bytes  magic b"HMDBNDL1"
    records  (record codec of records.py):
             BUNDLE_HEADER  msgpack {"created_ms": int, "site": bin32, "version": 1}
             per feed: BUNDLE_FEED msgpack {"feed": bin32, "from": int},
                       then FRAME records and CHECKPOINT records in log order
             BUNDLE_END     msgpack {"checkpoints": int, "frames": int}

Import applies batch after batch (each ends with a checkpoint). The first bad record
stops the import: the error names its absolute offset in the file, the feed and the
sequence number; the batches before it stay applied and nothing after it is.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from heimdall_core.errors import (
    FeedStopped,
    ForkDetected,
    HeimdallError,
    IntegrityError,
    RemoteProtocolError,
)
from heimdall_core.events import FEED_ID_BYTES, FRAME_PREFIX, HEADER_BYTES
from heimdall_core.log.records import (
    T_BUNDLE_END,
    T_BUNDLE_FEED,
    T_BUNDLE_HEADER,
    T_CHECKPOINT,
    T_FRAME,
    BadRecord,
    ShortRecord,
    encode_record,
    iter_records,
)
from heimdall_core.log.segments import NOTE_BYTES_MAX, fsync_dir, strip_position
from heimdall_core.log.store import LogStore

log = logging.getLogger("heimdall.log")

BUNDLE_MAGIC = b"HMDBNDL1"
BUNDLE_VERSION = 1
# A batch larger than this is refused before it is verified: memory stays bounded.
BATCH_FRAMES_MAX = 100_000
META_BYTES_MAX = 1024


class BundleError(RemoteProtocolError, IntegrityError):
    """A bundle is malformed, truncated, tampered or reordered."""


@dataclass(frozen=True, slots=True)
class ExportSummary:
    path: Path
    feeds: int
    frames: int
    checkpoints: int
    bytes: int


@dataclass(slots=True)
class ImportSummary:
    feeds: set[bytes] = field(default_factory=set)
    frames_seen: int = 0
    frames_appended: int = 0
    batches: int = 0


def export_bundle(store: LogStore, path: Path, *, feeds: Sequence[bytes] | None = None,
                  since: int = 0) -> ExportSummary:
    """Write the stored batches of ``feeds`` (default: all not stopped) ending after ``since``.

    The first batch of a feed may begin before ``since``: only whole batches verify.
    """
    if since < 0:
        raise HeimdallError(f"--since {since}: a sequence number is 0 or more")
    chosen = list(feeds) if feeds else _exportable(store)
    tmp = path.with_name(path.name + ".partial")
    frames = checkpoints = 0
    with open(tmp, "wb") as out:
        out.write(BUNDLE_MAGIC)
        header = {"version": BUNDLE_VERSION, "created_ms": time.time_ns() // 1_000_000,
                  "site": store.site.feed}
        out.write(encode_record(T_BUNDLE_HEADER, _pack(header)))
        for feed in chosen:
            reader = store.reader(feed)
            started = False
            for first, batch, note in reader.iter_batches(since, reader.state.size):
                if not started:
                    out.write(encode_record(T_BUNDLE_FEED, _pack({"feed": feed, "from": first})))
                    started = True
                out.write(b"".join(encode_record(T_FRAME, frame) for frame in batch))
                out.write(encode_record(T_CHECKPOINT, note))
                frames += len(batch)
                checkpoints += 1
        out.write(encode_record(T_BUNDLE_END, _pack({"frames": frames, "checkpoints": checkpoints})))
        out.flush()
        os.fsync(out.fileno())
        size = out.tell()
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return ExportSummary(path, len(chosen), frames, checkpoints, size)


def _exportable(store: LogStore) -> list[bytes]:
    stopped = store.stopped()
    for feed, reason in stopped.items():
        log.warning("not exporting stopped feed %s: %s", feed.hex(), reason)
    return [feed for feed in store.feeds() if feed not in stopped]


def _pack(value: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def import_bundle(store: LogStore, path: Path, frame_bytes_max: int) -> ImportSummary:
    """Verify and apply a bundle batch by batch; stop at the first bad record."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise HeimdallError(f"cannot read bundle {path}: {exc.strerror}") from None
    with handle:
        return _Importer(store, frame_bytes_max).run(handle)


class _Importer:
    """The state of one import: which feed section we are in, and the batch being read."""

    def __init__(self, store: LogStore, frame_bytes_max: int) -> None:
        self.store = store
        self.frame_bytes_max = frame_bytes_max
        self.summary = ImportSummary()
        self.feed: bytes | None = None
        self.next_seq = 0
        self.batch: list[bytes] = []
        self.offsets: list[int] = []  # bundle offset of each frame of the batch
        self.frames = 0
        self.checkpoints = 0

    def run(self, handle: BinaryIO) -> ImportSummary:
        records = self._records(handle)
        first = next(records, None)
        if first is None or first[0] != T_BUNDLE_HEADER:
            raise BundleError("bundle does not start with a header record", offset=len(BUNDLE_MAGIC))
        header = _unpack_map(first[2], "header", first[1])
        if header.get("version") != BUNDLE_VERSION:
            raise BundleError(f"bundle version {header.get('version')!r} is not supported",
                              offset=first[1])
        for record_type, offset, payload in records:
            if record_type == T_BUNDLE_END:
                self._end(offset, payload)
                if next(records, None) is not None:
                    raise BundleError("data after the end record", offset=offset)
                return self.summary
            self._record(record_type, offset, payload)
        raise BundleError("bundle is truncated: no end record", offset=handle.tell(),
                          **self._where())

    def _records(self, handle: BinaryIO) -> Iterator[tuple[int, int, bytes]]:
        if handle.read(len(BUNDLE_MAGIC)) != BUNDLE_MAGIC:
            raise BundleError("not a Heimdall bundle (bad magic bytes)", offset=0)
        limit = self.frame_bytes_max + NOTE_BYTES_MAX
        try:
            yield from iter_records(handle.read, len(BUNDLE_MAGIC), limit)
        except ShortRecord as exc:
            raise BundleError(f"bundle is truncated: {strip_position(exc)}", offset=exc.offset,
                              **self._where()) from None
        except BadRecord as exc:
            raise BundleError(f"damaged record: {strip_position(exc)}", offset=exc.offset,
                              **self._where()) from None

    def _where(self) -> dict[str, Any]:
        """Feed and sequence of the next frame expected (for errors between frames)."""
        if self.feed is None:
            return {}
        return {"feed": self.feed.hex(), "seq": self.next_seq}

    def _record(self, record_type: int, offset: int, payload: bytes) -> None:
        if record_type == T_BUNDLE_FEED:
            self._start_feed(offset, payload)
        elif record_type == T_FRAME:
            self._frame(offset, payload)
        elif record_type == T_CHECKPOINT:
            self._checkpoint(offset, payload)
        else:
            raise BundleError(f"unexpected record type {record_type:#x}", offset=offset,
                              **self._where())

    def _start_feed(self, offset: int, payload: bytes) -> None:
        if self.batch:
            raise BundleError("feed section ends inside a batch (no checkpoint)", offset=offset,
                              **self._where())
        start = _unpack_map(payload, "feed", offset)
        feed, first = start.get("feed"), start.get("from")
        if not isinstance(feed, bytes) or len(feed) != FEED_ID_BYTES or type(first) is not int \
                or first < 0:
            raise BundleError("feed record must hold a 32-byte feed id and a start", offset=offset)
        self.feed, self.next_seq = feed, first
        self.summary.feeds.add(feed)

    def _frame(self, offset: int, frame: bytes) -> None:
        if self.feed is None:
            raise BundleError("frame before any feed record", offset=offset)
        where: dict[str, Any] = {"offset": offset, "feed": self.feed.hex(), "seq": self.next_seq}
        if len(frame) <= HEADER_BYTES or not frame.startswith(FRAME_PREFIX):
            raise BundleError("malformed frame", **where)
        if frame[4:36] != self.feed:
            raise BundleError(f"frame of feed {frame[4:36].hex()} inside the section of another feed",
                              **where)
        found = int.from_bytes(frame[36:44], "big")
        if found != self.next_seq:
            raise BundleError(f"frame out of order: expected sequence {self.next_seq}, found {found} "
                              "(a frame is missing, duplicated or reordered)", **where)
        if len(self.batch) >= BATCH_FRAMES_MAX:
            raise BundleError(f"more than {BATCH_FRAMES_MAX} frames without a checkpoint", **where)
        self.batch.append(frame)
        self.offsets.append(offset)
        self.next_seq += 1
        self.frames += 1
        self.summary.frames_seen += 1

    def _checkpoint(self, offset: int, note: bytes) -> None:
        if self.feed is None or not self.batch:
            raise BundleError("checkpoint without frames", offset=offset, **self._where())
        feed, first = self.feed, self.next_seq - len(self.batch)
        try:
            result = self.store.accept(feed, first, self.batch, note)
        except ForkDetected as exc:
            raise ForkDetected(f"{strip_position(exc)} (bundle offset {self._offset_of(exc.seq)})",
                               feed=feed.hex(), seq=exc.seq) from exc
        except FeedStopped as exc:
            raise FeedStopped(f"{exc} (bundle offset {self.offsets[0]}, sequence {first})") from exc
        except IntegrityError as exc:
            seq = exc.seq if exc.seq is not None else first
            raise BundleError(f"batch rejected: {strip_position(exc)}", offset=self._offset_of(seq),
                              feed=feed.hex(), seq=seq) from exc
        self.summary.frames_appended += result.appended
        self.summary.batches += 1
        self.checkpoints += 1
        self.batch, self.offsets = [], []

    def _offset_of(self, seq: int | None) -> int:
        """Bundle offset of the frame ``seq`` of the current batch (else its first frame)."""
        first = self.next_seq - len(self.batch)
        if seq is not None and first <= seq < self.next_seq:
            return self.offsets[seq - first]
        return self.offsets[0]

    def _end(self, offset: int, payload: bytes) -> None:
        if self.batch:
            raise BundleError("bundle ends inside a batch (no checkpoint)", offset=offset,
                              **self._where())
        counts = _unpack_map(payload, "end", offset)
        if counts.get("frames") != self.frames or counts.get("checkpoints") != self.checkpoints:
            raise BundleError(f"end record counts {counts.get('frames')!r} frames and "
                              f"{counts.get('checkpoints')!r} checkpoints, the bundle holds "
                              f"{self.frames} and {self.checkpoints}", offset=offset)


def _unpack_map(payload: bytes, what: str, offset: int) -> dict[str, Any]:
    if len(payload) > META_BYTES_MAX:
        raise BundleError(f"{what} record is too large", offset=offset)
    try:
        value = msgpack.unpackb(payload, raw=False, strict_map_key=True, max_ext_len=0)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise BundleError(f"{what} record is not valid msgpack", offset=offset) from None
    if not isinstance(value, dict):
        raise BundleError(f"{what} record must be a map", offset=offset)
    return value

