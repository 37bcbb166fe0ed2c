"""The query layer with real PII protection: blind-index lookup, protected co-values,
revealing with the key store, shredding."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from graph_contract import Feeds, clear_field, dump_started, fake_bytes, fold

from heimdall_core import kinds
from heimdall_core.errors import NotFound, QueryError
from heimdall_core.events import Event
from heimdall_core.graph import query
from heimdall_core.graph.memory import MemoryStore
from heimdall_core.graph.query import NotSearchable, NotSeen, QueryKeys, query_value, render_text
from heimdall_core.graph.rules import RuleSet
from heimdall_core.graph.store import DUMPS_LISTED_MAX
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
    # Nor does the repeat (uploaded later) move when the value was last seen.
    assert (match["first_seen_ms"], match["last_seen_ms"]) == (alone["first_seen_ms"], alone["last_seen_ms"])
    assert sorted((d["name"], d["sightings"], d["duplicate_of"]) for d in match["dumps"]) == [
        ("leak.csv", 2, None), ("upload", 2, DUMP.hex())]
    text = render_text({"query": {"kind": "ip", "value": "192.0.2.1"}, "matches": [match]})
    assert "seen in 2 records (and 2 more in repeated uploads)" in text
    assert f"upload (repeat of {DUMP.hex()[:16]}" in text
    assert f"{DUMP.hex()[:16]}  leak " in text  # each row names its dump: two can share a name


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


async def test_more_dumps_than_listed_are_counted_and_said(keystore: KeyStore) -> None:
    feeds = Feeds()
    feed = feeds.feed("main")
    mapping = {"ip": "ip"}
    evs = []
    # Every dump holds the ip twice but the repeat upload once: it is listed last, cut off.
    for n in range(DUMPS_LISTED_MAX + 5):
        dump = fake_bytes(f"dump:{n}")
        started = dump_started(dump, "leak", f"d{n}", ["ip"], mapping)
        evs.append(feeds.event(feed, kinds.DUMP_STARTED, started))
        records = [[pos, [clear_field("ip", "ip", "192.0.2.1")]] for pos in range(1, 2 if n == 0 else 3)]
        evs.append(feeds.event(feed, kinds.RECORDS_INGESTED, {"dump": dump, "part": 0, "records": records}))
    evs.append(feeds.event(feed, kinds.DUMP_FINISHED, {
        "dump": fake_bytes("dump:0"), "records": 1, "quarantined": 0, "sha256": "ab" * 32, "bytes": 10,
        "duplicate_of": fake_bytes("dump:1")}))
    answer = await ask(await graph(evs), "192.0.2.1", keystore)
    (match,) = answer["matches"]
    assert len(match["dumps"]) == DUMPS_LISTED_MAX and "d0" not in {d["name"] for d in match["dumps"]}
    assert match["dumps_total"] == DUMPS_LISTED_MAX + 5 and match["dumps_complete"] is False
    assert match["sightings_in_repeats"] == 1 and match["sightings"] == 2 * (DUMPS_LISTED_MAX + 4)
    assert match["co_occurring"]["sightings_scanned"] == 2 * (DUMPS_LISTED_MAX + 4)
    assert "where seen (showing 1,000 of 1,005 dumps)" in render_text(answer)
    few = (await ask(await graph(evs[:4]), "192.0.2.1", keystore))["matches"][0]
    assert few["dumps_total"] == 2 and few["dumps_complete"] is True
    assert "showing" not in render_text({"query": answer["query"], "matches": [few]})


async def test_kinds_the_policy_keeps_unsearchable_are_not_called_unseen(keystore: KeyStore) -> None:
    _, _, evs = events(keystore)
    store = await graph(evs)
    sealed_only = PiiPolicy.from_config({"email": "encrypt"})
    with pytest.raises(NotSearchable) as refused:
        await ask(store, "nobody@example.com", keystore, policy=sealed_only)
    message = "email values are not searchable on this site: pii.policy.email is 'encrypt' (no blind index)"
    assert str(refused.value) == message
    assert refused.value.body == {"error": message, "status": 422, "query": {"kind": "email"},
                                  "policy": "encrypt"}
    # Indexed when it was ingested: found whatever the policy says now.
    found = await ask(store, "alice@example.com", keystore, policy=sealed_only)
    assert found["matches"][0]["form"] == "blind_index"
    with pytest.raises(NotSearchable, match=r"pii\.policy\.password is 'drop' \(not stored\)"):
        await ask(store, "Winter2020!", keystore, kind="password")
    with pytest.raises(NotSeen):
        await ask(store, "Winter2020!", keystore, kind="password",
                  policy=PiiPolicy.from_config({"password": "blind_index"}))
    with pytest.raises(NotSearchable, match=r"pii\.policy\.other is 'encrypt'"):
        await ask(store, "anything", keystore, kind="other")
    dropped_ips = PiiPolicy.from_config({"ip": "drop"})
    with pytest.raises(NotSearchable) as ip:
        await ask(store, "203.0.113.9", keystore, policy=dropped_ips)
    assert ip.value.body["query"] == {"kind": "ip"}  # a kind kept out of clear is not echoed


async def test_not_seen_body_echoes_only_values_kept_in_clear(keystore: KeyStore) -> None:
    _, _, evs = events(keystore)
    store = await graph(evs)
    with pytest.raises(NotSeen) as ip:
        await ask(store, "203.0.113.9", keystore)
    assert ip.value.body == {"error": "ip value not seen in any dump or enrichment", "status": 404,
                             "query": {"kind": "ip", "value": "203.0.113.9"}}
    with pytest.raises(NotSeen) as email:
        await ask(store, "nobody@example.com", keystore)
    assert email.value.body["query"] == {"kind": "email"} and "nobody" not in str(email.value.body)


@pytest.mark.parametrize(("raw", "kind"), [("\udcff@x.com", None), ("\udcff@x.com", "username"),
                                           ("ab\udcff", "other"), ("ab\udcff", "email")])
async def test_value_not_utf8_is_refused(keystore: KeyStore, raw: str, kind: str | None) -> None:
    # A command-line argument with the byte 0xff arrives as the lone surrogate U+DCFF.
    store = await graph(events(keystore)[2])
    with pytest.raises(QueryError, match="the value is not valid UTF-8"):
        await ask(store, raw, keystore, kind=kind)


async def test_a_value_in_more_records_than_read_has_its_dumps_counted_over_the_newest(
        keystore: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A webmail domain in millions of records: the query reads only its newest sightings
    to find its dumps (DUMP_SIGHTINGS_SCANNED_MAX), and says so; its totals stay exact."""
    monkeypatch.setattr(query, "DUMP_SIGHTINGS_SCANNED_MAX", 3)
    feeds = Feeds()
    feed = feeds.feed("main")
    evs = []
    for name, count in (("older", 4), ("newer", 2)):
        dump = fake_bytes(f"dump:{name}")
        started = dump_started(dump, "leak", name, ["ip"], {"ip": "ip"})
        evs.append(feeds.event(feed, kinds.DUMP_STARTED, started))
        records = [[pos, [clear_field("ip", "ip", "192.0.2.1")]] for pos in range(1, count + 1)]
        evs.append(feeds.event(feed, kinds.RECORDS_INGESTED, {"dump": dump, "part": 0, "records": records}))
    answer = await ask(await graph(evs), "192.0.2.1", keystore)
    (match,) = answer["matches"]
    assert match["sightings"] == 6 and match["dumps_sightings_scanned"] == 3
    assert [(d["name"], d["sightings"]) for d in match["dumps"]] == [("newer", 2), ("older", 1)]
    assert match["dumps_complete"] is False and match["dumps_total"] == 2
    assert "where seen (counted over the latest 3 records)" in render_text(answer)
    monkeypatch.setattr(query, "DUMP_SIGHTINGS_SCANNED_MAX", 6)
    whole = (await ask(await graph(evs), "192.0.2.1", keystore))["matches"][0]
    assert whole["dumps_complete"] is True and whole["dumps_sightings_scanned"] == 6
    assert [(d["name"], d["sightings"]) for d in whole["dumps"]] == [("older", 4), ("newer", 2)]


