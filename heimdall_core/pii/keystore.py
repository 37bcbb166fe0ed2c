"""The site's PII key store: KEKs, index keys and wrapped per-subject data keys (I/O).

Layout of the directory (0700, every file 0600, created so from the start)::

    keys.db             SQLite (WAL): wrapped DEKs, shredded-subject tombstones, subject index
    kek-NNNNNNNN.key    the current key-encryption key (older versions are destroyed)
    blind-index.key     32 random bytes, created once
    subject.key         32 random bytes, created once

Rows are appended in arrival order. A subject is found through ``subject_index``, which
covers the rows up to ``indexed_through``, and through the newer rows (the tail), which
every process keeps in memory and catches up on from the append order. The tail is folded
into the index once it reaches TAIL_SUBJECTS_MAX rows: a b-tree keyed by random subject ids
has every leaf page dirtied by a big batch, so indexing each batch as it came rewrote the
whole index per batch (~8 us per new subject at a million subjects), while a fold rewrites
it once per TAIL_SUBJECTS_MAX subjects.

Several ingest processes may open the same store at once: a batch's subjects are looked
up and the missing DEKs appended inside one write transaction (``BEGIN IMMEDIATE``,
after catching up on the tail), so racing processes agree on one key per subject. A
shredded subject keeps a tombstone row, so it is never silently given a new key. See
docs/pii.md.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from heimdall_core.errors import KeyMaterialError, PiiError
from heimdall_core.pii import keyfiles
from heimdall_core.pii.blind_index import (
    SUBJECT_ID_BYTES,
    IndexKeys,
    subject_id,
)
from heimdall_core.pii.envelope import (
    FORMAT_V1,
    KEY_BYTES,
    NONCE_BYTES,
    WRAPPED_DEK_BYTES,
    dek_ad,
    split_bytes,
    unwrap_dek,
    wrap_dek,
)

DB_NAME = "keys.db"
BLIND_INDEX_KEY_NAME = "blind-index.key"
SUBJECT_KEY_NAME = "subject.key"

SCHEMA_VERSION = 2
"""2: no unique index on ``subject_key.subject``; ``subject_index`` plus the tail instead.
A schema 1 store is migrated when opened (see ``_migrate_from_1``)."""

TAIL_SUBJECTS_MAX = 262_144
"""Rows past the subject index before they are folded into it. Each process holds them in
memory (~120 bytes each: ~32 MiB) and reads them once when it first looks a subject up.
A fold costs about the size of the index, so this halves the folds of 131,072 (measured:
~0.3 us less per new subject at a million subjects) for 16 MiB more."""

BUSY_TIMEOUT_S = 30.0
"""How long a process waits for another's write transaction before giving up."""

SUBJECTS_PER_BATCH_MAX = 65_536
"""Most subjects in one ``data_keys`` call (one transaction)."""

SQL_VARIABLES_PER_QUERY = 500
"""Subjects per ``IN (...)`` query: well under SQLite's variable limit."""

ROTATE_ROWS_PER_STEP = 10_000
"""Wrapped DEKs rewrapped per step of a rotation (bounds its memory)."""

CACHE_KIB = 64 * 1024
"""SQLite page cache per connection: holds the subject index of a few million subjects."""

WAL_AUTOCHECKPOINT_PAGES = 10_000
"""Checkpoint the WAL after this many pages (~40 MiB) rather than SQLite's 1000: a page
touched by several batches is then copied to the database once."""

PURGE_ATTEMPTS_MAX = 5
PURGE_BUSY_TIMEOUT_MS = 2_000
PURGE_RETRY_S = 0.2
"""After a shred the WAL is truncated; readers in other processes may delay that."""

_SUBJECT_KEY_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    seq         INTEGER PRIMARY KEY,
    subject     BLOB NOT NULL CHECK (length(subject) = 16),
    kek_version INTEGER,
    wrapped     BLOB,
    shredded_at INTEGER,
    CHECK ((wrapped IS NULL) = (shredded_at IS NOT NULL)),
    CHECK ((wrapped IS NULL) = (kek_version IS NULL))
)"""

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS subject_index (
    subject BLOB PRIMARY KEY,
    seq     INTEGER NOT NULL
) WITHOUT ROWID;
"""
    + _SUBJECT_KEY_TABLE.format(name="subject_key")
)
# Rows are appended in creation order (rowid table); subject_index maps a subject to its
# row for every row up to meta.indexed_through (see the module doc for the newer ones).


