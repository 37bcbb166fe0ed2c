"""The PostgreSQL + Apache AGE graph back end, through asyncpg.

The graph is an AGE graph (``graph.age_graph``, default ``heimdall``): every vertex and
edge of docs/graph-model.md is a row of an AGE label table, so ``cypher()`` sees all of
it. Beside the label tables, in the graph's own schema, plain ``hm_*`` tables hold what
merging and the SQL query paths need: each vertex's content id and graphid, and its merge
cells (msgpack). The schema is ``sql/NNN_*.sql``, applied at open and recorded in
``hm_migration``. docs/postgres-age.md has the schema, the measured write paths and the
indexes.

Writing (one transaction per delta, feed positions included):

* Vertex graphids are allocated here, in ranges reserved from the label's sequence under
  a transaction-level advisory lock, so edges can be written in the same pass as their
  vertices, without a round trip per row.
* Lookups first (which values and record positions exist), then one reservation (vertex
  graphids and bulk edge ids), then every row by binary ``COPY`` (agtype has a binary
  form: a version byte and the text) in chunks, each sent while the next is built,
  sightings and their edges before values (the rows that cost the server most go
  first); UPDATEs and the ``INSERT ... ON CONFLICT`` of pair edges whose start vertex is
  not new are queued with them, so the server has work while Python builds rows.
  Measured: binary COPY into a label table ~1.1M rows/s before secondary indexes, ~150k
  with a GIN index on properties (hence none on value: no query uses it), ~450-530k with
  the hash index on ``value``; Cypher ``MERGE`` of one record per call ~70-90 records/s.
* Merge rules are applied by the same pure :class:`RuleSet` as every other back end,
  to the cells of the vertices a delta touches that already existed (read in the same
  transaction, under the lock): order-independent and idempotent by construction, and
  equal cells give equal state hashes across back ends.

AGE label tables must keep AGE's own columns (``id``, ``properties``; edges also
``start_id``, ``end_id``): a label table with an extra column crashes ``cypher()``
``CREATE``. Hence the ``hm_*`` tables instead of key columns on the label tables.
"""

# ruff: noqa: S608
# SQL here interpolates one name only: the graph's schema, checked against GRAPH_NAME_RE
# when the store is built; every value travels as a query parameter or through COPY.

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import functools
import itertools
import logging
import operator
import re
import sys
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import asyncpg
import msgpack
import orjson

from heimdall_core.errors import DatabaseUnavailable, GraphError
from heimdall_core.graph import model
from heimdall_core.graph.model import (
    CoValue,
    CoValues,
    Delta,
    GraphCounts,
    SightingDelta,
    StateEntry,
    ValueDelta,
    ValueDumps,
    ValueInfo,
)
from heimdall_core.graph.rules import FACT_PREFIX, Rule, RuleSet, dump_seen, lift, merge, visible
from heimdall_core.graph.store import (
    CO_VALUES_DEFAULT,
    DUMP_SIGHTINGS_SCANNED_MAX,
    DUMPS_LISTED_MAX,
    SIGHTINGS_SCANNED_MAX,
)
from heimdall_core.pgdsn import FORM as DSN_FORM
from heimdall_core.pgdsn import dsn_problem, redact_dsn

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    from heimdall_core.config import Settings

    Conn = PoolConnectionProxy[asyncpg.Record]

log = logging.getLogger("heimdall.graph.age")

GRAPH_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,62}\Z")
"""AGE needs 3+ characters; PostgreSQL identifiers end at 63 bytes. No quoting games."""

COLUMN_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")
SQL_DIR_CHECKOUT = Path(__file__).resolve().parent.parent.parent / "sql"
SQL_DIR_INSTALLED = Path(sys.prefix) / "share" / "heimdall" / "sql"  # where a wheel puts sql/
MIGRATION_RE = re.compile(r"(\d{3})_[a-z0-9_]+\.sql\Z")

CONNECT_TIMEOUT_S = 10.0
NO_TYPE_PREFIX = "unknown type:"  # asyncpg's ValueError when set_type_codec finds no such type
POOL_CONNECTIONS_MAX = 2  # the writer, and the next batch's lookups while the writer commits (or a query)
STATE_ROWS_PER_FETCH = 5_000
COLUMN_SETS_CACHED = 4_096
KINDS_CACHED = 256
PAIR_SHIFT = 64  # a pair edge (start, end) as one int: graphids are 64 bits
PAIR_END_MASK = (1 << PAIR_SHIFT) - 1
COPY_CHUNK_ROWS = 65_536
"""Rows per COPY statement. asyncpg encodes a COPY's rows only once the statement before
it is done, and the server reads them as they are encoded (in 512 KiB messages): within a
COPY the two overlap, between two they take turns. Measured at 300,000 records: chunks of
65,536 rows (16,384 records of has_value) left Python idle 18-19 us a record at the end
of batches, against 21-23 with 16,384 (4,096)."""
EDGE_RECORDS_PER_COPY = 16_384  # records whose has_value edges (~5 each) go in one COPY
BUILD_SLICE_ITEMS = 1_024
"""Items built between turns of the event loop. A COPY needs two round trips before and
after its data; each waits for a turn, so a loop that yielded once per COPY chunk left the
server idle about half the time (measured: batch time = Python time + server time)."""
WRITE_BUFFER_HIGH_BYTES = 32 * 1024 * 1024
"""A connection's send buffer before asyncpg pauses a COPY: above the largest COPY chunk
(65,536 value rows of ~120-160 bytes; 16,384 records of has_value, ~80,000 rows of ~70)."""
ENTRY_BITS = 48  # graphid = label id << 48 | entry id
ADVISORY_NAMESPACE = "heimdall.graph:"

VERTEX_LABELS = ("dump", "field", "value", "sighting", "entity", "subject")
EDGE_LABELS = ("in_dump", "has_value", "in_field", "includes", "field_of")
HM_VALUE_COLUMNS = ("id", "gid", "kind", "v", "bi", "cells", "n", "egid")
SIGHTING_PROPS = b'{"part": %d, "position": %d, "seen_ms": %d}'  # a new sighting vertex's properties
EDGE_IDS_RESERVED = ("in_dump", "has_value", "in_field", "includes")  # edges a batch COPYs in bulk
HM_TABLES = ("hm_position", "hm_dump", "hm_field", "hm_value", "hm_subject", "hm_sighting")

SESSION_SETTINGS = {
    # Also set by init_connection; as startup parameters they survive the RESET ALL that
    # the pool runs when a connection is released.
    "search_path": 'ag_catalog, "$user", public',
    # The projection is rebuilt from the log and its positions commit with its effects:
    # losing the last commits in a server crash only makes the projector redo them.
    "synchronous_commit": "off",
    # Sorts and hashes of a batch's lookups stay in memory.
    "work_mem": "64MB",
    # Every query of this store is a handful of index lookups: parallel workers cost ~8 ms
    # to start, and JIT compiles plans that look expensive only because statistics lag a
    # bulk load (measured: co-values of a value seen once took 10 ms with one worker; a
    # whole query takes under 1 ms at the median without).
    "max_parallel_workers_per_gather": "0",
    "jit": "off",
}

T = TypeVar("T")
HasValueRow = tuple[int, int, bytes, int]  # start, end, properties, edge id
Chunk = tuple[str, Sequence[str], list[tuple[Any, ...]]]
"""One COPY statement: table, columns, rows."""
_packb = msgpack.Packer(use_bin_type=True).pack


def _unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


def _json(value: Any) -> bytes:
    """agtype's text form, UTF-8 (JSON is a subset of it): what agtype parameters take."""
    return orjson.dumps(value)


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, TimeoutError, asyncpg.PostgresConnectionError,
                        asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError,
                        asyncpg.CrashShutdownError, asyncpg.TooManyConnectionsError)):
        return True
    return isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)


def _translate(exc: BaseException, doing: str) -> GraphError:
    """asyncpg and socket errors as ours: unreachable is retryable, the rest is not."""
    if _unavailable(exc):
        return DatabaseUnavailable(f"{doing}: PostgreSQL is unreachable ({type(exc).__name__}: {exc})")
    return GraphError(f"{doing}: PostgreSQL: {type(exc).__name__}: {exc}")


async def init_connection(conn: asyncpg.Connection) -> None:
    """Every pooled connection: AGE loaded, its search path, agtype as text, graphid as int8."""
    try:
        # A role that is not superuser may LOAD only from $libdir/plugins (where the install
        # script links age.so); the docker image's superuser loads it by name.
        await conn.execute("LOAD '$libdir/plugins/age'")
    except asyncpg.PostgresError:
        await conn.execute("LOAD 'age'")
    await conn.execute('SET search_path = ag_catalog, "$user", public')
    await conn.execute("SET synchronous_commit = off")
    # agtype as text in Python, but over the binary protocol: its binary form is a version
    # byte and the text (as jsonb's), and binary COPY into label tables measured ~30%
    # faster than text COPY (asyncpg has no built-in agtype codec, hence "binary fails").
    # Parameters are the UTF-8 text (bytes), so encoding one is a concatenation in C: a
    # batch encodes ~11 agtype values per record, and a Python encoder per value cost
    # ~2 us of a record's Python time.
    await conn.set_type_codec("agtype", schema="ag_catalog", encoder=_agtype_encode,
                              decoder=_agtype_decode, format="binary")
    # graphid's binary form is an int8: lets graphids travel in arrays and binary COPY.
    await conn.set_builtin_type_codec("graphid", schema="ag_catalog", codec_name="int8")
    _deepen_write_buffer(conn)


def _deepen_write_buffer(conn: asyncpg.Connection) -> None:
    """Let a COPY chunk go to the socket in one turn of the event loop.

    asyncpg stops encoding a COPY whenever the transport holds more than its high-water
    mark (asyncio's default, 64 KiB) and goes on only in a later turn, after the socket
    drained: a chunk of ~1-2 MB took several turns, each a fold step or a slice of rows
    long, and the server, done with what it had, waited (measured: has_value COPYs ran with
    the server ~40% busy, their data late). Above the largest chunk, a chunk is encoded
    and handed to the kernel at once, and the server works on it while Python goes on.
    The transport is not part of asyncpg's typed interface, hence the guarded lookup."""
    transport = getattr(conn, "_transport", None)
    if isinstance(transport, asyncio.WriteTransport):
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH_BYTES)


