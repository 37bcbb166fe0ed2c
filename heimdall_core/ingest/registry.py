"""What this site has ingested: dumps, their state and progress, derived from the log.

The log is the truth; this registry is a cache of it, kept in
``<data_dir>/ingest/registry.json`` and brought up to date by reading the events of the
site's own feeds appended since the last look. So a crash between an append and a
cache write loses nothing: the next look reads the events again.
Used for: re-ingest detection (same source and SHA-256), reporting incomplete dumps,
and resuming them (last acknowledged record position per part).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import msgpack

from heimdall_core import kinds
from heimdall_core.events import HEADER_BYTES, decode_header
from heimdall_core.log.store import LogStore

# 3: compression and mapping of each dump; 4: superseded dumps, and a finished dump's
# counts no longer grown by its workers' feeds read after it (caches of 3 over-count);
# 5: rejected field values of finished dumps
REGISTRY_VERSION = 5
log = logging.getLogger("heimdall.ingest")
_T = TypeVar("_T")
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
    # Field values rejected by their kind's canonicalizer, from dump.finished; None while
    # unfinished, or when its dump.finished does not say (written by an older version).
    rejected_fields: int | None = None
    duplicate_of: str | None = None
    # Abandoned by `ingest --restart`: duplicate_of names the dump that replaced it.
    superseded: bool = False
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


class _Malformed(Exception):
    """An event of a dump kind whose payload does not have the documented shape."""


def _typed(payload: dict[str, Any], key: str, kind: type[_T]) -> _T:
    value = payload.get(key)
    if type(value) is not kind:
        raise _Malformed(f"{key!r} must be of type {kind.__name__}")
    return value


def _bin16(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    if type(value) is not bytes or len(value) != kinds.DUMP_ID_BYTES:
        raise _Malformed(f"{key!r} must be {kinds.DUMP_ID_BYTES} bytes of binary")
    return value.hex()


def _peek_kind(frame: bytes) -> bytes | None:
    """The kind of an event from its body's first bytes, without decoding the payload."""
    body = memoryview(frame)[HEADER_BYTES:]
    if len(body) < 3 or body[0] != 0x93 or not 0xA0 <= body[1] <= 0xBF:
        return None
    length = body[1] - 0xA0
    return bytes(body[2:2 + length])


