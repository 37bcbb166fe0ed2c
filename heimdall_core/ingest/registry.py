"""What this site has ingested: dumps, their state and progress, derived from the log.

The log is the truth; this registry is a cache of it, kept in
``<data_dir>/ingest/registry.json`` and brought up to date by reading the events of the
site's own feeds appended since the last look. So a crash between an append and a
cache write loses nothing: the next look reads the events again.
Used for: re-ingest detection (same source and SHA-256), reporting incomplete dumps,
and resuming them (last acknowledged record position per part).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack

from heimdall_core import kinds
from heimdall_core.events import HEADER_BYTES
from heimdall_core.log.store import LogStore

REGISTRY_VERSION = 3  # 3: compression and mapping of each dump
_PEEK = {kinds.DUMP_STARTED[0].encode(), kinds.DUMP_FINISHED[0].encode(),
         kinds.RECORDS_INGESTED[0].encode()}


@dataclass(slots=True)
class DumpState:
    dump: str  # hex id
    source: str
    name: str
    sha256: str
    format: str
    parts: int
    started_ms: int
    finished: bool = False
    records: int = 0  # records acknowledged in the log
    quarantined: int = 0
    duplicate_of: str | None = None
    # part -> last acknowledged record position
    progress: dict[str, int] = field(default_factory=dict)
    size: int = -1
    ranges: list[list[int]] | None = None  # parts' byte ranges (start, end, first line)
    compression: str = "none"
    mapping: dict[str, str] = field(default_factory=dict)  # column -> kind


@dataclass(slots=True)
class _Cache:
    version: int = REGISTRY_VERSION
    scanned: dict[str, int] = field(default_factory=dict)  # feed hex -> events read
    dumps: dict[str, DumpState] = field(default_factory=dict)


def _peek_kind(frame: bytes) -> bytes | None:
    """The kind of an event from its body's first bytes, without decoding the payload."""
    body = memoryview(frame)[HEADER_BYTES:]
    if len(body) < 3 or body[0] != 0x93 or not 0xA0 <= body[1] <= 0xBF:
        return None
    length = body[1] - 0xA0
    return bytes(body[2:2 + length])


class DumpRegistry:
    def __init__(self, store: LogStore) -> None:
        self.store = store
        self.path = store.data_dir / "ingest" / "registry.json"
        self._cache = self._load()

    def _load(self) -> _Cache:
        try:
            raw = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return _Cache()
        if raw.get("version") != REGISTRY_VERSION:
            return _Cache()
        try:
            dumps = {key: DumpState(**value) for key, value in raw["dumps"].items()}
            return _Cache(REGISTRY_VERSION, {k: int(v) for k, v in raw["scanned"].items()}, dumps)
        except (TypeError, KeyError, ValueError):
            return _Cache()  # a damaged cache is rebuilt from the log

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": REGISTRY_VERSION, "scanned": self._cache.scanned,
                "dumps": {key: asdict(value) for key, value in self._cache.dumps.items()}}
        # A unique temporary name: `heimdall dumps` and a server may refresh at once.
        fd, tmp = tempfile.mkstemp(prefix=".registry-", dir=self.path.parent)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(data))
        os.replace(tmp, self.path)

    def refresh(self) -> None:
        """Read the own feeds' events appended since the last refresh."""
        changed = False
        for feed in self.store.own_feeds():
            reader = self.store.reader(feed)
            size = reader.state.size
            done = self._cache.scanned.get(feed.hex(), 0)
            if size <= done:
                continue
            for _, frame in reader.read_frames(done, size):
                kind = _peek_kind(frame)
                if kind in _PEEK:
                    self._apply(kind, frame)
            self._cache.scanned[feed.hex()] = size
            changed = True
        if changed:
            self._save()

    def _apply(self, kind: bytes, frame: bytes) -> None:
        # Own feeds only, already verified when written: a plain unpack is enough here.
        _, _, payload = msgpack.unpackb(frame[HEADER_BYTES:], raw=False)
        dump = payload["dump"].hex()
        if kind == b"dump.started":
            self._cache.dumps.setdefault(dump, DumpState(
                dump, payload["source"], payload["name"], payload["sha256"], payload["format"],
                payload["parts"], int.from_bytes(frame[44:52], "big"), size=payload["bytes"],
                ranges=payload.get("ranges"), compression=payload.get("compression") or "none",
                mapping=dict(payload.get("mapping") or {})))
            return
        state = self._cache.dumps.get(dump)
        if state is None:
            return
        if kind == b"records.ingested":
            records = payload["records"]
            if records:
                state.records += len(records)
                part = str(payload["part"])
                state.progress[part] = max(state.progress.get(part, 0), records[-1][0])
        else:
            state.finished = True
            state.records = payload["records"]
            state.quarantined = payload["quarantined"]
            state.sha256 = payload["sha256"] or state.sha256
            duplicate = payload.get("duplicate_of")
            state.duplicate_of = duplicate.hex() if isinstance(duplicate, bytes) else None

    def dumps(self) -> list[DumpState]:
        return sorted(self._cache.dumps.values(), key=lambda d: d.started_ms)

    def get(self, dump_hex: str) -> DumpState | None:
        return self._cache.dumps.get(dump_hex)

    def find_complete(self, source: str, sha256: str) -> DumpState | None:
        for state in self.dumps():
            if state.finished and state.source == source and state.sha256 == sha256 \
                    and state.duplicate_of is None:
                return state
        return None

    def find_incomplete(self, source: str, sha256: str) -> DumpState | None:
        for state in reversed(self.dumps()):
            if not state.finished and state.source == source and state.sha256 == sha256:
                return state
        return None

    def as_json(self) -> list[dict[str, Any]]:
        return [asdict(state) for state in self.dumps()]
