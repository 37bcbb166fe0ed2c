"""Export/import bundles: verified frames and their signed checkpoints in one file.

A bundle is the same frames and notes a peer would send, in a file, for sites with no
link. Import goes through :meth:`LogStore.accept`, the same verifier as network sync.

    8 bytes  magic b"HMDBNDL1"
    records  (record codec of records.py):
             BUNDLE_HEADER  msgpack {"version": 1, "created_ms": int, "site": bytes32}
             per feed: BUNDLE_FEED msgpack {"feed": bytes32, "from": int},
                       then FRAME records and CHECKPOINT records in log order
             BUNDLE_END     msgpack {"frames": int, "checkpoints": int}

Import applies batch after batch (each ends with a checkpoint). The first bad record
stops the import; its offset, feed and sequence are reported; nothing after it is applied.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import msgpack

from heimdall_core.errors import HeimdallError, IntegrityError, RemoteProtocolError
from heimdall_core.events import decode_header
from heimdall_core.log.feed import NOTE_BYTES_MAX
from heimdall_core.log.records import (
    RECORD_HEADER_BYTES,
    T_BUNDLE_END,
    T_BUNDLE_FEED,
    T_BUNDLE_HEADER,
    T_CHECKPOINT,
    T_FRAME,
    BadRecord,
    Record,
    ShortRecord,
    decode_record,
    encode_record,
)
from heimdall_core.log.store import LogStore

BUNDLE_MAGIC = b"HMDBNDL1"
BUNDLE_VERSION = 1
READ_CHUNK_BYTES = 1 << 20
BATCH_FRAMES_MAX = 100_000


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
    """Write the verified frames of ``feeds`` (default: all) from ``since`` to ``path``."""
    chosen = list(feeds) if feeds else store.feeds()
    tmp = path.with_name(path.name + ".partial")
    frames = checkpoints = 0
    with open(tmp, "wb") as out:
        out.write(BUNDLE_MAGIC)
        header = {"version": BUNDLE_VERSION, "created_ms": time.time_ns() // 1_000_000,
                  "site": store.site.feed}
        out.write(encode_record(T_BUNDLE_HEADER, msgpack.packb(header, use_bin_type=True)))
        for feed in chosen:
            reader = store.reader(feed)
            start_written = False
            for first, batch, note in reader.iter_batches(since, reader.state.size):
                if not start_written:
                    out.write(encode_record(T_BUNDLE_FEED, msgpack.packb(
                        {"feed": feed, "from": first}, use_bin_type=True)))
                    start_written = True
                out.write(b"".join(encode_record(T_FRAME, frame) for frame in batch))
                out.write(encode_record(T_CHECKPOINT, note))
                frames += len(batch)
                checkpoints += 1
        out.write(encode_record(T_BUNDLE_END, msgpack.packb(
            {"frames": frames, "checkpoints": checkpoints}, use_bin_type=True)))
        out.flush()
        os.fsync(out.fileno())
        size = out.tell()
    os.replace(tmp, path)
    return ExportSummary(path, len(chosen), frames, checkpoints, size)


def _iter_records(handle: BinaryIO, limit: int) -> Iterator[Record]:
    """Stream records of a bundle, reading a bounded window at a time."""
    magic = handle.read(len(BUNDLE_MAGIC))
    if magic != BUNDLE_MAGIC:
        raise BundleError("not a Heimdall bundle (bad magic bytes)", offset=0)
    buffer = b""
    position = len(BUNDLE_MAGIC)
    eof = False
    while not eof:
        chunk = handle.read(READ_CHUNK_BYTES)
        eof = not chunk
        buffer += chunk
        local = 0
        while local < len(buffer):
            try:
                record = decode_record(buffer, local, limit)
            except ShortRecord:
                if eof:
                    raise BundleError("bundle is truncated inside a record",
                                      offset=position + local) from None
                break
            except BadRecord as exc:
                raise BundleError(f"damaged record: {exc}", offset=position + local) from None
            yield Record(record.type, position + local, record.payload)
            local = record.end
        buffer = buffer[local:]
        position += local


def _unpack_map(record: Record, what: str) -> dict[str, object]:
    try:
        value = msgpack.unpackb(record.payload, raw=False, strict_map_key=True,
                                max_bin_len=1024, max_str_len=1024, max_array_len=64, max_map_len=64)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise BundleError(f"{what} record is not valid msgpack", offset=record.offset) from None
    if not isinstance(value, dict):
        raise BundleError(f"{what} record must be a map", offset=record.offset)
    return value


def import_bundle(store: LogStore, path: Path, frame_bytes_max: int) -> ImportSummary:
    """Verify and apply a bundle batch by batch; stop at the first bad record."""
    summary = ImportSummary()
    limit = frame_bytes_max + NOTE_BYTES_MAX + RECORD_HEADER_BYTES
    feed: bytes | None = None
    next_seq = 0
    batch: list[bytes] = []
    batch_first = 0
    batch_offset = 0
    ended = False
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed in finally
    except OSError as exc:
        raise HeimdallError(f"cannot read bundle {path}: {exc.strerror}") from None
    try:
        records = _iter_records(handle, limit)
        first = next(records, None)
        if first is None or first.type != T_BUNDLE_HEADER:
            raise BundleError("bundle does not start with a header record", offset=len(BUNDLE_MAGIC))
        header = _unpack_map(first, "header")
        if header.get("version") != BUNDLE_VERSION:
            raise BundleError(f"bundle version {header.get('version')!r} is not supported",
                              offset=first.offset)
        for record in records:
            if ended:
                raise BundleError("data after the end record", offset=record.offset)
            if record.type == T_BUNDLE_FEED:
                if batch:
                    raise BundleError("feed section ends without a checkpoint", offset=record.offset,
                                      feed=feed.hex() if feed else None, seq=batch_first)
                start = _unpack_map(record, "feed")
                raw_feed, raw_from = start.get("feed"), start.get("from")
                if not isinstance(raw_feed, bytes) or len(raw_feed) != 32 or not isinstance(raw_from, int):
                    raise BundleError("feed record must hold a 32-byte feed id and a start",
                                      offset=record.offset)
                feed, next_seq = raw_feed, raw_from
                summary.feeds.add(feed)
            elif record.type == T_FRAME:
                if feed is None:
                    raise BundleError("frame before any feed record", offset=record.offset)
                if not batch:
                    batch_first, batch_offset = next_seq, record.offset
                _check_position(record, feed, next_seq)
                batch.append(record.payload)
                next_seq += 1
                summary.frames_seen += 1
                if len(batch) > BATCH_FRAMES_MAX:
                    raise BundleError(f"more than {BATCH_FRAMES_MAX} frames without a checkpoint",
                                      offset=record.offset, feed=feed.hex(), seq=next_seq - 1)
            elif record.type == T_CHECKPOINT:
                if feed is None or not batch:
                    raise BundleError("checkpoint without frames", offset=record.offset)
                if len(record.payload) > NOTE_BYTES_MAX:
                    raise BundleError("checkpoint too large", offset=record.offset)
                try:
                    result = store.accept(feed, batch_first, batch, record.payload)
                except IntegrityError as exc:
                    raise BundleError(f"batch rejected: {exc}", offset=batch_offset,
                                      feed=feed.hex(), seq=exc.seq if exc.seq is not None
                                      else batch_first) from exc
                summary.frames_appended += result.appended
                summary.batches += 1
                batch = []
            elif record.type == T_BUNDLE_END:
                if batch:
                    raise BundleError("bundle ends inside a batch (no checkpoint)",
                                      offset=record.offset, seq=batch_first)
                ended = True
            else:
                raise BundleError(f"unexpected record type {record.type:#x}", offset=record.offset)
        if not ended:
            raise BundleError("bundle is truncated: no end record", offset=os.path.getsize(path),
                              feed=feed.hex() if feed else None, seq=batch_first if batch else next_seq)
    finally:
        handle.close()
    return summary


def _check_position(record: Record, feed: bytes, expected: int) -> None:
    try:
        header = decode_header(record.payload)
    except Exception as exc:
        raise BundleError(f"malformed frame: {exc}", offset=record.offset, feed=feed.hex(),
                          seq=expected) from None
    if header.feed != feed:
        raise BundleError(f"frame of feed {header.feed.hex()} inside the section of another feed",
                          offset=record.offset, feed=feed.hex(), seq=expected)
    if header.seq != expected:
        raise BundleError(f"frame out of order: expected sequence {expected}, found {header.seq}",
                          offset=record.offset, feed=feed.hex(), seq=expected)
