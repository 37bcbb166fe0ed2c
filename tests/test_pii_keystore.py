"""The on-disk PII key store: modes, get-or-create, shredding, rotation, processes."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from heimdall_core.errors import KeyMaterialError, PiiError, ShreddedError
from heimdall_core.pii.keystore import DataKeys, KeyStore
from heimdall_core.pii.policy import PiiPolicy
from heimdall_core.pii.protect import Protector, reveal


def subjects(n: int, tag: int = 0) -> list[bytes]:
    return [tag.to_bytes(4, "big") + i.to_bytes(12, "big") for i in range(n)]


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "data" / "pii"


@pytest.fixture
def store(store_dir: Path) -> Iterator[KeyStore]:
    ks = KeyStore.open(store_dir, create=True)
    yield ks
    ks.close()


def wrapped_of(store_dir: Path, subject: bytes) -> bytes:
    conn = sqlite3.connect(store_dir / "keys.db")
    try:
        (wrapped,) = conn.execute("SELECT wrapped FROM subject_key WHERE subject = ?", (subject,)).fetchone()
    finally:
        conn.close()
    assert isinstance(wrapped, bytes)
    return wrapped


def files_containing(directory: Path, needle: bytes) -> list[str]:
    return [p.name for p in directory.iterdir() if needle in p.read_bytes()]


def test_modes_from_the_start(store_dir: Path) -> None:
    old_umask = os.umask(0o022)  # a typical umask that would leave files world-readable
    try:
        with KeyStore.open(store_dir, create=True) as ks:
            ks.data_keys(subjects(100))
            ks.shred(subjects(1)[0])
            ks.rotate_kek()
            names = sorted(p.name for p in store_dir.iterdir())
            assert "keys.db-wal" in names and "keys.db-shm" in names
            for path in store_dir.iterdir():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(store_dir.stat().st_mode) == 0o700
    assert {"keys.db", "blind-index.key", "subject.key", "kek-00000002.key"} <= set(names)


def test_open_without_create_needs_an_existing_store(store_dir: Path) -> None:
    with pytest.raises(KeyMaterialError, match="does not exist"):
        KeyStore.open(store_dir)
    KeyStore.open(store_dir, create=True).close()
    KeyStore.open(store_dir).close()


def test_unsafe_modes_are_refused(store_dir: Path) -> None:
    KeyStore.open(store_dir, create=True).close()
    key = store_dir / "subject.key"
    key.chmod(0o644)
    with pytest.raises(KeyMaterialError, match=r"subject\.key has mode 644"):
        KeyStore.open(store_dir)
    key.chmod(0o600)
    store_dir.chmod(0o755)
    with pytest.raises(KeyMaterialError, match="mode 755"):
        KeyStore.open(store_dir)
    store_dir.chmod(0o700)
    KeyStore.open(store_dir).close()


def test_truncated_key_file_is_refused(store_dir: Path) -> None:
    KeyStore.open(store_dir, create=True).close()
    (store_dir / "blind-index.key").write_bytes(b"short")
    with pytest.raises(KeyMaterialError, match="exactly 32 bytes"):
        KeyStore.open(store_dir)


def test_get_or_create_is_stable_across_reopen(store_dir: Path) -> None:
    subs = subjects(10)
    with KeyStore.open(store_dir, create=True) as ks:
        first = ks.data_keys(subs + subs[:3])
        index_keys = ks.index_keys
        assert set(first) == set(subs)
        assert all(isinstance(k, bytes) and len(k) == 32 for k in first.values())
        assert len(set(first.values())) == 10
    with KeyStore.open(store_dir) as ks:
        assert ks.data_keys(subs) == first
        assert ks.data_key(subs[4]) == first[subs[4]]
        assert ks.index_keys.subject_key == index_keys.subject_key
        assert ks.index_keys.blind_index_key == index_keys.blind_index_key


def test_batches_mixing_known_and_new_subjects_keep_every_stored_key(store_dir: Path) -> None:
    """Both ways a batch is stored (insert first after mostly-new batches, read first
    after mostly-known ones) keep the keys already stored and create the missing ones."""
    known = subjects(6)
    with KeyStore.open(store_dir, create=True) as ks:
        first = ks.data_keys(known[:4])
        shredded = known[5]
        ks.shred(shredded)
        # Mostly new (insert first): 2 of 10 exist, one more is a tombstone.
        mixed = [known[0], *subjects(7, tag=1), known[3], shredded]
        second = ks.data_keys(mixed)
        assert second[known[0]] == first[known[0]] and second[known[3]] == first[known[3]]
        assert second[shredded] is None
        # Mostly known (read first): 9 of 10 exist.
        third = ks.data_keys([*mixed[:9], subjects(1, tag=2)[0]])
        assert all(third[s] == second[s] for s in mixed[:9])
        # And back to insert first after that mostly-known batch was seen.
        fourth = ks.data_keys([known[1], *subjects(5, tag=3)])
        assert fourth[known[1]] == first[known[1]]
        everything = {**second, **third, **fourth}
    with KeyStore.open(store_dir) as ks:
        for subject, key in everything.items():
            assert ks.data_keys([subject])[subject] == key
            if key is not None:
                assert ks.data_key(subject) == key


def test_data_key_never_creates(store: KeyStore) -> None:
    with pytest.raises(KeyMaterialError, match="no data key"):
        store.data_key(subjects(1)[0])
    assert store.data_keys([]) == {}


def test_subject_ids_are_checked(store: KeyStore) -> None:
    with pytest.raises(PiiError, match="16 bytes"):
        store.data_keys([b"short"])


def test_a_batch_is_inserted_whole_in_arrival_order(store_dir: Path) -> None:
    """The one-statement insert stores every row, each subject with its own wrapped key,
    in the order the subjects came (the rows' seq, which a rotation steps through)."""
    subs = [bytes([i % 251]) * 8 + i.to_bytes(8, "big") for i in range(5000)]
    with KeyStore.open(store_dir, create=True) as ks:
        keys = ks.data_keys(subs)
        assert len(set(keys.values())) == 5000
    conn = sqlite3.connect(store_dir / "keys.db")
    try:
        rows = conn.execute(
            "SELECT subject, kek_version, length(wrapped) FROM subject_key ORDER BY seq").fetchall()
    finally:
        conn.close()
    assert [r[0] for r in rows] == subs
    assert {(r[1], r[2]) for r in rows} == {(1, 61)}
    with KeyStore.open(store_dir) as ks:
        assert ks.data_keys(subs[::-1]) == keys


def test_subject_ids_of_another_type_are_refused(store: KeyStore) -> None:
    with pytest.raises(PiiError, match="16 bytes"):
        store.data_keys([subjects(1)[0], "a" * 16])  # type: ignore[list-item]
    with pytest.raises(PiiError, match="16 bytes"):
        store.data_keys([memoryview(bytes(16))])  # type: ignore[list-item]


def test_reprs_show_no_keys(store: KeyStore) -> None:
    keys = store.data_keys(subjects(3))
    text = repr(keys) + str(keys) + repr(store)
    for dek in keys.values():
        assert dek is not None and dek.hex() not in text and repr(dek) not in text
    assert "redacted" in text
    assert isinstance(keys, DataKeys)


def test_shred_makes_values_unreadable_and_leaves_no_copy(store_dir: Path) -> None:
    ks = KeyStore.open(store_dir, create=True)
    other = KeyStore.open(store_dir)  # another process's idle connection
    protector = Protector(PiiPolicy.default(), ks.index_keys, ks)
    records = [[("mail", "email", f"user{i}@example.com")] for i in range(300)]
    protected = protector.protect_batch("dump1", records)
    victim = protected[123]
    assert victim.subject is not None
    dek = ks.data_key(victim.subject)
    assert dek is not None
    wrapped = wrapped_of(store_dir, victim.subject)
    other.data_keys([victim.subject])  # the other connection has read it too
    assert files_containing(store_dir, wrapped) != []

    assert ks.shred(victim.subject) is True

    with pytest.raises(ShreddedError, match="shredded"):
        reveal(victim.fields[0], ks)
    with pytest.raises(ShreddedError):
        reveal(victim.fields[0], other)
    assert ks.is_shredded(victim.subject) and other.is_shredded(victim.subject)
    assert reveal(protected[122].fields[0], ks) == "user122@example.com"
    assert files_containing(store_dir, wrapped) == []
    assert files_containing(store_dir, dek) == []
    other.close()
    ks.close()
    assert files_containing(store_dir, wrapped) == []


def test_shredded_subject_is_never_recreated(store: KeyStore) -> None:
    sub = subjects(1)[0]
    first = store.data_keys([sub])[sub]
    assert first is not None
    assert store.shred(sub) is True
    assert store.shred(sub) is False  # already shredded
    assert store.data_keys([sub]) == {sub: None}
    assert store.data_key(sub) is None


def test_shred_before_any_data_records_a_tombstone(store: KeyStore) -> None:
    sub = subjects(1, tag=9)[0]
    assert store.is_shredded(sub) is False
    assert store.shred(sub) is False
    assert store.is_shredded(sub) is True
    assert store.data_keys([sub]) == {sub: None}


def test_rotation_rewraps_and_destroys_the_old_kek(store_dir: Path) -> None:
    ks = KeyStore.open(store_dir, create=True)
    protector = Protector(PiiPolicy.default(), ks.index_keys, ks)
    protected = protector.protect_batch(
        "dump1", [[("mail", "email", f"u{i}@example.com")] for i in range(50)]
    )
    sub = protected[7].subject
    assert sub is not None
    old_wrapped = wrapped_of(store_dir, sub)
    old_kek = (store_dir / "kek-00000001.key").read_bytes()
    deks = ks.data_keys([r.subject for r in protected if r.subject is not None])

    assert ks.kek_version == 1
    assert ks.rotate_kek() == 2
    assert ks.kek_version == 2

    assert not (store_dir / "kek-00000001.key").exists()
    assert (store_dir / "kek-00000002.key").exists()
    assert files_containing(store_dir, old_kek) == []
    assert wrapped_of(store_dir, sub) != old_wrapped
    assert files_containing(store_dir, old_wrapped) == []
    assert reveal(protected[7].fields[0], ks) == "u7@example.com"
    ks.close()
    with KeyStore.open(store_dir) as again:
        assert again.kek_version == 2
        assert again.data_keys(list(deks)) == deks
        assert reveal(protected[8].fields[0], again) == "u8@example.com"


def test_other_connection_follows_a_rotation(store_dir: Path) -> None:
    a = KeyStore.open(store_dir, create=True)
    b = KeyStore.open(store_dir)
    old = a.data_keys(subjects(5))
    assert b.rotate_kek() == 2
    # a still holds KEK v1 in memory; it must read the rewrapped rows and wrap new
    # keys under v2 only.
    assert a.data_keys(subjects(5)) == old
    fresh = a.data_keys(subjects(5, tag=1))
    assert a.kek_version == 2
    b.close()
    a.close()
    with KeyStore.open(store_dir) as c:
        assert c.data_keys(subjects(5, tag=1)) == fresh


def test_crash_leftovers_of_a_rotation_are_handled(store_dir: Path) -> None:
    with KeyStore.open(store_dir, create=True) as ks:
        keys = ks.data_keys(subjects(5))
    # A rotation that crashed before its commit leaves a newer, unused KEK file.
    orphan = store_dir / "kek-00000002.key"
    fd = os.open(orphan, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, os.urandom(32))
    os.close(fd)
    with KeyStore.open(store_dir) as ks:
        assert ks.rotate_kek() == 2
        assert ks.data_keys(subjects(5)) == keys
    # One that crashed after its commit leaves the retired KEK: destroyed at open.
    retired = store_dir / "kek-00000001.key"
    fd = os.open(retired, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, os.urandom(32))
    os.close(fd)
    with KeyStore.open(store_dir) as ks:
        assert not retired.exists()
        assert ks.data_keys(subjects(5)) == keys


def _race(directory: str, seed: int, barrier: object, out: object) -> None:
    """Worker: get-or-create the same subjects as the other worker, in its own order."""
    subs = subjects(400)
    order = subs[seed::2] + subs[1 - seed :: 2] if seed else list(reversed(subs))
    with KeyStore.open(directory, create=True) as ks:
        barrier.wait()  # type: ignore[attr-defined]
        got: dict[bytes, bytes | None] = {}
        for i in range(0, len(order), 50):
            got.update(ks.data_keys(order[i : i + 50]))
    out.put({s.hex(): (k.hex() if k else None) for s, k in got.items()})  # type: ignore[attr-defined]


def test_processes_racing_on_the_same_subjects_agree(store_dir: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    out = ctx.Queue()
    workers = [ctx.Process(target=_race, args=(str(store_dir), seed, barrier, out)) for seed in (0, 1)]
    for w in workers:
        w.start()
    results = [out.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert len(results[0]) == 400
    assert results[0] == results[1]
    assert None not in results[0].values()
    with KeyStore.open(store_dir) as ks:
        stored = ks.data_keys(subjects(400))
    assert {s.hex(): k.hex() for s, k in stored.items() if k} == results[0]


def _open_at_once(directory: str, barrier: object, out: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    try:
        with KeyStore.open(directory, create=True):
            out.put("ok")  # type: ignore[attr-defined]
    except Exception as e:  # reported, not raised: the parent names it
        out.put(repr(e))  # type: ignore[attr-defined]


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path: Path) -> None:
    """Six processes create one store at the same moment, twenty times: SQLite answers
    the race to switch the new file to WAL with "database is locked" at once (without
    its busy timeout); opening must wait and succeed, not fail."""
    ctx = multiprocessing.get_context("fork")
    for round_no in range(20):
        directory = tmp_path / f"store-{round_no}"
        barrier, out = ctx.Barrier(6), ctx.Queue()
        workers = [ctx.Process(target=_open_at_once, args=(str(directory), barrier, out)) for _ in range(6)]
        for w in workers:
            w.start()
        results = [out.get(timeout=60) for _ in workers]
        for w in workers:
            w.join(timeout=60)
        assert results == ["ok"] * 6, (round_no, results)


def test_shred_reports_a_wal_it_could_not_purge_and_a_second_shred_finishes(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import heimdall_core.pii.keystore as keystore

    monkeypatch.setattr(keystore, "PURGE_ATTEMPTS_MAX", 1)
    monkeypatch.setattr(keystore, "PURGE_BUSY_TIMEOUT_MS", 50)
    ks = KeyStore.open(store_dir, create=True)
    sub = subjects(1)[0]
    ks.data_keys([sub])
    wrapped = wrapped_of(store_dir, sub)
    reader = sqlite3.connect(store_dir / "keys.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM subject_key").fetchone()  # holds a snapshot
    with pytest.raises(PiiError, match="is shredded, but") as e:
        ks.shred(sub)
    assert wrapped.hex() not in str(e.value)
    assert ks.is_shredded(sub)
    reader.execute("COMMIT")
    reader.close()
    assert ks.shred(sub) is False  # already shredded; this call purges the WAL
    assert files_containing(store_dir, wrapped) == []
    ks.close()


def test_a_row_read_before_a_rotation_is_read_again(store_dir: Path) -> None:
    a = KeyStore.open(store_dir, create=True)
    sub = subjects(1)[0]
    dek = a.data_keys([sub])[sub]
    b = KeyStore.open(store_dir)
    b.rotate_kek()
    stale = wrapped_of(store_dir, sub)  # wrapped under KEK v2, never loaded by a
    b.rotate_kek()  # v2 is destroyed before a could load it
    assert not (store_dir / "kek-00000002.key").exists()
    assert a._unwrap(sub, 2, stale) == dek
    a.close()
    b.close()


def test_interrupted_rotation_keeps_old_keks_until_a_rotation_finishes(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import heimdall_core.pii.keystore as keystore

    monkeypatch.setattr(keystore, "ROTATE_ROWS_PER_STEP", 10)
    ks = KeyStore.open(store_dir, create=True)
    keys = ks.data_keys(subjects(35))
    real_step = KeyStore._rewrap_step
    steps = 0

    def failing_step(self: KeyStore, new: int, after: int) -> int | None:
        nonlocal steps
        steps += 1
        if steps == 3:
            raise OSError("power cut")
        return real_step(self, new, after)

    monkeypatch.setattr(KeyStore, "_rewrap_step", failing_step)
    with pytest.raises(OSError):
        ks.rotate_kek()
    ks.close()
    monkeypatch.setattr(KeyStore, "_rewrap_step", real_step)
    # Rows are under v1 and v2 now: both KEKs must survive a reopen.
    with KeyStore.open(store_dir) as again:
        assert again.kek_version == 2
        assert (store_dir / "kek-00000001.key").exists()
        assert again.data_keys(subjects(35)) == keys
        fresh = again.data_keys(subjects(3, tag=5))
        assert again.rotate_kek() == 3
        assert [p.name for p in store_dir.glob("kek-*")] == ["kek-00000003.key"]
        assert again.data_keys(subjects(35)) == keys
        assert again.data_keys(subjects(3, tag=5)) == fresh


_SCHEMA_1_SUBJECT_KEY = """
CREATE TABLE subject_key (
    seq         INTEGER PRIMARY KEY,
    subject     BLOB NOT NULL UNIQUE CHECK (length(subject) = 16),
    kek_version INTEGER,
    wrapped     BLOB,
    shredded_at INTEGER,
    CHECK ((wrapped IS NULL) = (shredded_at IS NOT NULL)),
    CHECK ((wrapped IS NULL) = (kek_version IS NULL))
)"""


def _downgrade_to_schema_1(store_dir: Path) -> None:
    """Rewrite a store in the layout of schema 1 (a unique index on the subject)."""
    conn = sqlite3.connect(store_dir / "keys.db", isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ALTER TABLE subject_key RENAME TO subject_key_2")
        conn.execute(_SCHEMA_1_SUBJECT_KEY)
        conn.execute("INSERT INTO subject_key SELECT * FROM subject_key_2 ORDER BY seq")
        conn.execute("DROP TABLE subject_key_2")
        conn.execute("DROP TABLE subject_index")
        conn.execute("DELETE FROM meta WHERE name = 'indexed_through'")
        conn.execute("UPDATE meta SET value = 1 WHERE name = 'schema'")
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_a_schema_1_store_is_migrated_when_opened(store_dir: Path) -> None:
    with KeyStore.open(store_dir, create=True) as ks:
        keys = ks.data_keys(subjects(300))
        assert ks.shred(subjects(300)[5]) is True
    _downgrade_to_schema_1(store_dir)
    with KeyStore.open(store_dir) as ks:
        assert ks.data_keys(subjects(300)) == {**keys, subjects(300)[5]: None}
        assert ks.is_shredded(subjects(300)[5])
        fresh = ks.data_keys(subjects(10, tag=3))
        wrapped = wrapped_of(store_dir, subjects(300)[7])
        assert ks.shred(subjects(300)[7]) is True
        assert files_containing(store_dir, wrapped) == []
    conn = sqlite3.connect(store_dir / "keys.db")
    try:
        assert conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM subject_index").fetchone() == (300,)
        order = [r[0] for r in conn.execute("SELECT subject FROM subject_key ORDER BY seq")]
        assert order == subjects(300) + subjects(10, tag=3)
    finally:
        conn.close()
    with KeyStore.open(store_dir) as ks:
        assert ks.data_keys(subjects(10, tag=3)) == fresh


def test_the_tail_is_folded_into_the_index_and_other_connections_follow(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows past the subject index are found through each connection's tail; a fold by
    one connection is followed by the others, and every subject keeps its one key."""
    import heimdall_core.pii.keystore as keystore

    monkeypatch.setattr(keystore, "TAIL_SUBJECTS_MAX", 64)
    a = KeyStore.open(store_dir, create=True)
    b = KeyStore.open(store_dir)
    first = a.data_keys(subjects(50))
    assert b.data_keys(subjects(50)) == first  # found in the tail b caught up on
    second = b.data_keys(subjects(40, tag=1))  # b's tail passes 64 rows: b folds
    assert a.data_keys(subjects(50) + subjects(40, tag=1)) == {**first, **second}
    third = a.data_keys(subjects(100, tag=2))  # a folds too, after following b's fold
    assert b.data_key(subjects(100, tag=2)[99]) == third[subjects(100, tag=2)[99]]
    assert b.shred(subjects(50)[3]) is True
    assert a.is_shredded(subjects(50)[3])
    a.close()
    b.close()
    conn = sqlite3.connect(store_dir / "keys.db")
    try:
        (indexed,) = conn.execute("SELECT count(*) FROM subject_index").fetchone()
        (rows,) = conn.execute("SELECT count(DISTINCT subject) FROM subject_key").fetchone()
        (total,) = conn.execute("SELECT count(*) FROM subject_key").fetchone()
    finally:
        conn.close()
    assert rows == total == 190
    assert indexed == 190  # the last append took the tail past the limit again
    with KeyStore.open(store_dir) as ks:
        everything = ks.data_keys(subjects(50) + subjects(40, tag=1) + subjects(100, tag=2))
        assert everything == {**first, **second, **third, subjects(50)[3]: None}


def test_a_failed_transaction_forgets_the_rows_it_appended(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tail must not keep rows of a rolled-back transaction, or a subject would be
    taken as known while it has no key."""
    ks = KeyStore.open(store_dir, create=True)
    ks.data_keys(subjects(5))

    def failing_fold(self: KeyStore) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(KeyStore, "_fold_if_due", failing_fold)
    with pytest.raises(OSError):
        ks.data_keys(subjects(5, tag=1))
    monkeypatch.undo()
    fresh = ks.data_keys(subjects(5, tag=1))
    assert None not in fresh.values()
    ks.close()
    with KeyStore.open(store_dir) as again:
        assert again.data_keys(subjects(5, tag=1)) == fresh


def test_write_locked_tells_whether_another_connection_writes(store_dir: Path) -> None:
    a = KeyStore.open(store_dir, create=True)
    b = KeyStore.open(store_dir)
    try:
        assert not a.write_locked()
        conn = sqlite3.connect(store_dir / "keys.db", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            assert a.write_locked() and b.write_locked()
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        assert not a.write_locked()
        assert a.data_keys(subjects(3)) == b.data_keys(subjects(3))  # the probe left no transaction
    finally:
        a.close()
        b.close()
