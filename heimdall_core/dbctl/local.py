"""A cluster run with pg_ctl from a local PostgreSQL + AGE (host or chroot root).

The data directory is ``<data_dir>/postgres``. For the chroot root it is bind-mounted
at ``<root>/srv/heimdall/<key>`` while the server runs, so the data stays with
Heimdall's data and the root stays disposable.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path

from heimdall_core.dbctl import bootstrap
from heimdall_core.dbctl.files import Layout, State
from heimdall_core.dbctl.model import DbctlError, DbStatus
from heimdall_core.dbctl.osutil import (
    is_live_postgres,
    is_mount_point,
    port_is_free,
    process_cwd,
    read_pid_file,
    run,
    wait_not_live_postgres,
    wait_until_gone,
)
from heimdall_core.dbctl.runtime import ClusterPaths, Runtime, cluster_paths
from heimdall_core.dbctl.scram import scram_sha256_verifier

INITDB_TIMEOUT_S = 120
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 60
TOOL_TIMEOUT_S = 60
MOUNT_TIMEOUT_S = 30
# After a postmaster is killed its children notice within a second or so and exit.
ORPHANS_WAIT_S = 15
LOG_TAIL_CHARS = 3000
SCRAM_SALT_BYTES = 16
SOCKET_DIR_MODE = 0o2775
PGDATA_MODE = 0o700
CONF_MODE = 0o600


class LocalBackend:
    """start / stop / status of one data directory's cluster on one runtime."""

    def __init__(self, rt: Runtime, layout: Layout) -> None:
        self.rt = rt
        self.layout = layout
        self.method = rt.method
        self.paths: ClusterPaths = cluster_paths(rt, layout.pgdata)

    # --- status ---------------------------------------------------------------------

    def running_pid(self) -> int | None:
        """The postmaster's pid when it runs on our data directory, else None.

        The pid file alone is not proof: after a reboot or a SIGKILL its pid may belong
        to an unrelated process. A postmaster works in its data directory.
        """
        pid = read_pid_file(self.paths.host_pgdata / "postmaster.pid")
        if pid is None or not is_live_postgres(pid):
            return None
        return pid if process_cwd(pid) == str(self.paths.seen_cwd) else None

    def status(self, state: State) -> DbStatus:
        pid = self.running_pid()
        pgdata = self.paths.host_pgdata
        if pid is not None:
            return DbStatus(True, pgdata, f"running ({self.rt.describe()})", self.method, state.port, pid)
        stale = (pgdata / "postmaster.pid").exists()
        detail = "stopped (stale pid file, cleaned at next start)" if stale else "stopped"
        return DbStatus(False, pgdata, detail, self.method, state.port)

    def state(self, port: int) -> State:
        root = None if self.rt.root is None else str(self.rt.root)
        return State(method=self.method, port=port, root=root)

    # --- start ----------------------------------------------------------------------

    def start(self, port: int, password: str) -> None:
        if self.rt.needs_root() and os.geteuid() != 0:
            raise DbctlError(f"{self.rt.describe()} runs through chroot: run start-db as root")
        if self.rt.root is not None:
            ensure_root_mounts(self.rt)
        else:
            self._ensure_host_socket_dir()
        self._init_if_needed()
        self._attach()
        try:
            self._clear_stale(port)
            self._write_conf(port)
            self._pg_ctl_start()
            self._bootstrap(port, password)
        except BaseException:
            # Leave no bind mount behind a server that did not come up; a server that
            # did (bootstrap failed) stays for stop-db, which the state file allows.
            if self.paths.mount_point is not None and self.running_pid() is None:
                unmount(self.paths.mount_point)
            raise

    def _init_if_needed(self) -> None:
        pgdata = self.paths.host_pgdata
        version_file = pgdata / "PG_VERSION"
        if version_file.is_file():
            made_by = version_file.read_text().strip()
            if made_by != str(self.rt.major):
                raise DbctlError(
                    f"{pgdata} was made by PostgreSQL {made_by}, but the available server is"
                    f" {self.rt.describe()}; use a matching server or move {pgdata} away"
                )
            return
        if pgdata.exists():
            raise DbctlError(
                f"{pgdata} exists but is not a PostgreSQL data directory; move it away"
            )
        self._initdb()

    def _initdb(self) -> None:
        """initdb into a staging directory, renamed into place only when complete."""
        staging = self.layout.initdb_staging
        staged = cluster_paths(self.rt, staging)
        if staging.exists():
            # Left by an interrupted start; it never held data.
            if staged.mount_point is not None:
                unmount(staged.mount_point)
            shutil.rmtree(staging)
        staging.mkdir(mode=PGDATA_MODE)
        self._give_to_server(staging)
        if staged.mount_point is not None:
            bind_mount(staging, staged.mount_point)
        try:
            self._check_reachable(staging)
            run(
                self.rt.tool_argv(
                    "initdb", "-D", staged.server_pgdata, "-U", self.rt.account,
                    "--auth-local=peer", "--auth-host=scram-sha-256",
                    "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions",
                ),
                what="initdb",
                timeout_s=INITDB_TIMEOUT_S,
                run_as=self.rt.tool_run_as(),
            )
        finally:
            if staged.mount_point is not None:
                unmount(staged.mount_point)
        with (staging / "postgresql.conf").open("a") as conf:
            conf.write(f"\n{bootstrap.INCLUDE_LINE}\n")
        os.replace(staging, self.paths.host_pgdata)

    def _attach(self) -> None:
        """Bind-mounts the data directory into the root (chroot only), idempotently."""
        self._ensure_owner()
        if self.paths.mount_point is not None:
            bind_mount(self.paths.host_pgdata, self.paths.mount_point)

    def _clear_stale(self, port: int) -> None:
        """Removes pid and socket lock files no live server owns (SIGKILL, reboot)."""
        left = wait_until_gone(self.paths.seen_cwd, ORPHANS_WAIT_S)
        if left:
            raise DbctlError(
                f"processes {left} still work in {self.paths.host_pgdata} without a live"
                " postmaster; stop them, then run start-db again"
            )
        pid_file = self.paths.host_pgdata / "postmaster.pid"
        stale = read_pid_file(pid_file)
        pid_file.unlink(missing_ok=True)
        socket_dir = self._host_socket_dir()
        lock = socket_dir / f".s.PGSQL.{port}.lock"
        owner = read_pid_file(lock)
        if owner is not None and owner == stale:
            # Our own killed postmaster, still exiting.
            wait_not_live_postgres(owner, ORPHANS_WAIT_S)
        if owner is not None and is_live_postgres(owner):
            raise DbctlError(f"another PostgreSQL (pid {owner}) already uses port {port}")
        lock.unlink(missing_ok=True)
        (socket_dir / f".s.PGSQL.{port}").unlink(missing_ok=True)
        if not port_is_free(port):
            raise DbctlError(f"port {port} on 127.0.0.1 is in use; choose another with --port")

    def _write_conf(self, port: int) -> None:
        if "'" in self.rt.socket_dir:
            raise DbctlError(f"socket directory {self.rt.socket_dir!r} contains a quote")
        conf = self.paths.host_pgdata / "heimdall.conf"
        conf.unlink(missing_ok=True)
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, CONF_MODE)
        with os.fdopen(fd, "w") as f:
            f.write(bootstrap.heimdall_conf(port, self.rt.socket_dir))
        self._give_to_server(conf)

    def _pg_ctl_start(self) -> None:
        pgdata = self.paths.server_pgdata
        try:
            run(
                self.rt.tool_argv(
                    "pg_ctl", "-D", pgdata, "-l", f"{pgdata}/server.log",
                    "-w", "-t", str(START_TIMEOUT_S), "start",
                ),
                what="pg_ctl start",
                timeout_s=START_TIMEOUT_S + TOOL_TIMEOUT_S,
                run_as=self.rt.tool_run_as(),
            )
        except DbctlError as e:
            raise DbctlError(f"{e}\n--- server log ---\n{self._log_tail()}") from e

    def _bootstrap(self, port: int, password: str) -> None:
        verifier = scram_sha256_verifier(password, os.urandom(SCRAM_SALT_BYTES))
        run(
            self.rt.tool_argv(
                "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.rt.socket_dir,
                "-p", str(port), "-U", self.rt.account, "-d", "postgres",
            ),
            what="creating the heimdall role, database and AGE extension",
            timeout_s=TOOL_TIMEOUT_S,
            stdin_text=bootstrap.cluster_bootstrap_sql(verifier),
            run_as=self.rt.tool_run_as(),
        )

    # --- stop -------------------------------------------------------------------------

    def stop(self) -> None:
        if self.running_pid() is not None:
            run(
                self.rt.tool_argv(
                    "pg_ctl", "-D", self.paths.server_pgdata, "-m", "fast",
                    "-w", "-t", str(STOP_TIMEOUT_S), "stop",
                ),
                what="pg_ctl stop",
                timeout_s=STOP_TIMEOUT_S + TOOL_TIMEOUT_S,
                run_as=self.rt.tool_run_as(),
            )
        left = wait_until_gone(self.paths.seen_cwd, ORPHANS_WAIT_S)
        if left:
            raise DbctlError(f"processes {left} still work in {self.paths.host_pgdata}")
        if self.paths.mount_point is not None:
            unmount(self.paths.mount_point)

    # --- helpers ----------------------------------------------------------------------

    def _host_socket_dir(self) -> Path:
        inside = Path(self.rt.socket_dir)
        return inside if self.rt.root is None else self.rt.root / inside.relative_to("/")

    def _ensure_host_socket_dir(self) -> None:
        sockets = Path(self.rt.socket_dir)
        if os.geteuid() == 0 and not sockets.is_dir():
            sockets.mkdir(parents=True, mode=SOCKET_DIR_MODE)
            os.chown(sockets, self.rt.uid, self.rt.gid)
            sockets.chmod(SOCKET_DIR_MODE)

    def _ensure_owner(self) -> None:
        """PostgreSQL refuses a data directory it does not own.

        After a restore from backup, or a data directory made by another method (the
        container's account differs), the numeric owner is wrong: hand it over.
        """
        pgdata = self.paths.host_pgdata
        if pgdata.stat().st_uid == self.rt.uid:
            return
        if os.geteuid() != 0:
            raise DbctlError(f"{pgdata} is not owned by {self.rt.account}; chown it, or run as root")
        for top, _dirs, files in os.walk(pgdata):  # every directory comes up as a top
            for name in [top, *(os.path.join(top, n) for n in files)]:
                os.chown(name, self.rt.uid, self.rt.gid, follow_symlinks=False)

    def _give_to_server(self, path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, self.rt.uid, self.rt.gid)

    def _check_reachable(self, path: Path) -> None:
        """On the host the server account must be able to walk down to its data directory."""
        if self.rt.root is not None or os.geteuid() == self.rt.uid:
            return
        for parent in path.absolute().parents:
            st = parent.stat()
            if st.st_uid != self.rt.uid and not st.st_mode & stat.S_IXOTH:
                raise DbctlError(
                    f"the {self.rt.account} account cannot enter {parent} (mode"
                    f" {stat.S_IMODE(st.st_mode):o}); allow it (chmod o+x) or choose a data"
                    " directory it can reach"
                )

    def _log_tail(self) -> str:
        pgdata = self.paths.host_pgdata
        logs = sorted((pgdata / "log").glob("*.log"), key=lambda p: p.stat().st_mtime)
        texts = []
        for path in [pgdata / "server.log", *logs[-1:]]:
            try:
                texts.append(path.read_text(errors="replace")[-LOG_TAIL_CHARS:])
            except OSError:
                continue
        return "\n".join(texts) or "(no server log)"


