"""The projector over a real log: own and foreign feeds, unknown events, the database away."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from graph_contract import (
    clear_field,
    dump_started,
    fake_bytes,
    person_record,
    reference,
    state_hash,
)

from heimdall_core import config, kinds
from heimdall_core.config import GraphSettings
from heimdall_core.errors import DatabaseUnavailable, GraphError
from heimdall_core.events import decode_frame, encode_body
from heimdall_core.graph.model import Delta
from heimdall_core.graph.projector import Projector, ProjectorOptions, project_data_dir
from heimdall_core.graph.rules import RuleSet
from heimdall_core.graph.sqlite import SqliteStore
from heimdall_core.log.feed import LogOptions
from heimdall_core.log.store import LogStore, init_site

FAST = LogOptions(fsync=False)
DUMP = fake_bytes("dump:p")


def body(kind: tuple[str, int], payload: dict[str, Any]) -> bytes:
    return encode_body(kind[0], kind[1], payload)


def records(start: int, count: int, part: int = 0) -> bytes:
    return body(kinds.RECORDS_INGESTED, {"dump": DUMP, "part": part, "records": [
        [position, person_record(position)] for position in range(start, start + count)]})


def make_site(path: Path, name: str = "a") -> LogStore:
    init_site(path, name)
    return LogStore(path, FAST)


def all_events(log: LogStore) -> list[Any]:
    events = []
    for feed in log.feeds():
        reader = log.reader(feed)
        events += [decode_frame(frame) for _, frame in reader.read_frames(0, reader.state.size)]
    return events


async def open_sqlite(path: Path, rules: RuleSet | None = None) -> SqliteStore:
    store = SqliteStore(path / "graph.sqlite", rules or RuleSet.default())
    await store.open()
    return store


def add_foreign_feed(log: LogStore, other_dir: Path) -> bytes:
    """A second site's feed, accepted (verified) into ``log`` as a peer would deliver it."""
    other = make_site(other_dir, "b")
    writer = other.writer()
    started = dump_started(DUMP, "peer", "p.csv", ["ip"], {"ip": "ip"})
    writer.append_bodies([body(kinds.DUMP_STARTED, started)])
    writer.append_bodies([records(100, 5, part=1), body(kinds.NOTE, {"from": "peer"})])
    feed = other.site.feed
    for first, frames, note in other.reader(feed).iter_batches(0):
        log.accept(feed, first, frames, note)
    other.close()
    return feed


async def test_projects_own_and_foreign_feeds(tmp_path: Path) -> None:
    log = make_site(tmp_path / "site")
    writer = log.writer()
    writer.append_bodies([body(kinds.DUMP_STARTED, dump_started(DUMP, "mine", "m.csv", ["ip"], {"ip": "ip"})),
                          records(1, 10), records(11, 10)])
    worker = log.create_own_feed()
    log.writer(worker).append_bodies([records(1, 4, part=1)])
    foreign = add_foreign_feed(log, tmp_path / "other")
    store = await open_sqlite(tmp_path)
    try:
        report = await Projector(log, store, RuleSet.default(), ProjectorOptions(batch_events=2)).catch_up()
        sizes = {feed: log.reader(feed).state.size for feed in log.feeds()}
        assert foreign in sizes and report.positions == sizes == await store.positions()
        assert report.events == sum(sizes.values()) and report.records == 10 + 10 + 4 + 5
        assert report.batches >= report.events // 2 and not report.stopped
        assert await state_hash(store) == await state_hash(await reference(all_events(log)))
        again = await Projector(log, store, RuleSet.default()).catch_up()
        assert again.events == 0  # nothing applied twice
    finally:
        await store.close()
        log.close()


