"""Convergence: any interleaving of the same feeds, in any batching, gives one state hash;
applying an event twice changes nothing. Memory store for many examples, SQLite for some."""

from __future__ import annotations

import asyncio
import random
import tempfile
from pathlib import Path
from typing import Any

from graph_contract import Feeds, chunks, clear_field, dump_started, fake_bytes, fold, interleave, state_hash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heimdall_core import kinds
from heimdall_core.events import Event
from heimdall_core.graph.memory import MemoryStore
from heimdall_core.graph.rules import RuleSet
from heimdall_core.graph.sqlite import SqliteStore

DUMPS = [fake_bytes("dump:1"), fake_bytes("dump:2")]
SUBJECTS = [fake_bytes("sub:1"), fake_bytes("sub:2")]
RULES = RuleSet.from_config({"fact": {"country": "lww", "resolves_to": "union", "seen": "count"}},
                            ("p1", "p2"))


@st.composite
def fields(draw: Any) -> dict[str, Any]:
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return clear_field("ip", "ip", draw(st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"])))
    if choice == 1:  # conflicting derived attributes for one value: LWW must settle them
        attr = draw(st.sampled_from(["a", "b"]))
        return clear_field("site", "domain", "a.example", registrable_domain=attr)
    if choice == 2:
        return clear_field("note", "other", "")
    if choice == 3:
        return {"col": "secret", "kind": "other", "sub": draw(st.sampled_from(SUBJECTS)),
                "ct": draw(st.binary(min_size=2, max_size=3))}
    person = draw(st.sampled_from(["x", "y"]))
    field: dict[str, Any] = {"col": "email", "kind": "email", "bi": fake_bytes("bi:" + person)}
    if choice == 4:
        field["sub"] = draw(st.sampled_from(SUBJECTS))
        field["ct"] = draw(st.binary(min_size=2, max_size=3))
    return field


@st.composite
def payloads(draw: Any) -> tuple[tuple[str, int], dict[str, Any]]:
    kind = draw(st.sampled_from(["records", "records", "records", "started", "finished", "enrich",
                                 "shred", "note"]))
    dump = draw(st.sampled_from(DUMPS))
    if kind == "records":
        records = [[draw(st.integers(1, 4)), draw(st.lists(fields(), max_size=4))]
                   for _ in range(draw(st.integers(1, 3)))]
        return kinds.RECORDS_INGESTED, {"dump": dump, "part": draw(st.integers(0, 1)), "records": records}
    if kind == "started":
        return kinds.DUMP_STARTED, dump_started(dump, draw(st.sampled_from(["s1", "s2"])), "f.csv",
                                                ["ip"], {"ip": "ip"})
    if kind == "finished":
        return kinds.DUMP_FINISHED, {"dump": dump, "records": draw(st.integers(0, 9)), "quarantined": 0,
                                     "sha256": draw(st.sampled_from(["", "ab" * 32])), "bytes": -1}
    if kind == "enrich":
        return kinds.ENRICHMENT_RECEIVED, {
            "provider": draw(st.sampled_from(["p1", "p2", "p3"])), "kind": "ip", "value": "10.0.0.1",
            "observed_ms": draw(st.integers(0, 3)),
            "facts": {"asn": draw(st.integers(1, 3)), "country": draw(st.sampled_from(["NL", "DE"])),
                      "resolves_to": draw(st.lists(st.sampled_from(["h1", "h2"]), max_size=2)),
                      "seen": "yes"}}
    if kind == "shred":
        return kinds.SUBJECT_SHREDDED, {"subject": draw(st.sampled_from(SUBJECTS))}
    return kinds.NOTE, {"n": draw(st.integers(0, 3))}


@st.composite
def feed_sets(draw: Any) -> list[Event]:
    """Events of 1-3 feeds; times drawn from a tiny range so HLC ties across feeds happen."""
    feeds = Feeds()
    events = []
    for index in range(draw(st.integers(1, 3))):
        feed = feeds.feed(f"f{index}")
        ms = 1_000
        for _ in range(draw(st.integers(1, 6))):
            ms += draw(st.integers(0, 2))
            kind, payload = draw(payloads())
            events.append(feeds.event(feed, kind, payload, ms=ms))
    return events


async def memory_hash(batches: list[list[Event]]) -> str:
    store = MemoryStore(RULES)
    for batch in batches:
        await store.apply(fold(batch, RULES))
    return await state_hash(store, RULES)


@settings(deadline=None, max_examples=120, suppress_health_check=[HealthCheck.too_slow])
@given(events=feed_sets(), rng=st.randoms(use_true_random=False))
def test_any_interleaving_gives_one_state(events: list[Event], rng: random.Random) -> None:
    reference = asyncio.run(memory_hash([events]))
    shuffled = interleave(events, rng)
    assert asyncio.run(memory_hash([shuffled])) == reference
    batches = chunks(shuffled, iter(lambda: rng.randint(1, 4), None))
    assert asyncio.run(memory_hash(batches)) == reference
    # Applying any event again (alone or in a batch) changes nothing.
    again = [*batches, [rng.choice(events)], rng.sample(events, k=min(3, len(events)))]
    assert asyncio.run(memory_hash(again)) == reference


@settings(deadline=None, max_examples=12, suppress_health_check=[HealthCheck.too_slow])
@given(events=feed_sets(), rng=st.randoms(use_true_random=False))
def test_sqlite_converges_to_the_reference(events: list[Event], rng: random.Random) -> None:
    reference = asyncio.run(memory_hash([events]))

    async def run(directory: Path) -> str:
        store = SqliteStore(directory / "g.sqlite", RULES)
        await store.open()
        try:
            shuffled = interleave(events, rng)
            for batch in chunks(shuffled, iter(lambda: rng.randint(1, 3), None)):
                await store.apply(fold(batch, RULES))
            await store.apply(fold([rng.choice(events)], RULES))
            return await state_hash(store, RULES)
        finally:
            await store.close()

    with tempfile.TemporaryDirectory() as directory:
        assert asyncio.run(run(Path(directory))) == reference
