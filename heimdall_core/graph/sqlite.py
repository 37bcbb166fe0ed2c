"""The embedded graph back end: one SQLite file (WAL) through aiosqlite.

Schema, shaped for bulk projection (docs/graph-model.md, "SQLite back end"):

* Every vertex table has an integer surrogate key assigned in arrival order, and the
  content id as a UNIQUE column. Edges reference surrogates, so the indexes they live
  in grow at their end (new values get new, larger numbers) instead of at random
  places; the only random-order insert left per new value is its content id.
* ``sighting`` holds a record's (value id, field) pairs packed in one blob, content ids
  and not surrogates, so co-occurrence is counted and ranked (ties by id) from the
  sightings alone. "Where was this value seen" is the value's first (sighting, field),
  kept in its own row (``s1``, ``f1``), plus the rows of ``seen`` (value, sighting,
  field) WITHOUT ROWID for every later one: most values are seen once, so most records
  add no ``seen`` row at all. Entity edges are not stored: a sighting names its entity
  (its primary value), and entity -> value is read as the values of the sightings that
  name it.
* Property cells are msgpack maps in one column; they are merged in Python with the
  same rules as every other back end, only for vertices that already existed.
* A batch inserts new values in slices, each numbered by SQLite in content-id order
  (B-tree friendly), and hands each slice to SQLite's thread while Python builds the
  next. The bulk rows go as one ``INSERT ... SELECT`` per slice over a temporary table of
  row numbers, their numbers in one JSON array of fixed-width numbers and their blobs and
  texts concatenated in blob parameters: SQLite then walks the whole slice without Python's
  GIL (``executemany`` takes it back for every row, and the two threads took turns
  instead of using both cores). Values already held are known from a cache of values met
  lately, or from the insert's conflicts, and are merged and updated by content id.
  Numbers of values, entities and ``seen`` edges are looked up by SQLite, not in Python:
  Python's thread is the busier one.

One transaction per delta (``BEGIN IMMEDIATE`` ... ``COMMIT``) holds the effects and the
feed positions, so a crash at any point leaves the projection at a batch boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import operator
import sqlite3
import struct
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import msgpack
import orjson

from heimdall_core.errors import DatabaseUnavailable, GraphError
from heimdall_core.graph import model
from heimdall_core.graph.model import (
    CoValue,
    CoValues,
    Delta,
    GraphCounts,
    StateEntry,
    ValueDelta,
    ValueDumps,
    ValueInfo,
)
from heimdall_core.graph.rules import DUMP_PROPS, ORDER, Rule, RuleSet, dump_seen, lift, merge
from heimdall_core.graph.store import (
    CO_VALUES_DEFAULT,
    DUMP_SIGHTINGS_SCANNED_MAX,
    DUMPS_LISTED_MAX,
    SIGHTINGS_SCANNED_MAX,
)

SCHEMA_VERSION = 2  # 2: sighting pairs hold value ids; value holds its first sighting
PAGE_BYTES = 16_384  # fewer B-tree levels and page writes per random insert than 4 KiB
CACHE_BYTES_DEFAULT = 512 << 20
BUSY_TIMEOUT_MS = 10_000
WAL_CHECKPOINT_PAGES = 16_384
"""Checkpoint after ~256 MiB of WAL rather than SQLite's 16 MiB: a projection batch
dirties much the same index pages every time, and each checkpoint copies them once."""
SQL_VARIABLES_MAX = 500  # per IN (...) list: far under SQLite's limit
STATE_ROWS_PER_FETCH = 5_000
HOT_VALUES_MAX = 1 << 19
ORDERS_REMEMBERED_MAX = 65_536  # order keys in storage form, one per event: a few MiB
VALUE_ROWS_PER_STATEMENT = 16_384
"""Fresh values per INSERT: small enough that SQLite starts writing early in a batch, big
enough that each slice is still one ascending run through the id index."""
YOUNG_VALUES_MAX = 1 << 20
"""Value ids remembered as held, a set each, ~40 and ~80 MiB at most: values met again
(domains, popular addresses: *hot*) and values inserted lately (*young*, most of which are
never met again) skip the conflicting insert and the lookups that find them."""
FILE_NAME = "graph.sqlite"
SQLITE_VERSION_MIN = (3, 38, 0)
"""The bulk inserts use the ``->>`` operator (SQLite 3.38); Debian bookworm has 3.40."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS position (feed BLOB PRIMARY KEY, next_seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS feed (no INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS dump (di INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, props BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS field (
    fi INTEGER PRIMARY KEY, di INTEGER NOT NULL, col TEXT NOT NULL, kind TEXT NOT NULL,
    UNIQUE (di, col, kind));
CREATE TABLE IF NOT EXISTS value (
    vi INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, kind TEXT NOT NULL, v TEXT, bi BLOB,
    props BLOB NOT NULL, n INTEGER NOT NULL, s1 INTEGER, f1 INTEGER);