async def test_batch_records_setting_bounds_each_transaction(tmp_path: Path) -> None:
    log = make_site(tmp_path / "site")
    started = dump_started(DUMP, "mine", "m.csv", ["ip"], {"ip": "ip"})
    log.writer().append_bodies([body(kinds.DUMP_STARTED, started),
                                *(records(1 + 60 * n, 60) for n in range(5))])
    options = ProjectorOptions.from_settings(GraphSettings(batch_events=1_000, batch_records=100))
    assert (options.batch_events, options.batch_records) == (1_000, 100)
    store = await open_sqlite(tmp_path)
    try:
        report = await Projector(log, store, RuleSet.default(), options).catch_up()
        assert report.records == 300
        assert report.batches == 3  # 120 records, 120, then the last 60 (a batch ends once full)
        assert await state_hash(store) == await state_hash(await reference(all_events(log)))
    finally:
        await store.close()
        log.close()


async def test_unknown_event_stops_only_its_feed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = make_site(tmp_path / "site")
    main = log.writer()
    main.append_bodies([records(1, 3), encode_body("strange.kind", 1, {"x": 1}), records(4, 3)])
    worker = log.create_own_feed()
    log.writer(worker).append_bodies([records(1, 2, part=1), records(3, 2, part=1)])
    store = await open_sqlite(tmp_path)
    caplog.set_level(logging.ERROR, logger="heimdall.graph")
    try:
        for _ in range(2):  # stops again at the same place on every pass: never skipped
            report = await Projector(log, store, RuleSet.default()).catch_up()
            positions = await store.positions()
            assert positions[log.site.feed] == 1
            assert positions[worker] == 2
            reason = report.stopped[log.site.feed]
            assert log.site.feed.hex() in reason and "seq 1" in reason and "'strange.kind'" in reason
            assert worker not in report.stopped
        assert any("stopped at seq 1" in record.getMessage() for record in caplog.records)
    finally:
        await store.close()
        log.close()


class FlakyStore(SqliteStore):
    """Fails like a database that went away: ``apply`` and ``open`` raise for a while."""

    def __init__(self, path: Path, rules: RuleSet, failures: int, on_failure: Any) -> None:
        super().__init__(path, rules)
        self.failures = failures
        self.on_failure = on_failure

    async def apply(self, delta: Delta) -> None:
        if self.failures > 0:
            self.failures -= 1
            self.on_failure()
            raise DatabaseUnavailable("simulated: connection refused")
        await super().apply(delta)

    async def open(self) -> None:
        if self.failures > 0 and self._conn is None and hasattr(self, "opened_once"):
            self.failures -= 1
            raise DatabaseUnavailable("simulated: still down")
        self.opened_once = True
        await super().open()


async def test_database_away_waits_with_capped_backoff_and_catches_up(tmp_path: Path) -> None:
    log = make_site(tmp_path / "site")
    writer = log.writer()
    writer.append_bodies([records(1, 5)])
    appended = []

    def ingest_meanwhile() -> None:  # the log keeps growing while the database is away
        start = 100 + 10 * len(appended)
        writer.append_bodies([records(start, 2)])
        appended.append(start)

    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)

    store = FlakyStore(tmp_path / "graph.sqlite", RuleSet.default(), failures=8, on_failure=ingest_meanwhile)
    await store.open()
    options = ProjectorOptions(retry_initial_s=0.5, retry_max_s=4.0)
    try:
        report = await Projector(log, store, RuleSet.default(), options, sleep=fake_sleep).catch_up()
        assert store.failures == 0 and report.retries == len(delays) >= 5
        assert delays[:5] == [0.5, 1.0, 2.0, 4.0, 4.0] and max(delays) == 4.0
        # Whatever appended before the last pass started is projected, nothing twice.
        assert await store.positions() == {log.site.feed: log.reader(log.site.feed).state.size}
        assert await state_hash(store) == await state_hash(await reference(all_events(log)))
    finally:
        await store.close()
        log.close()


