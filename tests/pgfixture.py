"""A real PostgreSQL + Apache AGE for the test session, and AGE-ready connections.

``ensure_postgres_age()`` returns the DSN of a cluster that runs for the rest of the
test session. On first call it runs ``start_db`` on a fresh temporary data directory;
if there is nothing to run PostgreSQL + AGE with yet (no Docker engine, no AGE), it
runs ``scripts/install-postgres-age`` first (as root; about a minute on a bookworm
machine, once) and starts again. ``stop_postgres_age`` is registered to run at
interpreter exit. Later calls return the same DSN.
Set ``HMD_TEST_PG_DSN`` to use a server you run yourself instead (it must have AGE
and allow ``CREATE EXTENSION age`` or have it already).

Wire it into ``tests/conftest.py`` as a session fixture::

    from collections.abc import Iterator

    import pytest

    from pgfixture import ensure_postgres_age, stop_postgres_age


    @pytest.fixture(scope="session")
    def pg_dsn() -> Iterator[str]:
        dsn = ensure_postgres_age()
        yield dsn
        stop_postgres_age()

Then in a test::

    from pgfixture import connect_age

    async def test_something(pg_dsn: str) -> None:
        conn = await connect_age(pg_dsn)
        try:
            await conn.execute("SELECT create_graph('t_something')")
            ...
        finally:
            await conn.close()

Every test shares the one cluster and the one ``heimdall`` database, so give each
test its own graph name (3+ characters) and drop it, or use a unique prefix.
The DSN holds a password: do not print it (``heimdall_core.dbctl.redact_dsn``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import asyncpg

from heimdall_core.dbctl import DbInfo, NoPostgresAvailable, start_db, stop_db

REPO_ROOT = Path(__file__).resolve().parent.parent
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-postgres-age"
INSTALL_TIMEOUT_S = 900
DSN_ENV = "HMD_TEST_PG_DSN"
# The temporary data directory must be enterable by the server's account when it
# runs from the host (not root: PostgreSQL refuses to run as root).
DATA_DIR_MODE = 0o711

_lock = threading.Lock()
_session: dict[str, object] = {}


def ensure_postgres_age() -> str:
    """The DSN of this test session's PostgreSQL + AGE, starting it on first call."""
    external = os.environ.get(DSN_ENV)
    if external:
        return external
    with _lock:
        info = _session.get("info")
        if isinstance(info, DbInfo):
            return info.dsn
        data_dir = Path(tempfile.mkdtemp(prefix="heimdall-test-pg-"))
        data_dir.chmod(DATA_DIR_MODE)
        _session["data_dir"] = data_dir
        atexit.register(stop_postgres_age)
        try:
            info = start_db(data_dir)
        except NoPostgresAvailable:
            # Nothing to run it with yet (no Docker engine, no AGE): install, once.
            _install()
            info = start_db(data_dir)
        _session["info"] = info
        return info.dsn


def stop_postgres_age() -> None:
    """Stops the session's cluster and removes its data; safe to call more than once."""
    with _lock:
        data_dir = _session.pop("data_dir", None)
        _session.pop("info", None)
        if isinstance(data_dir, Path):
            try:
                stop_db(data_dir)
            finally:
                shutil.rmtree(data_dir, ignore_errors=True)


def _install() -> None:
    done = subprocess.run(
        [str(INSTALL_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{INSTALL_SCRIPT} failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
        )


async def connect_age(dsn: str) -> asyncpg.Connection:
    """A connection ready for ``cypher()``: AGE created and loaded, search_path, codec.

    ``agtype`` values come back as their text form (e.g. ``'{"id": 1, ...}::vertex'``);
    asyncpg has no binary codec for it, so it is declared as text both ways.
    """
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS age")
        await _load_age(conn)
        await conn.execute('SET search_path = ag_catalog, "$user", public')
        await conn.set_type_codec(
            "agtype", schema="ag_catalog", encoder=str, decoder=str, format="text"
        )
    except BaseException:
        await conn.close()
        raise
    return conn


async def _load_age(conn: asyncpg.Connection) -> None:
    # A role that is not superuser may LOAD only from $libdir/plugins, where the
    # install script links age.so; a superuser (the docker image's role) may load
    # it by name. With shared_preload_libraries=age both are no-ops, but a server
    # started without it still works.
    try:
        await conn.execute("LOAD '$libdir/plugins/age'")
    except asyncpg.PostgresError:
        await conn.execute("LOAD 'age'")
