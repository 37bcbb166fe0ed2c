"""start-db / stop-db / db status against a real PostgreSQL + AGE, and their edges.

The real cluster runs from whatever this machine has (here: the chroot root built by
scripts/install-postgres-age, installed on first use through tests/pgfixture.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from pgfixture import INSTALL_SCRIPT, connect_age, ensure_postgres_age

from heimdall_core.dbctl import (
    DbctlError,
    DbInfo,
    NoPostgresAvailable,
    bootstrap,
    db_status,
    redact_dsn,
    runtime,
    start_db,
    stop_db,
)
from heimdall_core.dbctl.files import Layout, read_or_create_secret, read_state
from heimdall_core.dbctl.model import DB_NAME, DB_ROLE, make_dsn
from heimdall_core.dbctl.osutil import mount_points, parse_mount_points
from heimdall_core.dbctl.scram import scram_sha256_verifier
from heimdall_core.errors import HeimdallError, KeyMaterialError

START_S_MAX = 30.0  # generous: a fresh initdb + start is ~1 s here
FOREIGN_UID = 54321  # an account that exists nowhere


@pytest.fixture(scope="module")
def _postgres_available() -> None:
    # Installs PostgreSQL + AGE if this machine has nothing to run it with yet.
    ensure_postgres_age()


@pytest.fixture
def data_dir(tmp_path: Path, _postgres_available: None) -> Iterator[Path]:
    path = tmp_path / "heimdall-data"
    yield path
    stop_db(path)


def _same(a: DbInfo, b: DbInfo) -> bool:
    # Never let an assertion diff print a DSN: it holds the password.
    return a.dsn == b.dsn and (a.port, a.method, a.pgdata) == (b.port, b.method, b.pgdata)


def _password(data_dir: Path) -> str:
    return (data_dir / "postgres.secret").read_text().strip()


def _mount_point_of(data_dir: Path) -> Path | None:
    state = read_state(Layout(data_dir))
    if state is None or state.method != "chroot" or state.root is None:
        return None
    rt = runtime.find_chroot_runtime(Path(state.root))
    assert rt is not None
    return runtime.cluster_paths(rt, data_dir / "postgres").mount_point


async def _vertex_values(dsn: str, graph: str) -> list[str]:
    conn = await connect_age(dsn)
    try:
        rows = await conn.fetch(
            f"SELECT * FROM cypher('{graph}', $$ MATCH (n:Indicator) RETURN n.value $$)"
            " AS (v agtype)"
        )
    finally:
        await conn.close()
    return sorted(json.loads(r["v"]) for r in rows)


async def test_start_query_stop_restart_keeps_data(data_dir: Path) -> None:
    t0 = time.monotonic()
    info = start_db(data_dir)
    assert time.monotonic() - t0 < START_S_MAX
    password = _password(data_dir)
    assert info.pgdata == data_dir / "postgres"
    assert info.dsn == make_dsn(info.port, password), "DSN does not carry the secret"
    assert password not in repr(info) and password not in info.dsn_redacted
    assert info.dsn_redacted == f"postgresql://{DB_ROLE}:***@127.0.0.1:{info.port}/{DB_NAME}"
    assert stat.S_IMODE((data_dir / "postgres.secret").stat().st_mode) == 0o600

    status = db_status(data_dir)
    assert status.running and status.port == info.port and status.pid is not None
    assert status.method == info.method

    conn = await connect_age(info.dsn)
    try:
        # Least privilege: the application's role is not a superuser (docker aside).
        if info.method != "docker":
            rolsuper = await conn.fetchval(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            )
            assert rolsuper is False
        assert await conn.fetchval("SHOW listen_addresses") in ("127.0.0.1", "*")
        await conn.execute("SELECT create_graph('dbctl_t')")
        created = await conn.fetchval(
            "SELECT * FROM cypher('dbctl_t', $$ CREATE (n:Indicator {kind: $kind, value: $value})"
            " RETURN n $$, $1) AS (n agtype)",
            json.dumps({"kind": "ipv4", "value": "192.0.2.1"}),
        )
        assert created.endswith("::vertex") and '"value": "192.0.2.1"' in created
    finally:
        await conn.close()
    assert await _vertex_values(info.dsn, "dbctl_t") == ["192.0.2.1"]

    # Starting a running database returns it as it is.
    assert _same(start_db(data_dir), info)
    with pytest.raises(DbctlError, match="already runs on port"):
        start_db(data_dir, port=info.port + 1 if info.port < 65535 else info.port - 1)

    mount_point = _mount_point_of(data_dir)
    stop_db(data_dir)
    status = db_status(data_dir)
    assert not status.running and status.pid is None
    if mount_point is not None:
        assert str(mount_point) not in mount_points()
    stop_db(data_dir)  # stopping a stopped database is fine
    with pytest.raises((OSError, asyncpg.PostgresError)):
        await asyncpg.connect(info.dsn, timeout=2)

    again = start_db(data_dir)
    assert _same(again, info)  # same port (recorded), same password, same method
    assert db_status(data_dir).running
    assert await _vertex_values(again.dsn, "dbctl_t") == ["192.0.2.1"]


async def test_stale_pid_file_after_sigkill_and_reboot(data_dir: Path) -> None:
    info = start_db(data_dir)
    if info.method == "docker":
        pytest.fail("this test drives a local postmaster; it ran through docker")
    pid = db_status(data_dir).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while db_status(data_dir).running and time.monotonic() < deadline:
        time.sleep(0.05)
    status = db_status(data_dir)
    assert not status.running
    assert (data_dir / "postgres" / "postmaster.pid").exists()
    assert "stale" in status.detail

    again = start_db(data_dir)  # waits for the orphans, clears the pid file
    assert again.port == info.port
    assert db_status(data_dir).running

    # After a reboot the pid in postmaster.pid may belong to an unrelated live process.
    stop_db(data_dir)
    (data_dir / "postgres" / "postmaster.pid").write_text(f"{os.getpid()}\n/elsewhere\n")
    assert not db_status(data_dir).running
    start_db(data_dir)
    assert db_status(data_dir).running

    # A restore from backup may hand the files to another uid: start-db takes them back.
    stop_db(data_dir)
    for top, _dirs, files in os.walk(data_dir / "postgres"):
        for name in [top, *(os.path.join(top, f) for f in files)]:
            os.chown(name, FOREIGN_UID, FOREIGN_UID)
    start_db(data_dir)
    assert db_status(data_dir).running
    conn = await connect_age(again.dsn)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


def test_port_in_use_is_a_clear_error_and_leaves_nothing_mounted(data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(DbctlError, match=f"port {port}"):
            start_db(data_dir, port=port)
        mount_point = _mount_point_of(data_dir)
        if mount_point is not None:
            assert str(mount_point) not in mount_points()
        assert not db_status(data_dir).running
        stop_db(data_dir)
        # Without --port, a recorded port that is taken gives way to a free one.
        info = start_db(data_dir)
        assert info.port != port and db_status(data_dir).running


def _fake_docker(bin_dir: Path, log: Path, engine_up: bool) -> None:
    """A docker client that records calls; the engine 'runs' one container."""
    state = log.with_suffix(".running")
    script = f"""#!/bin/bash
