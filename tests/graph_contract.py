"""The graph store contract: one suite, run against every back end.

``tests/test_graph_contract.py`` imports the tests below; they are parametrized over
``BACKENDS``. A back end joins by registering a factory::

    from graph_contract import register_backend

    async def make_age(directory: Path, rules: RuleSet, name: str) -> GraphStore:
        store = AgeStore(dsn=..., graph=name, rules=rules)   # same name -> same data
        await store.open()
        return store

    register_backend("age", make_age, persistent=True)

A factory returns an *opened* store; called again with the same ``directory`` and
``name`` it must open the same data (for the persistence tests; ``persistent=False``
back ends are left out of those). The registration may live in a module of its own,
``tests/graph_contract_age.py``, which this module imports when it exists. Every answer
and the state hash are compared with the in-memory reference store, which defines what a
delta does.

The module also holds the event builders the other graph tests use.
"""

from __future__ import annotations

import hashlib
import importlib
import random
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from heimdall_core import kinds
from heimdall_core.clock import Hlc
from heimdall_core.errors import GraphError
from heimdall_core.events import Event, encode_body
from heimdall_core.graph import model
from heimdall_core.graph.fold import Folder
from heimdall_core.graph.memory import MemoryStore
from heimdall_core.graph.model import Delta
from heimdall_core.graph.rules import RuleSet
from heimdall_core.graph.statehash import StateHasher
from heimdall_core.graph.store import GraphStore

StoreFactory = Callable[[Path, RuleSet, str], Awaitable[GraphStore]]

FACTORIES: dict[str, StoreFactory] = {}
BACKENDS: list[str] = []
PERSISTENT_BACKENDS: list[str] = []


def register_backend(name: str, factory: StoreFactory, *, persistent: bool) -> None:
    FACTORIES[name] = factory
    if name not in BACKENDS:
        BACKENDS.append(name)
    if persistent and name not in PERSISTENT_BACKENDS:
        PERSISTENT_BACKENDS.append(name)


async def _make_memory(directory: Path, rules: RuleSet, name: str) -> GraphStore:
    return MemoryStore(rules)


async def _make_sqlite(directory: Path, rules: RuleSet, name: str) -> GraphStore:
    from heimdall_core.graph.sqlite import SqliteStore

    store = SqliteStore(directory / f"{name}.sqlite", rules)
    await store.open()
    return store


register_backend("memory", _make_memory, persistent=False)
register_backend("sqlite", _make_sqlite, persistent=True)

# A back end tested elsewhere joins from a module of its own, e.g. tests/graph_contract_age.py
# calling register_backend("age", ...) (it may import this module: register_backend exists).
for _extra in ("graph_contract_age",):
    try:
        importlib.import_module(_extra)
    except ModuleNotFoundError as _exc:
        if _exc.name != _extra:
            raise


# --- building events ------------------------------------------------------------------------


def fake_bytes(label: str, size: int = 16) -> bytes:
    return hashlib.sha256(label.encode()).digest()[:size]


