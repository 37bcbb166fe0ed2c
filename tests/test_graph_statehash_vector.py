"""A fixed state-hash test vector: the hash is a wire-level promise (docs/formats.md,
"Graph state hash"), so a change to it must fail a test, not only change every site's
hash at once. The events below are written out in full; the expected hash is written
here and in docs/formats.md."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from heimdall_core.clock import Hlc
from heimdall_core.events import Event, decode_body, encode_body
from heimdall_core.graph.fold import Folder
from heimdall_core.graph.memory import MemoryStore
from heimdall_core.graph.rules import RuleSet
from heimdall_core.graph.sqlite import SqliteStore
from heimdall_core.graph.statehash import StateHasher
from heimdall_core.graph.store import GraphStore

DOC = Path(__file__).resolve().parent.parent / "docs" / "formats.md"
EXPECTED = "caf493173cc5c7e0256351bc6123f8f19517ab3c73436d46ba5c1a70f5bcad40"
EXPECTED_ITEMS = 27

FEED = hashlib.sha256(b"heimdall state hash example feed").digest()  # 32 bytes
DUMP = hashlib.sha256(b"heimdall state hash example dump").digest()[:16]
SUBJECT = hashlib.sha256(b"heimdall state hash example subject").digest()[:16]
BLIND = hashlib.sha256(b"heimdall state hash example blind index").digest()[:16]
START_MS = 1_700_000_000_000

PAYLOADS: list[tuple[str, dict[str, Any]]] = [
    ("dump.started", {"dump": DUMP, "source": "example", "name": "example.csv", "format": "csv",
                      "compression": "none", "sha256": "", "bytes": -1,
                      "columns": ["email", "ip", "site"],
                      "mapping": {"email": "email", "ip": "ip", "site": "domain"},
                      "parts": 1, "meta": {}}),
    ("records.ingested", {"dump": DUMP, "part": 0, "records": [
        [2, [{"col": "email", "kind": "email", "bi": BLIND, "sub": SUBJECT, "ct": b"\x01sealed"},
             {"col": "ip", "kind": "ip", "v": "192.0.2.1"},
             {"col": "site", "kind": "domain", "v": "example.com",
              "a": {"registrable_domain": "example.com"}}]],
        [3, [{"col": "ip", "kind": "ip", "v": "192.0.2.1"}]],
    ]}),
    ("dump.finished", {"dump": DUMP, "records": 2, "quarantined": 0, "sha256": "ab" * 32, "bytes": 64}),
    ("enrichment.received", {"provider": "rdap", "kind": "ip", "value": "192.0.2.1",
                             "observed_ms": START_MS, "facts": {"asn": 64500, "country": "NL"}}),
]


def example_events() -> list[Event]:
    events = []
    for seq, (kind, payload) in enumerate(PAYLOADS):
        name, version, decoded = decode_body(encode_body(kind, 1, payload))  # as a feed holds it
        events.append(Event(FEED, seq, Hlc(START_MS + seq, 0), name, version, decoded))
    return events


async def _hash(store: GraphStore) -> tuple[str, int]:
    folder = Folder(RuleSet.default())
    for event in example_events():
        folder.add(event)
    await store.apply(folder.take())
    hasher = StateHasher(RuleSet.default())
    async for entry in store.iter_state():
        hasher.add(entry)
    return hasher.hexdigest(), hasher.items


async def test_state_hash_of_the_example_is_fixed(tmp_path: Path) -> None:
    assert await _hash(MemoryStore(RuleSet.default())) == (EXPECTED, EXPECTED_ITEMS)
    sqlite = SqliteStore(tmp_path / "graph.sqlite", RuleSet.default())
    await sqlite.open()
    try:
        assert await _hash(sqlite) == (EXPECTED, EXPECTED_ITEMS)
    finally:
        await sqlite.close()


def test_the_document_shows_the_example_hash() -> None:
    assert EXPECTED in DOC.read_text()
