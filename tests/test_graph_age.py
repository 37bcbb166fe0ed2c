"""The PostgreSQL + Apache AGE back end: the graph store contract against a real
PostgreSQL with AGE, plus what only this back end has (cypher(), migrations, the database
going away and coming back).

The contract tests of tests/graph_contract.py are imported here and run with this
module's ``backend`` fixtures, which name only ``age``; the session's PostgreSQL comes
from the ``pg_dsn`` fixture (tests/pgfixture.py starts it, installing it first if needed).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from graph_contract import (
    Feeds,
    Opened,
    chunks,
    clear_field,
    dump_started,
    fake_bytes,
    fold,
    interleave,
    make_persistent,
    make_store,
    person_record,
    reference,
    register_backend,
    standard_events,
    state_hash,
    test_contract_any_batching_and_order_same_hash,
    test_contract_apply_twice_changes_nothing,
    test_contract_empty_store,
    test_contract_persists_across_reopen,
    test_contract_positions_only_delta,
    test_contract_priority_rule_follows_config,
    test_contract_queries_equal_reference,
    test_contract_query_answers,
    test_contract_refuses_other_rules,
    test_contract_reset_forgets_everything,
    test_contract_reset_rebuilds_under_new_rules,
    test_contract_state_equals_reference,
)

from heimdall_core import config, kinds
from heimdall_core.cli.main import main
from heimdall_core.dbctl import stop_db
from heimdall_core.errors import NotFound
from heimdall_core.events import Event, encode_body
from heimdall_core.graph import backends
from heimdall_core.graph.age import AgeStore, load_migrations, redact_dsn, render
from heimdall_core.graph.memory import MemoryStore
from heimdall_core.graph.projector import Progress, Projector, ProjectorOptions
from heimdall_core.graph.query import query_value
from heimdall_core.graph.rules import RuleSet
from heimdall_core.graph.sqlite import SqliteStore
from heimdall_core.graph.store import GraphStore
from heimdall_core.log.feed import LogOptions
from heimdall_core.log.store import LogStore, init_site

pytestmark = pytest.mark.pg

_dsn: dict[str, str] = {}


async def _make_age(directory: Path, rules: RuleSet, name: str) -> GraphStore:
    store = AgeStore(rules, graph=name, dsn=_dsn["dsn"])
    await store.open()
    return store


register_backend("age", _make_age, persistent=True)


@pytest.fixture(autouse=True)
def _session_dsn(pg_dsn: str) -> Iterator[None]:
    _dsn["dsn"] = pg_dsn
    yield


@pytest.fixture
def backend() -> str:
    return "age"


@pytest.fixture
def persistent_backend() -> str:
    return "age"


__all__ = [
    "backend",
    "make_persistent",
    "make_store",
    "persistent_backend",
    "test_contract_any_batching_and_order_same_hash",
    "test_contract_apply_twice_changes_nothing",
    "test_contract_empty_store",
    "test_contract_persists_across_reopen",
    "test_contract_positions_only_delta",
    "test_contract_priority_rule_follows_config",
    "test_contract_queries_equal_reference",
    "test_contract_query_answers",
    "test_contract_refuses_other_rules",
    "test_contract_reset_forgets_everything",
    "test_contract_reset_rebuilds_under_new_rules",
    "test_contract_state_equals_reference",
]


def _graph_name(label: str) -> str:
    return "t_" + hashlib.sha256(label.encode()).hexdigest()[:12]


@pytest.fixture
async def age(pg_dsn: str, request: pytest.FixtureRequest) -> Any:
    opened = Opened("age", Path("."), _graph_name(request.node.nodeid))
    yield opened
    await opened.close_all()


# --- what only the AGE back end has ------------------------------------------------------


async def test_cypher_finds_values_and_follows_sightings(age: Opened) -> None:
    store = await age()
    assert isinstance(store, AgeStore)
    await store.reset()
    await store.apply(fold(standard_events()))
    # A map pattern (GIN) and a WHERE on a property (btree expression index), both directions.
    by_map = await store.cypher(
        "MATCH (s:sighting)-[h:has_value]->(v:value {kind: 'ip', value: '10.0.0.0'}) "
        "RETURN s.position, h.columns ORDER BY s.position", ("position", "columns"))
    assert by_map == [("2", '["ip"]'), ("20", '["ip"]'), ("1", '["indicator"]')] or \
        sorted(by_map) == sorted([("2", '["ip"]'), ("20", '["ip"]'), ("1", '["indicator"]')])
    by_where = await store.cypher(
        "MATCH (d:dump)<-[:in_dump]-(s:sighting)-[:has_value]->(v:value) WHERE v.value = '10.0.0.0' "
        "RETURN d.name, count(s) ORDER BY d.name", ("dump", "sightings"))
    assert by_where == [('"x.csv"', "2"), ('"y.ndjson"', "1")]
    # Personal values are joinable only by blind index; fields and entities are there too.
    email_bi = fake_bytes("bi:email:user3@example.com").hex()
    rows = await store.cypher(
        f"MATCH (e:entity)-[:includes]->(v:value {{kind: 'email', bi: '{email_bi}'}}), "
        "(v)-[:in_field]->(f:field)-[:field_of]->(d:dump) RETURN f.column, d.source", ("column", "source"))
    assert rows == [('"email"', '"breach-x"')]


async def test_cypher_lookups_use_the_indexes(age: Opened, pg_dsn: str) -> None:
    """WHERE on a clear value uses its hash index; map patterns on the small labels use
    their GIN index. (Map patterns on value and lookups by blind index answer by a scan:
    value rows carry no GIN index, the largest write cost it was; see
    docs/postgres-age.md.)"""
    from pgfixture import connect_age

    store = await age()
    assert isinstance(store, AgeStore)
    await store.reset()
    await store.apply(fold(standard_events()))
    email_bi = fake_bytes("bi:email:user3@example.com").hex()
    conn = await connect_age(pg_dsn)
    try:
        await conn.execute("SET enable_seqscan = off")  # tiny tables: make the planner show its options
        graph = store.graph
        plans = {}
        for name, query in (("where", "MATCH (v:value) WHERE v.value = '10.0.0.0' RETURN v"),
                            ("dump", "MATCH (d:dump {source: 'breach-x'}) RETURN d")):
            rows = await conn.fetch(f"EXPLAIN SELECT * FROM cypher('{graph}', $$ {query} $$) AS (v agtype)")
            plans[name] = "\n".join(row[0] for row in rows)
        assert "value_value" in plans["where"], plans["where"]
        assert "dump_props" in plans["dump"], plans["dump"]
    finally:
        await conn.close()
    found = await store.cypher(f"MATCH (v:value) WHERE v.bi = '{email_bi}' RETURN v.kind", ("kind",))
    assert found == [('"email"',)]


async def test_value_in_two_columns_of_one_record_is_one_edge(age: Opened) -> None:
    """A batch where one record holds a value in two columns (has_value lists both, one
    edge) among records that do not: the rows are built record by record for it."""
    feeds = Feeds()
    main = feeds.feed("main")
    dump = fake_bytes("dump:twice")
    columns = ["ip", "indicator"]
    events = [feeds.event(main, kinds.DUMP_STARTED, dump_started(dump, "s", "t.csv", columns,
                                                                 {"ip": "ip", "indicator": "ip"})),
              feeds.event(main, kinds.RECORDS_INGESTED, {"dump": dump, "part": 0, "records": [
                  [1, [clear_field("ip", "ip", "10.9.0.1"), clear_field("indicator", "ip", "10.9.0.2")]],
                  [2, [clear_field("ip", "ip", "10.9.0.3"), clear_field("indicator", "ip", "10.9.0.3")]],
                  [3, [clear_field("ip", "ip", "10.9.0.1")]],
              ]})]
    store = await age()
    assert isinstance(store, AgeStore)
    await store.reset()
    await store.apply(fold(events))
    edges = await store.cypher(
        "MATCH (s:sighting)-[h:has_value]->(v:value) RETURN s.position, v.value, h.columns "
        "ORDER BY s.position, v.value", ("position", "value", "columns"))
    assert edges == [("1", '"10.9.0.1"', '["ip"]'), ("1", '"10.9.0.2"', '["indicator"]'),
                     ("2", '"10.9.0.3"', '["indicator", "ip"]'), ("3", '"10.9.0.1"', '["ip"]')]
    assert await state_hash(store) == await state_hash(await reference(events))


async def test_state_hash_equal_across_sqlite_and_age(age: Opened, tmp_path: Path) -> None:
    events = _mixed_events(seed=5)
    rng = random.Random(3)
    sqlite = SqliteStore(tmp_path / "g.sqlite", RuleSet.default())
    await sqlite.open()
    try:
        for batch in chunks(interleave(events, rng), iter(lambda: rng.randint(1, 7), None)):
            await sqlite.apply(fold(batch))
        sqlite_hash = await state_hash(sqlite)
    finally:
        await sqlite.close()
    store = await age()
    await store.reset()
    for batch in chunks(interleave(events, rng), iter(lambda: rng.randint(1, 7), None)):
        await store.apply(fold(batch))
    assert await state_hash(store) == sqlite_hash
    assert sqlite_hash == await state_hash(await reference(events))


async def test_query_answers_equal_across_sqlite_and_age(age: Opened, tmp_path: Path) -> None:
    """heimdall query / GET /v1/indicators give the same answer whichever back end holds it."""
    events = _mixed_events(seed=9)
    sqlite = SqliteStore(tmp_path / "q.sqlite", RuleSet.default())
    await sqlite.open()
    store = await age()
    await store.reset()
    try:
        for target in (sqlite, store):
            await target.apply(fold(events))
        asked = [("ip", "10.0.0.0"), ("ip", "192.0.2.7"), ("domain", "a.test"), ("domain", "example.com"),
                 ("hash", hashlib.sha256(b"1").hexdigest())]
        for kind, value in asked:
            from_sqlite = await query_value(sqlite, RuleSet.default(), value, kind=kind)
            assert from_sqlite["matches"], (kind, value)
            assert await query_value(store, RuleSet.default(), value, kind=kind) == from_sqlite
        with pytest.raises(NotFound):
            await query_value(store, RuleSet.default(), "198.51.100.1", kind="ip")
    finally:
        await sqlite.close()


async def test_same_record_position_twice_merges(age: Opened) -> None:
    """A record position seen again with other values (re-ingest under one dump id): the
    sighting's values are unioned, its entity is the least, and includes edges follow."""
    feeds = Feeds()
    main = feeds.feed("main")
    dump = fake_bytes("dump:again")
    first = [feeds.event(main, kinds.RECORDS_INGESTED, {"dump": dump, "part": 0, "records": [
        [5, person_record(1)], [6, person_record(2)]]})]
    second = [feeds.event(main, kinds.RECORDS_INGESTED, {"dump": dump, "part": 0, "records": [
        [5, person_record(9, "other.test")], [6, person_record(2)]]})]
    store = await age()
    await store.reset()
    await store.apply(fold(first))
    await store.apply(fold(second))
    assert await state_hash(store) == await state_hash(await reference(first + second))
    ref = await reference(first + second)
    for vid in sorted(fold(first + second).values):
        assert await store.value(vid) == await ref.value(vid)
        # co-occurring values read each sighting's own list of values: unioned too
        assert await store.co_values(vid) == await ref.co_values(vid)