class Feeds:
    """Events of several feeds with per-feed sequence numbers and monotonic HLCs."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._seq: dict[bytes, int] = {}
        self._ms = start_ms

    def feed(self, name: str) -> bytes:
        return fake_bytes("feed:" + name, 32)

    def event(self, feed: bytes, kind: tuple[str, int], payload: dict[str, Any],
              ms: int | None = None) -> Event:
        seq = self._seq.get(feed, 0)
        self._seq[feed] = seq + 1
        self._ms += 1
        # Round-trip through the codec so payloads are exactly what a feed would hold.
        body = encode_body(kind[0], kind[1], payload)
        from heimdall_core.events import decode_body

        name, version, decoded = decode_body(body)
        return Event(feed, seq, Hlc(self._ms if ms is None else ms, 0), name, version, decoded)


def pii_field(column: str, kind: str, value: str, *, subject: str | None = None,
              sealed: bool = True) -> dict[str, Any]:
    """A personal field as the PII policy writes it (fake keys: the graph never decrypts)."""
    field: dict[str, Any] = {"col": column, "kind": kind, "bi": fake_bytes(f"bi:{kind}:{value}")}
    if sealed:
        field["sub"] = fake_bytes("sub:" + (subject or value))
        field["ct"] = b"\x01" + fake_bytes(f"ct:{value}:{random.random()}", 28)
    return field


def clear_field(column: str, kind: str, value: str, **attrs: str) -> dict[str, Any]:
    field: dict[str, Any] = {"col": column, "kind": kind, "v": value}
    if attrs:
        field["a"] = dict(attrs)
    return field


def dump_started(dump: bytes, source: str, name: str, columns: Sequence[str],
                 mapping: dict[str, str], parts: int = 1) -> dict[str, Any]:
    return {"dump": dump, "source": source, "name": name, "format": "csv", "compression": "none",
            "sha256": "", "bytes": -1, "columns": list(columns), "mapping": mapping,
            "parts": parts, "meta": {"origin": "test"}}


def person_record(index: int, domain: str = "example.com", ip: str | None = None
                  ) -> list[dict[str, Any]]:
    email = f"user{index}@{domain}"
    return [
        pii_field("email", "email", email),
        pii_field("login", "username", f"user{index % 7}", subject=email),
        clear_field("ip", "ip", ip or f"10.0.{index % 5}.{index % 11}"),
        clear_field("site", "domain", domain, registrable_domain=domain),
        clear_field("digest", "hash", hashlib.sha256(str(index % 3).encode()).hexdigest(), algo="sha256"),
        clear_field("note", "other", ""),
    ]


def standard_events() -> list[Event]:
    """Two feeds, two dumps, enrichment, shredding, a note: every kind of docs/events.md."""
    random.seed(7)
    feeds = Feeds()
    main, worker = feeds.feed("main"), feeds.feed("worker")
    dump_a, dump_b = fake_bytes("dump:a"), fake_bytes("dump:b")
    columns = ["email", "login", "ip", "site", "digest", "note", "password"]
    mapping = {"email": "email", "login": "username", "ip": "ip", "site": "domain",
               "digest": "hash", "note": "other", "password": "password"}
    events = [
        feeds.event(main, kinds.NOTE, {"text": "hello"}),
        feeds.event(main, kinds.DUMP_STARTED, dump_started(dump_a, "breach-x", "x.csv", columns, mapping, 2)),
        feeds.event(main, kinds.FEED_ANNOUNCED, {"feed": worker, "role": "ingest-worker", "dump": dump_a,
                                                 "part": 1}),
        feeds.event(main, kinds.RECORDS_INGESTED, {"dump": dump_a, "part": 0, "records": [
            [i + 2, person_record(i)] for i in range(12)]}),
        feeds.event(worker, kinds.RECORDS_INGESTED, {"dump": dump_a, "part": 1, "records": [
            [i + 2, person_record(i + 100, "mail.test")] for i in range(9)]}),
        feeds.event(worker, kinds.RECORDS_INGESTED, {"dump": dump_a, "part": 1, "records": [
            [20, [{"col": "note", "kind": "other", "sub": fake_bytes("sub:z"), "ct": b"\x01sealed"},
                  clear_field("ip", "ip", "10.0.0.0")]],
            [21, []],
        ]}),
        feeds.event(main, kinds.DUMP_FINISHED, {"dump": dump_a, "records": 23, "quarantined": 1,
                                                "sha256": "ab" * 32, "bytes": 4096}),
        feeds.event(main, kinds.DUMP_STARTED, dump_started(dump_b, "feed-y", "y.ndjson",
                                                            ["indicator"], {"indicator": "ip"})),
        feeds.event(main, kinds.RECORDS_INGESTED, {"dump": dump_b, "part": 0, "records": [
            [1, [clear_field("indicator", "ip", "10.0.0.0")]],
            [2, [clear_field("indicator", "ip", "10.0.1.1")]],
            [3, [clear_field("indicator", "ip", "192.0.2.7")]],
        ]}),
        feeds.event(main, kinds.DUMP_FINISHED, {"dump": dump_b, "records": 3, "quarantined": 0,
                                                "sha256": "cd" * 32, "bytes": 99,
                                                "duplicate_of": dump_a}),
        feeds.event(worker, kinds.ENRICHMENT_RECEIVED, {
            "provider": "maxmind-asn", "kind": "ip", "value": "10.0.0.0", "observed_ms": 5,
            "facts": {"asn": 64500, "country": "NL"}}),
        feeds.event(main, kinds.ENRICHMENT_RECEIVED, {
            "provider": "rdap", "kind": "ip", "value": "10.0.0.0", "observed_ms": 9,
            "facts": {"asn": 64501, "resolves_to": ["a.example", "b.example"]}}),
        feeds.event(main, kinds.SUBJECT_SHREDDED, {"subject": fake_bytes("sub:user3@example.com")}),
    ]
    return events


def fold(events: Sequence[Event], rules: RuleSet | None = None) -> Delta:
    folder = Folder(rules or RuleSet.default())
    for event in events:
        folder.add(event)
    return folder.take()


def interleave(events: Sequence[Event], rng: random.Random) -> list[Event]:
    """A random interleaving that keeps each feed's own order."""
    queues: dict[bytes, list[Event]] = {}
    for event in events:
        queues.setdefault(event.feed, []).append(event)
    out: list[Event] = []
    while queues:
        feed = rng.choice(sorted(queues))
        out.append(queues[feed].pop(0))
        if not queues[feed]:
            del queues[feed]
    return out


