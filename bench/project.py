#!/usr/bin/env python3
"""Projection benchmark: records/s from the signed log into SQLite and PostgreSQL + AGE.

Prints ONE JSON object:
  sqlite_records_per_s            replay of the whole log into the embedded SQLite back end
  age_records_per_s               the same into PostgreSQL + Apache AGE (heimdall_core.graph.age)
  age_cypher_merge_records_per_s  anchor: one cypher() call per record MERGEing the same
                                  vertices and edges, on a sample, extrapolated
  copy_floor_records_per_s        anchor (the floor): the same projector pipeline (log read,
                                  decode, fold) with the store replaced by binary COPY of
                                  the same rows into plain tables without indexes, against
                                  the same PostgreSQL
  copy_only_records_per_s         that COPY alone (time inside the floor store's apply)
  ratio_age_to_cypher_merge       target >= 30
  ratio_age_to_copy_floor         target >= 0.5
  replay_s, replay_age_s          wall time of a full replay (SQLite, AGE) incl. open
  query_ms_p50, query_ms_p99      heimdall query (query_value) of random known values, the
                                  worse of the two back ends; per back end too
"Records" are ingest records of six fields (email, username, ip, domain, sha256,
password) as the default PII policy writes them: email and username sealed + blind
index, ip/domain/sha256 clear, password dropped.

Usage: bench/project.py [--records N] [--merge-sample N] [--queries N] [--parts sqlite,age,...]
Needs root for PostgreSQL + AGE from the chroot root (scripts/install-postgres-age); the
database is started with start-db in the bench's data directory and stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import asyncpg  # noqa: E402
import msgpack  # noqa: E402

from heimdall_core import config, kinds  # noqa: E402
from heimdall_core.dbctl import db_status, start_db, stop_db  # noqa: E402
from heimdall_core.events import encode_body  # noqa: E402
from heimdall_core.graph.age import AgeStore, init_connection  # noqa: E402
from heimdall_core.graph.backends import make_store, rules_from  # noqa: E402
from heimdall_core.graph.model import Delta  # noqa: E402
from heimdall_core.graph.projector import Projector, ProjectorOptions  # noqa: E402
from heimdall_core.graph.query import query_value  # noqa: E402
from heimdall_core.log.feed import LogOptions  # noqa: E402
from heimdall_core.log.store import LogStore, init_site  # noqa: E402

WORK = REPO / ".bench" / "project"
PARTS = frozenset({"sqlite", "age", "floor", "merge", "query"})
RECORDS_PER_EVENT = 1_000
EVENTS_PER_APPEND = 100
DUMP = hashlib.sha256(b"bench dump").digest()[:16]
COLUMNS = ["email", "username", "ip", "domain", "sha256", "password"]
MAPPING = {"email": "email", "username": "username", "ip": "ip", "domain": "domain",
           "sha256": "hash", "password": "password"}
DOMAINS = 5_000
FLOOR_SCHEMA = "bench_floor"
MERGE_GRAPH = "bench_merge"


# --- the input: a log of synthetic ingest events ----------------------------------------------


def _bi(label: bytes) -> bytes:
    return hashlib.blake2b(label, digest_size=16).digest()


def ip_of(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def domain_of(i: int) -> str:
    return f"host{i % DOMAINS}.example.org"


def sha_of(i: int) -> str:
    return hashlib.sha256(i.to_bytes(8, "big")).hexdigest()


def record(i: int) -> list[Any]:
    """One ingest record as the pipeline writes it (fields in canonical key order)."""
    sub = _bi(b"sub%d" % i)
    ct = b"\x01" + sub + sub  # sealed bytes: the graph never decrypts them
    return [i + 2, [
        {"bi": _bi(b"e%d" % i), "col": "email", "ct": ct, "kind": "email", "sub": sub},
        {"bi": _bi(b"u%d" % i), "col": "username", "ct": ct[:24], "kind": "username", "sub": sub},
        {"col": "ip", "kind": "ip", "v": ip_of(i)},
        {"a": {"registrable_domain": "example.org"}, "col": "domain", "kind": "domain", "v": domain_of(i)},
        {"a": {"algo": "sha256"}, "col": "sha256", "kind": "hash", "v": sha_of(i)},
    ]]


def make_log(data_dir: Path, records: int) -> None:
    marker = data_dir / f"bench-log-{records}.done"
    if marker.exists():
        return
    if data_dir.exists():
        stop_db(data_dir)
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    data_dir.chmod(0o711)  # the PostgreSQL account walks into <data_dir>/postgres
    init_site(data_dir, "bench")
    started = time.perf_counter()
    with LogStore(data_dir, LogOptions(fsync=False)) as store:
        writer = store.writer()
        writer.append_bodies([encode_body(*kinds.DUMP_STARTED, {
            "dump": DUMP, "source": "bench", "name": "bench.csv", "format": "csv", "compression": "none",
            "sha256": "", "bytes": -1, "columns": COLUMNS, "mapping": MAPPING, "parts": 1, "meta": {}})])
        bodies = []
        for start in range(0, records, RECORDS_PER_EVENT):
            batch = [record(i) for i in range(start, min(records, start + RECORDS_PER_EVENT))]
            bodies.append(encode_body(*kinds.RECORDS_INGESTED, {"dump": DUMP, "part": 0, "records": batch}))
            if len(bodies) >= EVENTS_PER_APPEND:
                writer.append_bodies(bodies)
                bodies = []
        bodies.append(encode_body(*kinds.DUMP_FINISHED, {"dump": DUMP, "records": records, "quarantined": 0,
                                                           "sha256": "00" * 32, "bytes": records * 120}))
        writer.append_bodies(bodies)
    print(f"log of {records} records built in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    marker.touch()


# --- projections ------------------------------------------------------------------------------


async def drop_graph(dsn: str, graph: str) -> None:
    """A fresh graph: the projection starts from the current schema, not a used one."""
    conn = await asyncpg.connect(dsn)
    try:
        await init_connection(conn)
        if await conn.fetchval("SELECT count(*) FROM ag_catalog.ag_graph WHERE name = $1", graph):
            await conn.execute("SELECT ag_catalog.drop_graph($1, true)", graph)
    finally:
        await conn.close()


async def project(settings: config.Settings, backend: str) -> tuple[float, float]:
    """(records/s of the projection, wall time of the replay)."""
    rules = rules_from(settings)
    store = make_store(settings, backend, rules)
    started = time.perf_counter()
    await store.open()
    try:
        await store.reset()
        with LogStore(settings.data_dir, LogOptions(fsync=False)) as log_store:
            report = await Projector(log_store, store, rules,
                                     ProjectorOptions(batch_events=settings.graph.batch_events)).catch_up()
    finally:
        await store.close()
    wall = time.perf_counter() - started
    return report.records / report.seconds, wall


class CopyFloorStore:
    """The floor: the same rows as the AGE store writes, binary COPY into plain tables."""

    TABLES = {
        "value": "id bytea, kind text, v text, bi bytea, cells bytea, n bigint",
        "sighting": "dump bytea, part int, pos bigint, seen_ms bigint",
        "has_value": "sighting bigint, value bytea, columns text",
        "in_dump": "sighting bigint, dump bytea",
        "in_field": "value bytea, col text",
        "includes": "entity bytea, value bytea",
        "position": "feed bytea, next_seq bigint",
    }

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: asyncpg.Connection | None = None
        self.apply_s = 0.0
        self.next_sighting = 0

    @property
    def backend(self) -> str:
        return "copy-floor"

    async def open(self) -> None:
        self.conn = await asyncpg.connect(self.dsn)
        await self.conn.execute(f"DROP SCHEMA IF EXISTS {FLOOR_SCHEMA} CASCADE; CREATE SCHEMA {FLOOR_SCHEMA}")
        for table, columns in self.TABLES.items():
            await self.conn.execute(f"CREATE TABLE {FLOOR_SCHEMA}.{table} ({columns})")

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.execute(f"DROP SCHEMA IF EXISTS {FLOOR_SCHEMA} CASCADE")
            await self.conn.close()

    async def reset(self) -> None:
        return None

    async def positions(self) -> dict[bytes, int]:
        return {}

    async def apply(self, delta: Delta) -> None:
        started = time.perf_counter()
        assert self.conn is not None
        packb = msgpack.Packer(use_bin_type=True).pack
        rows: dict[str, list[tuple[Any, ...]]] = {name: [] for name in self.TABLES}
        rows["value"] = [(vid, v.kind, v.value, v.blind_index, packb(v.props), v.sightings)
                         for vid, v in delta.values.items()]
        includes, in_field = set(), set()
        for (dump, part, pos), s in delta.sightings.items():
            sid = self.next_sighting
            self.next_sighting += 1
            rows["sighting"].append((dump, part, pos, s.seen_ms))
            rows["in_dump"].append((sid, dump))
            for vid, field in s.values:
                rows["has_value"].append((sid, vid, field[1]))
                in_field.add((vid, field[1]))
                if s.entity is not None:
                    includes.add((s.entity, vid))
        rows["in_field"] = list(in_field)
        rows["includes"] = list(includes)
        rows["position"] = list(delta.positions.items())
        async with self.conn.transaction():
            for table, records in rows.items():
                if records:
                    await self.conn.copy_records_to_table(table, schema_name=FLOOR_SCHEMA, records=records)
        self.apply_s += time.perf_counter() - started


async def copy_floor(settings: config.Settings, dsn: str) -> tuple[float, float]:
    store = CopyFloorStore(dsn)
    await store.open()
    try:
        with LogStore(settings.data_dir, LogOptions(fsync=False)) as log_store:
            report = await Projector(log_store, store, rules_from(settings),  # type: ignore[arg-type]
                                     ProjectorOptions(batch_events=settings.graph.batch_events)).catch_up()
    finally:
        await store.close()
    return report.records / report.seconds, report.records / store.apply_s


# --- the Cypher MERGE anchor ---------------------------------------------------------------


def _cypher_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def merge_query(i: int) -> str:
    """One record's vertices and edges by Cypher MERGE (what a naive projector would send)."""
    _, fields = record(i)
    email_bi = fields[0]["bi"].hex()
    lines = [f"MERGE (d:dump {{id: {_cypher_str(DUMP.hex())}}})",
             f"MERGE (s:sighting {{dump: {_cypher_str(DUMP.hex())}, part: 0, position: {i + 2}}})",
             "MERGE (s)-[:in_dump]->(d)",
             f"MERGE (e:entity {{id: {_cypher_str(email_bi)}}})"]
    for n, field in enumerate(fields):
        key = ("value", field["v"]) if "v" in field else ("bi", field["bi"].hex())
        kind, column = _cypher_str(field["kind"]), _cypher_str(field["col"])
        lines += [f"MERGE (v{n}:value {{kind: {kind}, {key[0]}: {_cypher_str(key[1])}}})",
                  f"MERGE (f{n}:field {{dump: {_cypher_str(DUMP.hex())}, column: {column}}})",
                  f"MERGE (s)-[:has_value {{columns: [{column}]}}]->(v{n})",
                  f"MERGE (v{n})-[:in_field]->(f{n})",
                  f"MERGE (e)-[:includes]->(v{n})"]
    return "\n".join(lines)