# --- mounts of the chroot root ------------------------------------------------------------


def ensure_root_mounts(rt: Runtime) -> None:
    """proc and a tmpfs on /dev/shm (PostgreSQL's dynamic shared memory), idempotently.

    They are shared by every cluster run from the root, so stop-db leaves them.
    """
    assert rt.root is not None
    proc, shm = rt.root / "proc", rt.root / "dev" / "shm"
    if not is_mount_point(proc):
        _mount(["-t", "proc", "-o", "nosuid,nodev,noexec", "proc", str(proc)])
    if not is_mount_point(shm):
        shm.mkdir(parents=True, exist_ok=True)
        _mount(["-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "shm", str(shm)])
    sockets = rt.root / rt.socket_dir.lstrip("/")
    sockets.mkdir(parents=True, exist_ok=True)
    os.chown(sockets, rt.uid, rt.gid)
    sockets.chmod(SOCKET_DIR_MODE)


def bind_mount(source: Path, mount_point: Path) -> None:
    """Mounts ``source`` at ``mount_point`` unless it already is; replaces a stale mount."""
    if is_mount_point(mount_point):
        if _same_inode(source, mount_point):
            return
        unmount(mount_point)
    mount_point.mkdir(parents=True, exist_ok=True)
    _mount(["--bind", str(source), str(mount_point)])


def unmount(mount_point: Path) -> None:
    if is_mount_point(mount_point):
        run(["umount", str(mount_point)], what=f"unmounting {mount_point}", timeout_s=MOUNT_TIMEOUT_S)
    # Not empty or already gone: an empty mount point left behind is harmless.
    with contextlib.suppress(OSError):
        mount_point.rmdir()


def _same_inode(a: Path, b: Path) -> bool:
    sa, sb = a.stat(), b.stat()
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _mount(args: list[str]) -> None:
    run(["mount", *args], what=f"mount {' '.join(args)}", timeout_s=MOUNT_TIMEOUT_S)