def chunks(events: Sequence[Event], sizes: Iterator[int]) -> list[list[Event]]:
    out, start = [], 0
    while start < len(events):
        size = max(1, next(sizes))
        out.append(list(events[start:start + size]))
        start += size
    return out


async def state_hash(store: GraphStore, rules: RuleSet | None = None) -> str:
    hasher = StateHasher(rules or RuleSet.default())
    async for entry in store.iter_state():
        hasher.add(entry)
    return hasher.hexdigest()


async def reference(events: Sequence[Event], rules: RuleSet | None = None) -> MemoryStore:
    store = MemoryStore(rules or RuleSet.default())
    await store.apply(fold(events, rules))
    return store


def all_value_ids(events: Sequence[Event]) -> list[bytes]:
    return sorted(fold(events).values)


# --- the contract ---------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(params=PERSISTENT_BACKENDS)
def persistent_backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


class Opened:
    """Opens stores of one back end for a test and closes them all afterwards."""

    def __init__(self, backend: str, directory: Path, name: str) -> None:
        self.backend, self.directory, self.name = backend, directory, name
        self._open: list[GraphStore] = []

    async def __call__(self, rules: RuleSet | None = None) -> GraphStore:
        store = await FACTORIES[self.backend](self.directory, rules or RuleSet.default(), self.name)
        self._open.append(store)
        return store

    async def close_all(self) -> None:
        for store in self._open:
            await store.close()


@pytest.fixture
async def make_store(backend: str, tmp_path: Path, request: pytest.FixtureRequest
                     ) -> Any:
    opened = Opened(backend, tmp_path, "g_" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:12])
    yield opened
    await opened.close_all()


@pytest.fixture
async def make_persistent(persistent_backend: str, tmp_path: Path, request: pytest.FixtureRequest
                          ) -> Any:
    opened = Opened(persistent_backend, tmp_path,
                    "p_" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:12])
    yield opened
    await opened.close_all()


async def test_contract_empty_store(make_store: Opened) -> None:
    store = await make_store()
    await store.reset()
    assert await store.positions() == {}
    assert await store.value(fake_bytes("nothing")) is None
    assert await store.values([fake_bytes("nothing")]) == {}
    assert await store.value_dumps(fake_bytes("nothing")) == model.ValueDumps((), 0, (), 0)
    co = await store.co_values(fake_bytes("nothing"))
    assert co.items == () and co.sightings_scanned == 0
    assert await state_hash(store) == await state_hash(MemoryStore(RuleSet.default()))
    counts = await store.counts()
    assert (counts.values, counts.sightings, counts.dumps) == (0, 0, 0)


