"""Crash safety of the AGE back end with real processes: a projector SIGKILLed at random
moments, again and again, against a real PostgreSQL + AGE.

A kill may land before, during or after any statement of a batch, its commit included.
After every kill the graph holds exactly the effects of the events before its positions
(checked against the reference fold for a sample of kills), the next run goes on from
there, and the final state equals the reference fold of the whole log.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from pathlib import Path
from typing import Any

import pytest
from graph_contract import reference, state_hash
from test_graph_crash import build_log, events_before, sigkilled_runs, started_child

from heimdall_core import config
from heimdall_core.graph import age as age_module
from heimdall_core.graph.age import AgeStore
from heimdall_core.graph.projector import ProjectorOptions, project_data_dir
from heimdall_core.graph.rules import RuleSet

pytestmark = pytest.mark.pg

KILLS_MIN = 10
BATCH_EVENTS = 10
CHECKED_KILLS = 4
KILL_AFTER_S = (0.15, 0.5)  # the child needs ~0.1-0.2 s to connect before it projects
PAUSE_IN_TRANSACTION_S = 0.01  # 400 transactions: the whole log takes the child ~4 s or more
FINISH_TIMEOUT_S = 300


def _graph(tmp_path: Path) -> str:
    return "t_kill_" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:10]


def _project_child(data_dir: str, dsn: str, graph: str) -> None:
    """The killed process: project in small batches, pausing inside each transaction so
    that kills land in the middle of transactions as well as between them."""
    original = age_module._Batch.run

    async def slow_run(self: Any, conn: Any) -> None:
        await original(self, conn)
        await asyncio.sleep(PAUSE_IN_TRANSACTION_S)

    age_module._Batch.run = slow_run  # type: ignore[method-assign]
    settings = config.load(None, {"HMD_DATA_DIR": data_dir, "HMD_LOG__FSYNC": "false",
                                  "HMD_GRAPH__POSTGRES_DSN": dsn, "HMD_GRAPH__AGE_GRAPH": graph})
    asyncio.run(project_data_dir(settings, "age", options=ProjectorOptions(batch_events=BATCH_EVENTS)))
    os._exit(0)


async def _read(dsn: str, graph: str) -> tuple[dict[bytes, int], str]:
    store = AgeStore(RuleSet.default(), graph=graph, dsn=dsn)
    await store.open()
    try:
        return await store.positions(), await state_hash(store)
    finally:
        await store.close()


async def _drop(dsn: str, graph: str) -> None:
    store = AgeStore(RuleSet.default(), graph=graph, dsn=dsn)
    await store.open()
    try:
        async with store._conn("dropping a test graph") as conn:
            await conn.execute("SELECT ag_catalog.drop_graph($1, true)", graph)
    finally:
        await store.close()


async def _reference_hash(events: list[Any]) -> str:
    return await state_hash(await reference(events))


def test_age_projector_sigkilled_at_random_moments_then_equal_to_reference(
        tmp_path: Path, pg_dsn: str) -> None:
    data_dir = tmp_path / "site"
    graph = _graph(tmp_path)
    log = build_log(data_dir)
    total = sum(log.reader(feed).state.size for feed in log.feeds())
    rng = random.Random(11)
    progress: list[int] = []
    checked = kills = 0
    try:
        for kills in sigkilled_runs(lambda: started_child(_project_child, str(data_dir), pg_dsn, graph), rng,
                                    KILL_AFTER_S, KILLS_MIN):
            positions, held_hash = asyncio.run(_read(pg_dsn, graph))
            done = sum(positions.values())
            assert not progress or done >= progress[-1], f"positions went backwards at kill {kills}"
            progress.append(done)
            if checked < CHECKED_KILLS and 0 < done < total:
                # Exactly the effects of the events before the positions: no half batch.
                assert held_hash == asyncio.run(_reference_hash(events_before(log, positions)))
                checked += 1
        assert kills >= KILLS_MIN, f"the projection finished after only {kills} kills; make it longer"
        assert checked and progress[-1] > progress[0]
        child = started_child(_project_child, str(data_dir), pg_dsn, graph)
        child.join(timeout=FINISH_TIMEOUT_S)
        assert child.exitcode == 0
        positions, final_hash = asyncio.run(_read(pg_dsn, graph))
        assert sum(positions.values()) == total
        assert final_hash == asyncio.run(_reference_hash(events_before(log, positions)))
    finally:
        log.close()
        asyncio.run(_drop(pg_dsn, graph))