def _cache_not_saved(exc: OSError) -> None:
    log.warning("dump registry: cache not saved (%s); the next look reads the log again",
                exc.strerror or type(exc).__name__)


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
        try:
            fd, tmp = tempfile.mkstemp(prefix=".registry-", dir=self.path.parent)
        except OSError as exc:
            _cache_not_saved(exc)
            return
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(data))
            os.replace(tmp, self.path)
        except OSError as exc:  # a full disk: the listing still answers, from the log
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            _cache_not_saved(exc)

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
        """Fold one event into the cache; a malformed one is skipped with a warning (it is
        read once: the scanned position moves past it), never allowed to stop the listing
        of every other dump or an ingest."""
        header = decode_header(frame)
        try:
            # Own feeds only, already verified when written: a plain unpack is enough here,
            # but the payload's shape is checked before anything is changed.
            _, _, payload = msgpack.unpackb(frame[HEADER_BYTES:], raw=False)
            if not isinstance(payload, dict):
                raise _Malformed("the payload is not a map")
            if kind == b"dump.started":
                self._started(payload, header.hlc.physical_ms)
            elif kind == b"records.ingested":
                self._records(payload)
            else:
                self._finished(payload)
        except (_Malformed, ValueError, TypeError, msgpack.UnpackException) as exc:
            log.warning("dump registry: feed %s seq %d: %s event skipped: %s",
                        header.feed.hex(), header.seq, kind.decode(errors="replace"), exc)

    def _started(self, payload: dict[str, Any], started_ms: int) -> None:
        dump = _bin16(payload, "dump")
        ranges = payload.get("ranges")
        if ranges is not None and not (isinstance(ranges, list) and all(
                isinstance(r, list) and len(r) == 3 and all(type(v) is int for v in r)
                for r in ranges)):
            raise _Malformed("'ranges' must be an array of [start, end, line] integers")
        mapping = payload.get("mapping") or {}
        if not isinstance(mapping, dict) or not all(type(v) is str for v in mapping.values()):
            raise _Malformed("'mapping' must be a map of strings")
        compression = payload.get("compression") or "none"
        if type(compression) is not str:
            raise _Malformed("'compression' must be a string")
        state = DumpState(dump, _typed(payload, "source", str), _typed(payload, "name", str),
                          _typed(payload, "sha256", str), _typed(payload, "format", str),
                          _typed(payload, "parts", int), started_ms,
                          size=_typed(payload, "bytes", int), ranges=ranges,
                          compression=compression, mapping=dict(mapping))
        self._cache.dumps.setdefault(dump, state)

    def _records(self, payload: dict[str, Any]) -> None:
        state = self._cache.dumps.get(_bin16(payload, "dump"))
        part = str(_typed(payload, "part", int))
        records = _typed(payload, "records", list)
        last = records[-1] if records else None
        if last is not None and not (isinstance(last, list) and last and type(last[0]) is int):
            raise _Malformed("a record must be [position, fields]")
        # A finished dump's counts are those of its dump.finished: a worker feed read after
        # the main feed (which holds dump.finished) must not add its records again.
        if state is None or state.finished or last is None:
            return
        state.records += len(records)
        state.progress[part] = max(state.progress.get(part, 0), last[0])

    def _finished(self, payload: dict[str, Any]) -> None:
        state = self._cache.dumps.get(_bin16(payload, "dump"))
        records, quarantined = _typed(payload, "records", int), _typed(payload, "quarantined", int)
        sha256 = _typed(payload, "sha256", str)
        duplicate = payload.get("duplicate_of")
        duplicate_of = None if duplicate is None else _bin16(payload, "duplicate_of")
        superseded = payload.get("superseded", False)
        if type(superseded) is not bool or (superseded and duplicate_of is None):
            raise _Malformed("'superseded' must be a boolean, true only with 'duplicate_of'")
        rejected = payload.get("rejected_fields")
        if rejected is not None and (type(rejected) is not int or rejected < 0):
            raise _Malformed("'rejected_fields' must be a non-negative integer")
        if state is None:
            return
        state.finished = True
        state.records, state.quarantined = records, quarantined
        state.rejected_fields = rejected
        state.sha256 = sha256 or state.sha256
        state.duplicate_of = duplicate_of
        state.superseded = superseded

    def dumps(self) -> list[DumpState]:
        return sorted(self._cache.dumps.values(), key=lambda d: d.started_ms)

    def get(self, dump_hex: str) -> DumpState | None:
        return self._cache.dumps.get(dump_hex)

    def find_complete(self, source: str, sha256: str) -> DumpState | None:
        """The first complete reading of this input (what a re-run without --force repeats)."""
        readings = self.complete(source, sha256)
        return readings[0] if readings else None

    def complete(self, source: str, sha256: str) -> list[DumpState]:
        """Every complete dump of this input that is not itself a repeat, oldest first:
        the readings of it (a forced run with another mapping is one more)."""
        return [state for state in self.dumps()
                if state.finished and state.source == source and state.sha256 == sha256
                and state.duplicate_of is None]

    def find_incomplete(self, source: str, sha256: str) -> DumpState | None:
        """The latest unfinished dump of this input (the one a re-run resumes)."""
        found = self.incomplete(source, sha256)
        return found[-1] if found else None

    def incomplete(self, source: str, sha256: str) -> list[DumpState]:
        """Every unfinished dump of this input, oldest first."""
        return [state for state in self.dumps()
                if not state.finished and state.source == source and state.sha256 == sha256]

    def as_json(self) -> list[dict[str, Any]]:
        return [asdict(state) for state in self.dumps()]
