"""The query layer with real PII protection: blind-index lookup, protected co-values,
revealing with the key store, shredding."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from graph_contract import Feeds, dump_started, fake_bytes, fold

from heimdall_core import kinds
from heimdall_core.errors import NotFound, QueryError
from heimdall_core.events import Event
from heimdall_core.graph.memory import MemoryStore
from heimdall_core.graph.query import QueryKeys, query_value, render_text
from heimdall_core.graph.rules import RuleSet
from heimdall_core.normalize import Canonical, canonicalize
from heimdall_core.pii.keystore import KeyStore
from heimdall_core.pii.policy import PiiPolicy
from heimdall_core.pii.protect import Protector

DUMP = fake_bytes("dump:q")
ROWS = [
    {"email": "Alice@Example.COM", "username": "alice", "ip": "192.0.2.1", "domain": "example.com"},
    {"email": "bob@example.org", "username": "bob", "ip": "192.0.2.1", "domain": "example.org"},
    {"email": "carol@example.net", "username": "carol", "ip": "198.51.100.7", "domain": "example.com"},
]


@pytest.fixture
def keystore(tmp_path: Path) -> Iterator[KeyStore]:
    store = KeyStore.open(tmp_path / "pii", create=True)
    yield store
    store.close()


def protected_records(keystore: KeyStore) -> list[list[Any]]:
    protector = Protector(PiiPolicy.default(), keystore.index_keys, keystore)
    inputs = []
    for row in ROWS:
        fields = []
        for column, raw in row.items():
            result = canonicalize(column, raw)
            assert isinstance(result, Canonical)
            fields.append((column, result.kind, result.value))
        inputs.append(fields)
    out = []
    for position, record in enumerate(protector.protect_batch("leak", inputs), start=1):
        out.append([position, [dict(field) for field in record.fields]])
    return out


def events(keystore: KeyStore) -> tuple[Feeds, bytes, list[Event]]:
    feeds = Feeds()
    feed = feeds.feed("main")
    mapping = {"email": "email", "username": "username", "ip": "ip", "domain": "domain"}
    return feeds, feed, [
        feeds.event(feed, kinds.DUMP_STARTED, dump_started(DUMP, "leak", "leak.csv", list(mapping), mapping)),
        feeds.event(feed, kinds.RECORDS_INGESTED, {"dump": DUMP, "part": 0,
                                                   "records": protected_records(keystore)}),
        feeds.event(feed, kinds.ENRICHMENT_RECEIVED, {
            "provider": "asn-db", "kind": "ip", "value": "192.0.2.1", "observed_ms": 1,
            "facts": {"asn": 64496, "country": "NL"}}),
    ]


async def graph(evs: list[Event]) -> MemoryStore:
    store = MemoryStore(RuleSet.default())
    await store.apply(fold(evs))
    return store


async def ask(store: MemoryStore, value: str, keystore: KeyStore, **kwargs: Any) -> dict[str, Any]:
    reveal = kwargs.pop("reveal_values", False)
    keys = QueryKeys(keystore.index_keys, keystore if reveal else None)
    return await query_value(store, RuleSet.default(), value, keys=keys, reveal_values=reveal, **kwargs)


async def test_ip_query_where_with_what_known(keystore: KeyStore) -> None:
    _, _, evs = events(keystore)
    answer = await ask(await graph(evs), "192.0.2[.]1", keystore)
    assert answer["query"] == {"kind": "ip", "value": "192.0.2.1"}
    (match,) = answer["matches"]
    assert match["form"] == "clear" and match["status"] == "seen" and match["sightings"] == 2
    assert match["sightings_in_repeats"] == 0 and match["dumps"][0]["duplicate_of"] is None
    assert [(d["source"], d["name"], d["sightings"]) for d in match["dumps"]] == [("leak", "leak.csv", 2)]
    assert match["facts"] == {"asn": 64496, "country": "NL"} and match["enriched_by"] == ["asn-db"]
    co = {(v["kind"], v["value"], v["records"], v["protected"]) for v in match["co_occurring"]["values"]}
    assert ("domain", "example.com", 1, False) in co and ("domain", "example.org", 1, False) in co
    protected = [v for v in match["co_occurring"]["values"] if v["protected"]]
    assert {v["kind"] for v in protected} == {"email", "username"}
    assert all(v["value"] is None for v in protected)
    text = render_text(answer)
    assert "[protected]" in text and "alice" not in text and "64496" in text
    assert "seen in 2 records," in text


async def test_repeat_upload_is_listed_but_not_counted_again(keystore: KeyStore) -> None:
    feeds, feed, evs = events(keystore)
    repeat = fake_bytes("dump:repeat")
    mapping = {"email": "email", "username": "username", "ip": "ip", "domain": "domain"}
    evs += [
        feeds.event(feed, kinds.DUMP_STARTED, dump_started(repeat, "leak", "upload", list(mapping), mapping)),
        feeds.event(feed, kinds.RECORDS_INGESTED, {"dump": repeat, "part": 0,
                                                   "records": protected_records(keystore)}),
        # The digest of an upload is known only at its end: the repeat is flagged then.
        feeds.event(feed, kinds.DUMP_FINISHED, {"dump": repeat, "records": 3, "quarantined": 0,
                                                "sha256": "ab" * 32, "bytes": 10, "duplicate_of": DUMP}),
    ]
    (match,) = (await ask(await graph(evs), "192.0.2.1", keystore))["matches"]
    assert match["sightings"] == 2 and match["sightings_in_repeats"] == 2
    # Nor are the repeat's records counted as co-occurrences: the same as without the repeat.
    (alone,) = (await ask(await graph(evs[:-3]), "192.0.2.1", keystore))["matches"]
    assert match["co_occurring"] == alone["co_occurring"]
    assert match["co_occurring"]["sightings_scanned"] == 2
    assert sorted((d["name"], d["sightings"], d["duplicate_of"]) for d in match["dumps"]) == [
        ("leak.csv", 2, None), ("upload", 2, DUMP.hex())]
    text = render_text({"query": {"kind": "ip", "value": "192.0.2.1"}, "matches": [match]})
    assert "seen in 2 records (and 2 more in repeated uploads)" in text
    assert f"upload (repeat of {DUMP.hex()[:16]}" in text


async def test_personal_value_found_by_blind_index_and_revealed_on_request(keystore: KeyStore) -> None:
    _, _, evs = events(keystore)
    store = await graph(evs)
    answer = await ask(store, "ALICE@example.com", keystore)
    (match,) = answer["matches"]
    assert match["form"] == "blind_index" and match["kind"] == "email"
    shown = {v["kind"]: v["value"] for v in match["co_occurring"]["values"]}
    assert shown["username"] is None and shown["ip"] == "192.0.2.1"
    revealed = await ask(store, "alice@example.com", keystore, reveal_values=True)
    shown = {v["kind"]: v["value"] for v in revealed["matches"][0]["co_occurring"]["values"]}
    assert shown["username"] == "alice"
    text = render_text(revealed)
    assert "alice" in text and "seen in 1 record," in text


async def test_shredded_subject_shows_shredded(keystore: KeyStore) -> None:
    feeds, feed, evs = events(keystore)
    subject = keystore.subject_id_for("email", "alice@example.com")
    keystore.shred(subject)
    evs.append(feeds.event(feed, kinds.SUBJECT_SHREDDED, {"subject": subject}))
    store = await graph(evs)
    answer = await ask(store, "alice@example.com", keystore)
    assert answer["matches"][0]["status"] == "shredded" and "dumps" not in answer["matches"][0]
    assert "shredded" in render_text(answer)
    ip = await ask(store, "192.0.2.1", keystore, reveal_values=True)
    values = ip["matches"][0]["co_occurring"]["values"]
    alice = [v for v in values if v["kind"] in ("email", "username") and v["shredded"]]
    assert len(alice) == 2 and all(v["value"] is None for v in alice)
    bob = [v["value"] for v in values if v["kind"] == "username" and not v["shredded"]]
    assert bob == ["bob"]


async def test_bad_questions_and_unknown_values(keystore: KeyStore) -> None:
    _, _, evs = events(keystore)
    store = await graph(evs)
    with pytest.raises(QueryError, match="unknown kind 'colour'"):
        await ask(store, "x", keystore, kind="colour")
    with pytest.raises(QueryError, match="--kind"):
        await ask(store, "just words", keystore)
    with pytest.raises(QueryError, match="not a valid ip"):
        await ask(store, "300.1.2.3", keystore, kind="ip")
    with pytest.raises(NotFound, match="not seen"):
        await ask(store, "203.0.113.9", keystore)
    with pytest.raises(QueryError, match="key store"):
        await query_value(store, RuleSet.default(), "192.0.2.1", reveal_values=True)
    found = await ask(store, "alice", keystore, kind="username")
    assert found["matches"][0]["kind"] == "username"