async def test_contract_state_equals_reference(make_store: Opened) -> None:
    events = standard_events()
    store = await make_store()
    await store.reset()
    await store.apply(fold(events))
    ref = await reference(events)
    assert await state_hash(store) == await state_hash(ref)
    assert await store.positions() == await ref.positions()
    assert await store.counts() == await ref.counts()


async def test_contract_any_batching_and_order_same_hash(make_store: Opened) -> None:
    events = standard_events()
    expected = await state_hash(await reference(events))
    rng = random.Random(11)
    for attempt in range(3):
        store = await make_store()
        await store.reset()
        batches = chunks(interleave(events, rng), iter(lambda: rng.randint(1, 5), None))
        if attempt == 2:
            batches.reverse()  # whole batches out of order too: the rules do not care
        for batch in batches:
            await store.apply(fold(batch))
        assert await state_hash(store) == expected, f"attempt {attempt}"


async def test_contract_apply_twice_changes_nothing(make_store: Opened) -> None:
    events = standard_events()
    store = await make_store()
    await store.reset()
    delta = fold(events)
    await store.apply(delta)
    once = await state_hash(store)
    await store.apply(fold(events))
    await store.apply(fold(events[3:5]))
    assert await state_hash(store) == once


async def test_contract_queries_equal_reference(make_store: Opened) -> None:
    events = standard_events()
    store = await make_store()
    await store.reset()
    for batch in chunks(events, iter(lambda: 4, None)):
        await store.apply(fold(batch))
    ref = await reference(events)
    vids = all_value_ids(events)
    assert await store.values(vids) == await ref.values(vids)
    for vid in vids:
        assert await store.value(vid) == await ref.value(vid)
        assert await store.value_dumps(vid) == await ref.value_dumps(vid)
        assert await store.value_dumps(vid, limit=1) == await ref.value_dumps(vid, limit=1)
        for newest in (1, 2):  # the dumps of only the newest sightings: the same ones everywhere
            assert (await store.value_dumps(vid, sightings_max=newest)
                    == await ref.value_dumps(vid, sightings_max=newest))
        assert await store.co_values(vid, limit=5) == await ref.co_values(vid, limit=5)
        skipping = {"limit": 5, "skip_dumps": [fake_bytes("dump:b")]}
        assert await store.co_values(vid, **skipping) == await ref.co_values(vid, **skipping)


async def test_contract_query_answers(make_store: Opened) -> None:
    """Spot checks that pin the reference's meaning (not just agreement)."""
    events = standard_events()
    store = await make_store()
    await store.reset()
    await store.apply(fold(events))
    ip = model.clear_value_vid("ip", "10.0.0.0")
    info = await store.value(ip)
    assert info is not None and info.value == "10.0.0.0" and info.kind == "ip"
    seen = await store.value_dumps(ip)
    dumps = seen.items
    assert [(d.source, d.name) for d in dumps] == [("breach-x", "x.csv"), ("feed-y", "y.ndjson")]
    assert [d.sightings for d in dumps] == [2, 1]
    assert [d.duplicate_of for d in dumps] == [None, fake_bytes("dump:a")]
    assert all(d.first_seen_ms <= d.last_seen_ms for d in dumps)
    assert (seen.total, seen.complete, seen.repeats, seen.sightings_in_repeats) == (
        2, True, (fake_bytes("dump:b"),), 1)
    # Listing fewer dumps than there are: the total and the repeats still cover them all.
    first = await store.value_dumps(ip, limit=1)
    assert first.items == dumps[:1] and first.total == 2 and not first.complete
    assert first.repeats == (fake_bytes("dump:b"),) and first.sightings_in_repeats == 1
    assert info.sightings == 3 and seen.sightings_scanned == 3
    # Reading only the newest sightings (a value in millions of records): the dumps of those.
    newest = await store.value_dumps(ip, sightings_max=2)
    assert newest.sightings_scanned == 2 and sum(d.sightings for d in newest.items) == 2
    assert newest.items[0].sightings <= 2 and newest.total <= 2
    # Leaving out a (repeat) dump: its sightings are neither read nor counted.
    everything = await store.co_values(ip)
    without_b = await store.co_values(ip, skip_dumps=[fake_bytes("dump:b")])
    assert everything.sightings_scanned == 3 and without_b.sightings_scanned == 2
    assert without_b.complete and without_b.items == everything.items  # dump b's record holds only the ip
    only_b = await store.co_values(model.clear_value_vid("ip", "192.0.2.7"),
                                   skip_dumps=[fake_bytes("dump:b")])
    assert only_b == model.CoValues((), 0, True)
    # Enrichment: rdap is not listed, so priority falls back to the total order: rdap is later.
    assert info.props["fact.asn"][2] == 64501
    assert info.props["enriched_by"] == ["maxmind-asn", "rdap"]
    email = model.blind_value_vid("email", fake_bytes("bi:email:user3@example.com"))
    shredded = await store.value(email)
    assert shredded is not None and shredded.is_protected and shredded.is_shredded
    alive = await store.value(model.blind_value_vid("email", fake_bytes("bi:email:user4@example.com")))
    assert alive is not None and not alive.is_shredded
    co = await store.co_values(email)
    assert co.complete and co.sightings_scanned == 1
    assert {c.value.kind for c in co.items} == {"username", "ip", "domain", "hash"}