class DataKeys(dict[bytes, bytes | None]):
    """Subject id → data key (``None`` if shredded); printing it never shows a key."""

    def __repr__(self) -> str:
        return f"DataKeys(<{len(self)} keys redacted>)"


def _prepare_dir(directory: Path, create: bool) -> None:
    if create and not directory.exists():
        directory.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, keyfiles.DIR_MODE)
            os.chmod(directory, keyfiles.DIR_MODE)
    if not directory.exists():
        raise KeyMaterialError(
            f"PII key store: {directory} does not exist; initialise the site's key store first"
        )
    keyfiles.check_path(directory, want_dir=True)
    db = directory / DB_NAME
    if create:
        with contextlib.suppress(FileExistsError):
            # SQLite gives its -wal and -shm files the mode of the database file,
            # so creating this one 0600 first keeps every one of them private.
            keyfiles.create_private_file(db, b"")
    if not db.exists():
        raise KeyMaterialError(f"PII key store: {db} does not exist; initialise the site's key store first")
    keyfiles.check_path(db, want_dir=False)


def _index_keys(directory: Path, create: bool) -> IndexKeys:
    keys = []
    for name in (BLIND_INDEX_KEY_NAME, SUBJECT_KEY_NAME):
        path = directory / name
        if create:
            keyfiles.create_key_file(path)
        try:
            keys.append(keyfiles.read_key_file(path))
        except FileNotFoundError:
            raise KeyMaterialError(
                f"PII key store: {path} is missing; without it no blind index or subject "
                "id can be computed (restore it from the key-store backup)"
            ) from None
    return IndexKeys(blind_index_key=keys[0], subject_key=keys[1])


# --- the store --------------------------------------------------------------------


