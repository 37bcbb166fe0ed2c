"""SQLite back end specifics: atomic batches, a second writer, readers in other connections."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import aiosqlite
import pytest
from graph_contract import (
    Feeds,
    all_value_ids,
    chunks,
    clear_field,
    fold,
    person_record,
    reference,
    standard_events,
    state_hash,
)

from heimdall_core import kinds
from heimdall_core.errors import DatabaseUnavailable, GraphError
from heimdall_core.events import Event
from heimdall_core.graph import model
from heimdall_core.graph import sqlite as sqlite_module
from heimdall_core.graph.rules import RuleSet
from heimdall_core.graph.sqlite import SqliteStore


async def opened(path: Path) -> SqliteStore:
    store = SqliteStore(path, RuleSet.default())
    await store.open()
    return store


async def _failing_sightings(self: object) -> None:
    raise sqlite3.OperationalError("disk I/O error")


def _failing_seen(seen: object) -> tuple[str, tuple[object, ...]]:
    return "INSERT INTO no_such_table VALUES (1)", ()


@pytest.mark.parametrize(("attribute", "broken", "error", "match"), [
    # values are written, then the sightings fail
    ("_sightings", _failing_sightings, DatabaseUnavailable, "disk I/O error"),
    # statements run on SQLite's thread while Python builds the next ones: one that fails
    # without being awaited right away (the last, ``seen``) still fails the whole batch
    ("_seen_statement", staticmethod(_failing_seen), GraphError, "no_such_table"),
])
async def test_failed_batch_leaves_nothing_and_the_next_one_works(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, attribute: str, broken: object,
        error: type[Exception], match: str) -> None:
    events = standard_events()
    store = await opened(tmp_path / "g.sqlite")
    try:
        await store.apply(fold(events[:4]))
        before_hash, before_positions = await state_hash(store), await store.positions()
        with monkeypatch.context() as patch:
            patch.setattr(sqlite_module._Batch, attribute, broken)
            with pytest.raises(error, match=match):
                await store.apply(fold(events[4:]))
        assert await state_hash(store) == before_hash
        assert await store.positions() == before_positions
        await store.apply(fold(events[4:]))
        assert await state_hash(store) == await state_hash(await reference(events))
    finally:
        await store.close()


async def test_two_writers_and_a_reader_on_one_file(tmp_path: Path) -> None:
    """Only the projector writes, but a second one (or a replay) must not corrupt anything,
    and a reader opened earlier must read what others wrote since (new feeds included)."""
    path = tmp_path / "g.sqlite"
    feeds = Feeds()
    a, b = feeds.feed("a"), feeds.feed("b")
    dump = b"\x07" * 16
    events = []
    for index in range(6):
        feed = a if index % 2 else b
        events.append(feeds.event(feed, kinds.RECORDS_INGESTED, {"dump": dump, "part": index % 2, "records": [
            [index * 10 + i, person_record(i)] for i in range(5)]}))
    events.append(feeds.event(a, kinds.ENRICHMENT_RECEIVED, {
        "provider": "p", "kind": "ip", "value": "10.0.0.0", "observed_ms": 1, "facts": {"asn": 1}}))
    reader = await opened(path)
    first, second = await opened(path), await opened(path)
    try:
        for index, event in enumerate(events):
            await (first if index % 2 else second).apply(fold([event]))
        assert await state_hash(reader) == await state_hash(await reference(events))
        info = await reader.value(model.clear_value_vid("ip", "10.0.0.0"))
        assert info is not None and info.props["fact.asn"][2] == 1
        assert await reader.positions() == {a: 4, b: 3}
    finally:
        for store in (reader, first, second):
            await store.close()


async def test_sighting_counts_stay_exact_when_records_repeat(tmp_path: Path) -> None:
    feeds = Feeds()
    feed = feeds.feed("a")
    dump = b"\x08" * 16
    record = [[1, person_record(1)], [2, person_record(1)]]
    events = [feeds.event(feed, kinds.RECORDS_INGESTED, {"dump": dump, "part": 0, "records": record})
              for _ in range(3)]  # the same two records, three times (a re-ingest under one dump id)
    store = await opened(tmp_path / "g.sqlite")
    try:
        for event in events:
            await store.apply(fold([event]))
        ref = await reference(events)
        for vid in fold(events).values:
            held, expected = await store.value(vid), await ref.value(vid)
            assert held is not None and expected is not None
            assert held.sightings == expected.sightings
        assert (await store.counts()).sightings == 2
    finally:
        await store.close()


async def _assert_same_as_reference(store: SqliteStore, events: list[Event]) -> None:
    ref = await reference(events)
    assert await state_hash(store) == await state_hash(ref)
    for vid in all_value_ids(events):
        assert await store.value(vid) == await ref.value(vid)
        assert await store.value_dumps(vid) == await ref.value_dumps(vid)
        assert await store.co_values(vid, limit=5) == await ref.co_values(vid, limit=5)


async def test_values_met_again_after_leaving_the_caches(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Values forgotten by the id caches are found from the insert's conflicts: their first
    sighting (kept in their row) and later ones (seen) must stay exact, in small slices too."""
    monkeypatch.setattr(sqlite_module, "HOT_VALUES_MAX", 0)
    monkeypatch.setattr(sqlite_module, "YOUNG_VALUES_MAX", 0)
    monkeypatch.setattr(sqlite_module, "VALUE_ROWS_PER_STATEMENT", 3)
    events = standard_events()
    store = await opened(tmp_path / "g.sqlite")
    try:
        for batch in chunks(events, iter(lambda: 2, None)):
            await store.apply(fold(batch))
        await store.apply(fold(events))  # everything again: held values, held sightings
        await _assert_same_as_reference(store, events)
    finally:
        await store.close()