async def test_edge_ids_reserved_are_unique_and_cypher_creates_after_them(age: Opened, pg_dsn: str) -> None:
    """Bulk edges carry ids reserved from their label's sequence (not the column default):
    every edge id is distinct and of its own label, in batches applied again and in any
    grouping, and a Cypher CREATE afterwards takes a fresh id."""
    from pgfixture import connect_age

    store = await age()
    assert isinstance(store, AgeStore)
    await store.reset()
    events = standard_events()
    for batch in chunks(events, iter(lambda: 3, None)):
        await store.apply(fold(batch))
    await store.apply(fold(events))  # every position again: the slow path adds no edge twice
    # A record position seen again with a new primary value: its new entity includes the
    # values the sighting held before, more pairs than the delta has value occurrences.
    feeds = Feeds()
    main = feeds.feed("main")
    dump = fake_bytes("dump:ids")

    def ingest(records: list[list[Any]]) -> Event:
        return feeds.event(main, kinds.RECORDS_INGESTED, {"dump": dump, "part": 0, "records": records})

    def primary(person: int) -> bytes | None:
        return fold([ingest([[5, person_record(person, "other.test")]])]).sightings[(dump, 0, 5)].entity

    first = primary(1)
    assert first is not None
    # the least entity wins: a person whose primary value id sorts first makes the new one stay
    again = next(p for p in range(2, 200) if (primary(p) or b"\xff") < first)
    for records in ([[5, person_record(1, "other.test")], [6, person_record(200)]],
                    [[5, person_record(again, "other.test")]],
                    [[7, person_record(201)], [8, person_record(202)]]):
        await store.apply(fold([ingest(records)]))
    graph = store.graph
    conn = await connect_age(pg_dsn)
    try:
        for label in ("in_dump", "has_value", "in_field", "includes"):
            ids = [int(row[0]) for row in await conn.fetch(f'SELECT id::text::bigint FROM "{graph}".{label}')]
            assert ids and len(set(ids)) == len(ids), label
            label_id = await conn.fetchval("SELECT ag_catalog._label_id($1, $2)", graph, label)
            assert {i >> 48 for i in ids} == {label_id}, label
        created = await conn.fetch(
            f"SELECT * FROM cypher('{graph}', $$ MATCH (s:sighting), (d:dump) WITH s, d LIMIT 1 "
            "CREATE (s)-[e:in_dump]->(d) RETURN id(e) $$) AS (id agtype)")
        fresh = int(str(created[0][0]))
        held = {int(row[0]) for row in await conn.fetch(f'SELECT id::text::bigint FROM "{graph}".in_dump')}
        assert fresh in held
        assert len(held) == len(await conn.fetch(f'SELECT id FROM "{graph}".in_dump'))
    finally:
        await conn.close()


