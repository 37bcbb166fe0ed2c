"""The site's PII key store: KEKs, index keys and wrapped per-subject data keys (I/O).

Layout of the directory (0700, every file 0600, created so from the start)::

    keys.db             SQLite (WAL): wrapped DEKs and shredded-subject tombstones
    kek-NNNNNNNN.key    the current key-encryption key (older versions are destroyed)
    blind-index.key     32 random bytes, created once
    subject.key         32 random bytes, created once

Several ingest processes may open the same store at once: a batch's rows are read
and the missing DEKs inserted (``INSERT OR IGNORE``) inside one write transaction,
so racing processes agree on one key per subject. A shredded subject keeps a tombstone row,
so it is never silently given a new key. See docs/pii.md.
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
    unwrap_dek,
    wrap_dek,
)

DB_NAME = "keys.db"
BLIND_INDEX_KEY_NAME = "blind-index.key"
SUBJECT_KEY_NAME = "subject.key"

SCHEMA_VERSION = 1

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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS subject_key (
    seq         INTEGER PRIMARY KEY,
    subject     BLOB NOT NULL UNIQUE CHECK (length(subject) = 16),
    kek_version INTEGER,
    wrapped     BLOB,
    shredded_at INTEGER,
    CHECK ((wrapped IS NULL) = (shredded_at IS NOT NULL)),
    CHECK ((wrapped IS NULL) = (kek_version IS NULL))
);
"""
# Rows are appended in creation order (rowid table) and found through the UNIQUE
# index on the subject: subject ids are random, so a table keyed by them would
# dirty about one whole page per new subject, while index entries are small.


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

    __slots__ = ("_conn", "_dir", "_index_keys", "_kek_version", "_keks", "_mostly_new")

    def __init__(self, directory: Path, conn: sqlite3.Connection, index_keys: IndexKeys) -> None:
        self._dir = directory
        self._conn = conn
        self._index_keys = index_keys
        self._keks: dict[int, AESGCM] = {}
        self._kek_version = 0
        self._mostly_new = True  # whether the last batch's subjects were mostly new

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

    def data_key(self, subject: bytes) -> bytes | None:
        """The DEK of a known subject, ``None`` if shredded; never creates one."""
        _check_subject(subject)
        rows = self._read_rows([subject])
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
            row = self._conn.execute(
                "SELECT shredded_at FROM subject_key WHERE subject = ?", (subject,)
            ).fetchone()
        return row is not None and row[0] is not None

    def shred(self, subject: bytes) -> bool:
        """Destroy a subject's DEK for good; ``True`` if a key existed.

        A tombstone is recorded either way (a subject may be shredded before any
        of its data arrives), and no copy of the wrapped key is left in the
        database or its WAL once this returns.
        """
        _check_subject(subject)
        now = int(time.time())
        with self._tx(immediate=True):
            row = self._conn.execute(
                "SELECT shredded_at FROM subject_key WHERE subject = ?", (subject,)
            ).fetchone()
            if row is None:
                self._conn.execute(
                    "INSERT INTO subject_key (subject, shredded_at) VALUES (?, ?)", (subject, now)
                )
            elif row[0] is None:
                self._conn.execute(
                    "UPDATE subject_key SET kek_version = NULL, wrapped = NULL, "
                    "shredded_at = ? WHERE subject = ?",
                    (now, subject),
                )
        self._purge_wal(required=True, what=f"subject {subject.hex()}")
        return row is not None and row[0] is None

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
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
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
            (schema,) = self._conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
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

    def _read_rows(self, subjects: Sequence[bytes]) -> dict[bytes, tuple[int | None, bytes | None]]:
        with self._tx():
            return self._read_rows_in_tx(subjects)

    def _unwrap(self, subject: bytes, version: int | None, wrapped: bytes | None) -> bytes | None:
        if version is None or wrapped is None:
            return None
        try:
            kek = self._load_kek(version)
        except _KekGone:
            # A rotation by another process committed after our read and destroyed
            # this KEK; the row now holds a rewrapped key: read it again.
            (version, wrapped) = self._read_rows([subject]).get(subject, (None, None))
            if version is None or wrapped is None:
                return None
            kek = self._load_kek(version)
        return unwrap_dek(kek, version, subject, wrapped)

    def _get_or_create(self, subjects: Sequence[bytes]) -> DataKeys:
        """Read the subjects' rows and insert DEKs for the missing ones, atomically.

        The write lock is taken first (BEGIN IMMEDIATE): the rows read are then the
        latest and no other process can insert until we commit, so racing processes
        agree on one DEK per subject. A read-only batch commits without any I/O.

        Fresh DEKs are drawn and wrapped before the lock is taken, under the KEK
        version last seen (rewrapped inside if a rotation moved it meanwhile). When the
        previous batch's subjects were mostly new, the rows are inserted first (``OR
        IGNORE``) and read back only if some already existed: a breach dump names each
        person about once, and the read of absent rows would cost as much as the insert.
        """
        count = len(subjects)
        deks = _split(os.urandom(KEY_BYTES * count), KEY_BYTES)
        version = self._kek_version
        wrapped = self._wrap_all(version, subjects, deks)
        insert_first = self._mostly_new
        with self._tx(immediate=True):
            if self._current_kek_version() != version:
                version = self._kek_version
                wrapped = self._wrap_all(version, subjects, deks)
            if insert_first:
                rows = self._insert_then_read(subjects, version, wrapped)
            else:
                rows = self._read_rows_in_tx(subjects)
                missing = [(s, w) for s, w in zip(subjects, wrapped, strict=True) if s not in rows]
                self._insert([s for s, _ in missing], version, [w for _, w in missing])
        self._mostly_new = len(rows) * 2 < count
        # Unwrapped after the commit: the lock is held no longer than the I/O needs.
        result = DataKeys(zip(subjects, deks, strict=True))
        for s, (v, w) in rows.items():
            result[s] = self._unwrap(s, v, w)
        return result

    def _wrap_all(self, version: int, subjects: Sequence[bytes], deks: Sequence[bytes]) -> list[bytes]:
        """Each DEK sealed under KEK ``version``, bound to its subject (inlined ``wrap_dek``)."""
        encrypt = self._keks[version].encrypt
        nonces = _split(os.urandom(NONCE_BYTES * len(subjects)), NONCE_BYTES)
        ad_head = dek_ad(b"", version)
        return [_FORMAT + nonce + encrypt(nonce, dek, ad_head + s)
                for nonce, s, dek in zip(nonces, subjects, deks, strict=True)]

    def _insert(self, subjects: Sequence[bytes], version: int, wrapped: Sequence[bytes]) -> None:
        """Insert the rows in the order given, in one statement (see ``_INSERT_SQL``)."""
        if not subjects:
            return
        if not set(map(len, wrapped)) <= {WRAPPED_DEK_BYTES}:
            raise KeyMaterialError(f"a wrapped data key must be {WRAPPED_DEK_BYTES} bytes")
        packed = b"".join(itertools.chain.from_iterable(zip(subjects, wrapped, strict=True)))
        self._conn.execute(_INSERT_SQL, {"rows": packed, "count": len(subjects), "version": version})

    def _insert_then_read(
        self, subjects: Sequence[bytes], version: int, wrapped: Sequence[bytes]
    ) -> dict[bytes, tuple[int | None, bytes | None]]:
        """Insert every subject's fresh DEK; the rows that existed before (not ours)."""
        before = self._conn.total_changes
        self._insert(subjects, version, wrapped)
        if self._conn.total_changes - before == len(subjects):
            return {}
        ours = dict(zip(subjects, wrapped, strict=True))
        # A wrapped key carries a random nonce: a stored one equal to ours is ours.
        return {s: row for s, row in self._read_rows_in_tx(subjects).items() if row[1] != ours[s]}

    def _read_rows_in_tx(self, subjects: Sequence[bytes]) -> dict[bytes, tuple[int | None, bytes | None]]:
        rows: dict[bytes, tuple[int | None, bytes | None]] = {}
        for start in range(0, len(subjects), SQL_VARIABLES_PER_QUERY):
            chunk = subjects[start : start + SQL_VARIABLES_PER_QUERY]
            rows.update((s, (v, w)) for s, v, w in self._conn.execute(_select_sql(len(chunk)), chunk))
        return rows

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