async def test_a_held_record_gains_a_new_value(tmp_path: Path) -> None:
    """A record position ingested again with a value never seen before: the new value's
    first sighting is the held one, not the number its second copy was given."""
    feeds = Feeds()
    feed = feeds.feed("a")
    dump = b"\x09" * 16
    before = [clear_field("ip", "ip", "10.9.0.1"), clear_field("site", "domain", "a.example")]
    after = [clear_field("ip", "ip", "10.9.0.1"), clear_field("digest", "hash", "ab" * 32, algo="sha256")]
    events = [feeds.event(feed, kinds.RECORDS_INGESTED, {"dump": dump, "part": 0, "records": [[1, fields]]})
              for fields in (before, after)]
    store = await opened(tmp_path / "g.sqlite")
    try:
        for event in events:
            await store.apply(fold([event]))
        await _assert_same_as_reference(store, events)
        new = model.clear_value_vid("hash", "ab" * 32)
        assert [d.sightings for d in (await store.value_dumps(new)).items] == [1]
    finally:
        await store.close()


async def test_a_file_of_another_schema_version_is_rebuilt_by_replay(tmp_path: Path) -> None:
    path = tmp_path / "g.sqlite"
    events = standard_events()
    store = await opened(path)
    await store.apply(fold(events))
    await store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '1' WHERE name = 'schema_version'")
    store = await opened(path)  # opens, so that replay can rebuild it
    try:
        with pytest.raises(GraphError, match=r"schema version 1.*heimdall replay"):
            await store.positions()
        await store.reset()
        await store.apply(fold(events))
        assert await state_hash(store) == await state_hash(await reference(events))
    finally:
        await store.close()


async def test_text_with_nul_and_records_without_values(tmp_path: Path) -> None:
    """Rows travel to SQLite as JSON text with their blobs beside it: a NUL inside a kind or
    a clear value (JSON text cannot bring it through SQLite's JSON functions), a record with
    no fields and a record whose only field is sealed must all land exactly."""
    feeds = Feeds()
    feed = feeds.feed("a")
    dump = b"\x0a" * 16
    sealed_only = {"col": "email", "kind": "email", "ct": b"\x01" * 40, "sub": b"\x02" * 16}
    records = [[1, [clear_field("note", "text", "a\x00b"), clear_field("ip", "ip", "10.9.0.2")]],
               [2, []],
               [3, [sealed_only]],
               [4, [clear_field("odd", "k\x00ind", "value"), clear_field("ip", "ip", "10.9.0.2")]]]
    events = [feeds.event(feed, kinds.RECORDS_INGESTED, {"dump": dump, "part": 0, "records": records})]
    store = await opened(tmp_path / "g.sqlite")
    try:
        await store.apply(fold(events))
        await _assert_same_as_reference(store, events)
        held = await store.value(model.clear_value_vid("text", "a\x00b"))
        assert held is not None and held.value == "a\x00b"
    finally:
        await store.close()