async def test_migrations_recorded_once(age: Opened, pg_dsn: str) -> None:
    from pgfixture import connect_age

    store = await age()
    await store.close()
    again = await age()
    assert isinstance(again, AgeStore)
    conn = await connect_age(pg_dsn)
    try:
        rows = await conn.fetch(f'SELECT version, name FROM "{again.graph}".hm_migration ORDER BY version')
    finally:
        await conn.close()
    assert [(r[0], r[1]) for r in rows] == [(m.version, m.name) for m in load_migrations()]
    assert rows[0][1] == "001_graph.sql"


def test_render_and_names() -> None:
    sql = render("SELECT create_vlabel(@graph_name@, 'x'); CREATE TABLE @graph@.t ();", "heimdall")
    assert sql == "SELECT create_vlabel('heimdall', 'x'); CREATE TABLE \"heimdall\".t ();"
    for bad in ("ab", "1abc", "a-b-c", "x" * 64, "a'b", 'a"b'):
        with pytest.raises(Exception, match="age_graph"):
            AgeStore(RuleSet.default(), graph=bad, dsn="postgresql://x@127.0.0.1/y")


async def test_cypher_refuses_text_that_would_leave_the_query() -> None:
    from heimdall_core.errors import GraphError

    store = AgeStore(RuleSet.default(), graph="safe_names", dsn="postgresql://x@127.0.0.1:1/y")
    with pytest.raises(GraphError, match=r"\$\$"):
        await store.cypher("RETURN '$$'")
    with pytest.raises(GraphError, match="columns"):
        await store.cypher("RETURN 1", ('a" agtype); DROP TABLE x; --',))


