"""Crash safety with real processes: a projector SIGKILLed at random moments, again and again.

After every kill the database holds exactly the effects of the events before its
positions (checked against the reference fold for a sample of kills), the next run goes
on from there, and the final state hash equals a fresh replay's.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from graph_contract import (
    clear_field,
    dump_started,
    fake_bytes,
    person_record,
    pii_field,
    reference,
    state_hash,
)

from heimdall_core import config, kinds
from heimdall_core.events import decode_frame, encode_body
from heimdall_core.graph.projector import Projector, ProjectorOptions, project_data_dir
from heimdall_core.graph.rules import RuleSet
from heimdall_core.graph.sqlite import FILE_NAME, SqliteStore
from heimdall_core.log.feed import LogOptions
from heimdall_core.log.store import LogStore, init_site

KILLS_MIN = 30
EVENTS_PER_FEED = 2_000
BATCH_EVENTS = 10
DUMP = fake_bytes("dump:crash")
CHECKED_KILLS = 5


def body(kind: tuple[str, int], payload: dict[str, Any]) -> bytes:
    return encode_body(kind[0], kind[1], payload)


def build_log(data_dir: Path) -> LogStore:
    """Two feeds of 2,000 events each: records, enrichment, shredding, notes."""
    init_site(data_dir, "crash")
    log = LogStore(data_dir, LogOptions(fsync=False))
    rng = random.Random(5)
    main, worker = log.site.feed, log.create_own_feed()
    bodies: dict[bytes, list[bytes]] = {main: [body(kinds.DUMP_STARTED, dump_started(
        DUMP, "crash", "c.csv", ["email", "ip"], {"email": "email", "ip": "ip"}))], worker: []}
    for feed, part in ((main, 0), (worker, 1)):
        position = 0
        while len(bodies[feed]) < EVENTS_PER_FEED:
            roll = rng.random()
            if roll < 0.8:
                recs = []
                for _ in range(3):
                    position += 1
                    ip = f"10.1.{rng.randrange(9)}.1"
                    recs.append([position, person_record(rng.randrange(500), ip=ip)])
                payload = {"dump": DUMP, "part": part, "records": recs}
                bodies[feed].append(body(kinds.RECORDS_INGESTED, payload))
            elif roll < 0.9:
                bodies[feed].append(body(kinds.ENRICHMENT_RECEIVED, {
                    "provider": rng.choice(["a", "b"]), "kind": "ip", "value": f"10.1.{rng.randrange(9)}.1",
                    "observed_ms": rng.randrange(100), "facts": {"asn": rng.randrange(5)}}))
            elif roll < 0.93:
                bodies[feed].append(body(kinds.SUBJECT_SHREDDED, {"subject": fake_bytes(
                    f"sub:user{rng.randrange(500)}@example.com")}))
            else:
                bodies[feed].append(body(kinds.RECORDS_INGESTED, {"dump": DUMP, "part": part, "records": [
                    [position, [pii_field("email", "email", "again@example.com"),  # a position seen twice
                                clear_field("ip", "ip", "10.9.9.9")]]]}))
    for feed, feed_bodies in bodies.items():
        for start in range(0, len(feed_bodies), 500):
            log.writer(feed).append_bodies(feed_bodies[start:start + 500])
    return log


def _project_child(data_dir: str) -> None:
    """The killed process: project in small batches, pausing inside each transaction so
    that kills land in the middle of transactions as well as between them."""
    import heimdall_core.graph.sqlite as sqlite_module

    original = sqlite_module._Batch._values

    async def slow_values(self: Any) -> None:
        await original(self)
        await asyncio.sleep(0.002)

    sqlite_module._Batch._values = slow_values  # type: ignore[method-assign]
    settings = config.load(None, {"HMD_DATA_DIR": data_dir, "HMD_LOG__FSYNC": "false"})
    asyncio.run(project_data_dir(settings, options=ProjectorOptions(batch_events=BATCH_EVENTS)))
    os._exit(0)


async def _read(path: Path) -> tuple[dict[bytes, int], str]:
    store = SqliteStore(path, RuleSet.default())
    await store.open()
    try:
        return await store.positions(), await state_hash(store)
    finally:
        await store.close()


def events_before(log: LogStore, positions: dict[bytes, int]) -> list[Any]:
    events = []
    for feed, stop in positions.items():
        events += [decode_frame(frame) for _, frame in log.reader(feed).read_frames(0, stop)]
    return events


def sigkilled_runs(start_child: Callable[[], BaseProcess], rng: random.Random,
                   kill_after_s: tuple[float, float], kills_max: int) -> Iterator[int]:
    """Start a projecting child and SIGKILL it after a random delay, again and again:
    yields the number of kills so far after each one, until ``kills_max`` kills or a child
    that finished before its kill (the log is then fully projected)."""
    kills = 0
    while kills < kills_max:
        child = start_child()
        time.sleep(rng.uniform(*kill_after_s))
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        if child.exitcode != -signal.SIGKILL:
            return
        kills += 1
        yield kills


def started_child(target: Callable[..., None], *args: str) -> BaseProcess:
    child = multiprocessing.get_context("fork").Process(target=target, args=args)
    child.start()
    return child


def test_sigkill_at_random_moments_then_equal_to_fresh_replay(tmp_path: Path) -> None:
    data_dir = tmp_path / "site"
    log = build_log(data_dir)
    total = sum(log.reader(feed).state.size for feed in log.feeds())
    rng = random.Random(9)
    progress: list[int] = []
    kills_before_done = 0
    checked = 0
    kills = 0
    runs = sigkilled_runs(lambda: started_child(_project_child, str(data_dir)), rng, (0.01, 0.06), KILLS_MIN)
    for kills in runs:
        positions, held_hash = asyncio.run(_read(data_dir / FILE_NAME))
        done = sum(positions.values())
        assert not progress or done >= progress[-1], f"positions went backwards at kill {kills}"
        progress.append(done)
        kills_before_done += done < total
        if checked < CHECKED_KILLS and 0 < done < total and rng.random() < 0.3:
            # Exactly the effects of the events before the positions: no half batch, none twice.
            expected = asyncio.run(_reference_hash(events_before(log, positions)))
            assert held_hash == expected
            checked += 1
    assert kills >= KILLS_MIN, f"the projection finished after only {kills} kills; make it longer"
    assert kills_before_done >= KILLS_MIN // 2 and progress[-1] > progress[0]
    child = started_child(_project_child, str(data_dir))
    child.join(timeout=120)
    assert child.exitcode == 0
    positions, crashed_hash = asyncio.run(_read(data_dir / FILE_NAME))
    assert sum(positions.values()) == total
    fresh_hash = asyncio.run(_fresh_replay(log, tmp_path / "fresh.sqlite"))
    assert crashed_hash == fresh_hash
    assert crashed_hash == asyncio.run(_reference_hash(events_before(log, positions)))
    log.close()


async def _reference_hash(events: list[Any]) -> str:
    return await state_hash(await reference(events))


async def _fresh_replay(log: LogStore, path: Path) -> str:
    store = SqliteStore(path, RuleSet.default())
    await store.open()
    try:
        await Projector(log, store, RuleSet.default()).catch_up()
        return await state_hash(store)
    finally:
        await store.close()