async def test_gives_up_after_attempts_max(tmp_path: Path) -> None:
    log = make_site(tmp_path / "site")
    log.writer().append_bodies([records(1, 2)])
    store = FlakyStore(tmp_path / "graph.sqlite", RuleSet.default(), failures=100, on_failure=lambda: None)
    await store.open()

    async def no_sleep(seconds: float) -> None:
        return None

    try:
        with pytest.raises(DatabaseUnavailable):
            await Projector(log, store, RuleSet.default(), ProjectorOptions(attempts_max=3),
                            sleep=no_sleep).catch_up()
    finally:
        await store.close()
        log.close()


async def test_replay_equals_live_projection(tmp_path: Path) -> None:
    data_dir = tmp_path / "site"
    log = make_site(data_dir)
    settings = config.load(None, {"HMD_DATA_DIR": str(data_dir), "HMD_LOG__FSYNC": "false"})
    writer = log.writer()
    writer.append_bodies([body(kinds.DUMP_STARTED, dump_started(DUMP, "s", "d.csv", ["ip"], {"ip": "ip"}))])
    for start in range(1, 40, 8):
        writer.append_bodies([records(start, 8), body(kinds.RECORDS_INGESTED, {
            "dump": DUMP, "part": 0, "records": [[start, [clear_field("extra", "ip", "192.0.2.1")]]]})])
        live = await project_data_dir(settings)
        assert live.events == (3 if start == 1 else 2)  # the first pass has dump.started too
    log.close()
    store = await open_sqlite(data_dir)
    try:
        live_hash = await state_hash(store)
    finally:
        await store.close()
    replayed = await project_data_dir(settings, replay=True)
    assert replayed.events == 11 and replayed.records == 45
    store = await open_sqlite(data_dir)
    try:
        assert await state_hash(store) == live_hash
    finally:
        await store.close()


async def test_follow_projects_what_arrives_until_stopped(tmp_path: Path) -> None:
    log = make_site(tmp_path / "site")
    writer = log.writer()
    writer.append_bodies([records(1, 3)])
    store = await open_sqlite(tmp_path)
    stop = asyncio.Event()
    projector = Projector(log, store, RuleSet.default())
    task = asyncio.create_task(projector.follow(stop, poll_s=0.01))
    try:
        for start in (10, 20):
            await asyncio.sleep(0.05)
            writer.append_bodies([records(start, 2)])
        size = log.reader(log.site.feed).state.size
        for _ in range(200):
            if (await store.positions()).get(log.site.feed) == size:
                break
            await asyncio.sleep(0.01)
        assert (await store.positions())[log.site.feed] == size == 3
        stop.set()
        await asyncio.wait_for(task, 5)
    finally:
        stop.set()
        await store.close()
        log.close()


class BrokenOnce(SqliteStore):
    def __init__(self, path: Path, rules: RuleSet) -> None:
        super().__init__(path, rules)
        self.broken = True

    async def apply(self, delta: Delta) -> None:
        if self.broken:
            self.broken = False
            raise GraphError("simulated store bug")
        await super().apply(delta)


async def test_follow_survives_a_failed_pass(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = make_site(tmp_path / "site")
    log.writer().append_bodies([records(1, 3)])
    store = BrokenOnce(tmp_path / "graph.sqlite", RuleSet.default())
    await store.open()
    stop = asyncio.Event()
    projector = Projector(log, store, RuleSet.default(), ProjectorOptions(retry_max_s=0.01))
    task = asyncio.create_task(projector.follow(stop, poll_s=0.01))
    try:
        for _ in range(300):
            if (await store.positions()).get(log.site.feed) == 1:
                break
            await asyncio.sleep(0.01)
        assert (await store.positions())[log.site.feed] == 1
        assert any("projection pass failed" in record.getMessage() for record in caplog.records)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await store.close()
        log.close()


def test_backoff_doubles_to_its_cap_and_starts_again_after_a_success() -> None:
    backoff = ProjectorOptions(retry_initial_s=0.5, retry_max_s=3.0).backoff()
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5
