"""Records packed piece by piece (pipeline + BatchSealer) equal the canonical encoder's."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from heimdall_core import kinds
from heimdall_core.events import encode_body
from heimdall_core.ingest import pipeline
from heimdall_core.ingest.pipeline import DumpIngestor, IngestOptions, Quarantine, records_body
from heimdall_core.pii.blind_index import IndexKeys, blind_index, subject_id
from heimdall_core.pii.envelope import field_ad
from heimdall_core.pii.policy import PiiPolicy
from heimdall_core.pii.protect import FieldIn, Protector

KEYS = IndexKeys(blind_index_key=b"b" * 32, subject_key=b"s" * 32)


class DerivedKeys:
    """Deterministic DEKs (derived from the subject); some subjects shredded."""

    def __init__(self, shredded: frozenset[bytes] = frozenset()) -> None:
        self.shredded = shredded

    def data_keys(self, subjects: Sequence[bytes]) -> Mapping[bytes, bytes | None]:
        return {s: None if s in self.shredded else hashlib.sha256(s).digest() for s in subjects}


class Nonces:
    def __init__(self) -> None:
        self.rng = random.Random(5)

    def __call__(self, count: int) -> bytes:
        return self.rng.randbytes(count)


def reference_fields(records: Sequence[Sequence[FieldIn]], shredded: frozenset[bytes]) -> list[list[Any]]:
    """The protected fields as docs/pii.md describes them, built naively as dicts with
    the same nonce stream (sealed fields in record order)."""
    policy = PiiPolicy.default()
    nonces = Nonces()
    wanted = sum(1 for r in records for c, k, v in r if v and policy.action("s", c, k).encrypts)
    stream = nonces(12 * wanted)
    offset = 0
    out = []
    for record in records:
        present = [f for f in record if f[2]]
        ranked = [f for f in present if f[1] in ("email", "username", "phone", "name")]
        ranked.sort(key=lambda f: ("email", "username", "phone", "name").index(f[1]))
        sealed = [f for f in present if policy.action("s", f[0], f[1]).encrypts]
        subject = None
        if sealed:
            chosen = ranked[0] if ranked else sealed[0]
            subject = subject_id(KEYS, chosen[1], chosen[2])
        fields: list[Any] = []
        for column, kind, value in record:
            action = policy.action("s", column, kind)
            if action.value == "drop":
                continue
            if action.value == "clear" or not value:
                fields.append({"col": column, "kind": kind, "v": value})
                continue
            field: dict[str, Any] = {}
            if action.indexes:
                field["bi"] = blind_index(KEYS, kind, value)
            field["col"] = column
            if action.encrypts:
                assert subject is not None
                if subject not in shredded:
                    nonce = stream[offset:offset + 12]
                    offset += 12
                    dek = hashlib.sha256(subject).digest()
                    field["ct"] = b"\x01" + nonce + AESGCM(dek).encrypt(
                        nonce, value.encode(), field_ad(kind, subject))
                field["kind"] = kind
                field["sub"] = subject
            else:
                field["kind"] = kind
            fields.append(field)
        out.append(fields)
    return out


RECORDS: list[list[FieldIn]] = [
    [("mail", "email", "alice@example.com"), ("login", "username", "alice"), ("pw", "password", "x")],
    [("login", "username", "bob"), ("mail", "email", "")],
    [("notes", "other", "n" * 300), ("ph", "password_hash", "$1$abc$" + "a" * 22)],  # ct > 255 bytes
    [("ip", "ip", "192.0.2.1"), ("ph", "password_hash", "$1$abc$" + "b" * 22)],  # no subject
    [("n", "name", "Ünïcødé Name"), ("mail", "email", "carol@example.com")],
    [],
]


@pytest.mark.parametrize("shred", [False, True])
def test_packed_fields_equal_the_reference_dicts_packed(shred: bool) -> None:
    shredded = frozenset({subject_id(KEYS, "email", "alice@example.com")} if shred else ())
    protector = Protector(PiiPolicy.default(), KEYS, DerivedKeys(shredded), random_bytes=Nonces())
    batch = protector.batch("s")
    packed: list[list[bytes]] = []
    for record in RECORDS:
        out = [b"head"]  # pack_into appends after whatever is there
        assert batch.pack_into(out, record) == len(out) - 1
        packed.append(out)
    batch.seal()
    expected = reference_fields(RECORDS, shredded)
    assert [[msgpack.packb(f) for f in fields] for fields in expected] == [out[1:] for out in packed]
    if shred:
        assert "ct" not in msgpack.unpackb(packed[0][1]) and "sub" in msgpack.unpackb(packed[0][1])


def test_protect_batch_gives_the_reference_dicts() -> None:
    protector = Protector(PiiPolicy.default(), KEYS, DerivedKeys(), random_bytes=Nonces())
    protected = protector.protect_batch("s", RECORDS)
    assert [list(r.fields) for r in protected] == reference_fields(RECORDS, frozenset())
    assert protected[0].subject == subject_id(KEYS, "email", "alice@example.com")
    assert protected[3].subject is None


def payload_of(body: bytes) -> dict[str, Any]:
    kind, version, payload = msgpack.unpackb(body, raw=False)
    assert (kind, version) == kinds.RECORDS_INGESTED
    assert encode_body(kind, version, payload) == body  # canonical, byte for byte
    return dict(payload)


def test_records_body_checks_what_it_builds() -> None:
    head = pipeline.records_body_head(b"d" * 16, 3)
    record = msgpack.packb([7, [{"col": "c", "kind": "other", "v": "x"}]])
    body = records_body(head, 1, [record])
    assert payload_of(body) == {"dump": b"d" * 16, "part": 3, "records": [[7, [
        {"col": "c", "kind": "other", "v": "x"}]]]}
    many = [record] * 70_000  # array 32 header
    assert len(payload_of(records_body(head, len(many), many))["records"]) == 70_000


def test_a_body_that_is_not_canonical_is_never_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "_PACKED", 0)  # the next body is checked
    head = pipeline.records_body_head(b"d" * 16, 0)
    unsorted = msgpack.packb([7, [{"v": "x", "col": "c", "kind": "other"}]])
    with pytest.raises(AssertionError, match="canonical"):
        records_body(head, 1, [unsorted])


def ingest(tmp_path: Path, text: str, per_event: int = 4, chunk: int = 0) -> list[dict[str, Any]]:
    bodies: list[bytes] = []
    policy = PiiPolicy.default()
    ingestor = DumpIngestor(
        dump=b"d" * 16, part=0, options=IngestOptions(source="t", records_per_event=per_event),
        protector=Protector(policy, KEYS, DerivedKeys(), random_bytes=Nonces()), policy=policy,
        append=bodies.extend, quarantine=Quarantine(tmp_path / "q.jsonl", "00", "t"))
    data = text.encode()
    step = chunk or len(data)
    for start in range(0, len(data), step):
        ingestor.feed(data[start:start + step])
    ingestor.finish()
    return [payload_of(body) for body in bodies]


def test_wide_records_and_every_field_shape(tmp_path: Path) -> None:
    columns = [f"c{i}" for i in range(20)]
    header = "email,user,ip,domain,hash,pw," + ",".join(columns)
    rows = [f"u{i}@example.com,user{i},192.0.2.{i},host{i % 3}.example.org,{'ab' * 32},pw{i},"
            + ",".join(f"v{i}-{j}" for j in range(20)) for i in range(9)]
    payloads = ingest(tmp_path, "\n".join([header, *rows]) + "\n")
    records = [r for p in payloads for r in p["records"]]
    assert [position for position, _ in records] == list(range(2, 11))
    for _, fields in records:
        assert len(fields) >= 2 + 20 + 3  # over 16: an array 16 header
        assert [f["kind"] for f in fields[:2]] == ["email", "username"]
        # The protector's fields first, the clear ones after them.
        assert [f["col"] for f in fields[-3:]] == ["ip", "domain", "hash"]
        assert all("ct" in f and "v" not in f for f in fields[:-3])


def test_memo_of_repeated_values_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [f"192.0.2.{i % 3},host{i % 2}.example.org,{i:064x}" for i in range(60)]
    text = "\n".join(["ip,domain,sha256", *rows]) + "\n"
    monkeypatch.setattr(pipeline, "MEMO_VALUES_MAX", 8)  # the unique hash column fills it
    remembered = ingest(tmp_path, text)
    monkeypatch.setattr(pipeline.DumpIngestor, "_make_plan", _plan_without_memo)
    assert ingest(tmp_path, text) == remembered


_REAL_MAKE_PLAN = pipeline.DumpIngestor._make_plan


def _plan_without_memo(self: DumpIngestor, columns: Sequence[str], mapping: Mapping[str, str]) -> Any:
    return [(*step[:5], None) for step in _REAL_MAKE_PLAN(self, columns, mapping)]


def test_a_column_whose_values_do_not_repeat_is_no_longer_remembered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "MEMO_VALUES_MAX", 8)
    rows = [f"host{i % 2}.example.org,{i:064x}" for i in range(40)]
    policy = PiiPolicy.default()
    ingestor = DumpIngestor(
        dump=b"d" * 16, part=0, options=IngestOptions(source="t"),
        protector=Protector(policy, KEYS, DerivedKeys()), policy=policy, append=lambda _: None,
        quarantine=Quarantine(tmp_path / "q.jsonl", "00", "t"))
    ingestor.feed(("\n".join(["domain,sha256", *rows]) + "\n").encode())
    ingestor.finish()
    (plan,) = ingestor._plans.values()
    memos = {step[1]: step[5] for step in plan}
    assert memos["domain"] is not None and memos["sha256"] is None


def _dump_with_every_case(rows: int) -> str:
    """Runs of alike records (the column pass) between runs with what it must hand to
    the record path: bad lines and empty fields, or only rejected values and a crypt
    hash in the hash column (found once some columns are done)."""
    lines = ["email,username,ip,domain,sha256,password,note"]
    for i in range(rows):
        run = (i // 300) % 3  # 0: alike records, 1: bad lines and empty fields, 2: rejections
        email = f"user{i}@Example{i % 7}.com" if i % 97 or run != 1 else ""
        ip = f"10.0.{i % 256}.{i % 250}" if i % 29 or run != 2 else "999.1.1.1"
        digest = hashlib.sha256(str(i).encode()).hexdigest()
        if i % 31 == 0 and run == 2:
            digest = "$1$abc$" + "c" * 22
        line = f"{email},user_{i},{ip},host{i % 13}.example.org,{digest},pw{i},n{i % 3}"
        lines.append("a,b" if i % 113 == 0 and run == 1 else line)
    return "\n".join(lines) + "\n"


def _dump_without_a_person(rows: int) -> str:
    """No e-mail or username: the first sealed column names the subject; a password
    hash column is kept only as a blind index."""
    lines = ["ip,note,pwhash,other_note"]
    for i in range(rows):
        note = f"n{i % 5}" if (i // 2000) % 2 == 0 or i % 7 else ""
        lines.append(f"192.0.2.{i % 250},{note},$1$abc${i:022d},x{i}")
    return "\n".join(lines) + "\n"


def _dump_of_indicators(rows: int) -> str:
    """An indicator feed: an ``auto`` column (values of several kinds, an e-mail, a
    defanged one, one of no detectable kind) and a login column of e-mails and user
    names, between runs of records without them (the column pass takes those)."""
    lines = ["ip,indicator,login,note"]
    iocs = ["http://evil{i}.example/a", "bad{i}[.]example[.]org", "10.{j}.0.0/16",
            "2001:db8::{i:x}", "phish{i}@mail.example.net", "a campaign {j}", "{i:032x}"]
    for i in range(rows):
        ioc = iocs[i % len(iocs)].format(i=i, j=i % 250)
        login = f"user{i}@example.com" if i % 4 else f"user{i}"
        line = f"192.0.2.{i % 250},{ioc},{login},n{i % 3}"
        lines.append(line if (i // 700) % 2 == 0 else f"192.0.2.{i % 250},,,n{i % 3}")
    return "\n".join(lines) + "\n"


def _json_of_indicators(rows: int) -> str:
    """NDJSON records of two layouts, in runs: with an ``auto`` and an
    ``email_or_username`` key (the record path takes them), and without (the column pass
    takes those: their plan holds no per-value column)."""
    lines = []
    for i in range(rows):
        record: dict[str, str] = {"ip": f"192.0.2.{i % 250}", "note": f"n{i % 3}"}
        if (i // 700) % 2 == 0:
            record["indicator"] = ["http://evil{i}.example/a", "bad{i}[.]example[.]org", "10.{j}.0.0/16",
                                   "a campaign {j}", "john.smith{j}"][i % 5].format(i=i, j=i % 250)
            record["login"] = f"user{i}@example.com" if i % 4 else f"user{i}"
        lines.append(json.dumps(record))
    return "\n".join(lines) + "\n"


# The last item: whether the column pass takes some of the records. If it takes none, the
# case compares the record path with itself: 40 records are fewer than
# COLUMNWISE_RECORDS_MIN, and a CSV with a per-value column has it in every record's plan.
@pytest.mark.parametrize(("dump", "rows", "column_pass"), [
    (_dump_with_every_case, 40, False), (_dump_with_every_case, 1000, True),
    (_dump_with_every_case, 3000, True), (_dump_without_a_person, 6000, True),
    (_dump_of_indicators, 3000, False), (_json_of_indicators, 3000, True)])
def test_the_column_pass_writes_what_the_record_path_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dump: Any, rows: int, column_pass: bool) -> None:
    text = dump(rows)
    monkeypatch.setattr(pipeline, "MEMO_VALUES_MAX", 64)  # memos fill and start over
    taken: list[int] = []
    real = DumpIngestor._process_columns

    def counted(self: DumpIngestor, items: list[Any]) -> bool:
        done = real(self, items)
        if done:
            taken.append(len(items))
        return done

    monkeypatch.setattr(DumpIngestor, "_process_columns", counted)
    by_columns = ingest(tmp_path / "columns", text, per_event=16, chunk=12_000)
    assert bool(taken) is column_pass
    monkeypatch.setattr(pipeline, "COLUMNWISE_RECORDS_MIN", 10**9)
    by_records = ingest(tmp_path / "records", text, per_event=16, chunk=12_000)
    assert by_columns == by_records
    quarantined = [(tmp_path / run / "q.jsonl") for run in ("columns", "records")]
    assert [q.read_bytes() if q.exists() else None for q in quarantined] == \
        [quarantined[1].read_bytes() if quarantined[1].exists() else None] * 2


def test_columns_of_per_value_kinds_are_decided_value_by_value(tmp_path: Path) -> None:
    payloads = ingest(tmp_path, _dump_of_indicators(140), per_event=16)
    fields = [f for p in payloads for _, fs in p["records"] for f in fs]
    kinds: dict[str, set[str]] = {f["col"]: set() for f in fields}
    for f in fields:
        kinds[f["col"]].add(f["kind"])
    assert kinds["indicator"] == {"url", "domain", "cidr", "ip", "email", "other", "hash"}
    assert kinds["login"] == {"email", "username"}
    # Each value protected by its own kind's policy: e-mails sealed and indexed, the
    # undetected value sealed without an index (pii.policy.other), indicators in clear.
    by_kind = {(f["col"], f["kind"]): f for f in fields}
    assert "v" not in by_kind["indicator", "email"] and "bi" in by_kind["indicator", "email"]
    assert "ct" in by_kind["indicator", "other"] and "bi" not in by_kind["indicator", "other"]
    assert "bad1.example.org" in {f.get("v") for f in fields if f["kind"] == "domain"}
    assert "bi" in by_kind["login", "username"] and "v" not in by_kind["login", "username"]


def test_alike_records_take_the_column_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = DumpIngestor._process_records
    monkeypatch.setattr(DumpIngestor, "_process_records",
                        lambda self, items: calls.append(len(items)) or real(self, items))
    rows = [f"u{i}@example.com,user{i},192.0.2.{i % 200},{i:064x}" for i in range(300)]
    records = ingest(tmp_path, "\n".join(["email,username,ip,sha256", *rows]) + "\n")
    assert sum(len(p["records"]) for p in records) == 300
    assert sum(calls) < 300  # the sniffed sample at most goes record by record


class BusyKeys:
    """Whether another process holds the key store's write lock, look after look, as
    ``pattern`` says (repeated)."""

    def __init__(self, pattern: list[bool]) -> None:
        self.pattern = pattern
        self.looks = 0

    def __call__(self) -> bool:
        busy = self.pattern[self.looks % len(self.pattern)]
        self.looks += 1
        return busy


@pytest.mark.parametrize("pattern", [[True], [True, False], [True, True, True, False], [False]])
def test_batches_held_while_the_key_store_is_busy_give_the_same_events(
        tmp_path: Path, pattern: list[bool]) -> None:
    text = _dump_with_every_case(3000)
    expected = ingest(tmp_path / "free", text, per_event=4, chunk=12_000)
    busy = BusyKeys(pattern)
    bodies: list[bytes] = []
    policy = PiiPolicy.default()
    ingestor = DumpIngestor(
        dump=b"d" * 16, part=0, options=IngestOptions(source="t", records_per_event=4),
        protector=Protector(policy, KEYS, DerivedKeys(), random_bytes=Nonces()), policy=policy,
        append=bodies.extend, quarantine=Quarantine(tmp_path / "busy" / "q.jsonl", "00", "t"),
        keys_busy=busy)
    data = text.encode()
    most_aside = 0
    for start in range(0, len(data), 12_000):
        ingestor.feed(data[start:start + 12_000])
        most_aside = max(most_aside, len(ingestor._aside))
    ingestor.finish()
    assert [payload_of(body) for body in bodies] == expected
    assert busy.looks > 0
    assert most_aside == (1 if True in pattern else 0)  # a second full batch flushes both


def test_a_column_named_in_the_policy_keeps_its_name_and_its_override(tmp_path: Path) -> None:
    """``digest`` is no known column name, but the policy names it for this source: it is
    written as ``digest`` (not ``col2``), and the override (looked up by the name a field
    is written under) applies, also to a crypt hash found in that column."""
    policy = PiiPolicy.from_config({}, {"t": {"digest": "encrypt"}})
    bodies: list[bytes] = []
    ingestor = DumpIngestor(
        dump=b"d" * 16, part=0, options=IngestOptions(source="t"),
        protector=Protector(policy, KEYS, DerivedKeys(), random_bytes=Nonces()), policy=policy,
        append=bodies.extend, quarantine=Quarantine(tmp_path / "q.jsonl", "00", "t"),
        mapping={"email": "email", "digest": "hash"})
    ingestor.feed(b"email,digest\n" + b"".join(
        b"u%d@example.com,%s\n" % (i, b"$2b$12$" + b"a" * 53 if i % 2 else b"ab" * 32)
        for i in range(10)))
    ingestor.finish()
    fields = [f for body in bodies for _, fs in payload_of(body)["records"] for f in fs
              if f["col"] == "digest"]
    assert sorted(f["kind"] for f in fields) == ["hash"] * 5 + ["password_hash"] * 5
    assert all("ct" in f and "bi" not in f for f in fields)  # sealed, as the override says