class KeyStore:
    """One process's connection to the site's PII key store. Not thread-safe."""

    __slots__ = ("_conn", "_dir", "_floor", "_index_keys", "_kek_version", "_keks", "_seen", "_tail")

    def __init__(self, directory: Path, conn: sqlite3.Connection, index_keys: IndexKeys) -> None:
        self._dir = directory
        self._conn = conn
        self._index_keys = index_keys
        self._keks: dict[int, AESGCM] = {}
        self._kek_version = 0
        # The tail: subject -> seq of every row past ``_floor`` (the indexed_through last
        # read) up to ``_seen`` (the last seq read). Only valid inside a transaction
        # after ``_catch_up``; forgotten when a transaction fails.
        self._tail: dict[bytes, int] = {}
        self._floor = 0
        self._seen = 0

    @classmethod
    def open(cls, directory: str | os.PathLike[str], create: bool = False) -> KeyStore:
        """Open the store in ``directory``; with ``create``, make whatever is missing."""
        path = Path(directory)
        _prepare_dir(path, create)
        index_keys = _index_keys(path, create)
        conn = _connect(path / DB_NAME)
        store = cls(path, conn, index_keys)
        try:
            store._init_schema(create)
        except BaseException:
            conn.close()
            raise
        store._destroy_retired_keks()
        return store

    def __repr__(self) -> str:
        return f"KeyStore({str(self._dir)!r}, kek_version={self._kek_version})"

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._keks.clear()
        self._conn.close()

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def kek_version(self) -> int:
        """The KEK version this process last saw as current."""
        return self._kek_version

    @property
    def index_keys(self) -> IndexKeys:
        return self._index_keys

    def subject_id_for(self, kind: str, canonical_value: str) -> bytes:
        """The subject id of the person named by a canonical value (e.g. an email)."""
        return subject_id(self._index_keys, kind, canonical_value)

    # --- data keys ---

    def data_keys(self, subjects: Sequence[bytes]) -> DataKeys:
        """Get or create the DEK of every subject, in one transaction; ``None`` if shredded."""
        unique = list(dict.fromkeys(subjects))
        if len(unique) > SUBJECTS_PER_BATCH_MAX:
            raise PiiError(f"{len(unique)} subjects exceed {SUBJECTS_PER_BATCH_MAX} per batch")
        # Checked in C (map) rather than by a call per subject: a batch has thousands.
        if not all(map(isinstance, unique, itertools.repeat(bytes))) or not set(
                map(len, unique)) <= {SUBJECT_ID_BYTES}:
            raise PiiError(f"a subject id is {SUBJECT_ID_BYTES} bytes")
        return self._get_or_create(unique) if unique else DataKeys()

    def write_locked(self) -> bool:
        """Whether another connection holds the store's write lock right now, so that a
        ``data_keys`` call would wait for it (a hint: it may be taken or released just
        after). Never waits. An ingest worker packs on meanwhile (see the pipeline)."""
        conn = self._conn
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode & _PRIMARY_CODE_MASK != sqlite3.SQLITE_BUSY:  # or BUSY_*
                raise KeyMaterialError(f"PII key store {self._dir}: {e}") from e
            return True
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("ROLLBACK")
        return False

    def data_key(self, subject: bytes) -> bytes | None:
        """The DEK of a known subject, ``None`` if shredded; never creates one."""
        _check_subject(subject)
        with self._tx():
            rows = self._rows_of([subject])
        if subject not in rows:
            raise KeyMaterialError(
                f"no data key for subject {subject.hex()} in {self._dir}: never seen on "
                "this site, or its key store was not replicated here"
            )
        version, wrapped = rows[subject]
        return self._unwrap(subject, version, wrapped)

    def is_shredded(self, subject: bytes) -> bool:
        _check_subject(subject)
        with self._tx():
            row = self._rows_of([subject]).get(subject)
        return row is not None and row[1] is None

    def shred(self, subject: bytes) -> bool:
        """Destroy a subject's DEK for good; ``True`` if a key existed.

        A tombstone is recorded either way (a subject may be shredded before any
        of its data arrives), and no copy of the wrapped key is left in the
        database or its WAL once this returns.
        """
        _check_subject(subject)
        now = int(time.time())
        with self._tx(immediate=True):
            seq = self._locate([subject]).get(subject)
            if seq is None:
                cursor = self._conn.execute(
                    "INSERT INTO subject_key (subject, shredded_at) VALUES (?, ?)", (subject, now)
                )
                self._appended([subject], cursor.lastrowid)
                existed = False
            else:
                cursor = self._conn.execute(
                    "UPDATE subject_key SET kek_version = NULL, wrapped = NULL, "
                    "shredded_at = ? WHERE seq = ? AND wrapped IS NOT NULL",
                    (now, seq),
                )
                existed = cursor.rowcount == 1
        self._purge_wal(required=True, what=f"subject {subject.hex()}")
        return existed

    # --- KEK rotation ---

    def rotate_kek(self) -> int:
        """Make KEK v+1, rewrap every DEK under it, destroy the older KEKs; returns v+1.

        The log is never touched: field ciphertexts stay under the same DEKs. The
        rewrap runs in steps of ROTATE_ROWS_PER_STEP rows, each its own short
        transaction, so ingest processes are not locked out for the whole store;
        they wrap new DEKs under v+1 from the first step on. An interrupted
        rotation is finished by the next one; until then no KEK is destroyed.
        """
        with self._tx(immediate=True):
            new = self._current_kek_version() + 1
            path = self._dir / keyfiles.kek_name(new)
            # A KEK newer than the committed one is left by a rotation that crashed
            # before its commit; nothing was wrapped under it.
            keyfiles.destroy_file(path)
            keyfiles.create_key_file(path)
            self._conn.execute("UPDATE meta SET value = ? WHERE name = 'kek_version'", (new,))
            # Marks "older KEKs still needed" until this rotation's last step; holds
            # its version so an overlapping later rotation keeps the mark alive.
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('rotation_pending', ?)", (new,))
            self._current_kek_version()
        last: int | None = 0
        while last is not None:
            with self._tx(immediate=True):
                last = self._rewrap_step(new, last)
        with self._tx(immediate=True):
            self._conn.execute("DELETE FROM meta WHERE name = 'rotation_pending' AND value = ?", (new,))
        self._purge_wal(required=False, what="rotated keys")
        self._destroy_retired_keks()
        self._keks = {v: k for v, k in self._keks.items() if v >= new}
        return new

    # --- internals ---

    @contextlib.contextmanager
    def _tx(self, immediate: bool = False) -> Iterator[None]:
        try:
            self._conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException:
                # The tail may name rows this transaction appended: read it afresh.
                self._forget_tail()
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise KeyMaterialError(f"PII key store {self._dir}: {e}") from e

    def _init_schema(self, create: bool) -> None:
        with self._tx(immediate=True):
            if not create and not self._has_table("meta"):
                raise KeyMaterialError(f"PII key store {self._dir} is not initialised; create it first")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('indexed_through', 0)")
            (schema,) = self._conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
            if schema == 1:
                self._migrate_from_1()
                schema = SCHEMA_VERSION
            if schema != SCHEMA_VERSION:
                raise KeyMaterialError(
                    f"PII key store {self._dir} has schema {schema}; this build reads {SCHEMA_VERSION}"
                )
            if not self._conn.execute("SELECT 1 FROM meta WHERE name = 'kek_version'").fetchone():
                if not create:
                    raise KeyMaterialError(f"PII key store {self._dir} has no KEK; create it")
                keyfiles.create_key_file(self._dir / keyfiles.kek_name(1))
                self._conn.execute("INSERT INTO meta VALUES ('kek_version', 1)")
            self._current_kek_version()

    def _has_table(self, name: str) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return row is not None

    def _current_kek_version(self) -> int:
        """Read the committed KEK version (inside a transaction) and load that KEK."""
        (version,) = self._conn.execute("SELECT value FROM meta WHERE name = 'kek_version'").fetchone()
        if version != self._kek_version:
            kek = self._load_kek(version)
            # Forget older KEKs: rows still under one (during a rotation) load it
            # again from its file, which exists until no row needs it.
            self._keks = {v: k for v, k in self._keks.items() if v > version}
            self._keks[version] = kek
            self._kek_version = version
        return int(version)

    def _load_kek(self, version: int) -> AESGCM:
        kek = self._keks.get(version)
        if kek is not None:
            return kek
        path = self._dir / keyfiles.kek_name(version)
        try:
            kek = AESGCM(keyfiles.read_key_file(path))
        except FileNotFoundError:
            raise _KekGone(version) from None
        self._keks[version] = kek
        return kek

    def _migrate_from_1(self) -> None:
        """Schema 1 -> 2, inside the opening transaction: the rows move, in their order,
        to a table without the unique index, and every one of them is indexed."""
        conn = self._conn
        conn.execute(_SUBJECT_KEY_TABLE.format(name="subject_key_v2"))
        conn.execute("INSERT INTO subject_key_v2 (seq, subject, kek_version, wrapped, shredded_at) "
                     "SELECT seq, subject, kek_version, wrapped, shredded_at FROM subject_key ORDER BY seq")
        conn.execute("DROP TABLE subject_key")  # secure_delete zeroes the freed pages
        conn.execute("ALTER TABLE subject_key_v2 RENAME TO subject_key")
        conn.execute("INSERT INTO subject_index (subject, seq) "
                     "SELECT subject, seq FROM subject_key ORDER BY subject")
        conn.execute("UPDATE meta SET value = (SELECT coalesce(max(seq), 0) FROM subject_key) "
                     "WHERE name = 'indexed_through'")
        conn.execute("UPDATE meta SET value = ? WHERE name = 'schema'", (SCHEMA_VERSION,))

    # --- finding subjects: the index, then the tail ---

    def _forget_tail(self) -> None:
        self._tail = {}
        self._floor = self._seen = 0

    def _catch_up(self) -> None:
        """Inside a transaction: bring the tail up to the latest row, following a fold
        by another process (its rows are in the index now)."""
        conn = self._conn
        (floor,) = conn.execute("SELECT value FROM meta WHERE name = 'indexed_through'").fetchone()
        if floor != self._floor:
            if floor < self._floor:  # the store was replaced (a restore): start over
                self._forget_tail()
            self._tail = {s: q for s, q in self._tail.items() if q > floor}
            self._floor = floor
            self._seen = max(self._seen, floor)
        rows = conn.execute("SELECT subject, seq FROM subject_key WHERE seq > ? ORDER BY seq",
                            (self._seen,)).fetchall()
        if rows:
            self._tail.update(rows)
            self._seen = rows[-1][1]

    def _appended(self, subjects: Sequence[bytes], last_seq: int | None) -> None:
        """Record rows this transaction just appended (seqs up to ``last_seq``)."""
        first = None if last_seq is None else last_seq - len(subjects) + 1
        if first != self._seen + 1:  # rowids not as expected: read the rows back
            self._catch_up()
            return
        assert last_seq is not None
        self._tail.update(zip(subjects, range(first, last_seq + 1), strict=True))
        self._seen = last_seq

    def _locate(self, subjects: Sequence[bytes], indexed: _Probed | None = None) -> dict[bytes, int]:
        """Inside a transaction: the seq of each of ``subjects`` that has a row.

        ``indexed`` is a probe of the index made in an earlier transaction; it is used if
        no fold happened since (rows are never removed from the index)."""
        self._catch_up()
        tail = self._tail
        if indexed is None or indexed[0] != self._floor:
            indexed = self._probe(subjects)
        found = {s: tail[s] for s in subjects if s in tail}
        found.update(indexed[1])
        return found

    def _probe(self, subjects: Sequence[bytes]) -> _Probed:
        """Inside a transaction: the indexed rows of ``subjects``, with the
        indexed_through they were read under."""
        if not self._floor:
            return (0, {})
        tail = self._tail
        rest = sorted(s for s in subjects if s not in tail)  # sorted: neighbouring pages
        found = self._conn.execute(_PROBE_SQL, {"subjects": b"".join(rest), "count": len(rest)})
        return (self._floor, dict(found))

    def _rows_of(self, subjects: Sequence[bytes],
                 indexed: _Probed | None = None) -> dict[bytes, tuple[int | None, bytes | None]]:
        """Inside a transaction: (KEK version, wrapped DEK) of each subject with a row."""
        seqs = self._locate(subjects, indexed)
        subject_at = {q: s for s, q in seqs.items()}
        ordered = sorted(subject_at)
        rows: dict[bytes, tuple[int | None, bytes | None]] = {}
        for start in range(0, len(ordered), SQL_VARIABLES_PER_QUERY):
            chunk = ordered[start : start + SQL_VARIABLES_PER_QUERY]
            found = self._conn.execute(_select_sql(len(chunk)), chunk)
            rows.update((subject_at[q], (v, w)) for q, v, w in found)
        return rows

    def _fold_if_due(self) -> None:
        """Inside a write transaction: index the tail once it is TAIL_SUBJECTS_MAX rows.
        Inserted in subject order, so each page of the index is written once."""
        if len(self._tail) < TAIL_SUBJECTS_MAX:
            return
        self._conn.execute(
            "INSERT INTO subject_index (subject, seq) SELECT subject, seq FROM subject_key "
            "WHERE seq > ? AND seq <= ? ORDER BY subject", (self._floor, self._seen))
        self._conn.execute("UPDATE meta SET value = ? WHERE name = 'indexed_through'", (self._seen,))
        self._tail = {}
        self._floor = self._seen

    def _unwrap(self, subject: bytes, version: int | None, wrapped: bytes | None) -> bytes | None:
        if version is None or wrapped is None:
            return None
        try:
            kek = self._load_kek(version)
        except _KekGone:
            # A rotation by another process committed after our read and destroyed
            # this KEK; the row now holds a rewrapped key: read it again.
            with self._tx():
                (version, wrapped) = self._rows_of([subject]).get(subject, (None, None))
            if version is None or wrapped is None:
                return None
            kek = self._load_kek(version)
        return unwrap_dek(kek, version, subject, wrapped)

    def _get_or_create(self, subjects: Sequence[bytes]) -> DataKeys:
        """Look the subjects up and append DEKs for the missing ones, atomically.

        The write lock is taken first (BEGIN IMMEDIATE): the rows found are then the
        latest and no other process can append until we commit, so racing processes
        agree on one DEK per subject. Fresh DEKs are drawn and wrapped before the lock is
        taken, under the KEK version last seen (rewrapped inside if a rotation moved it
        meanwhile).
        """
        count = len(subjects)
        deks = split_bytes(os.urandom(KEY_BYTES * count), KEY_BYTES)
        version = self._kek_version
        wrapped = self._wrap_all(version, subjects, deks)
        # The index is probed (and the tail caught up) before the write lock is taken,
        # so that other processes wait less for it; only what changed since is read
        # under the lock.
        with self._tx():
            self._catch_up()
            indexed = self._probe(subjects)
        with self._tx(immediate=True):
            if self._current_kek_version() != version:
                version = self._kek_version
                wrapped = self._wrap_all(version, subjects, deks)
            rows = self._rows_of(subjects, indexed)
            if rows:
                missing = [(s, w) for s, w in zip(subjects, wrapped, strict=True) if s not in rows]
                self._append([s for s, _ in missing], version, [w for _, w in missing])
            else:
                self._append(subjects, version, wrapped)
            self._fold_if_due()
        # Unwrapped after the commit: the lock is held no longer than the I/O needs.
        result = DataKeys(zip(subjects, deks, strict=True))
        for s, (v, w) in rows.items():
            result[s] = self._unwrap(s, v, w)
        return result

    def _wrap_all(self, version: int, subjects: Sequence[bytes], deks: Sequence[bytes]) -> list[bytes]:
        """Each DEK sealed under KEK ``version``, bound to its subject (inlined ``wrap_dek``)."""
        encrypt = self._keks[version].encrypt
        nonces = split_bytes(os.urandom(NONCE_BYTES * len(subjects)), NONCE_BYTES)
        ad_head = dek_ad(b"", version)
        return [_FORMAT + nonce + encrypt(nonce, dek, ad_head + s)
                for nonce, s, dek in zip(nonces, subjects, deks, strict=True)]

    def _append(self, subjects: Sequence[bytes], version: int, wrapped: Sequence[bytes]) -> None:
        """Append the rows in the order given, in one statement (see ``_INSERT_SQL``)."""
        if not subjects:
            return
        if not set(map(len, wrapped)) <= {WRAPPED_DEK_BYTES}:
            raise KeyMaterialError(f"a wrapped data key must be {WRAPPED_DEK_BYTES} bytes")
        packed = b"".join(itertools.chain.from_iterable(zip(subjects, wrapped, strict=True)))
        cursor = self._conn.execute(_INSERT_SQL, {"rows": packed, "count": len(subjects), "version": version})
        self._appended(subjects, cursor.lastrowid)

    def _rewrap_step(self, new: int, after: int) -> int | None:
        """Rewrap up to ROTATE_ROWS_PER_STEP rows past ``after`` under KEK ``new``;
        the last seq seen, or None when no row is left."""
        rows = self._conn.execute(
            "SELECT seq, subject, kek_version, wrapped FROM subject_key "
            "WHERE seq > ? AND wrapped IS NOT NULL ORDER BY seq LIMIT ?",
            (after, ROTATE_ROWS_PER_STEP),
        ).fetchall()
        if not rows:
            return None
        new_kek = self._load_kek(new)
        updates = []
        for seq, subject, version, wrapped in rows:
            if version < new:
                dek = unwrap_dek(self._load_kek(version), version, subject, wrapped)
                updates.append((new, wrap_dek(new_kek, new, subject, dek), seq))
        self._conn.executemany("UPDATE subject_key SET kek_version = ?, wrapped = ? WHERE seq = ?", updates)
        return int(rows[-1][0])

    def _purge_wal(self, required: bool, what: str) -> None:
        """Checkpoint and truncate the WAL so no stale page image stays in it.

        A reader in another process that is inside a transaction holds the WAL;
        each attempt waits for it up to PURGE_BUSY_TIMEOUT_MS.
        """
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {PURGE_BUSY_TIMEOUT_MS}")
            for _ in range(PURGE_ATTEMPTS_MAX):
                (busy, _log, _done) = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if busy == 0:
                    return
                time.sleep(PURGE_RETRY_S)
        except sqlite3.Error as e:
            raise KeyMaterialError(f"PII key store {self._dir}: {e}") from e
        finally:
            self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        if required:
            raise PiiError(
                f"{what} is shredded, but other processes using {self._dir} kept its old "
                "copy in the write-ahead log from being purged; run the shred again when "
                "they are idle (or stopped)"
            )

    def _destroy_retired_keks(self) -> None:
        """Destroy every KEK older than the committed one, once no row needs it.

        Also runs at open, for a rotation that crashed after its last step.
        """
        with self._tx():
            pending = self._conn.execute("SELECT 1 FROM meta WHERE name = 'rotation_pending'").fetchone()
        if pending is not None:
            return
        for version in keyfiles.kek_versions(self._dir):
            if version < self._kek_version:
                keyfiles.destroy_file(self._dir / keyfiles.kek_name(version))