_SELECT_SQL: dict[int, str] = {}


def _split(blob: bytes, size: int) -> list[bytes]:
    """``blob`` cut into pieces of ``size`` bytes, sliced in C (thousands per batch)."""
    starts = range(0, len(blob), size)
    return list(map(blob.__getitem__, map(slice, starts, range(size, len(blob) + size, size))))

_ROW_BYTES = SUBJECT_ID_BYTES + WRAPPED_DEK_BYTES

# New rows, inserted by one statement from one blob of (subject | wrapped DEK) pairs
# rather than by executemany: binding a row from Python cost as much as inserting it,
# and a single statement runs without the GIL. OR IGNORE: under the write lock nothing
# can conflict, but a duplicate must never replace a key that fields may be sealed under.
_INSERT_SQL = f"""
INSERT OR IGNORE INTO subject_key (subject, kek_version, wrapped)
WITH RECURSIVE row(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM row WHERE n + 1 < :count)
SELECT substr(:rows, n * {_ROW_BYTES} + 1, {SUBJECT_ID_BYTES}), :version,
       substr(:rows, n * {_ROW_BYTES} + {SUBJECT_ID_BYTES + 1}, {WRAPPED_DEK_BYTES})
FROM row
"""  # noqa: S608 - only constants are interpolated; the values are bound by SQLite


def _select_sql(count: int) -> str:
    sql = _SELECT_SQL.get(count)
    if sql is None:
        # Only placeholders are interpolated; the values are bound by SQLite.
        marks = ",".join("?" * count)
        sql = f"SELECT subject, kek_version, wrapped FROM subject_key WHERE subject IN ({marks})"  # noqa: S608
        _SELECT_SQL[count] = sql
    return sql


def _connect(db: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(db, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as e:
        raise KeyMaterialError(f"PII key store: cannot open {db}: {e}") from e
    try:
        _configure(conn, db)
    except BaseException:
        conn.close()
        raise
    return conn


def _configure(conn: sqlite3.Connection, db: Path) -> None:
    try:
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
    except sqlite3.Error as e:
        raise KeyMaterialError(f"PII key store: cannot configure {db}: {e}") from e
    if str(mode).lower() != "wal" or secure != 1:
        raise KeyMaterialError(
            f"PII key store: {db} needs WAL and secure_delete (got journal_mode={mode}, "
            f"secure_delete={secure}); is it on a network file system?"
        )