AGTYPE_VERSION = b"\x01"


_agtype_encode: Callable[[bytes], bytes] = AGTYPE_VERSION.__add__


def _agtype_decode(data: bytes) -> str:
    if data[:1] != AGTYPE_VERSION:
        raise GraphError(f"agtype binary format version {data[:1]!r} is not known to this build")
    return data[1:].decode()


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def schema_dir() -> Path:
    """``sql/`` of a checkout (or editable install), else the one a wheel installed."""
    for directory in (SQL_DIR_CHECKOUT, SQL_DIR_INSTALLED):
        if directory.is_dir():
            return directory
    raise GraphError(f"the graph schema (sql/*.sql) is missing from this installation: looked in "
                     f"{SQL_DIR_CHECKOUT} and {SQL_DIR_INSTALLED}")


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The numbered migrations of ``sql/``, in order."""
    directory = schema_dir() if directory is None else directory
    if not directory.is_dir():
        raise GraphError(f"the graph schema directory {directory} is missing from this installation")
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = MIGRATION_RE.match(path.name)
        if match is None:
            raise GraphError(f"{path}: a migration is named NNN_name.sql")
        found.append(Migration(int(match.group(1)), path.name, path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise GraphError(f"{directory}: migrations must be numbered 001, 002, ... without gaps")
    return found


def render(sql: str, graph: str) -> str:
    """A migration for one graph (its name is checked against GRAPH_NAME_RE)."""
    return sql.replace("@graph_name@", f"'{graph}'").replace("@graph@", f'"{graph}"')


class AgeStore:
    """:class:`~heimdall_core.graph.store.GraphStore` over one AGE graph."""

    def __init__(self, rules: RuleSet, *, graph: str = "heimdall", dsn: str | None = None,
                 data_dir: Path | None = None) -> None:
        if not GRAPH_NAME_RE.match(graph):
            raise GraphError(f"graph.age_graph {graph!r}: 3 to 63 letters, digits or '_', "
                             "not starting with a digit")
        if dsn is None and data_dir is None:
            raise GraphError("an AGE store needs a DSN or a data directory with a start-db database")
        self.rules = rules
        self.graph = graph
        self._dsn = dsn
        self._data_dir = data_dir
        self._pool: asyncpg.Pool | None = None
        self._unreachable: str | None = None  # why the last open failed, while it stays closed
        self._other_rules: GraphError | None = None  # built under other merge rules: reset only
        self._where = f"graph {graph!r}"
        self._q = f'"{graph}"'
        self._lock_key = zlib.crc32((ADVISORY_NAMESPACE + graph).encode()) - (1 << 31)
        self._labels: dict[str, int] = {}
        self._dump_gids: dict[bytes, int] = {}
        self._field_gids: dict[tuple[bytes, str, str], int] = {}
        self._current: _InFlight | None = None  # the latest apply, while it runs

    @classmethod
    def from_settings(cls, settings: Settings, rules: RuleSet) -> AgeStore:
        dsn = settings.graph.postgres_dsn or None
        return cls(rules, graph=settings.graph.age_graph, dsn=dsn, data_dir=settings.data_dir)

    @property
    def backend(self) -> str:
        return "age"

    # --- opening -------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            await self._open()
        except DatabaseUnavailable as exc:
            self._unreachable = str(exc)
            raise
        self._unreachable = None

    async def _open(self) -> None:
        self._current = None
        self._other_rules = None
        dsn = self._dsn
        if dsn is None:
            dsn = await asyncio.to_thread(self._start_db_dsn)
        self._where = f"graph {self.graph!r} at {redact_dsn(dsn)}"
        problem = dsn_problem(dsn)
        if problem is not None:
            raise GraphError(f"graph.postgres_dsn ({redact_dsn(dsn)}): {problem}")
        try:
            self._pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=POOL_CONNECTIONS_MAX, init=init_connection,
                timeout=CONNECT_TIMEOUT_S, server_settings=SESSION_SETTINGS)
        except ValueError as exc:
            if str(exc).startswith(NO_TYPE_PREFIX):  # set_type_codec: no agtype in this database
                raise GraphError(f"{self._where}: Apache AGE is not installed in this database "
                                 f"({exc}); a superuser runs CREATE EXTENSION age") from None
            # The driver parses what dsn_problem let through; its words may quote the DSN.
            raise GraphError(f"graph.postgres_dsn ({redact_dsn(dsn)}): the driver cannot use it "
                             f"({type(exc).__name__}); write {DSN_FORM}") from None
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise _translate(exc, f"connecting to {self._where}") from None
        try:
            await self._migrate()
            self._other_rules = await self._rules_differ()
            if self._other_rules is None:
                await self._load_ids()
        except BaseException:
            await self.close()
            raise

    def _start_db_dsn(self) -> str:
        """The DSN of the running ``heimdall start-db`` database of the data directory."""
        from heimdall_core.dbctl import DbctlError, db_status, start_db

        assert self._data_dir is not None
        status = db_status(self._data_dir)
        if not status.running:
            raise DatabaseUnavailable(
                f"graph.postgres_dsn is empty and the database of {self._data_dir} is not running "
                f"({status.detail}): run 'heimdall start-db' or set graph.postgres_dsn")
        try:
            return start_db(self._data_dir).dsn  # running already: only reads port and secret
        except DbctlError as exc:
            raise DatabaseUnavailable(f"the database of {self._data_dir}: {exc}") from None

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), CONNECT_TIMEOUT_S)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                pool.terminate()

    @property
    def _db(self) -> asyncpg.Pool:
        if self._pool is None:
            if self._unreachable is not None:  # the projector reopens and retries
                raise DatabaseUnavailable(f"the graph store is not connected: {self._unreachable}")
            raise GraphError("the graph store is not open")
        return self._pool

    @contextlib.asynccontextmanager
    async def _conn(self, doing: str, *, any_rules: bool = False) -> AsyncIterator[Conn]:
        """A pooled connection; driver errors come out as DatabaseUnavailable or GraphError.
        A graph built under other rules serves only ``any_rules`` (reset) until rebuilt."""
        pool = self._db
        if self._other_rules is not None and not any_rules:
            raise self._other_rules
        try:
            async with pool.acquire() as conn:
                yield conn
        except GraphError:
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise _translate(exc, f"{doing} ({self._where})") from exc

    async def _migrate(self) -> None:
        migrations = load_migrations()
        q = self._q
        async with self._conn("migrating the graph schema") as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", self._lock_key)
            exists = await conn.fetchval("SELECT count(*) FROM ag_catalog.ag_graph WHERE name = $1",
                                         self.graph)
            if not exists:
                await conn.execute("SELECT ag_catalog.create_graph($1)", self.graph)
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {q}.hm_migration (version integer PRIMARY KEY, "
                               "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
            applied = {row[0] for row in await conn.fetch(f"SELECT version FROM {q}.hm_migration")}
            newest = len(migrations)
            if applied and max(applied) > newest:
                raise GraphError(f"{self._where} has schema version {max(applied)}; this build knows "
                                 f"{newest}: upgrade Heimdall, or use another graph.age_graph")
            for migration in migrations:
                if migration.version in applied:
                    continue
                await conn.execute(render(migration.sql, self.graph))
                await conn.execute(f"INSERT INTO {q}.hm_migration (version, name) VALUES ($1, $2)",
                                   migration.version, migration.name)
                log.info("%s: applied migration %s", self._where, migration.name)

    async def _rules_differ(self) -> GraphError | None:
        """What every use but :meth:`reset` raises when the graph was built under other merge
        rules (its values would be merged differently from now on); ``replay`` rebuilds it.
        Otherwise the rules are recorded, so that a later change of them is seen."""
        q = self._q
        fingerprint = self.rules.fingerprint()
        async with self._conn("checking the merge rules") as conn, conn.transaction():
            held = await conn.fetchval(f"SELECT value FROM {q}.hm_meta WHERE name = 'rules'")
            if held is not None and held != fingerprint and not await self._is_empty(conn):
                return GraphError(f"{self._where} was projected under other merge rules (graph.rules or "
                                  "graph.provider_priority changed): run 'heimdall replay' to rebuild it")
            await self._write_rules(conn)
        return None

    async def _write_rules(self, conn: Conn) -> None:
        await conn.execute(f"INSERT INTO {self._q}.hm_meta VALUES ('rules', $1) ON CONFLICT (name) "
                           "DO UPDATE SET value = EXCLUDED.value", self.rules.fingerprint())

    async def _is_empty(self, conn: Conn) -> bool:
        q = self._q
        for table in ("hm_position", "hm_dump", "hm_value", "hm_sighting", "hm_subject"):
            if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {q}.{table})"):
                return False
        return True

    async def _load_ids(self) -> None:
        q = self._q
        async with self._conn("loading the graph's labels") as conn:
            self._labels = {}
            for label in (*VERTEX_LABELS, *EDGE_LABELS):
                self._labels[label] = int(await conn.fetchval(
                    "SELECT ag_catalog._label_id($1, $2)", self.graph, label))
            dumps = await conn.fetch(f"SELECT id, gid FROM {q}.hm_dump")
            self._dump_gids = {bytes(i): gid for i, gid in dumps}
            self._field_gids = {(bytes(dump), col, kind): gid for gid, dump, col, kind in
                                await conn.fetch(f"SELECT gid, dump, col, kind FROM {q}.hm_field")}

    # --- writing -------------------------------------------------------------------------

    async def reset(self) -> None:
        q = self._q
        tables = ", ".join([f"{q}._ag_label_vertex", f"{q}._ag_label_edge",
                            *(f"{q}.{t}" for t in HM_TABLES)])
        async with self._conn("resetting the graph", any_rules=True) as conn, conn.transaction():
            await self._lock(conn)
            await conn.execute(f"TRUNCATE {tables}")  # a parent's TRUNCATE includes its label tables
            await self._write_rules(conn)  # the graph is rebuilt under the rules of now
        self._dump_gids, self._field_gids = {}, {}
        if self._other_rules is not None:  # open() left the ids unloaded
            self._other_rules = None
            await self._load_ids()

    async def positions(self) -> dict[bytes, int]:
        async with self._conn("reading feed positions") as conn:
            rows = await conn.fetch(f"SELECT feed, next_seq FROM {self._q}.hm_position")
        return {bytes(feed): int(seq) for feed, seq in rows}

    async def apply(self, delta: Delta) -> None:
        """Apply a delta in one transaction.

        May be called again while an apply is in flight, once :meth:`apply_built` returned
        (store.OverlappingApply): the later batch then does its lookups on the second
        connection, reserves its graphids and builds its rows while the server still
        writes the earlier one, and sends nothing until the earlier one committed; if that
        one failed, the later one fails without writing."""
        previous, current = self._current, _InFlight()
        self._current = current
        try:
            if previous is not None:
                await previous.built.wait()
            if previous is None or previous.finished.is_set():
                if previous is not None and not previous.committed:
                    raise GraphError(f"{self._where}: a projection batch was not applied: the one before "
                                     "it failed")
                await self._apply_alone(delta, current)
            else:
                await self._apply_after(delta, previous, current)
            current.committed = True
        finally:
            current.batch = None  # the next batch took what it needed in its lookups
            current.built.set()
            current.finished.set()
            if self._current is current:
                self._current = None

    async def apply_built(self) -> None:
        """Wait until the apply in flight, if any, has built and queued all of its rows (what
        is left of it is the server's work and the commit)."""
        current = self._current
        if current is not None:
            await current.built.wait()

    async def _lock(self, conn: Conn) -> int:
        """Take the graph's writer lock for this transaction; count the write (hm_writes)."""
        await conn.execute("SELECT pg_advisory_xact_lock($1)", self._lock_key)
        serial = await conn.fetchval(f"UPDATE {self._q}.hm_writes SET serial = serial + 1 RETURNING serial")
        return int(serial)

    async def _apply_alone(self, delta: Delta, current: _InFlight) -> None:
        async with self._conn("applying a projection batch") as conn, conn.transaction():
            current.serial = await self._lock(conn)
            batch = await self._write(conn, delta, current)
        batch.committed()

    async def _write(self, conn: Conn, delta: Delta, current: _InFlight) -> _Batch:
        """A batch looked up, built and written inside the transaction of ``conn``."""
        batch = current.batch = _Batch(self, delta)
        ordered = _Ordered(conn, self.graph)
        try:
            await batch.run(ordered)
            current.built.set()
            await ordered.settle()
        finally:
            await ordered.abandon()
        return batch

    async def _apply_after(self, delta: Delta, previous: _InFlight, current: _InFlight) -> None:
        """Look up and build ``delta`` while ``previous`` is written; write it after."""
        assert previous.batch is not None
        batch = current.batch = _Batch(self, delta, after=previous.batch)
        ordered = _Ordered(None, self.graph)  # holds its statements until the transaction is open
        ahead = asyncio.create_task(self._run_ahead(batch, ordered, current))
        ahead.add_done_callback(_retrieved)  # its failure is raised below, or moot
        try:
            await previous.finished.wait()
            if not previous.committed:
                raise GraphError(f"{self._where}: a projection batch was not applied: the one before "
                                 "it failed")
            async with self._conn("applying a projection batch") as conn, conn.transaction():
                current.serial = await self._lock(conn)
                redo = await self._redo(ahead, batch, previous, current)
                if redo:
                    # Nothing looked up ahead was sent: look the batch up again, in here.
                    log.info("%s: %s; looking the batch up again", self._where, redo)
                    await _cancelled(ahead)
                    batch = await self._write(conn, delta, current)
                else:
                    ordered.open(conn)
                    try:
                        await ahead
                        await ordered.settle()
                    finally:
                        await ordered.abandon()
            batch.committed()
        finally:
            await _cancelled(ahead)

    @staticmethod
    async def _redo(ahead: asyncio.Task[None], batch: _Batch, previous: _InFlight,
                    current: _InFlight) -> str | None:
        """Why a batch looked up ahead must be looked up again in its transaction, if it must.

        Another writer committed between the two batches (the lookups may be stale); or
        the lookups failed: the second connection may have broken while the database went
        away, and asyncpg may report that on a connection it handed out as "another
        operation is in progress" rather than as a lost connection. The transaction's own
        statements then say whether the database is away."""
        if previous.serial is None or current.serial != previous.serial + 1:
            return "another writer committed meanwhile"
        looked_up = asyncio.create_task(batch.looked_up.wait())
        try:
            await asyncio.wait([ahead, looked_up], return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _cancelled(looked_up)
        if batch.looked_up.is_set() or ahead.cancelled() or ahead.exception() is None:
            return None
        return f"its lookups failed ({type(ahead.exception()).__name__})"

    async def _run_ahead(self, batch: _Batch, ordered: _Ordered, current: _InFlight) -> None:
        """A batch's lookups on the second connection, then its rows, queued on ``ordered``."""
        async with self._conn("looking up a projection batch") as reader:
            batch.reads = _Reads(reader)
            await batch.run(ordered)
        current.built.set()

    # --- state ---------------------------------------------------------------------------

    async def iter_state(self) -> AsyncIterator[StateEntry]:
        q = self._q
        async with self._conn("reading the graph state") as conn, \
                conn.transaction(readonly=True, isolation="repeatable_read"):  # one consistent state
            fields = {int(gid): (bytes(dump), col, kind) for gid, dump, col, kind in
                      await conn.fetch(f"SELECT gid, dump, col, kind FROM {q}.hm_field")}
            for dump, cells in await conn.fetch(f"SELECT id, cells FROM {q}.hm_dump ORDER BY id"):
                yield StateEntry("dump", (bytes(dump), _unpackb(cells)))
            for key in sorted(fields.values()):
                yield StateEntry("field", key)
            async for vid, kind, clear, blind, cells in self._rows(
                    conn, f"SELECT id, kind, v, bi, cells FROM {q}.hm_value ORDER BY id"):
                yield StateEntry("value", (bytes(vid), kind, clear, None if blind is None else bytes(blind),
                                           _unpackb(cells)))
            for subject, cells in await conn.fetch(f"SELECT id, cells FROM {q}.hm_subject ORDER BY id"):
                yield StateEntry("subject", (bytes(subject), _unpackb(cells)))
            async for entry in self._state_sightings(conn):
                yield entry
            async for entry in self._state_pairs(conn, fields):
                yield entry

    async def _rows(self, conn: Conn, sql: str, *args: Any) -> AsyncIterator[Any]:
        cursor = await conn.cursor(sql, *args)
        while rows := await cursor.fetch(STATE_ROWS_PER_FETCH):
            for row in rows:
                yield row

    async def _state_sightings(self, conn: Conn) -> AsyncIterator[StateEntry]:
        q = self._q
        cursor = await conn.cursor(
            f"SELECT d.id, s.part, s.pos, s.seen_ms, s.sealed, s.gid FROM {q}.hm_sighting s "
            f"JOIN {q}.hm_dump d ON d.gid = s.dump ORDER BY d.id, s.part, s.pos")
        while rows := await cursor.fetch(STATE_ROWS_PER_FETCH):
            values: dict[int, list[tuple[bytes, str]]] = {}
            for sid, vid, props in await conn.fetch(
                    f"SELECT e.start_id, v.id, e.properties FROM {q}.has_value e "
                    f"JOIN {q}.hm_value v ON v.gid = e.end_id WHERE e.start_id = ANY($1::graphid[])",
                    [row[5] for row in rows]):
                held = values.setdefault(int(sid), [])
                held.extend((bytes(vid), column) for column in orjson.loads(props)["columns"])
            for dump, part, pos, seen_ms, sealed, gid in rows:
                yield StateEntry("sighting", (bytes(dump), int(part), int(pos), int(seen_ms),
                                              [] if sealed is None else _unpackb(sealed),
                                              values.get(int(gid), [])))

    async def _state_pairs(self, conn: Conn,
                           fields: dict[int, tuple[bytes, str, str]]) -> AsyncIterator[StateEntry]:
        q = self._q
        group: list[tuple[bytes, str, str]] = []
        current: bytes | None = None
        async for vid, fgid in self._rows(
                conn, f"SELECT v.id, e.end_id FROM {q}.in_field e JOIN {q}.hm_value v ON v.gid = e.start_id "
                      "ORDER BY v.id"):
            vid = bytes(vid)
            if vid != current and current is not None:
                for key in sorted(group):
                    yield StateEntry("in_field", (current, *key))
                group = []
            current = vid
            group.append(fields[int(fgid)])
        if current is not None:
            for key in sorted(group):
                yield StateEntry("in_field", (current, *key))
        async for primary, member in self._rows(
                conn, f"SELECT p.id, m.id FROM {q}.includes e JOIN {q}.hm_value p ON p.egid = e.start_id "
                      f"JOIN {q}.hm_value m ON m.gid = e.end_id ORDER BY p.id, m.id"):
            yield StateEntry("includes", (bytes(primary), bytes(member)))

    # --- queries -------------------------------------------------------------------------

    async def value(self, vid: bytes) -> ValueInfo | None:
        return (await self.values([vid])).get(vid)

    async def values(self, vids: Sequence[bytes]) -> dict[bytes, ValueInfo]:
        q = self._q
        async with self._conn("reading values") as conn:
            rows = await conn.fetch(f"SELECT id, kind, v, bi, cells, n FROM {q}.hm_value "
                                    "WHERE id = ANY($1::bytea[])", list(vids))
            return await self._infos(conn, rows)

    async def _infos(self, conn: Conn, rows: Sequence[Any]) -> dict[bytes, ValueInfo]:
        decoded = [(bytes(vid), kind, clear, blind, _unpackb(cells), n)
                   for vid, kind, clear, blind, cells, n in rows]
        subjects = sorted({bytes(sub) for *_, cells, _ in decoded for sub, _ in cells.get("seals", [])})
        shredded: set[bytes] = set()
        if subjects:
            shredded = {bytes(sub) for (sub,) in await conn.fetch(
                f"SELECT id FROM {self._q}.hm_subject WHERE id = ANY($1::bytea[])", subjects)}
        out = {}
        for vid, kind, clear, blind, cells, n in decoded:
            mine = frozenset(bytes(sub) for sub, _ in cells.get("seals", []) if bytes(sub) in shredded)
            out[vid] = ValueInfo(vid, kind, clear, None if blind is None else bytes(blind), cells, mine,
                                 int(n))
        return out

    async def value_dumps(self, vid: bytes, limit: int = DUMPS_LISTED_MAX,
                          sightings_max: int = DUMP_SIGHTINGS_SCANNED_MAX) -> ValueDumps:
        q = self._q
        async with self._conn("reading where a value was seen") as conn:
            # The newest sightings, as co_values reads them; then each one's dump by index
            # lookups whatever the statistics say (OFFSET 0 keeps the planner from turning
            # them into a scan of every sighting: right after a bulk load, before ANALYZE,
            # it guessed thousands of rows per value and did).
            rows = await conn.fetch(
                f"SELECT d.id, d.cells, c.n, c.first, c.last FROM (SELECT s.dump, count(*) AS n, "
                f"min(s.seen_ms) AS first, max(s.seen_ms) AS last FROM (SELECT e.start_id "
                f"FROM {q}.has_value e WHERE e.end_id = (SELECT gid FROM {q}.hm_value WHERE id = $1) "
                f"ORDER BY 1 DESC LIMIT $2) h CROSS JOIN LATERAL (SELECT dump, seen_ms "
                f"FROM {q}.hm_sighting WHERE gid = h.start_id OFFSET 0) s GROUP BY s.dump) c "
                f"JOIN {q}.hm_dump d ON d.gid = c.dump", vid, sightings_max)
        out = []
        for dump, cells, count, first, last in rows:
            props = _unpackb(cells)
            out.append(dump_seen(self.rules, bytes(dump), props, int(count), int(first), int(last)))
        return ValueDumps.ranked(out, limit)

    async def co_values(self, vid: bytes, limit: int = CO_VALUES_DEFAULT,
                        sightings_max: int = SIGHTINGS_SCANNED_MAX,
                        skip_dumps: Sequence[bytes] = ()) -> CoValues:
        async with self._conn("reading co-occurring values") as conn:
            if skip_dumps:  # a lookup per sighting, paid only by a value seen in a repeat upload
                rows = await conn.fetch(self._co_values_skipping_sql, vid, sightings_max, limit,
                                        sorted(set(skip_dumps)))
            else:
                rows = await conn.fetch(self._co_values_sql, vid, sightings_max, limit)
            scanned = int(rows[0][0])
            ranked = [row for row in rows if row[1] is not None]
            infos = await self._infos(conn, [row[2:] for row in ranked])
        items = tuple(CoValue(infos[bytes(row[2])], int(row[1])) for row in ranked)
        return CoValues(items, min(scanned, sightings_max), scanned <= sightings_max)

    @functools.cached_property
    def _co_values_sql(self) -> str:
        """One statement (one round trip, where it took four): the value's newest
        ``$2 + 1`` sightings; the values of the first ``$2``, counted from each sighting's
        ``vals`` (its values' content ids); the top ``$3`` by count then id, with what
        values() reads of each. The first column is how many sightings were read; a value
        not held reads none and gives one row of NULLs.

        ``vals`` saves a lookup per co-occurring value: through the edges, a value seen in
        200 records read ~1,000 random index pages (its sightings' edges, then each
        co-value's id for the tie-break by id), 6-24 ms with a cold cache at 1M records.
        It is the ids end to end in one bytea: a ``bytea[]`` cost the write path ~15%.
        Every step is an index lookup whatever the statistics say (``= ANY(ARRAY(...))``
        rather than a join the planner could turn into a hash join over a whole table, as
        it did right after a bulk load, before ANALYZE: 127 ms instead of 1)."""
        return self._co_values_over(
            f"SELECT start_id FROM {self._q}.has_value WHERE end_id = (SELECT gid FROM own)")

    @functools.cached_property
    def _co_values_skipping_sql(self) -> str:
        """:attr:`_co_values_sql` without the sightings of the dumps whose ids are in
        ``$4`` (repeat uploads): each sighting's dump is looked up by its graphid."""
        q = self._q
        return self._co_values_over(
            f"SELECT e.start_id FROM {q}.has_value e WHERE e.end_id = (SELECT gid FROM own) "
            f"AND (SELECT dump FROM {q}.hm_sighting WHERE gid = e.start_id) "
            f"<> ALL (ARRAY(SELECT gid FROM {q}.hm_dump WHERE id = ANY($4::bytea[])))")

    def _co_values_over(self, sightings: str) -> str:
        q = self._q
        return (
            f"WITH own AS MATERIALIZED (SELECT gid FROM {q}.hm_value WHERE id = $1), "
            f"sids AS MATERIALIZED (SELECT ARRAY({sightings} ORDER BY 1 DESC LIMIT $2 + 1) AS a), "
            f"ranked AS (SELECT v AS id, count(*) AS n FROM {q}.hm_sighting s CROSS JOIN LATERAL "
            f"(SELECT substring(s.vals FROM i FOR {model.ID_BYTES}) FROM generate_series(1, length(s.vals), "
            f"{model.ID_BYTES}) i) u(v) WHERE s.gid = ANY((SELECT a[1:$2] FROM sids)::graphid[]) AND v <> $1 "
            "GROUP BY v ORDER BY n DESC, v LIMIT $3) "
            "SELECT cardinality((SELECT a FROM sids)), r.n, v.id, v.kind, v.v, v.bi, v.cells, v.n "
            f"FROM (SELECT) one LEFT JOIN (ranked r JOIN {q}.hm_value v ON v.id = r.id) ON true "
            "ORDER BY r.n DESC, v.id")

    async def counts(self) -> GraphCounts:
        q = self._q
        sql = "SELECT " + ", ".join(f"(SELECT count(*) FROM {q}.{t})" for t in
                                    ("hm_dump", "hm_field", "hm_value", "hm_sighting", "hm_subject",
                                     "hm_position"))
        async with self._conn("counting the graph") as conn:
            row = await conn.fetchrow(sql)
        assert row is not None
        return GraphCounts(*(int(n) for n in row))

    async def cypher(self, query: str, columns: Sequence[str] = ("result",)) -> list[tuple[str, ...]]:
        """Run a read-only Cypher query on this graph; each row's columns as agtype text."""
        if "$$" in query:
            raise GraphError("a Cypher query may not contain '$$'")
        bad = [name for name in columns if not COLUMN_NAME_RE.match(name)]
        if bad or not columns:
            raise GraphError(f"Cypher result columns must be names of letters, digits and '_': {bad}")
        spec = ", ".join(f'"{name}" ag_catalog.agtype' for name in columns)
        async with self._conn("running a Cypher query") as conn, conn.transaction(readonly=True):
            rows = await conn.fetch(f"SELECT * FROM ag_catalog.cypher('{self.graph}', $$ {query} $$) "
                                    f"AS ({spec})")
        return [tuple(row) for row in rows]


# --- one delta -----------------------------------------------------------------------------


class _InFlight:
    """One apply of a store, as the apply after it sees it."""

    def __init__(self) -> None:
        self.batch: _Batch | None = None  # set once its lookups may start; dropped when it ends
        self.serial: int | None = None  # the hm_writes count its transaction wrote
        self.committed = False
        self.built = asyncio.Event()  # all of its rows are built and queued (or it ended)
        self.finished = asyncio.Event()


class _Reads:
    """A batch's lookups on the store's second connection (outside any transaction)."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self.conn.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        return await self.conn.fetchrow(sql, *args)


class _Ordered:
    """A connection whose COPYs and result-less statements run in the background, in
    order, while the batch builds the next rows (PostgreSQL works on one core while Python
    works on the other); a statement whose result the batch needs first waits for them.
    Measured: ~1.4x per batch for COPYs alone; queueing the UPDATEs too keeps the server
    busy while Python builds rows instead of the two taking turns.

    Made without a connection, it holds every statement until :meth:`open` gives it one
    (a batch built while the one before it is still being written)."""

    def __init__(self, conn: Conn | None, schema: str) -> None:
        self._conn = conn
        self.schema = schema
        self._opened = asyncio.Event()
        if conn is not None:
            self._opened.set()
        self._queue: collections.deque[Callable[[], Awaitable[object]]] = collections.deque()
        self._inflight: asyncio.Task[None] | None = None  # runs the queue; kept if it failed

    @property
    def conn(self) -> Conn:
        assert self._conn is not None, "statements are held until the connection is open"
        return self._conn

    def open(self, conn: Conn) -> None:
        """Send what was held, and everything after it, on ``conn`` (in a transaction)."""
        self._conn = conn
        self._opened.set()
        if self._queue and self._inflight is None:
            self._inflight = asyncio.create_task(self._send())

    def _chain(self, work: Callable[[], Awaitable[object]]) -> None:
        self._queue.append(work)
        if self._inflight is None and self._conn is not None:
            self._inflight = asyncio.create_task(self._send())

    async def _send(self) -> None:
        """Run the queued statements one after the other, in one task: the next starts in
        the same turn of the event loop as the last one's answer arrives. (A task per
        statement, awaiting the one before, cost one more turn per statement, and a turn
        lasts a fold step or a slice of rows.) A failure stops the queue and stays in the
        task, for settle."""
        while self._queue:
            await self._queue.popleft()()
        self._inflight = None

    def copy(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        self._chain(lambda: self.conn.copy_records_to_table(table, schema_name=self.schema,
                                                            columns=list(columns), records=rows))

    def queue(self, sql: str, *args: Any) -> None:
        """A statement whose result nothing reads: sent after everything before it."""
        self._chain(lambda: self.conn.execute(sql, *args))

    async def settle(self) -> None:
        """Wait for the statements queued so far; their failure is raised here."""
        if self._inflight is not None:
            await self._inflight  # on success it ends with the queue empty and clears itself

    async def abandon(self) -> None:
        """After a failure elsewhere: let the statement in flight end, whatever its outcome,
        and drop the rest, before the transaction rolls back (one statement at a time on a
        connection)."""
        self._queue.clear()
        if self._inflight is not None:
            task, self._inflight = self._inflight, None
            with contextlib.suppress(Exception):
                await task

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        await self._opened.wait()
        await self.settle()
        return await self.conn.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        await self._opened.wait()
        await self.settle()
        return await self.conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        await self._opened.wait()
        await self.settle()
        return await self.conn.fetchval(sql, *args)


class _Fetches(Protocol):
    """Where a batch's lookups go: its transaction (_Ordered) or the second connection."""

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]: ...

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None: ...


