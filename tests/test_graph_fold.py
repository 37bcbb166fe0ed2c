"""Folding events into deltas: the model's rules, and refusing what it does not know."""

from __future__ import annotations

import hashlib
import random
import re

import msgpack
import pytest
from graph_contract import Feeds, clear_field, dump_started, fake_bytes, pii_field

from heimdall_core import kinds
from heimdall_core.clock import Hlc
from heimdall_core.errors import UnknownEventError
from heimdall_core.events import Event
from heimdall_core.graph import model
from heimdall_core.graph.fold import FOLD_STEP_RECORDS, Folder, PayloadError, enrichment_refusal, fold_refusal
from heimdall_core.graph.rules import RuleSet
from heimdall_core.normalize import Canonical, canonicalize

DUMP = fake_bytes("dump")


def folder() -> Folder:
    return Folder(RuleSet.default())


def records_event(feeds: Feeds, feed: bytes, records: list[list[object]]) -> Event:
    return feeds.event(feed, kinds.RECORDS_INGESTED, {"dump": DUMP, "part": 0, "records": records})


def test_value_ids_are_content_ids() -> None:
    assert model.clear_value_vid("ip", "10.0.0.1") == model.content_id("value", "ip", "v", "10.0.0.1")
    bi = fake_bytes("x")
    assert model.blind_value_vid("email", bi) == model.content_id("value", "email", "bi", bi)
    assert model.clear_value_vid("ip", "10.0.0.1") != model.clear_value_vid("domain", "10.0.0.1")
    sighting, dump = fake_bytes("s"), fake_bytes("d")
    # docs/graph-model.md: BLAKE2b-128 of the canonical msgpack [type, source id, target id]
    expected = hashlib.blake2b(msgpack.packb(["in_dump", sighting, dump], use_bin_type=True),
                               digest_size=16).digest()
    assert model.edge_id("in_dump", sighting, dump) == expected
    assert model.edge_id("in_dump", dump, sighting) != expected


def test_entity_is_first_value_of_the_best_person_kind_else_first_value() -> None:
    feeds = Feeds()
    feed = feeds.feed("a")
    event = records_event(feeds, feed, [
        [1, [clear_field("ip", "ip", "10.0.0.1"), pii_field("login", "username", "bob"),
             pii_field("mail", "email", "bob@example.com"), pii_field("mail2", "email", "b@example.org")]],
        [2, [clear_field("host", "domain", "example.com"), clear_field("ip", "ip", "10.0.0.2")]],
        [3, [clear_field("ip", "ip", ""), {"col": "x", "kind": "other", "sub": fake_bytes("s"), "ct": b"c"},
             {"col": "y", "kind": "email", "sub": fake_bytes("s")}]],
    ])
    f = folder()
    f.add(event)
    delta = f.take()
    first = delta.sightings[(DUMP, 0, 1)]
    assert first.entity == model.blind_value_vid("email", fake_bytes("bi:email:bob@example.com"))
    assert delta.sightings[(DUMP, 0, 2)].entity == model.clear_value_vid("domain", "example.com")
    third = delta.sightings[(DUMP, 0, 3)]
    assert third.entity is None and third.values == []
    assert third.sealed == [("x", "other", fake_bytes("s"), b"c")]
    assert model.clear_value_vid("ip", "") not in delta.values
    assert (DUMP, "x", "other") in delta.fields  # the column exists, even with no joinable value
    assert delta.records == 3 and delta.positions == {feed: 1}
    assert set(delta.dumps) == {DUMP}


def test_value_counts_each_record_once() -> None:
    feeds = Feeds()
    feed = feeds.feed("a")
    f = folder()
    f.add(records_event(feeds, feed, [
        [1, [clear_field("src", "ip", "10.0.0.9"), clear_field("dst", "ip", "10.0.0.9")]],
        [2, [clear_field("src", "ip", "10.0.0.9")]],
        [2, [clear_field("dst", "ip", "10.0.0.9")]],  # the same position again: one sighting
    ]))
    delta = f.take()
    assert delta.values[model.clear_value_vid("ip", "10.0.0.9")].sightings == 2
    assert len(delta.sightings[(DUMP, 0, 2)].values) == 2


def test_unknown_kind_or_version_raises_and_leaves_delta_as_it_was() -> None:
    feeds = Feeds()
    feed = feeds.feed("a")
    f = folder()
    f.add(records_event(feeds, feed, [[1, [clear_field("ip", "ip", "10.0.0.1")]]]))
    before = (dict(f.delta.positions), set(f.delta.values), f.delta.events)
    strange = Event(feed, 1, Hlc(5, 0), "strange.thing", 1, {})
    with pytest.raises(UnknownEventError) as info:
        f.add(strange)
    message = str(info.value)
    assert feed.hex() in message and "seq 1" in message and "'strange.thing'" in message
    newer = Event(feed, 1, Hlc(5, 0), "records.ingested", 2, {"dump": DUMP, "part": 0, "records": []})
    with pytest.raises(UnknownEventError, match="version 2"):
        f.add(newer)
    assert (dict(f.delta.positions), set(f.delta.values), f.delta.events) == before