_Probed = tuple[int, dict[bytes, int]]
"""An index probe: (the indexed_through it saw, subject -> seq of the subjects found)."""


class _KekGone(KeyMaterialError):
    """A KEK version's file is gone (destroyed by a rotation)."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"KEK v{version} is missing: destroyed by a rotation, or lost (restore the "
            "key store from its backup)"
        )
        self.version = version


def _check_subject(subject: bytes) -> None:
    if not isinstance(subject, bytes) or len(subject) != SUBJECT_ID_BYTES:
        raise PiiError(f"a subject id is {SUBJECT_ID_BYTES} bytes")


_FORMAT = bytes((FORMAT_V1,))

_PRIMARY_CODE_MASK = 0xFF
"""An extended SQLite result code's low byte is its primary code (SQLITE_BUSY_RECOVERY...)."""

_SELECT_SQL: dict[int, str] = {}



_ROW_BYTES = SUBJECT_ID_BYTES + WRAPPED_DEK_BYTES

# New rows, inserted by one statement from one blob of (subject | wrapped DEK) pairs
# rather than by executemany: binding a row from Python cost as much as inserting it,
# and a single statement runs without the GIL. Rows get consecutive seqs (the write lock
# is held and rows are never deleted), in the order of the blob.
_INSERT_SQL = f"""
INSERT INTO subject_key (subject, kek_version, wrapped)
WITH RECURSIVE row(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM row WHERE n + 1 < :count)
SELECT substr(:rows, n * {_ROW_BYTES} + 1, {SUBJECT_ID_BYTES}), :version,
       substr(:rows, n * {_ROW_BYTES} + {SUBJECT_ID_BYTES + 1}, {WRAPPED_DEK_BYTES})
FROM row
"""  # noqa: S608 - only constants are interpolated; the values are bound by SQLite


