"""Overlapping applies on the AGE back end (store.OverlappingApply): a batch is looked up
and built while the one before it is still being written, and commits after it.

What must hold whatever the timing: the state equals the reference fold; a batch whose
predecessor failed never commits; another writer committing between two batches, or
lookups that fail on the second connection, make the batch look itself up again inside
its own transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import pytest
from graph_contract import chunks, fold, interleave, reference, standard_events, state_hash
from test_graph_age import _mixed_events

from heimdall_core.errors import GraphError
from heimdall_core.events import Event
from heimdall_core.graph import age as age_module
from heimdall_core.graph.age import AgeStore
from heimdall_core.graph.model import Delta
from heimdall_core.graph.rules import RuleSet
from heimdall_core.graph.store import OverlappingApply

pytestmark = pytest.mark.pg


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="heimdall.graph.age")


Opener = Callable[[], Awaitable[AgeStore]]


@pytest.fixture
async def age(pg_dsn: str, request: pytest.FixtureRequest) -> AsyncIterator[Opener]:
    """Opens stores of one graph for the test (each with its own connections)."""
    graph = "t_o_" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:12]
    opened: list[AgeStore] = []

    async def open_store() -> AgeStore:
        store = AgeStore(RuleSet.default(), graph=graph, dsn=pg_dsn)
        await store.open()
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.close()


async def _fresh(age: Opener) -> AgeStore:
    store = await age()
    assert isinstance(store, OverlappingApply)
    await store.reset()
    return store


def _batches(events: Sequence[Event], seed: int) -> list[Delta]:
    rng = random.Random(seed)
    return [fold(part) for part in chunks(interleave(events, rng), iter(lambda: rng.randint(1, 5), None))]


async def _apply_overlapped(store: AgeStore, deltas: Sequence[Delta]) -> None:
    """As the projector's pipeline does: the next batch starts once the one in flight has
    built its rows, and the one in flight is awaited after."""
    pending: asyncio.Task[None] | None = None
    for delta in deltas:
        if pending is not None:
            await store.apply_built()
        task = asyncio.create_task(store.apply(delta))
        if pending is not None:
            await pending
        pending = task
    if pending is not None:
        await pending


def _count_ahead(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the batches that were looked up ahead (on the second connection)."""
    ran: list[int] = []
    original = AgeStore._run_ahead

    async def counted(self: AgeStore, *args: Any) -> None:
        ran.append(1)
        await original(self, *args)

    monkeypatch.setattr(AgeStore, "_run_ahead", counted)
    return ran


async def test_overlapping_applies_equal_the_reference(age: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    ahead = _count_ahead(monkeypatch)
    events = standard_events() + _mixed_events(seed=11)
    store = await _fresh(age)
    deltas = _batches(events, seed=4)
    await _apply_overlapped(store, deltas)
    assert len(ahead) >= len(deltas) // 2  # most batches were looked up ahead
    assert await state_hash(store) == await state_hash(await reference(events))
    # and applied again, overlapped: nothing changes (record positions held, values held)
    await _apply_overlapped(store, _batches(events, seed=5))
    assert await state_hash(store) == await state_hash(await reference(events))


async def test_a_batch_after_a_failed_one_does_not_commit(age: Opener,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    events = _mixed_events(seed=3)
    store = await _fresh(age)
    first, second = _batches(events[:len(events) // 2], seed=1)[:2]
    original = age_module._Batch.run

    async def failing(self: Any, conn: Any) -> None:
        await original(self, conn)
        if self.delta is first:
            conn.queue("SELECT 1 / 0")  # fails on the server, after the rows were queued

    monkeypatch.setattr(age_module._Batch, "run", failing)
    in_flight = asyncio.create_task(store.apply(first))
    await store.apply_built()
    after = asyncio.create_task(store.apply(second))
    with pytest.raises(GraphError):
        await in_flight
    with pytest.raises(GraphError, match="the one before it failed"):
        await after
    assert await store.positions() == {}
    assert await state_hash(store) == await state_hash(await reference([]))


async def test_another_writer_between_two_batches(age: Opener, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A second store commits between a batch and the one looked up ahead of its turn: the
    latter is looked up again in its transaction (the other's values may be its own)."""
    ahead = _count_ahead(monkeypatch)
    events = _mixed_events(seed=8)
    store, other = await _fresh(age), await age()
    deltas = _batches(events, seed=2)
    middle = len(deltas) // 2
    taken = 0
    lock = store._lock

    async def lock_after_the_other(conn: Any) -> int:
        nonlocal taken
        taken += 1
        if taken == middle + 1:  # the batch looked up while deltas[middle - 1] was written
            await other.apply(deltas[middle])
        return await lock(conn)

    monkeypatch.setattr(store, "_lock", lock_after_the_other)
    await _apply_overlapped(store, deltas[:middle] + deltas[middle + 1:])
    assert ahead
    assert "another writer committed meanwhile; looking the batch up again" in caplog.text
    assert await state_hash(store) == await state_hash(await reference(events))


async def test_failed_lookups_ahead_are_done_again(age: Opener, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The second connection failing (as asyncpg may report a connection lost while the
    database stops) costs the lookups, not the batch: its transaction looks it up again."""
    events = _mixed_events(seed=6)
    store = await _fresh(age)
    failures = [0]

    async def broken(self: Any, sql: str, *args: Any) -> list[asyncpg.Record]:
        failures[0] += 1
        raise asyncpg.InternalClientError("cannot switch to state 12; another operation is in progress")

    monkeypatch.setattr(age_module._Reads, "fetch", broken)
    monkeypatch.setattr(age_module._Reads, "fetchrow", broken)
    await _apply_overlapped(store, _batches(events, seed=7))
    assert failures[0]
    assert "its lookups failed (InternalClientError); looking the batch up again" in caplog.text
    assert await state_hash(store) == await state_hash(await reference(events))