@pytest.mark.parametrize("bad_record", [
    [3, [{"col": "ip", "kind": "ip", "v": 7}]],
    [3, [{"col": "ip", "kind": "ip"}], "extra"],
    ["three", []],
    [3, [{"col": "mail", "kind": "email", "bi": b"short"}]],
    [3, [{"col": 5, "kind": "ip", "v": "10.0.0.5"}]],
])
def test_malformed_payload_raises_and_partial_effects_vanish(bad_record: list[object]) -> None:
    feeds = Feeds()
    feed = feeds.feed("a")
    f = folder()
    f.add(records_event(feeds, feed, [[1, [clear_field("ip", "ip", "10.0.0.1")]]]))
    bad = records_event(feeds, feed, [[2, [clear_field("ip", "ip", "10.9.9.9")]], bad_record])
    with pytest.raises(PayloadError) as info:
        f.add(bad)
    assert f"feed {feed.hex()} seq 1" in str(info.value)
    delta = f.take()
    assert model.clear_value_vid("ip", "10.9.9.9") not in delta.values
    assert (DUMP, 0, 2) not in delta.sightings
    assert delta.positions == {feed: 1}


def test_note_and_feed_announced_only_advance_the_position() -> None:
    feeds = Feeds()
    feed = feeds.feed("a")
    f = folder()
    f.add(feeds.event(feed, kinds.NOTE, {"text": "x"}))
    f.add(feeds.event(feed, kinds.FEED_ANNOUNCED, {"feed": feeds.feed("b"), "role": "ingest-worker",
                                                   "dump": DUMP, "part": 1}))
    delta = f.take()
    assert delta.positions == {feed: 2} and delta.events == 2
    assert not (delta.values or delta.sightings or delta.dumps or delta.fields or delta.subjects)


def test_dump_events_contribute_known_properties_only() -> None:
    feeds = Feeds()
    feed = feeds.feed("a")
    f = folder()
    f.add(feeds.event(feed, kinds.DUMP_STARTED, dump_started(DUMP, "src", "a.csv", ["e", "p"],
                                                              {"e": "email", "p": "password"})))
    f.add(feeds.event(feed, kinds.DUMP_FINISHED, {"dump": DUMP, "records": 4, "quarantined": 1,
                                                  "sha256": "ab" * 32, "bytes": 10}))
    delta = f.take()
    props = delta.dumps[DUMP]
    assert props["source"][1] == "src" and props["sha256"][1] == "ab" * 32 and props["bytes"][1] == 10
    assert props["started_ms"] < props["finished_ms"]
    assert delta.fields == {(DUMP, "e", "email"), (DUMP, "p", "password")}


def test_shredding_and_enrichment() -> None:
    feeds = Feeds()
    feed = feeds.feed("a")
    f = folder()
    f.add(feeds.event(feed, kinds.SUBJECT_SHREDDED, {"subject": fake_bytes("s")}))
    f.add(feeds.event(feed, kinds.ENRICHMENT_RECEIVED, {
        "provider": "dns", "kind": "domain", "value": "example.com", "observed_ms": 3,
        "facts": {"resolves_to": ["192.0.2.1"], "ttl": 60}}))
    with pytest.raises(PayloadError, match="fact name"):
        f.add(feeds.event(feed, kinds.ENRICHMENT_RECEIVED, {
            "provider": "dns", "kind": "domain", "value": "example.com", "observed_ms": 3,
            "facts": {"Bad Name": 1}}))
    delta = f.take()
    assert set(delta.subjects) == {fake_bytes("s")}
    value = delta.values[model.clear_value_vid("domain", "example.com")]
    assert value.props["fact.ttl"][2] == 60 and value.props["enriched_by"] == ["dns"]
    assert value.sightings == 0 and delta.positions == {feed: 2}


def _big_event(feeds: Feeds, feed: bytes, count: int, bad_at: int | None = None) -> Event:
    records: list[list[object]] = [[i, [clear_field("ip", "ip", f"10.0.{i // 256}.{i % 256}")]]
                                   for i in range(count)]
    if bad_at is not None:
        records[bad_at] = [bad_at, [{"col": "ip", "kind": "ip", "v": 7}]]
    return records_event(feeds, feed, records)


def test_folding_in_steps_gives_what_one_add_gives() -> None:
    feeds = Feeds()
    feed = feeds.feed("a")
    event = _big_event(feeds, feed, 3 * FOLD_STEP_RECORDS + 5)
    whole, stepped = folder(), folder()
    whole.add(event)
    steps = sum(1 for _ in stepped.steps(event))
    assert steps >= 3  # the projector's event loop turns between them
    a, b = whole.take(), stepped.take()
    assert (a.values, a.sightings, a.positions, a.records, a.events) == \
        (b.values, b.sightings, b.positions, b.records, b.events)