async def test_internationalized_values_are_shown_in_their_u_label_form_too(keystore: KeyStore) -> None:
    """The graph holds A-labels (the canonical form); analysts read the U-label beside it."""
    domain = canonicalize("domain", "bücher.example")
    url = canonicalize("url", "https://münchen.example/a")
    assert isinstance(domain, Canonical) and isinstance(url, Canonical)
    feeds = Feeds()
    feed = feeds.feed("main")
    started = dump_started(DUMP, "feed", "idn", ["domain", "url"], {"domain": "domain", "url": "url"})
    record = [1, [clear_field("domain", "domain", domain.value), clear_field("url", "url", url.value)]]
    evs = [feeds.event(feed, kinds.DUMP_STARTED, started),
           feeds.event(feed, kinds.RECORDS_INGESTED, {"dump": DUMP, "part": 0, "records": [record]})]
    answer = await ask(await graph(evs), "BÜCHER.example", keystore)
    assert answer["query"] == {"kind": "domain", "value": "xn--bcher-kva.example",
                               "display": "bücher.example"}
    (co,) = answer["matches"][0]["co_occurring"]["values"]
    assert co["value"] == "https://xn--mnchen-3ya.example/a" and co["display"] == "https://münchen.example/a"
    text = render_text(answer)
    assert "domain xn--bcher-kva.example (bücher.example)" in text
    assert "https://xn--mnchen-3ya.example/a (https://münchen.example/a)" in text
    plain = await ask(await graph(evs), "https://xn--mnchen-3ya.example/a", keystore)
    assert plain["query"]["display"] == "https://münchen.example/a"
