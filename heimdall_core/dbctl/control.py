"""start-db / stop-db / db status: choose where PostgreSQL + AGE runs, and run it.

Order of preference for a new cluster: a Docker engine (the official ``apache/age``
image), a host PostgreSQL that has AGE, the chroot root built by
``scripts/install-postgres-age``. Once a data directory has a cluster, the method
that made it is kept while it stays available, so a cluster does not silently move.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from heimdall_core.dbctl.docker import IMAGE_DEFAULT, DockerBackend, docker_available
from heimdall_core.dbctl.files import (
    Layout,
    State,
    locked,
    read_or_create_secret,
    read_state,
    write_state,
)
from heimdall_core.dbctl.local import LocalBackend
from heimdall_core.dbctl.model import (
    DbctlError,
    DbInfo,
    DbStatus,
    Method,
    NoPostgresAvailable,
    make_dsn,
)
from heimdall_core.dbctl.osutil import free_port, port_is_free
from heimdall_core.dbctl.runtime import (
    HOST_AGE_GLOBS,
    ROOT_ENV,
    find_chroot_runtime,
    find_host_runtime,
    root_dir,
)


class Backend(Protocol):
    @property
    def method(self) -> Method: ...

    def running_pid(self) -> int | None: ...

    def status(self, state: State) -> DbStatus: ...

    def state(self, port: int) -> State: ...

    def start(self, port: int, password: str) -> None: ...

    def stop(self) -> None: ...


def start_db(data_dir: Path, port: int | None = None) -> DbInfo:
    """Starts (creating on first use) the graph database of ``data_dir``; idempotent.

    Returns the running database, with a DSN for programs (it holds the password:
    show people ``dsn_redacted``). Raises NoPostgresAvailable when there is nowhere
    to run it, DbctlError when running it fails.
    """
    layout = Layout(data_dir.absolute())
    with locked(layout):
        state = read_state(layout)
        current = _backend_for_state(layout, state) if state is not None else None
        if state is not None and current is not None and current.running_pid() is not None:
            if port is not None and port != state.port:
                raise DbctlError(
                    f"the database already runs on port {state.port}; stop-db first to move it"
                )
            return _info(layout, state)
        backend = current or _choose_backend(layout)
        password = read_or_create_secret(layout)
        chosen = _pick_port(port, state)
        # Recorded first, so that stop-db can clean up after a start that failed halfway.
        write_state(layout, backend.state(chosen))
        backend.start(chosen, password)
        return DbInfo(make_dsn(chosen, password), chosen, backend.method, layout.pgdata)


def stop_db(data_dir: Path) -> None:
    """Stops the graph database of ``data_dir``; stopping a stopped one is fine."""
    layout = Layout(data_dir.absolute())
    with locked(layout):
        state = read_state(layout)
        backend = _backend_for_state(layout, state) if state is not None else None
        if backend is not None:
            backend.stop()


def db_status(data_dir: Path) -> DbStatus:
    layout = Layout(data_dir.absolute())
    state = read_state(layout)
    if state is None:
        return DbStatus(False, layout.pgdata, "never started here (no state file)")
    backend = _backend_for_state(layout, state)
    if backend is None:
        return DbStatus(
            False, layout.pgdata, f"stopped; its {state.method} runtime is no longer available",
            state.method, state.port,
        )
    return backend.status(state)


# --- choices -------------------------------------------------------------------------------


def _info(layout: Layout, state: State) -> DbInfo:
    if not layout.secret.exists():
        raise DbctlError(
            f"{layout.secret} is gone while the database runs; run stop-db then start-db"
            " to set a new password"
        )
    password = read_or_create_secret(layout)  # reads it, checking its mode
    return DbInfo(make_dsn(state.port, password), state.port, state.method, layout.pgdata)


def _backend_for_state(layout: Layout, state: State) -> Backend | None:
    """The backend that ran this data directory last, if it is still available."""
    if state.method == "docker":
        return DockerBackend(layout) if docker_available() else None
    if state.method == "chroot":
        rt = find_chroot_runtime(Path(state.root) if state.root else None)
    else:
        rt = find_host_runtime()
    return LocalBackend(rt, layout) if rt is not None else None


def _choose_backend(layout: Layout) -> Backend:
    if docker_available():
        return DockerBackend(layout)
    for rt in (find_host_runtime(), find_chroot_runtime()):
        if rt is not None:
            return LocalBackend(rt, layout)
    raise NoPostgresAvailable(no_postgres_message())


def no_postgres_message() -> str:
    looked = ", ".join(HOST_AGE_GLOBS)
    return (
        "no PostgreSQL with Apache AGE is available: no Docker engine answers `docker info`,"
        f" no host PostgreSQL has AGE ({looked}), and {root_dir()} holds no root built by"
        " scripts/install-postgres-age. To get one, either run (as root)"
        f" scripts/install-postgres-age (set {ROOT_ENV} to put the root elsewhere), or"
        f" install Docker so start-db can run the {IMAGE_DEFAULT} image."
    )


def _pick_port(requested: int | None, state: State | None) -> int:
    if requested is not None:
        return requested
    if state is not None and port_is_free(state.port):
        return state.port  # keep the DSN stable across restarts
    return free_port()

