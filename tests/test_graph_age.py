"""The PostgreSQL + Apache AGE back end: the graph store contract against a real
PostgreSQL with AGE, plus what only this back end has (cypher(), migrations, the database
going away and coming back).

The contract tests of tests/graph_contract.py are imported here and run with this
module's ``backend`` fixtures, which name only ``age``; the session's PostgreSQL comes
from the ``pg_dsn`` fixture (tests/pgfixture.py starts it, installing it first if needed).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from graph_contract import (
    Feeds,
    Opened,
    chunks,
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
    test_contract_state_equals_reference,
)

from heimdall_core import kinds
from heimdall_core.events import Event
from heimdall_core.graph.age import AgeStore, load_migrations, redact_dsn, render
from heimdall_core.graph.rules import RuleSet
from heimdall_core.graph.sqlite import SqliteStore
from heimdall_core.graph.store import GraphStore

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
    from pgfixture import connect_age

    store = await age()
    assert isinstance(store, AgeStore)
    await store.reset()
    await store.apply(fold(standard_events()))
    conn = await connect_age(pg_dsn)
    try:
        await conn.execute("SET enable_seqscan = off")  # tiny tables: make the planner show its options
        graph = store.graph
        plans = {}
        for name, query in (("map", "MATCH (v:value {value: '10.0.0.0'}) RETURN v"),
                            ("where", "MATCH (v:value) WHERE v.value = '10.0.0.0' RETURN v")):
            rows = await conn.fetch(f"EXPLAIN SELECT * FROM cypher('{graph}', $$ {query} $$) AS (v agtype)")
            plans[name] = "\n".join(row[0] for row in rows)
        assert "value_props" in plans["map"], plans["map"]
        assert "value_value" in plans["where"], plans["where"]
    finally:
        await conn.close()


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