log={log}; state={state}
printf 'ARGV %s\\n' "$*" >> "$log"
case "$1" in
  info) exit {0 if engine_up else 1} ;;
  run) printf 'PASSWORD_ENV %s\\n' "${{POSTGRES_PASSWORD:+set}}" >> "$log"; touch "$state";
       echo 0123456789ab ;;
  inspect) [ -e "$state" ] || exit 1; echo "true 4242" ;;
  exec) if [ "$2" = "-i" ]; then cat >> "$log"; fi ;;
  stop|rm) rm -f "$state" ;;
esac
exit 0
"""
    path = bin_dir / "docker"
    path.write_text(script)
    path.chmod(0o755)


def test_docker_engine_is_preferred_and_never_sees_the_password_in_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.log"
    _fake_docker(bin_dir, log, engine_up=True)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    data_dir = tmp_path / "data"

    info = start_db(data_dir)
    assert info.method == "docker"
    password = _password(data_dir)
    calls = log.read_text()
    assert password not in calls  # neither in argv nor in the SQL sent to psql
    assert f"--publish 127.0.0.1:{info.port}:5432" in calls
    assert "--env POSTGRES_PASSWORD " in calls and "PASSWORD_ENV set" in calls
    assert "shared_preload_libraries=age" in calls
    assert "PASSWORD 'SCRAM-SHA-256$4096:" in calls
    assert "CREATE EXTENSION IF NOT EXISTS age" in calls
    assert db_status(data_dir).running and db_status(data_dir).pid == 4242

    runs = calls.count("ARGV run ")
    assert _same(start_db(data_dir), info)
    assert log.read_text().count("ARGV run ") == runs  # already running: no new container

    stop_db(data_dir)
    assert not db_status(data_dir).running
    assert "ARGV stop " in log.read_text()


def test_neither_docker_nor_age_says_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A docker client whose engine does not answer, an empty root, no host AGE. The
    # real install is untouched: only this process's view of it changes.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_docker(bin_dir, tmp_path / "docker.log", engine_up=False)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    empty_root = tmp_path / "empty-root"
    empty_root.mkdir()
    monkeypatch.setenv(runtime.ROOT_ENV, str(empty_root))
    monkeypatch.setattr(runtime, "HOST_AGE_GLOBS", ())
    data_dir = tmp_path / "data"

    with pytest.raises(NoPostgresAvailable) as caught:
        start_db(data_dir)
    message = str(caught.value)
    assert isinstance(caught.value, HeimdallError)
    assert "scripts/install-postgres-age" in message and "Docker" in message
    assert str(empty_root) in message
    assert not (data_dir / "postgres.secret").exists()
    assert not db_status(data_dir).running
    stop_db(data_dir)  # nothing to stop


# --- pure parts and files ----------------------------------------------------------------


def test_scram_verifier_shape_and_determinism() -> None:
    salt = bytes(range(16))
    v = scram_sha256_verifier("pencil", salt)
    assert v == scram_sha256_verifier("pencil", salt)
    assert v != scram_sha256_verifier("pencil", bytes(16))
    head, keys = v.rsplit("$", 1)
    assert head == "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw=="
    assert len(keys.split(":")) == 2
    with pytest.raises(ValueError):
        scram_sha256_verifier("pässword", salt)
    with pytest.raises(ValueError):
        scram_sha256_verifier("pencil", b"short")


def test_bootstrap_sql_refuses_anything_but_a_verifier() -> None:
    with pytest.raises(ValueError):
        bootstrap.role_password_sql("SCRAM-SHA-256$1:a$b:c'; DROP ROLE postgres; --")
    with pytest.raises(ValueError):
        bootstrap.role_password_sql("plaintext")
    sql = bootstrap.cluster_bootstrap_sql(scram_sha256_verifier("x", bytes(16)))
    # The SQL spells the names out; they must be the ones the DSN uses.
    assert f"CREATE ROLE {DB_ROLE}'" in sql and f"CREATE DATABASE {DB_NAME} OWNER {DB_ROLE}" in sql
    assert f"\\connect {DB_NAME}\n" in sql


def test_dsn_redaction() -> None:
    assert make_dsn(5432, "a/b@c") == "postgresql://heimdall:a%2Fb%40c@127.0.0.1:5432/heimdall"
    assert redact_dsn(5432) == "postgresql://heimdall:***@127.0.0.1:5432/heimdall"
    with pytest.raises(DbctlError):
        make_dsn(0, "x")


def test_secret_is_created_once_and_must_stay_private(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    first = read_or_create_secret(layout)
    assert read_or_create_secret(layout) == first and len(first) >= 40
    assert stat.S_IMODE(layout.secret.stat().st_mode) == 0o600
    layout.secret.chmod(0o644)
    with pytest.raises(KeyMaterialError, match="chmod 600"):
        read_or_create_secret(layout)


def test_state_file_garbage_is_a_clear_error(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    assert read_state(layout) is None
    layout.state.write_text('{"method": "telnet", "port": 1}')
    with pytest.raises(DbctlError, match="not a valid state file"):
        read_state(layout)


def test_mountinfo_escapes_are_decoded() -> None:
    line = "36 25 0:32 / /srv/with\\040space rw,relatime shared:1 - tmpfs tmpfs rw"
    assert parse_mount_points(line) == {"/srv/with space"}


# --- the install script ------------------------------------------------------------------


def test_install_script_is_quick_when_installed() -> None:
    # The first run installs if needed (minutes, once per machine); the second must
    # find everything in place.
    first = subprocess.run([str(INSTALL_SCRIPT)], capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    t0 = time.monotonic()
    done = subprocess.run([str(INSTALL_SCRIPT)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "already installed" in done.stdout
    assert time.monotonic() - t0 < 2.0


def test_install_script_needs_root_to_install(tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "util-linux setpriv is needed to run as another user"
    tmp_path.chmod(0o755)
    env = {"PATH": os.environ["PATH"], runtime.ROOT_ENV: str(tmp_path / "root")}
    done = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", str(INSTALL_SCRIPT)],
        capture_output=True, text=True, env=env, check=False,
    )
    assert done.returncode != 0
    assert "must run as root" in done.stderr


def test_install_script_reads_the_debian_mirror_from_apt_sources(tmp_path: Path) -> None:
    codename = _host_codename()
    apt, lists = tmp_path / "apt", tmp_path / "lists"
    (apt / "sources.list.d").mkdir(parents=True)
    lists.mkdir()
    # A third-party repository that reuses the release name comes first, one-line format.
    (apt / "sources.list").write_text(
        "# comment\n"
        f"deb [arch=amd64 signed-by=/x.gpg] https://vendor.invalid/apt {codename} main\n"
        f"deb-src http://src.invalid/debian {codename} main\n"
    )
    (apt / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# http://snapshot.invalid/archive/debian/20250520T000000Z\n"
        f"URIs: http://mirror.invalid/debian\nSuites: {codename} {codename}-updates\n"
        "Components: main\n\n"
        f"Types: deb\nURIs: http://mirror.invalid/debian-security\n"
        f"Suites: {codename}-security\nComponents: main\n"
    )
    (apt / "sources.list.d" / "old.list.disabled").write_text(
        f"deb http://disabled.invalid/debian {codename} main\n"
    )
    (lists / f"mirror.invalid_debian_dists_{codename}_InRelease").write_text(
        "Origin: Debian\nLabel: Debian\n"
    )
    env = {**os.environ, "HMD_APT_DIR": str(apt), "HMD_APT_LISTS": str(lists)}
    done = subprocess.run(
        [str(INSTALL_SCRIPT), "--print-mirror"], capture_output=True, text=True, env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "http://mirror.invalid/debian"

    # Without apt's lists to tell which is Debian, the first archive of the release wins.
    (lists / f"mirror.invalid_debian_dists_{codename}_InRelease").unlink()
    (apt / "sources.list").unlink()
    done = subprocess.run(
        [str(INSTALL_SCRIPT), "--print-mirror"], capture_output=True, text=True, env=env,
        check=False,
    )
    assert done.stdout.strip() == "http://mirror.invalid/debian"


def _host_codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME":
            return value.strip('"')
    raise AssertionError("no VERSION_CODENAME in /etc/os-release")