async def cypher_merge(dsn: str, records: int, sample: int) -> float:
    store = AgeStore(rules_from(config.load(None, {})), graph=MERGE_GRAPH, dsn=dsn)
    await store.open()  # the same schema and indexes as the projection
    await store.reset()
    await store.close()
    conn = await asyncpg.connect(dsn)
    try:
        await init_connection(conn)
        picks = random.Random(1).sample(range(records), sample)
        started = time.perf_counter()
        for i in picks:
            await conn.execute(f"SELECT * FROM cypher('{MERGE_GRAPH}', $$ {merge_query(i)} $$) AS (a agtype)")
        elapsed = time.perf_counter() - started
        await conn.execute(f"SELECT drop_graph('{MERGE_GRAPH}', true)")
    finally:
        await conn.close()
    return sample / elapsed


# --- queries ----------------------------------------------------------------------------------


async def query_latencies(settings: config.Settings, backend: str, records: int, count: int) -> list[float]:
    rules = rules_from(settings)
    store = make_store(settings, backend, rules)
    rng = random.Random(7)
    await store.open()
    try:
        times = []
        for _ in range(count):
            i = rng.randrange(records)
            kind, value = rng.choice([("ip", ip_of(i)), ("hash", sha_of(i)), ("domain", domain_of(i))])
            started = time.perf_counter()
            answer = await query_value(store, rules, value, kind=kind)
            times.append((time.perf_counter() - started) * 1000)
            assert answer["matches"][0]["sightings"] >= 1
    finally:
        await store.close()
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- main ---------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = WORK / "data"
    make_log(data_dir, args.records)
    settings = config.load(None, {"HMD_DATA_DIR": str(data_dir)})
    parts = set(args.parts.split(","))
    unknown = parts - PARTS
    if unknown:
        raise SystemExit(f"--parts: unknown {sorted(unknown)}; choose from {sorted(PARTS)}")
    needs_pg = bool(parts & {"age", "floor", "merge"})
    was_running = db_status(data_dir).running
    info = start_db(data_dir) if needs_pg else None
    out: dict[str, Any] = {"records": args.records}
    lat: dict[str, list[float]] = {}
    try:
        gc.collect()
        if "sqlite" in parts:
            sqlite_rate, sqlite_wall = await project(settings, "sqlite")
            out.update(sqlite_records_per_s=round(sqlite_rate), replay_s=round(sqlite_wall, 2))
        if info is not None and "age" in parts:
            await drop_graph(info.dsn, settings.graph.age_graph)
            # (No figure of time inside apply: AGE's batches overlap, so their times would add up
            # to more than the wall time.)
            age_rate, age_wall = await project(settings, "age")
            out.update(age_records_per_s=round(age_rate), replay_age_s=round(age_wall, 2))
        if info is not None and "floor" in parts:
            floor_rate, copy_only = await copy_floor(settings, info.dsn)
            out.update(copy_floor_records_per_s=round(floor_rate), copy_only_records_per_s=round(copy_only))
        if info is not None and "merge" in parts:
            merge_rate = await cypher_merge(info.dsn, args.records, args.merge_sample)
            out["age_cypher_merge_records_per_s"] = round(merge_rate, 1)
        if "query" in parts:
            for backend in [b for b in ("sqlite", "age") if b in parts]:
                lat[backend] = await query_latencies(settings, backend, args.records, args.queries)
    finally:
        if info is not None and not was_running:
            stop_db(data_dir)
    if "age_records_per_s" in out and "age_cypher_merge_records_per_s" in out:
        merge_rate = out["age_cypher_merge_records_per_s"]
        out["ratio_age_to_cypher_merge"] = round(out["age_records_per_s"] / merge_rate, 1)
    if "age_records_per_s" in out and "copy_floor_records_per_s" in out:
        out["ratio_age_to_copy_floor"] = round(out["age_records_per_s"] / out["copy_floor_records_per_s"], 3)
    if lat:
        out["query_ms_p50"] = round(max(statistics.median(v) for v in lat.values()), 2)
        out["query_ms_p99"] = round(max(percentile(v, 0.99) for v in lat.values()), 2)
    for backend, values in lat.items():
        out[f"query_ms_p50_{backend}"] = round(statistics.median(values), 2)
        out[f"query_ms_p99_{backend}"] = round(percentile(values, 0.99), 2)
    out["merge_sample"] = args.merge_sample
    out["cpus"] = os.cpu_count()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--merge-sample", type=int, default=300)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--parts", default=",".join(sorted(PARTS)),
                        help="comma-separated subset of: " + ", ".join(sorted(PARTS)) +
                        " (query measures the back ends also listed)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