def _retrieved(task: asyncio.Task[Any]) -> None:
    """Mark a task's failure as seen (asyncio logs an unseen one when the task is freed)."""
    if not task.cancelled():
        task.exception()


async def _cancelled(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` unless it ended, and wait for it to end, whatever its outcome."""
    if not task.done():
        task.cancel()
    await asyncio.wait([task])  # a cancellation of the caller still reaches it
    if not task.cancelled():
        task.exception()  # retrieved: its failure was reported by whoever awaited it, or is moot


class _Batch:
    """The statements of one delta, run inside the store's transaction.

    Lookups first (which dumps, fields, values and record positions exist), then one
    reservation of graphids for every new vertex, then every row streamed by COPY in
    chunks while the next chunk is built, and the few updates of vertices that existed
    queued behind them: the server has work queued while Python builds rows."""

    def __init__(self, store: AgeStore, delta: Delta, after: _Batch | None = None) -> None:
        self.store = store
        self.rules = store.rules
        self.delta = delta
        self.q = store._q
        self.labels = store._labels
        # A batch looked up while the one before it (``after``) is still being written sees
        # the graph as that one left it: what the database held before it, overlaid with
        # what it writes (known here: its graphids are reserved and its merges made in
        # Python). Dropped once the lookups are done.
        self.after = after
        self.dump_gids: dict[bytes, int] = dict(store._dump_gids if after is None else after.dump_gids)
        self.field_gids: dict[model.FieldKey, int] = dict(
            store._field_gids if after is None else after.field_gids)
        self.dumps_after: dict[bytes, tuple[int, dict[str, Any]]] = {}  # dump -> gid, cells once written
        self.held_values: dict[bytes, tuple[int, Any, bytes]] = {}  # values that existed: gid, egid, cells
        self.merged_cells: dict[bytes, bytes] = {}  # the cells written over held values' (packed)
        self.new_dumps: set[bytes] = set()  # dumps first written by this batch: no sightings held
        self.looked_up = asyncio.Event()  # its lookups and its reservation are done
        self.reads: _Fetches | None = None  # where the lookups go, if not to the transaction
        self.vgid: dict[bytes, int] = {}  # value id -> gid, for every value of the delta
        self.egid: dict[bytes, int] = {}  # primary value id -> its entity's gid
        # Pair edges as start << PAIR_SHIFT | end: a set of ints hashes, sorts and splits
        # (bisect by start) in C, where tuples took a third of the batch's Python time.
        self.in_field: set[int] = set()
        self.includes: set[int] = set()
        self.created = {"value": range(0), "entity": range(0)}  # gids first written by this batch
        self.attrs_rule = store.rules.rule(model.VALUE, "attrs")
        self.retired_entities: set[int] = set()  # primary value gids that lost a sighting
        self.edge_ranges: dict[str, range] = {}  # label -> the ids reserved for its new edges
        self.edge_ids: dict[str, Iterator[int]] = {}  # label -> the next of them

    def committed(self) -> None:
        self.store._dump_gids = self.dump_gids
        self.store._field_gids = self.field_gids

    def value_after(self, vid: bytes) -> tuple[int, Any, bytes]:
        """One of this batch's values as it leaves it: gid, entity gid, cells (packed)."""
        cells = self.merged_cells.get(vid)
        if cells is None:
            held = self.held_values.get(vid)
            cells = held[2] if held is not None else _packb(self.delta.values[vid].props)
        return self.vgid[vid], self.egid.get(vid), cells

    async def reserve(self, conn: _Fetches, counts: Mapping[str, int]) -> dict[str, range]:
        """Graphids for ``count`` new vertices of each label, all labels in one round trip."""
        out = {label: range(0) for label in counts}
        wanted = [(label, count) for label, count in counts.items() if count]
        if not wanted:
            return out
        calls = ", ".join(f"{self.q}.hm_reserve(${2 * n + 1}::regclass, ${2 * n + 2})"
                          for n in range(len(wanted)))
        args: list[Any] = []
        for label, count in wanted:
            args += [f'{self.q}."{label}_id_seq"', count]
        row = await conn.fetchrow(f"SELECT {calls}", *args)
        assert row is not None
        for (label, count), first in zip(wanted, row, strict=True):
            start = (self.labels[label] << ENTRY_BITS) | int(first)
            out[label] = range(start, start + count)
        return out

    def _edge_ids_from(self, reserved: Mapping[str, range]) -> None:
        """Take edge ids from these reserved ranges from now on."""
        for label in EDGE_IDS_RESERVED:
            if label in reserved:
                self.edge_ranges[label] = reserved[label]
                self.edge_ids[label] = itertools.count(reserved[label].start)

    async def copy_rows(self, conn: _Ordered, table: str, columns: Sequence[str],
                        rows: Iterable[tuple[Any, ...]]) -> None:
        """COPY rows from an iterable (a generator builds them as they are taken), in
        chunks: the server inserts one while the next is built."""
        async for chunk in _taken(table, columns, rows):
            conn.copy(*chunk)

    async def run(self, conn: _Ordered) -> None:
        """Look up (on ``reads``, else ``conn``), reserve, build and queue every statement on
        ``conn``."""
        delta = self.delta
        reads: _Fetches = conn if self.reads is None else self.reads
        await self._dumps(conn, reads)
        await self._fields(conn, reads)
        held_values = self.held_values = await self._held_values(reads)
        held_sightings = await self._held_sightings(reads)
        self.after = self.reads = None
        # New values get graphids in the fold's order (the order records first use them):
        # their rows are built in it, the order they lie in memory, and need no sort.
        new_values = [vid for vid in delta.values if vid not in held_values] if held_values \
            else list(delta.values)
        primaries = {s.entity for s in delta.sightings.values() if s.entity is not None}
        needs_entity = sorted(vid for vid in primaries
                              if vid not in held_values or held_values[vid][1] is None)
        new_sightings = [key for key in delta.sightings if key not in held_sightings]
        # Edge ids too: a COPY that leaves them to the label's column default evaluates it per
        # row (a catalog lookup of the label and nextval), which measured 0.4 us of the
        # 0.8 us a has_value row costs the server before its indexes. Edges are counted only
        # once built, so their ranges are bounds: a new sighting's value occurrences bound its
        # has_value, in_field and includes edges (the slow path reserves its pairs again,
        # below); what a batch leaves unused is a gap in the label's sequence, and nothing
        # reads graphids as counts.
        occurrences = sum(len(delta.sightings[key].values) for key in new_sightings)
        gids = await self.reserve(reads, {"value": len(new_values), "entity": len(needs_entity),
                                         "sighting": len(new_sightings), "in_dump": len(new_sightings),
                                         "has_value": occurrences, "in_field": occurrences,
                                         "includes": occurrences})
        self.looked_up.set()  # the rest reads only the transaction's connection
        self._edge_ids_from(gids)
        self._assign(new_values, gids["value"], needs_entity, gids["entity"], held_values)
        self._merge_values(conn, held_values)
        # A position held already takes the slow path, and entities it retires lose their
        # includes edges before this batch's pairs go in; otherwise the pairs stream with
        # the rest.
        pairs_now = not held_sightings
        # Sightings and their edges first, values last: the server's share of a sighting's
        # rows is large next to Python's (has_value: 11-16 us of server time per record), of
        # a value's small (its properties and cells are built in Python), so the server gets
        # the heavy rows early and has little left to do when Python has built the last
        # chunk. Measured the other way round: Python idle for the last 25-40% of a batch,
        # waiting for the edges it had queued last (14-20% this way).
        async for chunk in self._sighting_chunks(conn, new_sightings, gids["sighting"], pairs_now):
            conn.copy(*chunk)
        async for chunk in self._value_chunks(held_values, needs_entity, gids["entity"]):
            conn.copy(*chunk)
        if not pairs_now:
            for key in held_sightings:
                await self._merge_sighting(conn, key, delta.sightings[key])
            self._retire_entities(conn)
            # A held sighting's pairs include its values from before this batch: not bounded
            # by the delta's occurrences, so the pairs get ranges of their own.
            self._edge_ids_from(await self.reserve(conn, {"in_field": len(self.in_field),
                                                         "includes": len(self.includes)}))
            async for chunk in self._pair_chunks(conn):
                conn.copy(*chunk)
        if delta.subjects:
            await self._subjects(conn)
        if delta.positions:
            feeds, seqs = zip(*delta.positions.items(), strict=True)
            conn.queue(
                f"INSERT INTO {self.q}.hm_position SELECT * FROM unnest($1::bytea[], $2::bigint[]) "
                "ON CONFLICT (feed) DO UPDATE SET next_seq = "
                f"greatest({self.q}.hm_position.next_seq, EXCLUDED.next_seq)", list(feeds), list(seqs))

    # --- dumps and fields ----------------------------------------------------------------

    async def _dumps(self, conn: _Ordered, reads: _Fetches) -> None:
        wanted = set(self.delta.dumps) | {dump for dump, _, _ in self.delta.fields} | \
            {dump for dump, _, _ in self.delta.sightings}
        if not wanted:
            return
        q = self.q
        known = {} if self.after is None else \
            {dump: self.after.dumps_after[dump] for dump in wanted & self.after.dumps_after.keys()}
        asked = sorted(wanted - known.keys())
        held = {bytes(i): (gid, _unpackb(cells)) for i, gid, cells in await reads.fetch(
            f"SELECT id, gid, cells FROM {q}.hm_dump WHERE id = ANY($1::bytea[])", asked)} if asked else {}
        held.update(known)
        new = sorted(wanted - set(held))
        self.new_dumps.update(new)
        gids = (await self.reserve(reads, {"dump": len(new)}))["dump"]
        fresh = []
        for dump, gid in zip(new, gids, strict=True):
            cells = self.delta.dumps.get(dump, {})
            packed = _packb(cells)
            fresh.append((dump, gid, packed))
            self.dump_gids[dump] = gid
            self.dumps_after[dump] = (gid, _unpackb(packed))
        await self.copy_rows(conn, "hm_dump", ("id", "gid", "cells"), fresh)
        await self.copy_rows(conn, "dump", ("id", "properties"),
                             [(gid, self._dump_props(dump, _unpackb(cells))) for dump, gid, cells in fresh])
        changed = []
        for dump, (gid, cells) in held.items():
            self.dump_gids[dump] = gid
            merged = self.rules.merge_props(model.DUMP, cells, self.delta.dumps.get(dump, {}))
            self.dumps_after[dump] = (gid, cells)
            if merged != cells:
                changed.append((dump, gid, merged))
                self.dumps_after[dump] = (gid, _unpackb(_packb(merged)))  # as read back
        if changed:
            self._update_cells(conn, "dump", changed, self._dump_props)

    def _dump_props(self, dump: bytes, cells: Mapping[str, Any]) -> bytes:
        props = {"id": dump.hex()}
        props.update({prop: _agtype_value(value)
                      for prop, value in self.rules.visible_props(model.DUMP, cells).items()})
        return _json(props)

    def _set_props(self, conn: _Ordered, label: str, rows: list[tuple[int, bytes]]) -> None:
        """New properties (agtype text) of existing vertices."""
        if rows:
            conn.queue(
                f"UPDATE {self.q}.{label} t SET properties = u.p "
                "FROM unnest($1::graphid[], $2::agtype[]) u(gid, p) WHERE t.id = u.gid",
                [gid for gid, _ in rows], [props for _, props in rows])

    async def _fields(self, conn: _Ordered, reads: _Fetches) -> None:
        new = sorted(key for key in self.delta.fields if key not in self.field_gids)
        if not new:
            return
        q = self.q
        # Another store on the same graph may have added some since this one loaded them.
        held = {(bytes(d), c, k): gid for gid, d, c, k in await reads.fetch(
            f"SELECT f.gid, f.dump, f.col, f.kind FROM {q}.hm_field f JOIN unnest($1::bytea[], $2::text[], "
            "$3::text[]) u(dump, col, kind) ON f.dump = u.dump AND f.col = u.col AND f.kind = u.kind",
            [k[0] for k in new], [k[1] for k in new], [k[2] for k in new])}
        self.field_gids.update(held)
        new = [key for key in new if key not in held]
        gids = (await self.reserve(reads, {"field": len(new)}))["field"]
        rows = [(gid, dump, col, kind) for (dump, col, kind), gid in zip(new, gids, strict=True)]
        self.field_gids.update(((dump, col, kind), gid) for gid, dump, col, kind in rows)
        await self.copy_rows(conn, "hm_field", ("gid", "dump", "col", "kind"), rows)
        await self.copy_rows(conn, "field", ("id", "properties"),
                             [(gid, _json({"column": col, "kind": kind})) for gid, _, col, kind in rows])
        await self.copy_rows(conn, "field_of", ("start_id", "end_id"),
                             [(gid, self.dump_gids[dump]) for gid, dump, _, _ in rows])

    # --- values --------------------------------------------------------------------------

    async def _held_values(self, reads: _Fetches) -> dict[bytes, tuple[int, Any, bytes]]:
        """The delta's values this graph holds: value id -> (gid, entity gid, cells). Asked
        sorted: the index is walked page by page."""
        ours = self.delta.values.keys()
        known: dict[bytes, tuple[int, Any, bytes]] = {}
        if self.after is None:
            vids = sorted(ours)
        else:  # the batch before this one answers for its values (set operations: in C)
            before = self.after
            known = {vid: before.value_after(vid) for vid in ours & before.delta.values.keys()}
            vids = sorted(ours - known.keys()) if known else sorted(ours)
        if not vids:
            return known
        held = {bytes(i): (int(gid), egid, cells) for i, gid, egid, cells in await reads.fetch(
            f"SELECT id, gid, egid, cells FROM {self.q}.hm_value WHERE id = ANY($1::bytea[])", vids)}
        held.update(known)
        return held

    def _assign(self, new: list[bytes], gids: range, needs_entity: list[bytes], egids: range,
                held: dict[bytes, tuple[int, Any, bytes]]) -> None:
        """Every value's and entity's graphid: reserved for new ones, looked up for the others."""
        self.vgid = dict(zip(new, gids, strict=True))
        self.vgid.update((vid, h[0]) for vid, h in held.items())
        self.egid = dict(zip(needs_entity, egids, strict=True))
        self.egid.update((vid, int(h[1])) for vid, h in held.items() if h[1] is not None)
        self.created = {"value": gids, "entity": egids}

    async def _value_chunks(self, held: Mapping[bytes, Any], needs_entity: list[bytes],
                            egids: range) -> AsyncIterator[Chunk]:
        """Rows of the values and entities this batch creates, streamed: a COPY of
        ``hm_value`` rows and one of their vertices as soon as a chunk of them is built.

        Built in the fold's order, which is graphid order (see run), so no sort holds them
        back: the fold made the values in it, so they lie in memory in it (measured: ~1.5 us
        a value in content-id order, ~0.5 in the fold's, at 30,000 records a batch)."""
        items = self.delta.values.items()
        fresh = list(items) if not held else [item for item in items if item[0] not in held]
        hm_value: list[tuple[Any, ...]] = []
        value: list[tuple[Any, ...]] = []
        for start in range(0, len(fresh), BUILD_SLICE_ITEMS):
            hm_rows, value_rows = self._value_rows(fresh[start:start + BUILD_SLICE_ITEMS])
            hm_value += hm_rows
            value += value_rows
            if len(hm_value) >= COPY_CHUNK_ROWS:
                yield "hm_value", HM_VALUE_COLUMNS, hm_value
                yield "value", ("id", "properties"), value
                hm_value, value = [], []
            await asyncio.sleep(0)
        if hm_value:
            yield "hm_value", HM_VALUE_COLUMNS, hm_value
            yield "value", ("id", "properties"), value
        async for chunk in _taken("entity", ("id", "properties"),
                                  ((egid, b'{"id": "%s"}' % model.entity_vid(vid).hex().encode())
                                   for vid, egid in zip(needs_entity, egids, strict=True))):
            yield chunk

    def _value_rows(self, part: Sequence[tuple[bytes, ValueDelta]]) -> tuple[list[tuple[Any, ...]],
                                                                             list[tuple[Any, ...]]]:
        """hm_value rows and value vertices of new values, column by column in C.
        v.sightings assumes the delta's sightings are new; _merge_sighting corrects it."""
        vids, vs = zip(*part, strict=True)
        gids = list(map(self.vgid.__getitem__, vids))
        hm_value = list(zip(vids, gids, map(_kind_of, vs), map(_clear_of, vs), map(_blind_of, vs),
                            map(_packb, map(_props_of, vs)), map(_sightings_of, vs), map(self.egid.get, vids),
                            strict=True))
        return hm_value, list(zip(gids, map(self._new_value_props, vs), strict=True))

    def _merge_values(self, conn: _Ordered, held: dict[bytes, tuple[int, Any, bytes]]) -> None:
        """Existing values: merge cells with the rules, count new sightings, link new entities."""
        values = self.delta.values
        ids, cells_out, counts, egids, props = [], [], [], [], []
        for vid, (gid, egid, cells) in held.items():
            old = _unpackb(cells)
            v = values[vid]
            merged = self.rules.merge_props(model.VALUE, old, v.props)
            new_egid = self.egid.get(vid) if egid is None else None
            count = v.sightings
            if merged == old and not count and new_egid is None:
                continue
            ids.append(vid)
            cells_out.append(_packb(merged))
            counts.append(count)
            egids.append(new_egid)
            self.merged_cells[vid] = cells_out[-1]
            if _shown_cells_changed(old, merged):
                before, after = self._value_props(v, old), self._value_props(v, merged)
                if before != after:
                    props.append((gid, after))
        if ids:
            conn.queue(
                f"UPDATE {self.q}.hm_value t "
                "SET cells = u.cells, n = t.n + u.n, egid = coalesce(t.egid, u.egid) "
                "FROM unnest($1::bytea[], $2::bytea[], $3::bigint[], $4::graphid[]) u(id, cells, n, egid) "
                "WHERE t.id = u.id", ids, cells_out, counts, egids)
        self._set_props(conn, "value", props)

    def _new_value_props(self, v: ValueDelta) -> bytes:
        """_value_props of a value this batch creates, without building a dict when it has
        nothing but its identity (most values)."""
        cells = v.props
        if "enriched_by" in cells:
            return self._value_props(v, cells)
        if v.value is not None:
            head = _kind_head(v.kind) + b'"value":' + orjson.dumps(v.value)
        else:
            assert v.blind_index is not None
            head = _kind_head(v.kind) + b'"bi":"' + v.blind_index.hex().encode() + b'"'
        attrs = cells.get("attrs")
        if attrs is None:
            return head + b"}"
        return head + b',"attrs":' + orjson.dumps(visible(self.attrs_rule, attrs)) + b"}"

    def _value_props(self, v: ValueDelta, cells: Mapping[str, Any]) -> bytes:
        """What cypher() sees of a value (agtype text): identity, derived attributes,
        enrichment facts.

        Kept small on purpose: the GIN index on these properties costs per key, and
        timestamps and counts (which change with every sighting) stay in hm_value.
        """
        props: dict[str, Any] = {"kind": v.kind}
        if v.value is not None:
            props["value"] = v.value
        else:
            assert v.blind_index is not None
            props["bi"] = v.blind_index.hex()
        attrs = cells.get("attrs")
        if attrs is not None:
            props["attrs"] = visible(self.attrs_rule, attrs)
        if "enriched_by" in cells:  # every enrichment event sets it: facts come only with it
            facts = {prop[len(FACT_PREFIX):]: visible(self.rules.rule(model.VALUE, prop), cell)
                     for prop, cell in cells.items() if prop.startswith(FACT_PREFIX)}
            if facts:
                props["facts"] = dict(sorted(facts.items()))
        return _json(props)

    # --- sightings -----------------------------------------------------------------------

    async def _held_sightings(self, reads: _Fetches) -> set[model.SightingKey]:
        """The delta's record positions this graph holds already (almost always none).

        Per (dump, part) of a dump that existed before this batch: the held positions
        between the batch's least and greatest, one index range scan each (a fresh ingest
        finds nothing); a dump this batch creates holds no sightings yet."""
        held = await self._asked_sightings(reads)
        if self.after is not None:  # positions the batch before this one writes
            before = self.after.delta.sightings
            held.update(key for key in self.delta.sightings if key in before)
        return held

    async def _asked_sightings(self, reads: _Fetches) -> set[model.SightingKey]:
        spans: dict[tuple[bytes, int], list[int]] = {}
        new_dumps = self.new_dumps
        for dump, part, pos in self.delta.sightings:
            if dump in new_dumps:
                continue
            span = spans.get((dump, part))
            if span is None:
                spans[(dump, part)] = [pos, pos]
            elif pos < span[0]:
                span[0] = pos
            elif pos > span[1]:
                span[1] = pos
        if not spans:
            return set()
        keys = list(spans)
        dump_of = {self.dump_gids[dump]: dump for dump, _ in keys}
        rows = await reads.fetch(
            "SELECT s.dump, s.part, s.pos FROM unnest($1::graphid[], $2::int[], $3::bigint[], $4::bigint[]) "
            f"u(dump, part, lo, hi) JOIN {self.q}.hm_sighting s ON s.dump = u.dump AND s.part = u.part "
            "AND s.pos BETWEEN u.lo AND u.hi",
            [self.dump_gids[dump] for dump, _ in keys], [part for _, part in keys],
            [spans[key][0] for key in keys], [spans[key][1] for key in keys])
        sightings = self.delta.sightings
        held = ((dump_of[int(dump)], int(part), int(pos)) for dump, part, pos in rows)
        return {key for key in held if key in sightings}

    async def _sighting_chunks(self, conn: _Ordered, new: list[model.SightingKey], gids: range,
                               pairs: bool) -> AsyncIterator[Chunk]:
        """Rows of the sightings this batch creates and their edges; then (``pairs``) the
        in_field and includes pairs that building has_value collected."""
        dump_gids = self.dump_gids
        keyed = list(zip(new, gids, strict=True))
        async for chunk in _built(
                "hm_sighting", ("gid", "dump", "part", "pos", "seen_ms", "entity", "sealed", "vals"), keyed,
                self._hm_sighting_rows):
            yield chunk
        async for chunk in _built("sighting", ("id", "properties"), keyed, self._sighting_rows):
            yield chunk
        async for chunk in _taken("in_dump", ("start_id", "end_id", "id"),
                                  zip(gids, (dump_gids[key[0]] for key in new), self.edge_ids["in_dump"],
                                      strict=False)):  # the ids: an endless count
            yield chunk
        async for chunk in _built("has_value", ("start_id", "end_id", "properties", "id"), keyed,
                                  self._has_value_rows, EDGE_RECORDS_PER_COPY):
            yield chunk
        if pairs:
            async for chunk in self._pair_chunks(conn):
                yield chunk

    def _hm_sighting_rows(self, part: Sequence[tuple[model.SightingKey, int]]) -> list[tuple[Any, ...]]:
        """hm_sighting rows of new sightings, column by column in C; ``vals`` is the record's
        distinct value ids end to end, in record order."""
        keys, sids = zip(*part, strict=True)
        dumps, parts, positions = zip(*keys, strict=True)
        sightings = list(map(self.delta.sightings.__getitem__, keys))
        vids = map(map, itertools.repeat(_first), map(_values_of, sightings))
        vals = map(b"".join, map(dict.fromkeys, vids))
        return list(zip(sids, map(self.dump_gids.__getitem__, dumps), parts, positions,
                        map(_seen_of, sightings), map(self._primary_gid, sightings),
                        map(_sealed_cell, sightings), vals, strict=True))

    def _sighting_rows(self, part: Sequence[tuple[model.SightingKey, int]]) -> list[tuple[Any, ...]]:
        """sighting vertices of new sightings: (gid, properties)."""
        keys, sids = zip(*part, strict=True)
        _, parts, positions = zip(*keys, strict=True)
        seen = map(_seen_of, map(self.delta.sightings.__getitem__, keys))
        props = map(SIGHTING_PROPS.__mod__, zip(parts, positions, seen, strict=True))
        return list(zip(sids, props, strict=True))

    def _primary_gid(self, s: SightingDelta) -> int | None:
        """The vertex of a sighting's primary value (hm_sighting.entity)."""
        return None if s.entity is None else self.vgid[s.entity]

    def _has_value_rows(self, pairs: Sequence[tuple[model.SightingKey, int]]) -> list[HasValueRow]:
        """has_value edges of new sightings (a value held in several columns of one record is
        one edge listing them); collects the in_field and includes pairs on the way.

        Column by column, in C (map, zip, chain): a loop per value occurrence was the largest
        Python cost of a batch (~10 us of a record's ~60). When some record holds a value in
        two columns (rare), its edges must list both: the loop below does that."""
        sightings = list(map(self.delta.sightings.__getitem__, map(_first, pairs)))
        occurrences_of = list(map(_values_of, sightings))
        counts = list(map(len, occurrences_of))
        occurrences = list(itertools.chain.from_iterable(occurrences_of))
        gids = list(map(self.vgid.__getitem__, map(_first, occurrences)))
        sids = list(_repeated(map(_second, pairs), counts))
        if len(set(_packed(sids, gids))) != len(gids):
            return self._has_value_rows_merged(pairs)
        fields = list(map(_second, occurrences))
        self.in_field.update(_packed(gids, map(self.field_gids.__getitem__, fields)))
        entities = list(_repeated(map(self._entity_gid, sightings), counts))
        if None in entities:  # a sighting without a primary value: no includes edges
            held = list(map(operator.is_not, entities, itertools.repeat(None)))
            starts = cast("Iterable[int]", itertools.compress(entities, held))
            self.includes.update(_packed(starts, itertools.compress(gids, held)))
        else:
            self.includes.update(_packed(cast("list[int]", entities), gids))
        column_json = self._column_json
        return list(zip(sids, gids, map(column_json.__getitem__, fields), self.edge_ids["has_value"],
                        strict=False))  # the ids last: an endless count, taken only while rows remain

    def _entity_gid(self, s: SightingDelta) -> int | None:
        return None if s.entity is None else self.egid[s.entity]

    @functools.cached_property
    def _column_json(self) -> dict[model.FieldKey, bytes]:
        """has_value properties of a value seen in one column, per field of the delta."""
        return {field: _columns_json((field[1],)) for field in self.delta.fields}

    def _has_value_rows_merged(self, pairs: Sequence[tuple[model.SightingKey, int]]) -> list[HasValueRow]:
        """_has_value_rows one record at a time, merging the columns of a value seen twice."""
        sightings, vgid, egid, field_gids = self.delta.sightings, self.vgid, self.egid, self.field_gids
        in_field, includes = self.in_field.add, self.includes.add
        edge_id = functools.partial(next, self.edge_ids["has_value"])
        rows: list[HasValueRow] = []
        row = rows.append
        for key, sid in pairs:
            s = sightings[key]
            columns: dict[int, tuple[str, ...]] = {}
            for vid, field in s.values:
                gid = vgid[vid]
                column = field[1]
                held = columns.get(gid)
                if held is None:
                    columns[gid] = (column,)
                elif column not in held:
                    columns[gid] = (*held, column)
                in_field(gid << PAIR_SHIFT | field_gids[field])
            if s.entity is None:
                for gid, cs in columns.items():
                    row((sid, gid, _columns_json(cs), edge_id()))
            else:
                entity = egid[s.entity] << PAIR_SHIFT
                for gid, cs in columns.items():
                    includes(entity | gid)
                    row((sid, gid, _columns_json(cs), edge_id()))
        return rows

    async def _merge_sighting(self, conn: _Ordered, key: model.SightingKey, s: SightingDelta) -> None:
        """Slow path: a record position seen before (a re-ingest under the same dump id, or a
        delta applied twice): union its values, keep the least entity and first time."""
        q = self.q
        dump, part, pos = key
        row = await conn.fetchrow(
            f"SELECT gid, seen_ms, entity, sealed, vals FROM {q}.hm_sighting "
            "WHERE dump = $1 AND part = $2 AND pos = $3",
            self.dump_gids[dump], part, pos)
        assert row is not None
        sid, seen_ms, entity, sealed = int(row[0]), int(row[1]), row[2], row[3]
        held_vals = bytes(row[4])
        vals = b"".join(dict.fromkeys([*(held_vals[i:i + model.ID_BYTES]
                                         for i in range(0, len(held_vals), model.ID_BYTES)),
                                       *(vid for vid, _ in s.values)]))
        edges = {int(end): orjson.loads(props)["columns"] for end, props in await conn.fetch(
            f"SELECT end_id, properties FROM {q}.has_value WHERE start_id = $1", sid)}
        new_entity = None if s.entity is None else self.vgid[s.entity]
        final_entity = await self._least_entity(conn, None if entity is None else int(entity), new_entity)
        if entity is not None and final_entity != int(entity):
            self.retired_entities.add(int(entity))
        merged_sealed = sealed
        new_sealed = _sealed_cell(s)
        if new_sealed is not None:
            merged_sealed = new_sealed if sealed is None else _packb(
                merge(Rule.UNION, _unpackb(sealed), _unpackb(new_sealed)))
        first = min(seen_ms, s.seen_ms)
        conn.queue(f"UPDATE {q}.hm_sighting SET seen_ms = $2, entity = $3, sealed = $4, vals = $5 "
                   "WHERE gid = $1", sid, first, final_entity, merged_sealed, vals)
        if first != seen_ms:
            props = _json({"part": part, "position": pos, "seen_ms": first})
            self._set_props(conn, "sighting", [(sid, props)])
        await self._merge_sighting_values(conn, sid, dump, s, edges, final_entity)

    async def _merge_sighting_values(self, conn: _Ordered, sid: int, dump: bytes, s: SightingDelta,
                                     edges: dict[int, list[str]], entity_vgid: int | None) -> None:
        q = self.q
        columns = {gid: set(cs) for gid, cs in edges.items()}
        counted = {self.vgid[vid] for vid, _ in s.values}
        for vid, field in s.values:
            gid = self.vgid[vid]
            columns.setdefault(gid, set()).add(field[1])
            self.in_field.add(gid << PAIR_SHIFT | self.field_gids[field])
        # ValueDelta.sightings counted this sighting for each of its values; those it already held
        # were counted when it was first applied.
        again = sorted(gid for gid in counted if gid in edges)
        if again:
            conn.queue(f"UPDATE {q}.hm_value SET n = n - 1 WHERE gid = ANY($1::graphid[])",
                               again)
        added = [(gid, sorted(cs)) for gid, cs in columns.items() if gid not in edges]
        changed = [(gid, sorted(cs)) for gid, cs in columns.items() if gid in edges and cs != set(edges[gid])]
        await self.copy_rows(conn, "has_value", ("start_id", "end_id", "properties"),
                             [(sid, gid, _json({"columns": cs})) for gid, cs in added])
        for gid, cs in changed:
            conn.queue(f"UPDATE {q}.has_value SET properties = $3 "
                               "WHERE start_id = $1 AND end_id = $2", sid, gid, _json({"columns": cs}))
        if entity_vgid is not None:
            # Every primary value has its entity by now (this batch linked the new ones).
            egid = await conn.fetchval(f"SELECT egid FROM {q}.hm_value WHERE gid = $1", entity_vgid)
            self.includes.update(int(egid) << PAIR_SHIFT | gid for gid in columns)

    async def _least_entity(self, conn: _Ordered, a: int | None, b: int | None) -> int | None:
        """The entity whose value id is least (the model's rule for a sighting seen twice)."""
        if a is None or b is None or a == b:
            return b if a is None else a
        vids = {int(gid): bytes(vid) for gid, vid in await conn.fetch(
            f"SELECT gid, id FROM {self.q}.hm_value WHERE gid = ANY($1::graphid[])", [a, b])}
        return a if vids[a] <= vids[b] else b

    def _retire_entities(self, conn: _Ordered) -> None:
        """An entity that stopped being some sighting's entity keeps only the includes edges
        that other sightings of it still support (runs before this batch's pairs go in)."""
        q = self.q
        for primary in sorted(self.retired_entities):
            conn.queue(
                f"DELETE FROM {q}.includes e USING {q}.hm_value p WHERE p.gid = $1 AND e.start_id = p.egid "
                f"AND NOT EXISTS (SELECT 1 FROM {q}.has_value h JOIN {q}.hm_sighting s ON s.gid = h.start_id "
                "WHERE h.end_id = e.end_id AND s.entity = $1)", primary)

    async def _pair_chunks(self, conn: _Ordered) -> AsyncIterator[Chunk]:
        """value -> field and entity -> value edges, one per pair. A pair whose start vertex
        this batch created is new: COPY (measured ~2x faster), in start order so the pair
        index fills at its end (measured 1.4x); the others may exist already: INSERT ... ON
        CONFLICT DO NOTHING on the unique pair index (queued at once)."""
        for label, start_label, pairs in (("in_field", "value", self.in_field),
                                          ("includes", "entity", self.includes)):
            ordered = sorted(pairs)
            created = self.created[start_label]  # a range of gids, so its pairs are one slice
            lo = bisect.bisect_left(ordered, created.start << PAIR_SHIFT)
            hi = bisect.bisect_left(ordered, created.stop << PAIR_SHIFT)
            maybe = _split_pairs(ordered[:lo] + ordered[hi:])
            if maybe:
                starts, ends = zip(*maybe, strict=True)
                conn.queue(
                    f"INSERT INTO {self.q}.{label} (start_id, end_id) SELECT * FROM "
                    "unnest($1::graphid[], $2::graphid[]) ON CONFLICT DO NOTHING",
                    list(starts), list(ends))
            if hi - lo > len(self.edge_ranges[label]):  # the bound is by construction: never
                raise GraphError(f"{hi - lo} new {label} edges, {len(self.edge_ranges[label])} ids reserved")
            ids = self.edge_ids[label]
            async for chunk in _built(label, ("start_id", "end_id", "id"), ordered[lo:hi],
                                      lambda part: _pair_rows(part, ids)):  # noqa: B023 (used at once)
                yield chunk

    # --- subjects ------------------------------------------------------------------------

    async def _subjects(self, conn: _Ordered) -> None:
        q = self.q
        subjects = self.delta.subjects
        held = {bytes(i): (int(gid), _unpackb(cells)) for i, gid, cells in await conn.fetch(
            f"SELECT id, gid, cells FROM {q}.hm_subject WHERE id = ANY($1::bytea[])", sorted(subjects))}
        new = sorted(set(subjects) - set(held))
        gids = (await self.reserve(conn, {"subject": len(new)}))["subject"]
        rows = [(sub, gid, _packb(subjects[sub])) for sub, gid in zip(new, gids, strict=True)]
        await self.copy_rows(conn, "hm_subject", ("id", "gid", "cells"), rows)
        await self.copy_rows(conn, "subject", ("id", "properties"),
                             [(gid, self._subject_props(sub, subjects[sub])) for sub, gid, _ in rows])
        changed = []
        for sub, (gid, cells) in held.items():
            merged = self.rules.merge_props(model.SUBJECT, cells, subjects[sub])
            if merged != cells:
                changed.append((sub, gid, merged))
        if changed:
            self._update_cells(conn, "subject", changed, self._subject_props)

    def _update_cells(self, conn: _Ordered, table: str, changed: list[tuple[bytes, int, dict[str, Any]]],
                      props: Callable[[bytes, Mapping[str, Any]], bytes]) -> None:
        """Store merged cells of held dumps or subjects, and their label rows' properties."""
        conn.queue(
            f"UPDATE {self.q}.hm_{table} t SET cells = u.cells "
            "FROM unnest($1::bytea[], $2::bytea[]) u(id, cells) "
            "WHERE t.id = u.id", [c[0] for c in changed], [_packb(c[2]) for c in changed])
        self._set_props(conn, table, [(gid, props(key, merged)) for key, gid, merged in changed])

    def _subject_props(self, subject: bytes, cells: Mapping[str, Any]) -> bytes:
        props: dict[str, Any] = {"id": subject.hex()}
        props.update(self.rules.visible_props(model.SUBJECT, cells))
        return _json(props)


async def _built(table: str, columns: Sequence[str], items: Sequence[T],
                 build: Callable[[Sequence[T]], list[tuple[Any, ...]]],
                 items_per_copy: int = COPY_CHUNK_ROWS) -> AsyncIterator[Chunk]:
    """The rows ``build`` makes of ``items``, ``items_per_copy`` items per chunk, built
    ``BUILD_SLICE_ITEMS`` at a time between turns of the event loop."""
    for start in range(0, len(items), items_per_copy):
        stop = min(len(items), start + items_per_copy)
        rows: list[tuple[Any, ...]] = []
        for part in range(start, stop, BUILD_SLICE_ITEMS):
            rows += build(items[part:min(stop, part + BUILD_SLICE_ITEMS)])
            await asyncio.sleep(0)
        yield table, columns, rows


async def _taken(table: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> AsyncIterator[Chunk]:
    """_built for rows from an iterable (a generator builds them as they are taken)."""
    source = iter(rows)
    chunk: list[tuple[Any, ...]] = []
    while part := list(itertools.islice(source, BUILD_SLICE_ITEMS)):
        chunk += part
        if len(chunk) >= COPY_CHUNK_ROWS:
            yield table, columns, chunk
            chunk = []
        await asyncio.sleep(0)
    if chunk:
        yield table, columns, chunk


@functools.lru_cache(maxsize=KINDS_CACHED)
def _kind_head(kind: str) -> bytes:
    """The start of a value vertex's properties: '{"kind":"ip",'."""
    return b'{"kind":' + _json(kind) + b","


@functools.lru_cache(maxsize=COLUMN_SETS_CACHED)
def _columns_json(columns: tuple[str, ...]) -> bytes:
    """has_value properties for COPY; a dump has few distinct column sets."""
    return _json({"columns": sorted(set(columns))})


def _shown_cells_changed(old: Mapping[str, Any], merged: Mapping[str, Any]) -> bool:
    """Whether a merge touched a cell that a value vertex's properties show (attrs, facts):
    most merges only move first/last seen, which stay in hm_value."""
    return any(old.get(prop) != cell for prop, cell in merged.items()
               if prop == "attrs" or prop.startswith(FACT_PREFIX))


def _split_pairs(pairs: Sequence[int]) -> list[tuple[int, int]]:
    """Packed pairs back to (start, end) rows, in C."""
    return list(map(divmod, pairs, itertools.repeat(1 << PAIR_SHIFT)))


_first = operator.itemgetter(0)
_second = operator.itemgetter(1)
_values_of = operator.attrgetter("values")
_kind_of = operator.attrgetter("kind")
_clear_of = operator.attrgetter("value")
_blind_of = operator.attrgetter("blind_index")
_props_of = operator.attrgetter("props")
_sightings_of = operator.attrgetter("sightings")
_seen_of = operator.attrgetter("seen_ms")


def _packed(starts: Iterable[int], ends: Iterable[int]) -> Iterator[int]:
    """Pair edges as ints (start << PAIR_SHIFT | end), in C."""
    return map(operator.or_, map(operator.lshift, starts, itertools.repeat(PAIR_SHIFT)), ends)


def _repeated(items: Iterable[T], counts: Iterable[int]) -> Iterator[T]:
    """Each item ``count`` times, in order: a per-record column per value occurrence, in C."""
    return itertools.chain.from_iterable(map(itertools.repeat, items, counts))
def _pair_rows(pairs: Sequence[int], ids: Iterator[int]) -> list[tuple[int, int, int]]:
    """Packed pairs as (start, end, edge id) rows, in C (``ids`` last: zip takes from it
    only while pairs remain)."""
    return list(zip(map(operator.rshift, pairs, itertools.repeat(PAIR_SHIFT)),
                    map(operator.and_, pairs, itertools.repeat(PAIR_END_MASK)), ids, strict=False))


def _sealed_cell(s: SightingDelta) -> bytes | None:
    if not s.sealed:
        return None
    packed: bytes = _packb(lift(Rule.UNION, [list(x) for x in s.sealed], b"", 0))
    return packed


def _agtype_value(value: Any) -> Any:
    """A visible property value as agtype can hold it (bytes as hex)."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [_agtype_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _agtype_value(item) for key, item in value.items()}
    return value


__all__ = ["AgeStore", "init_connection", "load_migrations", "redact_dsn", "render"]