def test_redact_dsn_hides_passwords() -> None:
    assert redact_dsn("postgresql://heimdall:s3cr%2Ft@127.0.0.1:5432/heimdall") == \
        "postgresql://heimdall:***@127.0.0.1:5432/heimdall"
    assert "s3cret" not in redact_dsn("postgresql://u@h/db?password=s3cret&sslmode=require")
    assert redact_dsn("host=h user=u password='a b' dbname=d") == "host=h user=u password=*** dbname=d"
    assert redact_dsn("postgresql://u@h:1/d") == "postgresql://u@h:1/d"


async def test_unreachable_database_is_unavailable() -> None:
    from heimdall_core.errors import DatabaseUnavailable

    store = AgeStore(RuleSet.default(), graph="nowhere", dsn="postgresql://u:pw@127.0.0.1:1/db")
    with pytest.raises(DatabaseUnavailable) as caught:
        await store.open()
    assert "pw" not in str(caught.value)
    with pytest.raises(DatabaseUnavailable):
        await store.positions()


# --- the database going away: start-db / stop-db, the projector waits and catches up -------


@pytest.fixture
def site_dir(pg_dsn: str) -> Iterator[Path]:
    """A site data directory with its own start-db database (stopped and removed after)."""
    path = Path(tempfile.mkdtemp(prefix="heimdall-age-site-"))
    path.chmod(0o711)  # the server's account may need to walk into <data_dir>/postgres
    try:
        yield path
    finally:
        try:
            stop_db(path)
        finally:
            shutil.rmtree(path, ignore_errors=True)