async def test_contract_priority_rule_follows_config(make_store: Opened) -> None:
    events = standard_events()
    rules = RuleSet.from_config({"fact": {"country": "lww"}}, ("maxmind-asn", "rdap"))
    store = await make_store(rules)
    await store.reset()
    await store.apply(fold(events, rules))
    info = await store.value(model.clear_value_vid("ip", "10.0.0.0"))
    assert info is not None
    assert info.props["fact.asn"][2] == 64500  # maxmind-asn outranks rdap now
    assert await state_hash(store, rules) == await state_hash(await reference(events, rules), rules)


async def test_contract_reset_forgets_everything(make_store: Opened) -> None:
    store = await make_store()
    await store.reset()
    await store.apply(fold(standard_events()))
    await store.reset()
    assert await store.positions() == {}
    assert await state_hash(store) == await state_hash(MemoryStore(RuleSet.default()))


async def test_contract_positions_only_delta(make_store: Opened) -> None:
    feeds = Feeds()
    main = feeds.feed("main")
    store = await make_store()
    await store.reset()
    await store.apply(fold([feeds.event(main, kinds.NOTE, {"n": 1}), feeds.event(main, kinds.NOTE, {})]))
    assert await store.positions() == {main: 2}
    assert await store.counts() == model.GraphCounts(0, 0, 0, 0, 0, 1)


async def test_contract_persists_across_reopen(make_persistent: Opened) -> None:
    events = standard_events()
    store = await make_persistent()
    await store.reset()
    await store.apply(fold(events[:6]))
    await store.close()
    again = await make_persistent()
    assert await again.positions() == await (await reference(events[:6])).positions()
    await again.apply(fold(events[6:]))
    assert await state_hash(again) == await state_hash(await reference(events))


OTHER_RULES = {"value": {"attrs": "union"}}


async def test_contract_refuses_other_rules(make_persistent: Opened) -> None:
    """A graph built under other merge rules opens (so that replay can rebuild it), but
    every use but reset() says to replay it."""
    store = await make_persistent()
    await store.reset()
    await store.apply(fold(standard_events()))
    await store.close()
    other = await make_persistent(RuleSet.from_config(OTHER_RULES, ()))
    for use in (other.positions(), other.counts(), other.value(b"\0" * 16),
                other.apply(fold(standard_events()))):
        with pytest.raises(GraphError, match=r"other merge rules.*run 'heimdall replay'"):
            await use
    with pytest.raises(GraphError, match="other merge rules"):
        async for _ in other.iter_state():
            pass