async def test_bulk_numbers_in_and_out_of_their_range(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Bulk rows carry their numbers as fixed-width offset numbers, and texts as bytes: values
    beyond ASCII, statements split in many slices, and positions that do not fit the offset
    form (negative, huge: those slices go the slow way) must all land exactly."""
    monkeypatch.setattr(sqlite_module, "VALUE_ROWS_PER_STATEMENT", 7)
    monkeypatch.setattr(sqlite_module, "ROW_NUMBERS_MAX", 5)
    feeds = Feeds()
    feed = feeds.feed("a")
    dump = b"\x0b" * 16
    names = ["m\u00fcnchen.example", "\u0444\u0438\u0440\u043c\u0430.example", "\U0001f600.example",
             "plain.example"]
    batches = [
        [[i, [clear_field("domain", "domain", names[i % 4], registrable_domain="example"),
              clear_field("ip", "ip", f"10.8.0.{i}"), *person_record(i)]] for i in range(1, 30)],
        [[-5, person_record(40)], [2 ** 62, person_record(41)], [7, person_record(42)]],
        [[i, [clear_field("domain", "domain", names[i % 3]), clear_field("note", "text", f"n\u00e9{i}")]]
         for i in range(100, 120)],
    ]
    events = [feeds.event(feed, kinds.RECORDS_INGESTED, {"dump": dump, "part": part, "records": records})
              for part, records in enumerate(batches)]
    store = await opened(tmp_path / "g.sqlite")
    try:
        for event in events:
            await store.apply(fold([event]))
        await _assert_same_as_reference(store, events)
    finally:
        await store.close()


async def test_every_bulk_statement_has_a_slow_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no number fitting the offset form, values go row by row and sightings and seen
    edges in the JSON form: the same state."""
    monkeypatch.setattr(sqlite_module, "_NUMBER_LIMIT", sqlite_module._NUMBER_OFFSET + 2)
    events = standard_events()
    store = await opened(tmp_path / "g.sqlite")
    try:
        for chunk in chunks(events, itertools.repeat(3)):
            await store.apply(fold(chunk))
        await _assert_same_as_reference(store, events)
    finally:
        await store.close()


async def test_a_too_old_sqlite_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_module.sqlite3, "sqlite_version_info", (3, 37, 2))
    monkeypatch.setattr(sqlite_module.sqlite3, "sqlite_version", "3.37.2")
    store = SqliteStore(tmp_path / "graph.sqlite", RuleSet.default())
    with pytest.raises(GraphError, match=r"needs SQLite 3\.38\.0 or newer .*links SQLite 3\.37\.2"):
        await store.open()
    assert not (tmp_path / "graph.sqlite").exists()


async def test_errors_that_waiting_cures_are_told_apart_from_the_rest(tmp_path: Path) -> None:
    """A locked or failing database is worth waiting for (the projector retries); a
    statement SQLite rejects is not, and must not make the projector wait for ever."""
    path = tmp_path / "g.sqlite"
    store = await opened(path)
    try:
        async with aiosqlite.connect(path) as other:  # holds the write lock
            await other.execute("PRAGMA busy_timeout = 0")
            await other.execute("BEGIN IMMEDIATE")
            locked = store._db  # the store's own connection, told not to wait either
            await locked.execute("PRAGMA busy_timeout = 0")
            try:
                await locked.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                assert isinstance(sqlite_module._translate(exc, "writing"), DatabaseUnavailable)
            else:
                raise AssertionError("a second writer got the lock")
            await other.rollback()
        try:
            await store._db.execute("SELECT no_such_column FROM value")
        except sqlite3.Error as exc:
            rejected = sqlite_module._translate(exc, "reading")
            assert type(rejected) is GraphError and "no_such_column" in str(rejected)
        else:
            raise AssertionError("SQLite accepted a statement naming a missing column")
    finally:
        await store.close()