def _append_records(data_dir: Path, first: int, count: int, *, started: bool) -> None:
    dump = fake_bytes("dump:outage")
    bodies = []
    if started:
        columns = ["email", "login", "ip", "site", "digest", "note"]
        mapping = {c: k for c, k in zip(columns, ["email", "username", "ip", "domain", "hash", "other"],
                                        strict=True)}
        payload = dump_started(dump, "outage", "o.csv", columns, mapping)
        bodies.append(encode_body(*kinds.DUMP_STARTED, payload))
    for start in range(first, first + count, 5):
        bodies.append(encode_body(*kinds.RECORDS_INGESTED, {"dump": dump, "part": 0, "records": [
            [i, person_record(i)] for i in range(start, start + 5)]}))
    with LogStore(data_dir, LogOptions(fsync=False)) as log:
        log.writer().append_bodies(bodies)


async def _expected_hash(data_dir: Path) -> str:
    reference_store = MemoryStore(RuleSet.default())
    with LogStore(data_dir, LogOptions(fsync=False)) as log:
        await Projector(log, reference_store, RuleSet.default()).catch_up()
    return await state_hash(reference_store)


async def test_projector_waits_for_the_database_and_catches_up(
        site_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """stop-db in the middle of a projection: the store raises DatabaseUnavailable, the
    projector backs off, start-db brings the database back, the projection completes with
    every event applied exactly once."""
    assert main(["--data-dir", str(site_dir), "start-db", "--json"]) == 0
    started = json.loads(capsys.readouterr().out)
    secret = (site_dir / "postgres.secret").read_text().strip()
    assert started["running"] and "***" in started["dsn"] and secret not in started["dsn"]
    init_site(site_dir, "outage")
    _append_records(site_dir, 0, 40, started=True)
    settings = config.load(None, {"HMD_DATA_DIR": str(site_dir)})
    store = backends.make_store(settings, "age")  # graph.postgres_dsn empty: the DSN of start-db
    assert isinstance(store, AgeStore)
    stops: list[int] = []
    starts: list[float] = []

    def progress(done: Progress) -> None:
        if not stops and done.events >= 3:
            stops.append(done.events)
            assert main(["--data-dir", str(site_dir), "stop-db"]) == 0  # mid-run

    async def sleep(seconds: float) -> None:
        starts.append(seconds)
        if len(starts) == 2:  # the first reopen fails too: still down
            assert main(["--data-dir", str(site_dir), "start-db"]) == 0

    options = ProjectorOptions(batch_events=1, retry_initial_s=0.01)
    await store.open()
    try:
        await store.reset()
        with LogStore(site_dir, LogOptions(fsync=False)) as log:
            report = await Projector(log, store, RuleSet.default(), options, sleep=sleep,
                                     progress=progress).catch_up()
            assert stops and len(starts) >= 2 and report.retries >= 2
            _append_records(site_dir, 100, 10, started=False)  # the log grew meanwhile
            await Projector(log, store, RuleSet.default(), options).catch_up()
        assert await state_hash(store) == await _expected_hash(site_dir)
        positions = await store.positions()
        with LogStore(site_dir, LogOptions(fsync=False)) as log:
            assert positions == {log.site.feed: log.reader(log.site.feed).state.size}
    finally:
        await store.close()
    capsys.readouterr()
    assert main(["--data-dir", str(site_dir), "db", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["running"] and secret not in json.dumps(status)
    assert main(["--data-dir", str(site_dir), "stop-db"]) == 0
    capsys.readouterr()
    assert main(["--data-dir", str(site_dir), "db", "status"]) == 1
    assert "not running" in capsys.readouterr().out


def test_db_status_of_a_site_without_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data-dir", str(tmp_path), "db", "status"]) == 1
    out = capsys.readouterr().out
    assert "not running" in out and "heimdall start-db" in out


def test_db_status_of_a_configured_database(tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """graph.postgres_dsn set: `db status` says that database answers, and has AGE."""
    monkeypatch.setenv("HMD_GRAPH__BACKEND", "age")
    monkeypatch.setenv("HMD_GRAPH__POSTGRES_DSN", pg_dsn)
    assert main(["--data-dir", str(tmp_path), "db", "status"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"graph.postgres_dsn {redact_dsn(pg_dsn)} answers: connected; Apache AGE ")
    password = urlsplit(pg_dsn).password
    assert password and password not in out


async def test_store_without_running_database_is_unavailable(tmp_path: Path) -> None:
    from heimdall_core.errors import DatabaseUnavailable

    settings = config.load(None, {"HMD_DATA_DIR": str(tmp_path)})
    store = backends.make_store(settings, "age")
    with pytest.raises(DatabaseUnavailable, match="start-db"):
        await store.open()


# --- helpers --------------------------------------------------------------------------------


def _mixed_events(seed: int) -> list[Event]:
    """Standard events plus two more feeds of overlapping records and enrichment."""
    rng = random.Random(seed)
    feeds = Feeds(start_ms=1_800_000_000_000)
    events = standard_events()
    for name in ("north", "south"):
        feed = feeds.feed(name)
        dump = fake_bytes("dump:" + name)
        for part in range(3):
            records = [[pos, person_record(rng.randrange(40), rng.choice(["a.test", "b.test"]))]
                       for pos in range(part * 10, part * 10 + 10)]
            events.append(feeds.event(feed, kinds.RECORDS_INGESTED, {"dump": dump, "part": 0,
                                                                      "records": records}))
        events.append(feeds.event(feed, kinds.ENRICHMENT_RECEIVED, {
            "provider": name, "kind": "domain", "value": "a.test", "observed_ms": rng.randrange(100),
            "facts": {"registrar": name}}))
    return events