# The indexed rows of many subjects, given as one blob of sorted 16-byte ids; CROSS JOIN
# keeps SQLite from scanning the index instead of seeking it once per id.
_PROBE_SQL = f"""
WITH RECURSIVE row(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM row WHERE n + 1 < :count)
SELECT i.subject, i.seq FROM row CROSS JOIN subject_index AS i
WHERE i.subject = substr(:subjects, n * {SUBJECT_ID_BYTES} + 1, {SUBJECT_ID_BYTES})
"""  # noqa: S608 - only constants are interpolated; the values are bound by SQLite


def _select_sql(count: int) -> str:
    sql = _SELECT_SQL.get(count)
    if sql is None:
        # Only placeholders are interpolated; the values are bound by SQLite.
        marks = ",".join("?" * count)
        sql = f"SELECT seq, kek_version, wrapped FROM subject_key WHERE seq IN ({marks})"  # noqa: S608
        _SELECT_SQL[count] = sql
    return sql


def _connect(db: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(db, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as e:
        raise KeyMaterialError(f"PII key store: cannot open {db}: {e}") from e
    try:
        _configure_when_free(conn, db)
    except BaseException:
        conn.close()
        raise
    return conn


CONFIGURE_RETRY_S = 0.01
"""First pause before configuring a connection again after SQLITE_BUSY (doubled each time,
up to 0.5 s, for BUSY_TIMEOUT_S in all)."""


def _configure_when_free(conn: sqlite3.Connection, db: Path) -> None:
    """:func:`_configure`, again while another process holds the store: processes that
    open a store at once (ingest workers, the service) race to switch a new file to WAL,
    and SQLite answers that switch with "database is locked" at once, without waiting
    for its busy timeout (measured: 4 of 30 rounds of six processes opening one new
    store). Every statement of _configure can be run again."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    pause = CONFIGURE_RETRY_S
    while True:
        try:
            _configure(conn, db)
            return
        except sqlite3.Error as e:
            busy = getattr(e, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            if not busy or time.monotonic() + pause > deadline:
                raise KeyMaterialError(f"PII key store: cannot configure {db}: {e}") from e
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def _configure(conn: sqlite3.Connection, db: Path) -> None:
    """Every setting of a key-store connection (each can be run again). SQLite's errors
    are raised as they are: _configure_when_free retries the busy ones and wraps the rest."""
    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    # Freed bytes are overwritten with zeros, so a shredded key is not left
    # in a free block of a page.
    conn.execute("PRAGMA secure_delete = ON")
    (secure,) = conn.execute("PRAGMA secure_delete").fetchone()
    # A DEK must be on disk before any event sealed under it is: a lost DEK
    # would make those fields unreadable (and the subject would get a new key).
    conn.execute("PRAGMA synchronous = FULL")
    # Sorts and temporary tables stay in memory, never in a file outside the store.
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA trusted_schema = OFF")
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    if str(mode).lower() != "wal" or secure != 1:
        raise KeyMaterialError(
            f"PII key store: {db} needs WAL and secure_delete (got journal_mode={mode}, "
            f"secure_delete={secure}); is it on a network file system?"
        )