def test_a_bad_record_late_in_a_stepped_event_leaves_nothing_of_it() -> None:
    feeds = Feeds()
    feed = feeds.feed("a")
    f = folder()
    f.add(records_event(feeds, feed, [[1, [clear_field("ip", "ip", "10.9.9.9")]]]))
    bad = _big_event(feeds, feed, 3 * FOLD_STEP_RECORDS, bad_at=2 * FOLD_STEP_RECORDS + 7)
    with pytest.raises(PayloadError):
        for _ in f.steps(bad):
            pass
    delta = f.take()
    assert set(delta.values) == {model.clear_value_vid("ip", "10.9.9.9")}
    assert delta.positions == {feed: 1} and delta.records == 1


def _enrichment(feeds: Feeds, feed: bytes, kind: str, value: str) -> Event:
    return feeds.event(feed, kinds.ENRICHMENT_RECEIVED, {
        "provider": "hibp", "kind": kind, "value": value, "observed_ms": 1,
        "facts": {"breaches": 3}})


@pytest.mark.parametrize(("kind", "value", "reason"), [
    ("email", "carol@example.com", "never about a person"),
    ("username", "carol", "never about a person"),
    ("url", "https://carol:secret@example.com/", "never about a person"),
    ("carol@example.com", "x", "not an indicator kind"),
    ("hash", "$2b$12$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234", "canonical hash form"),
    ("hash", "D41D8CD98F00B204E9800998ECF8427E", "canonical hash form"),
    ("domain", "EVIL.example.", "canonical domain form"),
    ("domain", "bücher.example", "canonical domain form"),  # its A-label is the form
    ("ip", "10.000.0.01", "canonical ip form"),
    ("ip", "", "canonical ip form"),
    ("ip", "::ffff:192.0.2.1", "canonical ip form"),  # canonical as 192.0.2.1
    ("ip", "fe80::1%eth0", "canonical ip form"),
    ("ip", "2001:DB8::1", "canonical ip form"),
    ("cidr", "10.1.2.3/8", "canonical cidr form"),
    ("cidr", "10.0.0.0", "canonical cidr form"),
])
def test_enrichment_only_about_canonical_indicators(kind: str, value: str, reason: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Facts keyed on a person's value in clear could never be shredded, and facts on a
    spelling no query produces could never be found: such an enrichment adds nothing.
    It is skipped with a warning, not a stop: older versions accepted them, and a feed
    is append-only, so a stop would keep every later event of the feed out for ever.
    The warning quotes neither the value nor an unknown kind."""
    feeds = Feeds()
    feed = feeds.feed("a")
    f = folder()
    f.add(_enrichment(feeds, feed, "domain", "evil.example"))
    f.add(_enrichment(feeds, feed, kind, value))
    f.add(_enrichment(feeds, feed, "ip", "192.0.2.1"))  # the feed goes on
    delta = f.take()
    assert set(delta.values) == {model.clear_value_vid("domain", "evil.example"),
                                 model.clear_value_vid("ip", "192.0.2.1")}
    assert delta.positions == {feed: 3} and delta.events == 3
    (warning,) = [r.getMessage() for r in caplog.records if "enrichment skipped" in r.getMessage()]
    assert re.search(reason, warning) and "carol" not in warning and (not value or value not in warning)


@pytest.mark.parametrize(("kind", "value"), [
    ("ip", "2001:db8::1"), ("cidr", "10.0.0.0/8"), ("domain", "xn--bcher-kva.example"),
    ("hash", "d41d8cd98f00b204e9800998ecf8427e")])
def test_enrichment_about_each_enrichable_kind_is_folded(kind: str, value: str) -> None:
    result = canonicalize(kind, value)
    assert isinstance(result, Canonical) and result.value == value  # canonical already
    feeds = Feeds()
    feed = feeds.feed("a")
    f = folder()
    f.add(_enrichment(feeds, feed, kind, value))
    assert f.take().values[model.clear_value_vid(kind, value)].props["fact.breaches"][2] == 3


def test_the_fold_accepts_every_enrichment_log_append_writes_and_no_other_name() -> None:
    """The fold checks shapes only (no IDNA tables): it must accept every value log append
    writes (its full canonical check), and, for names without ``xn--`` labels, only those."""
    rng = random.Random(46)
    alphabet = "ab0_-.x"
    values = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))) for _ in range(40_000)}
    values |= {"localhost", "dc01", "com", "1.2.3.4", "example.123", "a.b_c", "020.7946.0958"}
    for value in values:
        written = enrichment_refusal("domain", value) is None
        folded = fold_refusal("domain", value) is None
        assert folded == written, (value, written, folded)
