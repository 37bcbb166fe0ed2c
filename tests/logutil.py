"""Helpers for the log tests: sites in temporary directories, fake time, bundle surgery."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from heimdall_core.events import encode_body
from heimdall_core.log.bundle import BUNDLE_MAGIC
from heimdall_core.log.feed import FeedLog, LogOptions
from heimdall_core.log.records import decode_record, encode_record
from heimdall_core.log.store import LogStore, init_site

# fsync off: these tests check logic and layouts; the crash test and the bench fsync.
FAST = LogOptions(fsync=False)


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self, now_ms: int = 1_700_000_000_000) -> None:
        self.now = now_ms

    def now_ms(self) -> int:
        return self.now


def make_site(path: Path, name: str = "site", options: LogOptions = FAST) -> LogStore:
    init_site(path, name)
    return LogStore(path, options)


def body(i: int, **extra: object) -> bytes:
    return encode_body("note", 1, {"i": i, "pad": "p" * 40, **extra})


def append_batches(writer: FeedLog, sizes: Sequence[int], start: int = 0, **extra: object
                   ) -> list[bytes]:
    """Append batches of the given sizes; return the bodies in order."""
    bodies = []
    n = start
    for size in sizes:
        batch = [body(n + k, **extra) for k in range(size)]
        writer.append_bodies(batch)
        bodies += batch
        n += size
    return bodies


def segment_path(store: LogStore, feed: bytes | None = None, index: int = -1) -> Path:
    directory = store.feed_dir(feed or store.site.feed)
    return sorted(directory.glob("seg-*.log"))[index]


def parse_records(data: bytes, start: int) -> list[tuple[int, int, bytes]]:
    """(type, offset, payload) of every record of a file's bytes from ``start``."""
    out = []
    offset = start
    while offset < len(data):
        record = decode_record(data, offset, 1 << 30)
        out.append((record.type, offset, record.payload))
        offset = record.end
    return out


def bundle_records(path: Path) -> list[tuple[int, bytes]]:
    data = path.read_bytes()
    assert data.startswith(BUNDLE_MAGIC)
    return [(kind, payload) for kind, _, payload in parse_records(data, len(BUNDLE_MAGIC))]


def write_bundle(path: Path, records: Sequence[tuple[int, bytes]]) -> list[int]:
    """Write a bundle of these records (CRCs recomputed); return each record's offset."""
    offsets = []
    data = bytearray(BUNDLE_MAGIC)
    for kind, payload in records:
        offsets.append(len(data))
        data += encode_record(kind, payload)
    path.write_bytes(bytes(data))
    return offsets
