"""The protector (pure given keys) and reveal, with an in-memory key source."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heimdall_core.errors import PiiError, ShreddedError
from heimdall_core.pii.blind_index import IndexKeys, blind_index, subject_id
from heimdall_core.pii.policy import PiiPolicy
from heimdall_core.pii.protect import FieldIn, ProtectedRecord, Protector, reveal

KEYS = IndexKeys(blind_index_key=os.urandom(32), subject_key=os.urandom(32))

RECORD: list[FieldIn] = [
    ("mail", "email", "alice@example.com"),
    ("login", "username", "alice"),
    ("src", "ip", "192.0.2.7"),
    ("site", "domain", "example.com"),
    ("h", "hash", "ab" * 32),
    ("pw", "password", "hunter2"),
]


class MemoryKeys:
    """Get-or-create DEKs in a dict; counts calls; can shred."""

    def __init__(self) -> None:
        self.deks: dict[bytes, bytes | None] = {}
        self.calls = 0

    def data_keys(self, subjects: Sequence[bytes]) -> Mapping[bytes, bytes | None]:
        self.calls += 1
        for s in subjects:
            self.deks.setdefault(s, os.urandom(32))
        return {s: self.deks[s] for s in subjects}

    def data_key(self, subject: bytes) -> bytes | None:
        return self.deks[subject]

    def shred(self, subject: bytes) -> None:
        self.deks[subject] = None


def make(policy: PiiPolicy | None = None) -> tuple[Protector, MemoryKeys]:
    keys = MemoryKeys()
    return Protector(policy or PiiPolicy.default(), KEYS, keys), keys


def by_col(record: ProtectedRecord) -> dict[str, dict[str, object]]:
    return {str(f["col"]): dict(f) for f in record.fields}


def test_default_policy_shapes() -> None:
    protector, _ = make()
    record = protector.protect("dump1", RECORD)
    fields = by_col(record)
    sub = subject_id(KEYS, "email", "alice@example.com")
    assert record.subject == sub
    assert set(fields) == {"mail", "login", "src", "site", "h"}  # password dropped
    assert fields["src"] == {"col": "src", "kind": "ip", "v": "192.0.2.7"}
    assert fields["h"] == {"col": "h", "kind": "hash", "v": "ab" * 32}
    mail = fields["mail"]
    assert set(mail) == {"col", "kind", "sub", "ct", "bi"}
    assert mail["sub"] == sub
    assert mail["bi"] == blind_index(KEYS, "email", "alice@example.com")
    assert fields["login"]["sub"] == sub  # every personal field under the record's subject
    packed = msgpack.packb([dict(f) for f in record.fields])
    assert b"alice" not in packed and b"hunter2" not in packed


def test_round_trip_through_reveal() -> None:
    protector, keys = make()
    fields = by_col(protector.protect("dump1", RECORD))
    assert reveal(fields["mail"], keys) == "alice@example.com"
    assert reveal(fields["login"], keys) == "alice"
    assert reveal(fields["src"], keys) == "192.0.2.7"


@settings(deadline=None, max_examples=30)
@given(
    values=st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=4),
)
def test_any_values_round_trip(values: list[str]) -> None:
    protector, keys = make()
    record = [(f"c{i}", "name", v) for i, v in enumerate(values)]
    protected = protector.protect("s", record)
    assert [reveal(f, keys) for f in protected.fields] == values


def test_password_allowed_is_encrypted_and_indexed() -> None:
    protector, keys = make(PiiPolicy.from_config({"password": "encrypt+blind_index"}))
    fields = by_col(protector.protect("dump1", RECORD))
    assert set(fields["pw"]) == {"col", "kind", "sub", "ct", "bi"}
    assert reveal(fields["pw"], keys) == "hunter2"


def test_password_hash_is_only_a_fingerprint() -> None:
    protector, keys = make()
    fields = by_col(protector.protect("d", [("ph", "password_hash", "5f4dcc3b5aa765d61d83")]))
    assert fields["ph"] == {
        "col": "ph",
        "kind": "password_hash",
        "bi": blind_index(KEYS, "password_hash", "5f4dcc3b5aa765d61d83"),
    }
    with pytest.raises(PiiError, match="keyed fingerprint"):
        reveal(fields["ph"], keys)


def test_subject_rule_prefers_email_then_username_then_phone_then_name() -> None:
    protector, _ = make()
    record = [("n", "name", "Alice A"), ("p", "phone", "+15550100"), ("u", "username", "al")]
    assert protector.protect("s", record).subject == subject_id(KEYS, "username", "al")
    record.append(("e", "email", "al@example.com"))
    assert protector.protect("s", record).subject == subject_id(KEYS, "email", "al@example.com")
    # Empty values are not present.
    record[-1] = ("e", "email", "")
    assert protector.protect("s", record).subject == subject_id(KEYS, "username", "al")


def test_subject_falls_back_to_first_sealed_field() -> None:
    protector, _ = make()
    record = [("ip", "ip", "192.0.2.1"), ("notes", "other", "x"), ("more", "other", "y")]
    assert protector.protect("s", record).subject == subject_id(KEYS, "other", "x")


def test_no_subject_when_nothing_is_sealed() -> None:
    protector, keys = make()
    record = protector.protect("s", [("ip", "ip", "192.0.2.1"), ("ph", "password_hash", "ab")])
    assert record.subject is None
    assert keys.calls == 0


def test_empty_values_are_kept_as_empty_never_sealed() -> None:
    protector, _ = make()
    fields = by_col(protector.protect("s", [("e", "email", ""), ("u", "username", "bob")]))
    assert fields["e"] == {"col": "e", "kind": "email", "v": ""}


def test_column_override_applies() -> None:
    policy = PiiPolicy.from_config({}, {"hr": {"notes": "clear", "mail": "drop"}})
    protector, _ = make(policy)
    record = [("mail", "email", "a@b.c"), ("notes", "other", "n"), ("u", "username", "u1")]
    fields = by_col(protector.protect("hr", record))
    assert set(fields) == {"notes", "u"}
    assert fields["notes"]["v"] == "n"
    assert set(by_col(protector.protect("elsewhere", record))) == {"mail", "notes", "u"}


def test_batch_fetches_all_keys_in_one_call() -> None:
    protector, keys = make()
    records = [[("e", "email", f"user{i}@example.com")] for i in range(50)]
    records.append([("e", "email", "user0@example.com")])  # same subject twice
    out = protector.protect_batch("s", records)
    assert keys.calls == 1
    assert len(keys.deks) == 50
    assert out[0].subject == out[-1].subject
    assert [reveal(r.fields[0], keys) for r in out] == [r[0][2] for r in records]


def test_nonces_are_never_reused_in_a_batch() -> None:
    protector, _ = make()
    records = [list(RECORD) for _ in range(20)]
    out = protector.protect_batch("s", records)
    nonces = [f["ct"][1:13] for r in out for f in r.fields if "ct" in f]
    assert len(nonces) == 40
    assert len(set(nonces)) == 40


def test_moving_a_ciphertext_to_another_kind_or_subject_fails() -> None:
    protector, keys = make()
    alice = by_col(protector.protect("s", RECORD))["mail"]
    bob = by_col(protector.protect("s", [("mail", "email", "bob@example.com")]))["mail"]
    with pytest.raises(PiiError, match="does not authenticate"):
        reveal({**alice, "kind": "username"}, keys)
    with pytest.raises(PiiError, match="does not authenticate"):
        reveal({**alice, "sub": bob["sub"]}, keys)
    with pytest.raises(PiiError, match="does not authenticate"):
        reveal({**bob, "ct": alice["ct"]}, keys)


def test_shredded_subject() -> None:
    protector, keys = make()
    fields = by_col(protector.protect("s", RECORD))
    keys.shred(fields["mail"]["sub"])  # type: ignore[arg-type]
    with pytest.raises(ShreddedError, match="shredded") as e:
        reveal(fields["mail"], keys)
    assert "alice" not in str(e.value)
    assert reveal(fields["src"], keys) == "192.0.2.7"  # clear fields are untouched


def test_new_data_of_a_shredded_subject_is_never_stored() -> None:
    protector, keys = make()
    first = protector.protect("s", RECORD)
    assert first.subject is not None
    keys.shred(first.subject)
    fields = by_col(protector.protect("s", RECORD))
    mail = fields["mail"]
    assert set(mail) == {"col", "kind", "sub", "bi"}
    with pytest.raises(ShreddedError):
        reveal(mail, keys)


def test_reveal_checks_the_shape() -> None:
    _, keys = make()
    with pytest.raises(PiiError, match="no kind"):
        reveal({"col": "x", "v": "1"}, keys)
    with pytest.raises(PiiError, match="'sub' must be bytes"):
        reveal({"col": "x", "kind": "email", "sub": "abc", "ct": b""}, keys)
    with pytest.raises(PiiError, match="16 bytes"):
        reveal({"col": "x", "kind": "email", "sub": b"abc", "ct": b""}, keys)
    with pytest.raises(PiiError, match="neither"):
        reveal({"col": "x", "kind": "email"}, keys)


def test_limits() -> None:
    protector, _ = make()
    with pytest.raises(PiiError, match="fields exceeds"):
        protector.protect("s", [("c", "ip", "1")] * 1025)
    with pytest.raises(PiiError, match="bytes exceeds"):
        protector.protect("s", [("c", "email", "x" * 70_000)])


def test_reprs_show_no_keys() -> None:
    protector, _ = make()
    text = repr(protector)
    assert KEYS.blind_index_key.hex() not in text and "redacted" in text


def test_subject_id_for_matches_the_rule() -> None:
    protector, _ = make()
    assert protector.subject_id_for("email", "a@b.c") == subject_id(KEYS, "email", "a@b.c")


def test_protect_cost_per_record() -> None:
    """Guard against order-of-magnitude regressions only (docs/pii.md has the numbers)."""
    protector, _ = make()
    records = [
        [
            ("mail", "email", f"user{i}@example.com"),
            ("login", "username", f"user{i}"),
            *RECORD[2:],
        ]
        for i in range(5000)
    ]
    start = time.perf_counter()
    for i in range(0, len(records), 1000):
        protector.protect_batch("s", records[i : i + 1000])
    per_record_us = (time.perf_counter() - start) / len(records) * 1e6
    assert per_record_us < 100, f"{per_record_us:.1f} µs per record"