async def test_contract_reset_rebuilds_under_new_rules(make_persistent: Opened) -> None:
    """`heimdall replay` under changed rules: reset() works on the graph that open() found
    built under other rules, and the rebuilt graph is the new rules' fold."""
    events = standard_events()
    store = await make_persistent()
    await store.reset()
    await store.apply(fold(events))
    await store.close()
    rules = RuleSet.from_config(OTHER_RULES, ())
    other = await make_persistent(rules)
    await other.reset()
    assert await other.positions() == {}
    await other.apply(fold(events, rules))
    assert await state_hash(other, rules) == await state_hash(await reference(events, rules), rules)
    await other.close()
    again = await make_persistent(rules)  # the new rules are recorded: no replay asked again
    assert await state_hash(again, rules) == await state_hash(await reference(events, rules), rules)


async def test_contract_positions_never_go_back(make_store: Opened) -> None:
    events = standard_events()
    store = await make_store()
    await store.reset()
    await store.apply(fold(events))
    after = await store.positions()
    await store.apply(fold(events[:2]))  # an old batch again: effects and positions unchanged
    assert await store.positions() == after


# --- a synthetic site for measurements ------------------------------------------------------

SYNTHETIC_RECORDS_PER_EVENT = 1_000  # ~450 KB events: well under the 1 MiB frame limit


def write_synthetic_site(data_dir: Path, records: int, *, seed: int = 1, unique: bool = False) -> bytes:
    """A site whose log holds one dump of ``records`` ingest records of six fields (email,
    username, ip, domain, sha256 kept; password dropped by the policy), as the PII policy
    would write them (fake keys). Returns the dump id.

    ``unique=False`` draws usernames, addresses, domains and password hashes from pools
    (about 2.5 new values per record, like a breach dump); ``unique=True`` makes every
    value but the domain new (the worst case for the value index).
    """
    from heimdall_core.log.feed import LogOptions
    from heimdall_core.log.store import LogStore, init_site

    rng = random.Random(seed)
    rb = rng.randbytes
    init_site(data_dir, "synthetic")
    log = LogStore(data_dir, LogOptions(fsync=False))
    writer = log.writer()
    dump = rb(16)
    columns = ["email", "username", "ip", "domain", "sha256", "password"]
    mapping = {"email": "email", "username": "username", "ip": "ip", "domain": "domain",
               "sha256": "hash", "password": "password"}
    writer.append_bodies([encode_body(*kinds.DUMP_STARTED, dump_started(dump, "synthetic", "synthetic.csv",
                                                                        columns, mapping))])
    domains = [f"mail{i}.example" for i in range(2_000)]
    usernames = [rb(16) for _ in range(50_000)]
    hashes = [rb(32).hex() for _ in range(100_000)]

    def username() -> bytes:
        return rb(16) if unique or rng.random() < 0.7 else rng.choice(usernames)

    def ip() -> str:
        space = 1 << 30 if unique else 300_000
        n = rng.randrange(space) + (11 << 24)
        return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"

    def sha256() -> str:
        return rb(32).hex() if unique or rng.random() < 0.5 else rng.choice(hashes)

    bodies, position = [], 0
    while position < records:
        batch = []
        for _ in range(min(SYNTHETIC_RECORDS_PER_EVENT, records - position)):
            position += 1
            subject, domain = rb(16), rng.choice(domains)
            batch.append([position, [
                {"bi": rb(16), "col": "email", "ct": b"\x01" + rb(48), "kind": "email", "sub": subject},
                {"bi": username(), "col": "username", "ct": b"\x01" + rb(38), "kind": "username",
                 "sub": subject},
                {"a": {"version": "4"}, "col": "ip", "kind": "ip", "v": ip()},
                {"a": {"registrable_domain": domain}, "col": "domain", "kind": "domain", "v": domain},
                {"a": {"algo": "sha256"}, "col": "sha256", "kind": "hash", "v": sha256()},
            ]])
        bodies.append(encode_body(*kinds.RECORDS_INGESTED, {"dump": dump, "part": 0, "records": batch}))
        if len(bodies) >= 50:
            writer.append_bodies(bodies)
            bodies = []
    bodies.append(encode_body(*kinds.DUMP_FINISHED, {"dump": dump, "records": records, "quarantined": 0,
                                                     "sha256": "00" * 32, "bytes": records * 120}))
    writer.append_bodies(bodies)
    log.close()
    return dump