CREATE TABLE IF NOT EXISTS subject (id BLOB PRIMARY KEY, props BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sighting (
    si INTEGER PRIMARY KEY, di INTEGER NOT NULL, part INTEGER NOT NULL, pos INTEGER NOT NULL,
    seen_ms INTEGER NOT NULL, entity INTEGER, vals BLOB NOT NULL, sealed BLOB,
    UNIQUE (di, part, pos));
CREATE INDEX IF NOT EXISTS sighting_entity ON sighting (entity) WHERE entity IS NOT NULL;
CREATE TABLE IF NOT EXISTS seen (
    vi INTEGER NOT NULL, si INTEGER NOT NULL, fi INTEGER NOT NULL,
    PRIMARY KEY (vi, si, fi)) WITHOUT ROWID;
"""
_SCHEMA_OBJECTS = frozenset({"meta", "position", "feed", "dump", "field", "value", "subject", "sighting",
                             "sighting_entity", "seen"})
_TABLES = ("position", "feed", "dump", "field", "value", "subject", "sighting", "seen")

_packb = msgpack.Packer(use_bin_type=True).pack


def _unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


_PAIR = struct.Struct("<16sI")
"""A sighting's (value id, field number) pair as stored in its ``vals`` blob."""
FIELD_NUMBER_MAX = (1 << 32) - 1


def _field_bytes(fi: int) -> bytes:
    if not 0 < fi <= FIELD_NUMBER_MAX:
        raise GraphError(f"field number {fi} does not fit a sighting's pair (max {FIELD_NUMBER_MAX})")
    return fi.to_bytes(4, "little")


def _pack_pairs(pairs: Iterable[tuple[bytes, int]]) -> bytes:
    return b"".join(vid + _field_bytes(fi) for vid, fi in pairs)


def _unpack_pairs(blob: bytes) -> list[tuple[bytes, int]]:
    return list(_PAIR.iter_unpack(blob))


def _vids_of(blob: bytes) -> set[bytes]:
    return {vid for vid, _ in _PAIR.iter_unpack(blob)}


def _chunks(items: Sequence[Any], size: int = SQL_VARIABLES_MAX) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _marks(count: int) -> str:
    return ",".join("?" * count)


def _numbered(first: int, count: int) -> str:
    """``?first, ..., ?(first + count - 1)``: marks after numbered ones (an anonymous ``?``
    takes the number after the largest met so far, which may collide with a later one)."""
    return ",".join(f"?{n}" for n in range(first, first + count))



_SIGHTINGS_OF = (
    "SELECT s1 FROM value WHERE id = ?1 AND s1 IS NOT NULL "
    "UNION SELECT e.si FROM value v JOIN seen e ON e.vi = v.vi WHERE v.id = ?1")
"""The sightings of the value with id ?1 (each once): its first, kept in its row, and the rest."""

_PROP_NAMES = ("first_seen_ms", "last_seen_ms", "attrs", "seals", "enriched_by", "enriched_ms",
               "shredded_ms", *DUMP_PROPS)
"""Stored as small integers (the list is part of the schema version: append only)."""
_PROP_CODES = {name: code for code, name in enumerate(_PROP_NAMES)}


class _Cells:
    """The storage form of property cells, about half the bytes of the plain form.

    Property names in :data:`_PROP_NAMES` become small integers, and an order key (52
    bytes, 32 of them a feed id) becomes [ms, logical, feed number, seq], with feed
    numbers from the ``feed`` table. Readers get the plain cells back: nothing outside
    this back end sees the difference. Smaller rows matter because a new value's row is
    written twice (WAL, then the database file), at hundreds of thousands per second.
    """

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.numbers: dict[bytes, int] = {}  # feed id -> number
        self.feeds: dict[int, bytes] = {}
        self._rule_of: dict[tuple[str, str], Rule] = {}
        self._plans: dict[str, dict[str, tuple[int | str, Rule | None]]] = {}
        self._orders: dict[bytes, list[int]] = {}  # order key -> its storage form

    def load(self, rows: Iterable[Any]) -> None:
        self.feeds = {int(no): bytes(feed) for no, feed in rows}
        self.numbers = {feed: no for no, feed in self.feeds.items()}
        self._orders = {}  # numbers may have changed (a failed batch had numbered new feeds)

    def _rule(self, vtype: str, name: str) -> Rule:
        rule = self._rule_of.get((vtype, name))
        if rule is None:
            rule = self._rule_of[(vtype, name)] = self.rules.rule(vtype, name)
        return rule

    def _plan(self, vtype: str, name: str) -> tuple[int | str, Rule | None]:
        """(stored key, the rule when its cells hold order keys) for one property."""
        rule = self._rule(vtype, name)
        plan = (_PROP_CODES.get(name, name),
                rule if rule in (Rule.LWW, Rule.PRIORITY, Rule.COUNT) else None)
        self._plans.setdefault(vtype, {})[name] = plan
        return plan

    def pack(self, vtype: str, props: dict[str, Any]) -> bytes:
        """Hot: once per new or changed vertex."""
        plans = self._plans.get(vtype) or {}
        orders = self._orders
        out: dict[int | str, Any] = {}
        for name, cell in props.items():
            key, rule = plans.get(name) or self._plan(vtype, name)
            if rule is None:
                out[key] = cell
            elif rule is Rule.LWW:
                out[key] = [orders.get(cell[0]) or self._order(cell[0]), cell[1]]
            elif rule is Rule.PRIORITY:
                out[key] = [cell[0], self._order(cell[1]), cell[2]]
            else:
                out[key] = [self._event(event) for event in cell]
        packed: bytes = _packb(out)
        return packed

    def unpack(self, vtype: str, blob: bytes) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, cell in msgpack.unpackb(blob, raw=False, strict_map_key=False).items():
            name = _PROP_NAMES[key] if isinstance(key, int) else key
            rule = self._rule(vtype, name)
            if rule is Rule.LWW:
                cell = [self._order_bytes(cell[0]), cell[1]]
            elif rule is Rule.PRIORITY:
                cell = [cell[0], self._order_bytes(cell[1]), cell[2]]
            elif rule is Rule.COUNT:
                cell = [self.feeds[no] + seq.to_bytes(8, "big") for no, seq in cell]
            out[name] = cell
        return out

    def _order(self, order: bytes) -> list[int]:
        """Every cell an event contributes holds the same order key: convert it once."""
        parts = self._orders.get(order)
        if parts is None:
            if len(self._orders) >= ORDERS_REMEMBERED_MAX:
                self._orders = {}
            physical, logical, feed, seq = ORDER.unpack(order)
            parts = self._orders[order] = [physical, logical, self.numbers[feed], seq]
        return parts

    def _order_bytes(self, parts: list[int]) -> bytes:
        physical, logical, number, seq = parts
        return ORDER.pack(physical, logical, self.feeds[number], seq)

    def _event(self, event: bytes) -> list[int]:
        return [self.numbers[event[:32]], int.from_bytes(event[32:], "big")]


class SqliteStore:
    """:class:`~heimdall_core.graph.store.GraphStore` over one SQLite file."""

    def __init__(self, path: Path, rules: RuleSet, *, cache_bytes: int = CACHE_BYTES_DEFAULT) -> None:
        self.path = path
        self.rules = rules
        self._cache_bytes = cache_bytes
        self._conn: aiosqlite.Connection | None = None
        self._next: dict[str, int] = {}
        self._dump_ids: dict[bytes, int] = {}  # committed dump id -> di
        self._field_ids: dict[tuple[int, str, str], int] = {}  # committed (di, col, kind) -> fi
        self._hot: set[bytes] = set()  # committed value ids, of values seen again
        self._young: set[bytes] = set()  # committed value ids, of values inserted lately
        self._cells = _Cells(rules)
        self._ids_version = self._feeds_version = -1  # data_version our caches were loaded at
        # the file has another schema version or was built under other rules: only reset() works
        # What every use but reset() raises: the file has another schema version, or was
        # built under other merge rules (replay rebuilds it either way).
        self._old_schema: GraphError | None = None
        self._other_rules: GraphError | None = None
        self._row_numbers = 0  # rows of temp.row_number on this connection (0: not created)

    @property
    def backend(self) -> str:
        return "sqlite"

    # --- opening -------------------------------------------------------------------------

    async def open(self) -> None:
        if sqlite3.sqlite_version_info < SQLITE_VERSION_MIN:
            raise GraphError(
                f"the embedded graph needs SQLite {'.'.join(map(str, SQLITE_VERSION_MIN))} or newer "
                f"(JSON operators); this Python links SQLite {sqlite3.sqlite_version}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._row_numbers = 0
        try:
            self._conn = await aiosqlite.connect(self.path, isolation_level=None)
            await self._configure()
            self._old_schema = await self._outdated_schema()
            self._other_rules = None if self._old_schema else await self._rules_differ()
            if self._old_schema is None and self._other_rules is None:
                await self._write_meta()
                await self._load_ids()
        except sqlite3.Error as exc:
            await self.close()
            raise _translate(exc, f"cannot open the graph database {self.path}") from exc
        except BaseException:
            await self.close()
            raise

    async def _configure(self) -> None:
        conn = self._db
        await conn.execute(f"PRAGMA page_size = {PAGE_BYTES}")  # only takes effect on a new file
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        row = await (await conn.execute("PRAGMA journal_mode = WAL")).fetchone()
        if row is None or str(row[0]).lower() != "wal":
            raise GraphError(f"{self.path}: SQLite refused WAL mode; is it on a network file system?")
        # NORMAL in WAL mode: a power loss may drop the last commits but never corrupts,
        # and positions live in the same transactions, so the projector redoes exactly those.
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
        await conn.execute(f"PRAGMA cache_size = {-(self._cache_bytes // 1024)}")
        await conn.execute("PRAGMA temp_store = MEMORY")
        await conn.execute("PRAGMA foreign_keys = OFF")
        # Only create what is missing: a reader (the API, a query) must not need the write
        # lock that a projecting process may hold for seconds.
        held = {name for (name,) in await conn.execute_fetchall(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
        if not held >= _SCHEMA_OBJECTS:
            await conn.executescript(_SCHEMA)

    async def _outdated_schema(self) -> GraphError | None:
        """What every use but :meth:`reset` raises when the file has another schema version
        (a projection is disposable: ``replay`` rebuilds it in the current one)."""
        assert self._conn is not None
        rows = await self._conn.execute_fetchall("SELECT value FROM meta WHERE name = 'schema_version'")
        version = next((str(value) for (value,) in rows), None)
        if version is None or int(version) == SCHEMA_VERSION:
            return None
        return GraphError(f"{self.path} has graph schema version {version}; this build uses "
                          f"{SCHEMA_VERSION}: run 'heimdall replay' to rebuild it")

    async def _rebuild_schema(self) -> None:
        assert self._conn is not None
        for table in (*_TABLES, "meta"):
            await self._conn.execute(f"DROP TABLE IF EXISTS {table}")  # fixed names
        await self._conn.executescript(_SCHEMA)
        self._old_schema = None

    async def _rules_differ(self) -> GraphError | None:
        """What every use but :meth:`reset` raises when the graph was built under other merge
        rules: its values would be merged differently from now on (``replay`` rebuilds it)."""
        assert self._conn is not None
        rows = await self._conn.execute_fetchall("SELECT value FROM meta WHERE name = 'rules'")
        held = next((str(value) for (value,) in rows), None)
        if held is None or held == self.rules.fingerprint() or await self._is_empty(self._conn):
            return None
        return GraphError(f"{self.path} was projected under other merge rules (graph.rules or "
                          "graph.provider_priority changed): run 'heimdall replay' to rebuild it")

    async def _write_meta(self) -> None:
        conn = self._db
        rows: dict[str, str] = {name: value for name, value in
                                await conn.execute_fetchall("SELECT name, value FROM meta")}
        fingerprint = self.rules.fingerprint()
        if rows != {"schema_version": str(SCHEMA_VERSION), "rules": fingerprint}:
            await conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?), ('rules', ?)",
                               (str(SCHEMA_VERSION), fingerprint))

    @staticmethod
    async def _is_empty(conn: aiosqlite.Connection) -> bool:
        for table in ("position", "dump", "value", "sighting", "subject"):
            rows = await conn.execute_fetchall(f"SELECT EXISTS (SELECT 1 FROM {table})")  # noqa: S608 - fixed names
            if any(held for (held,) in rows):
                return False
        return True

    async def _data_version(self) -> int:
        """Changes when another connection commits (never for our own commits)."""
        return int(await self._scalar("PRAGMA data_version"))

    async def _refresh_for_reading(self) -> None:
        version = await self._data_version()
        if version != self._feeds_version:  # a projector elsewhere may have numbered new feeds
            self._cells.load(await self._db.execute_fetchall("SELECT no, id FROM feed"))
            self._feeds_version = version

    async def _load_ids(self) -> None:
        conn = self._db
        self._ids_version = self._feeds_version = await self._data_version()
        self._hot, self._young = set(), set()
        self._next = {
            table: int(await self._scalar(f"SELECT coalesce(max({key}), 0) + 1 FROM {table}"))  # noqa: S608
            for table, key in (("dump", "di"), ("field", "fi"), ("value", "vi"), ("sighting", "si"))
        }
        self._dump_ids = {bytes(i): di for i, di in await conn.execute_fetchall("SELECT id, di FROM dump")}
        self._cells.load(await conn.execute_fetchall("SELECT no, id FROM feed"))
        self._field_ids = {(di, col, kind): fi for fi, di, col, kind in
                           await conn.execute_fetchall("SELECT fi, di, col, kind FROM field")}

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(sqlite3.Error):
                await conn.close()

    @property
    def _db(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise GraphError("the graph store is not open")
        if self._old_schema is not None:
            raise self._old_schema
        if self._other_rules is not None:
            raise self._other_rules
        return self._conn

    async def _create_row_numbers(self) -> None:
        """The row source of the bulk statements (0, 1, ...), in the connection's temporary
        database: created outside any transaction, so that a rollback cannot undo it."""
        if self._row_numbers:
            return
        await self._db.execute("DROP TABLE IF EXISTS temp.row_number")
        await self._db.execute("CREATE TEMP TABLE row_number (i INTEGER PRIMARY KEY)")
        await self._db.execute(
            "INSERT INTO temp.row_number (i) WITH RECURSIVE k (i) AS "
            "(SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i + 1 < ?) SELECT i FROM k", (ROW_NUMBERS_MAX,))
        self._row_numbers = ROW_NUMBERS_MAX

    async def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = await (await self._db.execute(sql, params)).fetchone()
        return None if row is None else row[0]

    async def reset(self) -> None:
        try:
            if self._old_schema is not None:
                await self._rebuild_schema()
            self._other_rules = None  # emptied below, then the new rules written
            await self._db.execute("BEGIN IMMEDIATE")
            for table in _TABLES:
                await self._db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
            await self._db.execute("COMMIT")
            await self._write_meta()
            await self._load_ids()
        except sqlite3.Error as exc:
            await self._rollback()
            raise _translate(exc, "resetting the graph") from exc

    async def positions(self) -> dict[bytes, int]:
        try:
            rows = await self._db.execute_fetchall("SELECT feed, next_seq FROM position")
        except sqlite3.Error as exc:
            raise _translate(exc, "reading projection positions") from exc
        return {bytes(feed): int(seq) for feed, seq in rows}

    # --- applying ------------------------------------------------------------------------

    async def apply(self, delta: Delta) -> None:
        batch = _Batch(self, delta)
        try:
            await self._create_row_numbers()
            await self._db.execute("BEGIN IMMEDIATE")
            if await self._data_version() != self._ids_version:
                # Another writer (a second projector, a replay) committed: our ids and caches
                # are stale. Nothing else should write, but a stale cache must never corrupt.
                await self._load_ids()
                batch = _Batch(self, delta)
            await batch.run()
            await self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            await self._rollback()
            await self._reload_after_failure()
            raise _translate(exc, "applying a projection batch") from exc
        except BaseException:
            await self._rollback()
            await self._reload_after_failure()
            raise
        batch.committed()

    async def _rollback(self) -> None:
        if self._conn is not None and self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                await self._conn.execute("ROLLBACK")

    async def _reload_after_failure(self) -> None:
        # The projector reopens the store before it retries, so a failure here is harmless.
        with contextlib.suppress(sqlite3.Error, GraphError):
            await self._load_ids()

    # --- state ---------------------------------------------------------------------------

    async def iter_state(self) -> AsyncIterator[StateEntry]:
        conn = self._db
        await self._refresh_for_reading()
        fields = {fi: (bytes(dump), col, kind) for fi, dump, col, kind in await conn.execute_fetchall(
            "SELECT f.fi, d.id, f.col, f.kind FROM field f JOIN dump d ON d.di = f.di")}
        async for dump, props in self._rows("SELECT id, props FROM dump ORDER BY id"):
            yield StateEntry("dump", (bytes(dump), self._cells.unpack(model.DUMP, props)))
        for fi in sorted(fields, key=fields.__getitem__):
            yield StateEntry("field", fields[fi])
        async for vid, kind, clear, blind, props in self._rows(
                "SELECT id, kind, v, bi, props FROM value ORDER BY id"):
            yield StateEntry("value", (bytes(vid), kind, clear, None if blind is None else bytes(blind),
                                       self._cells.unpack(model.VALUE, props)))
        async for subject, props in self._rows("SELECT id, props FROM subject ORDER BY id"):
            yield StateEntry("subject", (bytes(subject), self._cells.unpack(model.SUBJECT, props)))
        async for entry in self._state_sightings(fields):
            yield entry
        async for entry in self._state_in_field(fields):
            yield entry
        async for entry in self._state_includes():
            yield entry

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> AsyncIterator[Any]:
        cursor = await self._db.execute(sql, params)
        try:
            while rows := await cursor.fetchmany(STATE_ROWS_PER_FETCH):
                for row in rows:
                    yield row
        finally:
            await cursor.close()

    async def _vids(self, vis: Iterable[int]) -> dict[int, bytes]:
        wanted = sorted(set(vis))
        out: dict[int, bytes] = {}
        for chunk in _chunks(wanted):
            rows = await self._db.execute_fetchall(
                f"SELECT vi, id FROM value WHERE vi IN ({_marks(len(chunk))})", chunk)  # noqa: S608
            out.update((vi, bytes(vid)) for vi, vid in rows)
        return out

    async def _state_sightings(self, fields: dict[int, tuple[bytes, str, str]]
                               ) -> AsyncIterator[StateEntry]:
        cursor = await self._db.execute(
            "SELECT d.id, s.part, s.pos, s.seen_ms, s.sealed, s.vals FROM dump d "
            "JOIN sighting s ON s.di = d.di ORDER BY d.id, s.part, s.pos")
        try:
            while rows := await cursor.fetchmany(STATE_ROWS_PER_FETCH):
                for dump, part, pos, seen_ms, sealed, vals in rows:
                    values = [(vid, fields[fi][1]) for vid, fi in _unpack_pairs(vals)]
                    yield StateEntry("sighting", (bytes(dump), part, pos, seen_ms,
                                                  [] if sealed is None else _unpackb(sealed), values))
        finally:
            await cursor.close()

    async def _state_in_field(self, fields: dict[int, tuple[bytes, str, str]]
                              ) -> AsyncIterator[StateEntry]:
        current: bytes | None = None
        group: set[int] = set()
        # A value's first field is in its own row (f1), later ones in seen.
        async for vid, first, fi in self._rows(
                "SELECT v.id, v.f1, s.fi FROM value v LEFT JOIN seen s ON s.vi = v.vi ORDER BY v.id"):
            vid = bytes(vid)
            if vid != current and current is not None:
                for key in sorted(fields[f] for f in group):
                    yield StateEntry("in_field", (current, *key))
                group = set()
            current = vid
            group.update(f for f in (first, fi) if f is not None)
        if current is not None:
            for key in sorted(fields[f] for f in group):
                yield StateEntry("in_field", (current, *key))

    async def _state_includes(self) -> AsyncIterator[StateEntry]:
        current: bytes | None = None
        members: set[bytes] = set()
        # CROSS JOIN keeps value (in id order) outside: no sort of every sighting in memory.
        async for primary, vals in self._rows(
                "SELECT v.id, s.vals FROM value v CROSS JOIN sighting s ON s.entity = v.vi ORDER BY v.id"):
            primary = bytes(primary)
            if primary != current and current is not None:
                for row in self._includes_rows(current, members):
                    yield row
                members = set()
            current = primary
            members.update(_vids_of(vals))
        if current is not None:
            for row in self._includes_rows(current, members):
                yield row

    @staticmethod
    def _includes_rows(primary: bytes, members: set[bytes]) -> list[StateEntry]:
        return [StateEntry("includes", (primary, vid)) for vid in sorted(members)]

    # --- queries -------------------------------------------------------------------------

    async def value(self, vid: bytes) -> ValueInfo | None:
        return (await self.values([vid])).get(vid)

    async def values(self, vids: Sequence[bytes]) -> dict[bytes, ValueInfo]:
        try:
            await self._refresh_for_reading()
            rows: list[Any] = []
            for chunk in _chunks(list(vids)):
                rows += await self._db.execute_fetchall(
                    f"SELECT id, kind, v, bi, props, n FROM value WHERE id IN ({_marks(len(chunk))})",  # noqa: S608
                    chunk)
            return await self._infos(rows)
        except sqlite3.Error as exc:
            raise _translate(exc, "reading values") from exc

    async def _infos(self, rows: Sequence[Any]) -> dict[bytes, ValueInfo]:
        decoded = [(bytes(vid), kind, clear, blind, self._cells.unpack(model.VALUE, props), n)
                   for vid, kind, clear, blind, props, n in rows]
        subjects = sorted({bytes(sub) for *_, props, _ in decoded for sub, _ in props.get("seals", [])})
        shredded: set[bytes] = set()
        for chunk in _chunks(subjects):
            found = await self._db.execute_fetchall(
                f"SELECT id FROM subject WHERE id IN ({_marks(len(chunk))})", chunk)  # noqa: S608
            shredded.update(bytes(sub) for (sub,) in found)
        out = {}
        for vid, kind, clear, blind, props, n in decoded:
            mine = frozenset(bytes(sub) for sub, _ in props.get("seals", []) if bytes(sub) in shredded)
            out[vid] = ValueInfo(vid, kind, clear, None if blind is None else bytes(blind), props,
                                 mine, int(n))
        return out

    async def value_dumps(self, vid: bytes, limit: int = DUMPS_LISTED_MAX,
                          sightings_max: int = DUMP_SIGHTINGS_SCANNED_MAX) -> ValueDumps:
        try:
            await self._refresh_for_reading()
            rows = await self._db.execute_fetchall(
                f"WITH hits (si) AS ({_SIGHTINGS_OF} ORDER BY 1 DESC LIMIT ?2) "  # noqa: S608 - a fixed fragment
                "SELECT d.id, d.props, count(*), min(s.seen_ms), max(s.seen_ms) "
                "FROM hits h JOIN sighting s ON s.si = h.si JOIN dump d ON d.di = s.di GROUP BY s.di",
                (vid, sightings_max))
        except sqlite3.Error as exc:
            raise _translate(exc, "reading where a value was seen") from exc
        out = []
        for dump, props, count, first, last in rows:
            cells = self._cells.unpack(model.DUMP, props)
            out.append(dump_seen(self.rules, bytes(dump), cells, int(count), int(first), int(last)))
        return ValueDumps.ranked(out, limit)

    async def co_values(self, vid: bytes, limit: int = CO_VALUES_DEFAULT,
                        sightings_max: int = SIGHTINGS_SCANNED_MAX,
                        skip_dumps: Sequence[bytes] = ()) -> CoValues:
        try:
            return await self._co_values(vid, limit, sightings_max, sorted(set(skip_dumps)))
        except sqlite3.Error as exc:
            raise _translate(exc, "reading co-occurring values") from exc

    async def _co_values(self, vid: bytes, limit: int, sightings_max: int, skip: list[bytes]) -> CoValues:
        if len(skip) > SQL_VARIABLES_MAX:
            raise GraphError(f"at most {SQL_VARIABLES_MAX} dumps can be left out of co-occurring values")
        if skip:  # a join per sighting, paid only by a value seen in a repeat upload
            sql = (f"WITH hits (si) AS ({_SIGHTINGS_OF}) "  # noqa: S608 - fixed fragments and marks
                   "SELECT h.si FROM hits h JOIN sighting s ON s.si = h.si "
                   f"WHERE s.di NOT IN (SELECT di FROM dump WHERE id IN ({_numbered(3, len(skip))})) "
                   "ORDER BY 1 DESC LIMIT ?2")
        else:
            sql = f"{_SIGHTINGS_OF} ORDER BY 1 DESC LIMIT ?2"
        sids = [si for (si,) in await self._db.execute_fetchall(sql, (vid, sightings_max + 1, *skip))]
        complete = len(sids) <= sightings_max
        sids = sids[:sightings_max]
        counts: dict[bytes, int] = {}
        for chunk in _chunks(sids):
            for (vals,) in await self._db.execute_fetchall(
                    f"SELECT vals FROM sighting WHERE si IN ({_marks(len(chunk))})", chunk):  # noqa: S608
                for other in _vids_of(vals):
                    counts[other] = counts.get(other, 0) + 1
        counts.pop(vid, None)
        # Pairs hold content ids, so ties are broken without reading the tied values.
        ranked = heapq.nsmallest(limit, counts.items(), key=lambda item: (-item[1], item[0]))
        infos = await self.values([other for other, _ in ranked])
        items = tuple(CoValue(infos[other], n) for other, n in ranked)
        return CoValues(items, len(sids), complete)

    async def counts(self) -> GraphCounts:
        try:
            numbers = [int(await self._scalar(f"SELECT count(*) FROM {table}"))  # noqa: S608
                       for table in ("dump", "field", "value", "sighting", "subject", "position")]
        except sqlite3.Error as exc:
            raise _translate(exc, "counting the graph") from exc
        return GraphCounts(*numbers)


class _Batch:
    """The statements of one delta, run inside the store's transaction."""

    def __init__(self, store: SqliteStore, delta: Delta) -> None:
        self.store = store
        self.db = store._db
        self.rules = store.rules
        self.delta = delta
        self.next = dict(store._next)
        self.dump_ids = dict(store._dump_ids)
        self.field_ids = dict(store._field_ids)
        self.known: list[bytes] = []  # values held, from the caches
        self.first: dict[bytes, int] = {}  # fresh value -> its first (si, fi), as _first_code
        self.seen: list[tuple[bytes, int]] = []  # every other (value, (si, fi) as _first_code) edge
        # Sightings as _INSERT_SIGHTINGS takes them: (si, di, part, pos, seen_ms) and, apart,
        # the bytes of each one's entity, pairs and sealed fields (b"" for none).
        self.sighting_rows: list[tuple[int, int, int, int, int]] = []
        self.entities: list[bytes] = []
        self.vals: list[bytes] = []
        self.sealed: list[bytes] = []
        self.arrived: list[bytes] = []  # the fresh values, in arrival order
        self.arrived_values: list[ValueDelta] = []  # and what the delta says of each
        self.hot: set[bytes] = set()  # values found already held: likely to come again
        self.inserted: Iterable[bytes] = ()  # values new in this batch
        self.values_before = self.values_top = 0  # total changes and last rowid before the inserts
        self.in_flight: list[asyncio.Future[Any]] = []  # statements sent and not yet awaited
        self.held_reads: list[asyncio.Future[Any]] = []  # (id, props) rows of the held values
        self.sighting_statements: list[tuple[str, tuple[Any, ...]]] = []  # built ahead

    def committed(self) -> None:
        store = self.store
        if len(store._hot) + len(self.hot) > HOT_VALUES_MAX:
            store._hot = set()
        store._hot.update(self.hot)
        if len(store._young) + len(self.arrived) > YOUNG_VALUES_MAX:
            store._young = set()  # a generation is dropped whole: cheaper than an LRU per entry
        store._young.update(self.inserted)
        self.store._next = self.next
        self.store._dump_ids = self.dump_ids
        self.store._field_ids = self.field_ids

    def _take(self, table: str, count: int) -> int:
        first = self.next[table]
        self.next[table] = first + count
        return first

    async def run(self) -> None:
        """Run the delta's statements; none is still running when this returns or raises
        (the store may roll back right after)."""
        try:
            await self._run()
        except BaseException:
            await _settle(self.in_flight)
            raise
        await _all(self.in_flight)

    def _send(self, statement: Awaitable[Any]) -> asyncio.Future[Any]:
        """Queue a statement on SQLite's thread without waiting for it (run() waits)."""
        future = asyncio.ensure_future(statement)
        self.in_flight.append(future)
        return future

    async def _run(self) -> None:
        """SQLite's thread is kept busy while Python prepares: the held values are read
        while the sightings are paired, and each statement's parameters are built while
        the statements before it run (applying a batch began with ~0.3-0.5 s of Python
        work while SQLite's thread sat idle)."""
        delta = self.delta
        await self._feeds()
        await self._dumps()
        await self._fields()
        if delta.values or delta.sightings:
            self._classify()
            self.held_reads = self._read_held(self.known)
            await asyncio.sleep(0)  # hand the reads to SQLite's thread now
            self._pair_sightings()
        if delta.values:
            await self._values()
        if delta.sightings:
            await self._sightings()
        if delta.subjects:
            await self._subjects()
        if delta.positions:
            await self.db.executemany(
                "INSERT INTO position VALUES (?, ?) "
                "ON CONFLICT (feed) DO UPDATE SET next_seq = max(next_seq, excluded.next_seq)",
                list(delta.positions.items()))

    # --- dumps and fields ----------------------------------------------------------------

    async def _feeds(self) -> None:
        """Number the feeds of this delta (every order key in it names one of them)."""
        cells = self.store._cells
        new = [feed for feed in self.delta.positions if feed not in cells.numbers]
        if not new:
            return
        first = max(cells.feeds, default=0) + 1
        rows = [(first + offset, feed) for offset, feed in enumerate(new)]
        await self.db.executemany("INSERT INTO feed (no, id) VALUES (?, ?)", rows)
        for number, feed in rows:  # undone by the store's reload if the transaction fails
            cells.numbers[feed] = number
            cells.feeds[number] = feed

    async def _dumps(self) -> None:
        cells = self.store._cells
        new, changed = [], []
        for dump, props in self.delta.dumps.items():
            di = self.dump_ids.get(dump)
            if di is None:
                di = self._take("dump", 1)
                self.dump_ids[dump] = di
                new.append((di, dump, cells.pack(model.DUMP, props)))
            elif props:
                held = cells.unpack(model.DUMP, await self.store._scalar(
                    "SELECT props FROM dump WHERE di = ?", (di,)))
                changed.append((cells.pack(model.DUMP, self.rules.merge_props(model.DUMP, held, props)), di))
        if new:
            await self.db.executemany("INSERT INTO dump (di, id, props) VALUES (?, ?, ?)", new)
        if changed:
            await self.db.executemany("UPDATE dump SET props = ? WHERE di = ?", changed)

    async def _fields(self) -> None:
        new = []
        for dump, col, kind in self.delta.fields:
            key = (self.dump_ids[dump], col, kind)
            if key not in self.field_ids:
                fi = self._take("field", 1)
                self.field_ids[key] = fi
                new.append((fi, *key))
        if new:
            await self.db.executemany("INSERT INTO field (fi, di, col, kind) VALUES (?, ?, ?, ?)", new)

    # --- values --------------------------------------------------------------------------

    def _classify(self) -> None:
        """Split the values into those held already (from the store's caches) and the rest
        (*fresh*, in arrival order: the order they lie in memory, which measured twice as
        fast to walk as id order). A fresh value that turns out to be held already is found
        from the insert's conflicts."""
        hot, young = self.store._hot, self.store._young
        arrived, arrived_values, known = self.arrived, self.arrived_values, self.known
        for vid, v in self.delta.values.items():
            if vid in hot or vid in young:
                known.append(vid)
            else:
                arrived.append(vid)
                arrived_values.append(v)

    def _pair_sightings(self) -> None:
        """Number the sightings and pack their pairs; split the (value, sighting, field)
        edges into each fresh value's first (stored in its own row) and the rest (``seen``).
        Entities stay value ids here: the insert looks their numbers up."""
        sightings = self.delta.sightings
        si = self._take("sighting", len(sightings))
        dump_ids, field_ids = self.dump_ids, self.field_ids
        fields = {fk: (fi, _field_bytes(fi)) for fk in self.delta.fields
                  for fi in (field_ids[(dump_ids[fk[0]], fk[1], fk[2])],)}
        first: dict[bytes, int] = dict.fromkeys(self.arrived, _NO_FIRST)
        seen: list[tuple[bytes, int]] = []
        rows = self.sighting_rows
        add_seen, add_row, take_first = seen.append, rows.append, first.get
        add_entity, add_vals, add_sealed = self.entities.append, self.vals.append, self.sealed.append
        for (dump, part, pos), s in sightings.items():
            parts: list[bytes] = []
            first_of_si = _first_code(si, 0)
            for vid, fk in s.values:
                f, packed = fields[fk]
                parts += (vid, packed)
                if take_first(vid, 0) is _NO_FIRST:  # a fresh value met for the first time
                    first[vid] = first_of_si + f
                else:
                    add_seen((vid, first_of_si + f))
            add_vals(b"".join(parts))
            add_entity(s.entity or b"")
            add_sealed(_packb(lift(Rule.UNION, [list(x) for x in s.sealed], b"", 0)) if s.sealed else b"")
            add_row((si, dump_ids[dump], part, pos, s.seen_ms))
            si += 1
        self.first, self.seen = first, seen

    def _read_held(self, vids: list[bytes]) -> list[asyncio.Future[Any]]:
        """Send the reads of held values' props (id, props rows), a chunk per statement."""
        return [self._send(self.db.execute_fetchall(
            f"SELECT id, props FROM value WHERE id IN ({_marks(len(chunk))})", chunk))  # noqa: S608
            for chunk in _chunks(vids)]

    async def _values(self) -> None:
        writes = await self._send_fresh()
        updates = []
        for read in self.held_reads:  # read before the inserts: merged while SQLite inserts
            updates += [self._merged(bytes(vid), props) for vid, props in await read]
        if self.delta.sightings:
            self._build_sightings()  # while SQLite inserts
        conflicted = await self._fresh_landed(writes)
        for read in self._read_held(conflicted):
            updates += [self._merged(bytes(vid), props) for vid, props in await read]
        step = self.store._row_numbers
        for start in range(0, len(updates), step):  # awaited by run(): no later statement reads them
            self._send(self._update_held(updates[start:start + step]))

    def _update_held(self, updates: list[tuple[bytes, int, bytes]]) -> Awaitable[Any]:
        """One statement for a run of held values' (props, added sightings, id): row by row
        (executemany) SQLite's thread took the GIL back for every row, ~50-90 us each."""
        doc = _numbers([*_offset_ends([len(props) for props, _, _ in updates]),
                        *[_NUMBER_OFFSET + count for _, count, _ in updates]])
        if doc is None:  # a negative count: row by row
            return self.db.executemany("UPDATE value SET props = ?, n = n + ? WHERE id = ?", updates)
        return self.db.execute(_UPDATE_HELD, (doc, b"".join([vid for _, _, vid in updates]),
                                              b"".join([props for props, _, _ in updates]), len(updates)))

    async def _send_fresh(self) -> list[asyncio.Future[Any]]:
        """Send the inserts of the fresh values, a slice at a time.

        SQLite numbers each slice in id order (ORDER BY in the statement), so the table's
        rowid B-tree is appended to and the id index sees ascending keys (numbered in
        arrival order instead, rows landed at random places in the table's tail: measured
        2.3x slower). Python walks the values in arrival order, the order they lie in
        memory. A slice is written by SQLite's thread while Python builds the next."""
        db, pack, first = self.db, self.store._cells.pack, self.first
        arrived, arrived_values = self.arrived, self.arrived_values
        self.values_before, self.values_top = db.total_changes, self.next["value"] - 1
        writes = []
        step = min(VALUE_ROWS_PER_STATEMENT, self.store._row_numbers)  # rows one statement can number
        for start in range(0, len(arrived), step):
            vids = arrived[start:start + step]
            values = arrived_values[start:start + step]
            props = [pack(model.VALUE, v.props) for v in values]
            params = _value_params(vids, values, props, first)
            if params is None:  # a NUL or a number out of range: row by row, in id order
                write = db.executemany(_INSERT_VALUE, sorted(
                    (vid, v.kind, v.value, v.blind_index, packed, v.sightings,
                     *(_first_edge(first[vid]) or (None, None)))
                    for vid, v, packed in zip(vids, values, props, strict=True)))
            else:
                write = db.execute(_INSERT_VALUES, params)
            writes.append(self._send(write))
            await asyncio.sleep(0)  # hand the statement to SQLite's thread now
        return writes

    async def _fresh_landed(self, writes: list[asyncio.Future[Any]]) -> list[bytes]:
        """Wait for the fresh values' inserts; returns those that were held already."""
        await _all(writes)
        landed = self.db.total_changes - self.values_before  # nothing else wrote meanwhile
        self.next["value"] += landed  # rowids of the landed rows: the ones after the old last
        if landed == len(self.arrived):
            self.inserted = self.arrived
            return []
        return await self._conflicted(self.values_top)

    async def _conflicted(self, top: int) -> list[bytes]:
        """Fresh values that were held already (met again after leaving the caches): their
        first edge goes to ``seen`` like every later one, and they are merged as held."""
        landed = {bytes(vid) for (vid,) in await self.db.execute_fetchall(
            "SELECT id FROM value WHERE vi > ?", (top,))}
        conflicted = [vid for vid in self.arrived if vid not in landed]
        for vid in conflicted:
            code = self.first.pop(vid)
            if code != _NO_FIRST:
                self.seen.append((vid, code))
        self.inserted = landed
        return conflicted

    def _merged(self, vid: bytes, held: bytes) -> tuple[bytes, int, bytes]:
        """The UPDATE row of a value held already (and remember it as one that comes again)."""
        self.hot.add(vid)
        cells, delta = self.store._cells, self.delta.values[vid]
        merged = self.rules.merge_props(model.VALUE, cells.unpack(model.VALUE, held), delta.props)
        return cells.pack(model.VALUE, merged), delta.sightings, vid

    # --- sightings -----------------------------------------------------------------------

    def _build_sightings(self) -> None:
        """The insert statements of the sightings, a run of row numbers each."""
        columns = (self.entities, self.vals, self.sealed)
        rows, step = self.sighting_rows, self.store._row_numbers
        for start in range(0, len(rows), step):
            part = slice(start, start + step)
            self.sighting_statements.append(
                self._sighting_statement(rows[part], *(column[part] for column in columns)))

    async def _sightings(self) -> None:
        if not self.sighting_statements:
            self._build_sightings()
        columns = (self.entities, self.vals, self.sealed)
        rows = self.sighting_rows
        inserts = [self._send(self.db.execute(*statement)) for statement in self.sighting_statements]
        seen = self.seen
        statements = self._seen_statements(seen)  # while SQLite inserts the sightings
        if sum([(await insert).rowcount for insert in inserts]) != len(rows):
            remap = await self._merge_sightings([
                (*row, entity or None, vals, sealed or None)
                for row, entity, vals, sealed in zip(rows, *columns, strict=True)])
            seen = [(vid, _first_code(remap.get(si, si), fi)) for vid, (si, fi) in
                    ((vid, divmod(code - _NUMBER_OFFSET, 1 << _FIELD_BITS)) for vid, code in seen)]
            statements = self._seen_statements(seen)
        for statement in statements:
            self._send(self.db.execute(*statement))

    def _seen_statements(self, seen: list[tuple[bytes, int]]) -> list[tuple[str, tuple[Any, ...]]]:
        step = self.store._row_numbers
        return [self._seen_statement(seen[start:start + step]) for start in range(0, len(seen), step)]

    @staticmethod
    def _sighting_statement(rows: list[tuple[int, int, int, int, int]], entities: list[bytes],
                            vals: list[bytes], sealed: list[bytes]) -> tuple[str, tuple[Any, ...]]:
        """One statement for a run of sightings (numbered in a row, at most the row numbers)."""
        _, dis, parts, positions, seen_ms = (list(column) for column in zip(*rows, strict=True))
        doc = _numbers([*_offset_counts(dis), *_offset_counts(parts),
                        *[_NUMBER_OFFSET + position for position in positions], *_offset_times(seen_ms),
                        *_offset_ends(map(len, entities)), *_offset_ends(map(len, vals)),
                        *_offset_ends(map(len, sealed))])
        blobs = (b"".join(entities), b"".join(vals), b"".join(sealed))
        if doc is None:  # a number out of range (a negative position): the JSON form
            spans = list(zip(rows, *_spans(entities), *_spans(vals), *_spans(sealed), strict=True))
            return _INSERT_SIGHTINGS_JSON, (orjson.dumps(spans), *blobs)
        return _INSERT_SIGHTINGS, (doc, *blobs, rows[0][0], len(rows))

    @staticmethod
    def _seen_statement(seen: list[tuple[bytes, int]]) -> tuple[str, tuple[Any, ...]]:
        vids = b"".join([vid for vid, _ in seen])
        doc = _numbers([code for _, code in seen])
        if doc is None:  # a sighting number out of range: the JSON form
            edges = [divmod(code - _NUMBER_OFFSET, 1 << _FIELD_BITS) for _, code in seen]
            return _INSERT_SEEN_JSON, (orjson.dumps(edges), vids)
        return _INSERT_SEEN, (doc, vids, len(seen))

    async def _merge_sightings(self, rows: list[tuple[Any, ...]]) -> dict[int, int]:
        """Slow path: some sightings were already held (a record position seen twice).
        Returns the held number of each sighting that was numbered anew."""
        remap: dict[int, int] = {}
        decrements: list[tuple[bytes]] = []
        for row in rows:
            found = await self.db.execute_fetchall(
                "SELECT si, entity, vals, sealed FROM sighting WHERE di = ? AND part = ? AND pos = ?",
                row[1:4])
            held = tuple(next(iter(found)))
            if held[0] != row[0]:
                remap[row[0]] = held[0]
                await self._merge_sighting(row, held, decrements)
        if decrements:
            await self.db.executemany("UPDATE value SET n = n - 1 WHERE id = ?", decrements)
        moved = [(remap[edge[0]], vid) for vid, edge in
                 ((vid, _first_edge(code)) for vid, code in self.first.items())
                 if edge is not None and edge[0] in remap]
        if moved:  # fresh values first seen in a held sighting
            await self.db.executemany("UPDATE value SET s1 = ? WHERE id = ?", moved)
        return remap

    async def _merge_sighting(self, row: tuple[Any, ...], held: tuple[Any, ...],
                              decrements: list[tuple[bytes]]) -> None:
        si, entity, vals, sealed = held
        old_pairs = _unpack_pairs(vals)
        old_vids = {vid for vid, _ in old_pairs}
        new_pairs = _unpack_pairs(row[6])
        decrements.extend((vid,) for vid in {vid for vid, _ in new_pairs} if vid in old_vids)
        pairs = old_pairs + [p for p in new_pairs if p not in old_pairs]
        merged_sealed = sealed
        if row[7] is not None:
            merged_sealed = row[7] if sealed is None else _packb(
                merge(Rule.UNION, _unpackb(sealed), _unpackb(row[7])))
        entity = await self._least_entity(entity, None if row[5] is None else await self.store._scalar(
            "SELECT vi FROM value WHERE id = ?", (row[5],)))
        await self.db.execute(
            "UPDATE sighting SET seen_ms = min(seen_ms, ?), entity = ?, vals = ?, sealed = ? WHERE si = ?",
            (row[4], entity, _pack_pairs(pairs), merged_sealed, si))

    async def _least_entity(self, a: int | None, b: int | None) -> int | None:
        """The entity whose value id is least (the model's rule for a sighting seen twice)."""
        if a is None or b is None or a == b:
            return b if a is None else a
        vids = await self.store._vids([a, b])
        return a if vids[a] <= vids[b] else b

    # --- subjects ------------------------------------------------------------------------

    async def _subjects(self) -> None:
        subjects = self.delta.subjects
        held: dict[bytes, bytes] = {}
        for chunk in _chunks(list(subjects)):
            held.update((bytes(sub), props) for sub, props in await self.db.execute_fetchall(
                f"SELECT id, props FROM subject WHERE id IN ({_marks(len(chunk))})", chunk))  # noqa: S608
        rows = []
        for subject, props in subjects.items():
            old = held.get(subject)
            cells = self.store._cells
            merged = props if old is None else self.rules.merge_props(
                model.SUBJECT, cells.unpack(model.SUBJECT, old), props)
            rows.append((subject, cells.pack(model.SUBJECT, merged)))
        await self.db.executemany("INSERT OR REPLACE INTO subject (id, props) VALUES (?, ?)", rows)


def _spans(blobs: list[bytes]) -> tuple[list[int], list[int]]:
    """Where each of ``blobs`` starts (1-based, as substr() counts) once they are joined,
    and its size."""
    sizes = list(map(len, blobs))
    starts = list(itertools.accumulate(sizes, initial=1))
    starts.pop()
    return starts, sizes


_NUMBER_OFFSET = 10 ** 18
_NUMBER_LIMIT = 9 * 10 ** 18
"""Bulk statements take their integer columns as one JSON array of numbers that all have 19
digits (offset by _NUMBER_OFFSET, so 0 <= n < 8 * 10**18), so that SQLite finds the k-th at a
fixed place and reads it with substr() and CAST. The JSON operators SQLite 3.40 offers
instead re-find the row's text for every field (measured: 2.7 us for a value row's 8
fields, ~0.6 us this way); the values come from orjson in C."""
_NUMBER_DIGITS = 19
_NUMBER_STRIDE = _NUMBER_DIGITS + 1  # orjson separates the numbers by one comma
_SMALL_NUMBERS = tuple(range(_NUMBER_OFFSET, _NUMBER_OFFSET + 4_096))
"""Offset forms of small counts, shared objects: offsetting by addition allocates one each."""
_FIELD_BITS = 32
_FIELD_MASK = (1 << _FIELD_BITS) - 1
ROW_NUMBERS_MAX = 65_536
"""Rows of the temporary table that numbers a bulk statement's rows (its row source)."""


def _first_code(si: int, fi: int) -> int:
    """A value's first (sighting, field) as one offset number (see _NUMBER_OFFSET)."""
    return _NUMBER_OFFSET + (si << _FIELD_BITS) + fi


_NO_FIRST = _first_code(0, 0)
"""A fresh value not met in any sighting (yet): sightings and fields are numbered from 1."""


def _first_edge(code: int) -> tuple[int, int] | None:
    if code == _NO_FIRST:
        return None
    si, fi = divmod(code - _NUMBER_OFFSET, 1 << _FIELD_BITS)
    return si, fi


def _number(position: str) -> str:
    """SQL for the number at ``position`` (an SQL expression) of parameter ?1."""
    return (f"(CAST(substr(?1, ({position}) * {_NUMBER_STRIDE} + 2, {_NUMBER_DIGITS}) AS INTEGER) "
            f"- {_NUMBER_OFFSET})")


def _offset_ends(sizes: Iterable[int]) -> list[int]:
    """Where each piece starts once the pieces are joined (1-based, as substr() counts), and
    after it the end of the last: piece k is [ends[k], ends[k + 1])."""
    return list(itertools.accumulate(sizes, initial=_NUMBER_OFFSET + 1))


def _offset_counts(counts: list[int]) -> Iterable[int]:
    """Counts as offset numbers; the caller checks that they are not negative."""
    if counts and max(counts) < len(_SMALL_NUMBERS):
        return map(_SMALL_NUMBERS.__getitem__, counts)
    return [_NUMBER_OFFSET + count for count in counts]


def _offset_times(times: list[int]) -> Iterable[int]:
    """Times repeat (one per event): offset each distinct one once."""
    offset = {time: _NUMBER_OFFSET + time for time in set(times)}
    return map(offset.__getitem__, times)


def _numbers(numbers: list[int]) -> bytes | None:
    """The JSON array of offset numbers, or None when one is out of range."""
    if numbers and (min(numbers) < _NUMBER_OFFSET or max(numbers) >= _NUMBER_LIMIT):
        return None
    return orjson.dumps(numbers)


_KINDS = operator.attrgetter("kind")
_SIGHTINGS = operator.attrgetter("sightings")


def _value_params(vids: list[bytes], values: list[ValueDelta], props: list[bytes],
                  first: dict[bytes, int]) -> tuple[Any, ...] | None:
    """The parameters of _INSERT_VALUES for one slice of fresh values, or None when it must go
    row by row (a NUL in a kind or value: SQLite's text functions end text there; a number
    out of range). Every number is checked where it is made, not the whole array again."""
    texts = [*map(_KINDS, values), *[v.value or "" for v in values]]  # kinds, then clear values
    joined = "".join(texts)
    if "\0" in joined:
        return None
    if joined.isascii():  # the common case: sizes in bytes are sizes in characters
        text, sizes = joined.encode("ascii"), list(map(len, texts))
    else:
        encoded = [text.encode() for text in texts]
        text, sizes = b"".join(encoded), list(map(len, encoded))
    blinds = [v.blind_index or b"" for v in values]
    counts = list(map(_SIGHTINGS, values))
    firsts = list(map(first.__getitem__, vids))
    ends = [_offset_ends(sizes), _offset_ends(map(len, blinds)), _offset_ends(map(len, props))]
    if not values or min(counts) < 0 or max(firsts) >= _NUMBER_LIMIT \
            or max(column[-1] for column in ends) >= _NUMBER_LIMIT:
        return None
    n = len(values)
    doc = orjson.dumps([*ends[0], *ends[1], *ends[2], *_offset_counts(counts), *firsts])
    return (doc, b"".join(vids), text, b"".join(blinds), b"".join(props), n,
            2 * n + 1, 3 * n + 2, 4 * n + 3, 5 * n + 3)


_INSERT_VALUE = (
    "INSERT INTO value (id, kind, v, bi, props, n, s1, f1) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO NOTHING")
_KIND_0, _KIND_1, _TEXT_0, _TEXT_1 = _number("i"), _number("i + 1"), _number("?6 + i"), _number("?6 + i + 1")
_BLIND_0, _BLIND_1 = _number("?7 + i"), _number("?7 + i + 1")
_PROPS_0, _PROPS_1 = _number("?8 + i"), _number("?8 + i + 1")
_FIRST = _number("?10 + i")
# ORDER BY: rows arrive in memory order, are numbered (rowid) in id order.
_INSERT_VALUES = (
    "INSERT INTO value (id, kind, v, bi, props, n, s1, f1) "  # noqa: S608 - fixed fragments
    f"SELECT substr(?2, i * 16 + 1, 16), CAST(substr(?3, {_KIND_0}, {_KIND_1} - {_KIND_0}) AS TEXT), "
    f"CASE WHEN {_BLIND_1} = {_BLIND_0} THEN CAST(substr(?3, {_TEXT_0}, {_TEXT_1} - {_TEXT_0}) AS TEXT) END, "
    f"nullif(substr(?4, {_BLIND_0}, {_BLIND_1} - {_BLIND_0}), x''), "
    f"substr(?5, {_PROPS_0}, {_PROPS_1} - {_PROPS_0}), {_number('?9 + i')}, "
    f"nullif({_FIRST} >> {_FIELD_BITS}, 0), nullif({_FIRST} & {_FIELD_MASK}, 0) "
    "FROM temp.row_number WHERE i < ?6 ORDER BY 1 ON CONFLICT (id) DO NOTHING")
_HELD_PROPS_0, _HELD_PROPS_1 = _number("u.i"), _number("u.i + 1")
_UPDATE_HELD = (  # a zero-length blob parameter reads as NULL: coalesce
    "UPDATE value SET "  # noqa: S608 - fixed fragments
    f"props = coalesce(substr(?3, {_HELD_PROPS_0}, {_HELD_PROPS_1} - {_HELD_PROPS_0}), x''), "
    f"n = n + {_number('?4 + 1 + u.i')} "
    "FROM (SELECT i, substr(?2, i * 16 + 1, 16) AS id FROM temp.row_number WHERE i < ?4) AS u "
    "WHERE value.id = u.id")
_INSERT_SIGHTINGS_JSON = (  # a zero-length blob parameter reads as NULL: coalesce
    "INSERT INTO sighting (si, di, part, pos, seen_ms, entity, vals, sealed) "
    "SELECT r ->> '$[0][0]', r ->> '$[0][1]', r ->> '$[0][2]', r ->> '$[0][3]', r ->> '$[0][4]', "
    "(SELECT vi FROM value WHERE id = substr(?2, r ->> 1, r ->> 2)), "
    "coalesce(substr(?3, r ->> 3, r ->> 4), x''), nullif(substr(?4, r ->> 5, r ->> 6), x'') "
    "FROM (SELECT value AS r FROM json_each(?1)) WHERE true ON CONFLICT (di, part, pos) DO NOTHING")
_ENTITY_0, _ENTITY_1 = _number("4 * ?6 + i"), _number("4 * ?6 + i + 1")
_VALS_0, _VALS_1 = _number("5 * ?6 + 1 + i"), _number("5 * ?6 + 2 + i")
_SEALED_0, _SEALED_1 = _number("6 * ?6 + 2 + i"), _number("6 * ?6 + 3 + i")
_INSERT_SIGHTINGS = (  # sightings are numbered in a row from ?5
    "INSERT INTO sighting (si, di, part, pos, seen_ms, entity, vals, sealed) "  # noqa: S608 - fixed fragments
    f"SELECT ?5 + i, {_number('i')}, {_number('?6 + i')}, {_number('2 * ?6 + i')}, {_number('3 * ?6 + i')}, "
    f"(SELECT vi FROM value WHERE id = substr(?2, {_ENTITY_0}, {_ENTITY_1} - {_ENTITY_0})), "
    f"coalesce(substr(?3, {_VALS_0}, {_VALS_1} - {_VALS_0}), x''), "
    f"nullif(substr(?4, {_SEALED_0}, {_SEALED_1} - {_SEALED_0}), x'') "
    "FROM temp.row_number WHERE i < ?6 ON CONFLICT (di, part, pos) DO NOTHING")
_INSERT_SEEN_JSON = (  # an edge may be a held value's first, kept in its row: never stored twice
    "INSERT OR IGNORE INTO seen (vi, si, fi) "
    "SELECT v.vi, r ->> 0, r ->> 1 FROM (SELECT key, value AS r FROM json_each(?1)) j "
    "CROSS JOIN value v ON v.id = substr(?2, j.key * 16 + 1, 16) "
    "WHERE NOT (v.s1 IS r ->> 0 AND v.f1 IS r ->> 1)")
_INSERT_SEEN = (  # sorted: the seen B-tree is written in key order
    "INSERT OR IGNORE INTO seen (vi, si, fi) "  # noqa: S608 - fixed fragments
    f"SELECT v.vi, e.si, e.fi FROM (SELECT i, {_number('i')} >> {_FIELD_BITS} AS si, "
    f"{_number('i')} & {_FIELD_MASK} AS fi FROM temp.row_number WHERE i < ?3) e "
    "CROSS JOIN value v ON v.id = substr(?2, e.i * 16 + 1, 16) "
    "WHERE NOT (v.s1 IS e.si AND v.f1 IS e.fi) ORDER BY 1, 2, 3")


async def _settle(futures: Sequence[asyncio.Future[Any]]) -> None:
    """Wait for every statement handed to SQLite's thread, whatever its outcome (the
    caller raises the failure it met first, if any)."""
    await asyncio.gather(*futures, return_exceptions=True)


async def _all(writes: Sequence[asyncio.Future[Any]]) -> None:
    """Wait for every statement handed to SQLite's thread, then raise the first failure
    (none may still run when the caller rolls back)."""
    for outcome in await asyncio.gather(*writes, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome


_UNAVAILABLE_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR,
                                sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PROTOCOL,
                                sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_READONLY})
"""Primary result codes of a database that is there but cannot be used right now (locked,
disk full or failing, file gone, read-only mount): worth waiting for. Anything else (a
statement SQLite rejects, a corrupt file) does not get better by retrying."""


def _translate(exc: sqlite3.Error, doing: str) -> Exception:
    """SQLite errors as ours: unreachable/locked/full is retryable, the rest is not."""
    message = f"{doing}: SQLite: {exc}"
    code = getattr(exc, "sqlite_errorcode", None)  # extended code; None when raised by Python
    if code is not None:
        retryable = code & 0xFF in _UNAVAILABLE_CODES
    else:
        retryable = isinstance(exc, sqlite3.OperationalError)
    return DatabaseUnavailable(message) if retryable else GraphError(message)


__all__ = ["FILE_NAME", "SqliteStore"]
