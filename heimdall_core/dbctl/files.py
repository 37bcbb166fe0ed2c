"""Files start-db keeps in Heimdall's data directory: cluster, state, secret, lock.

``<data_dir>/postgres``             the PostgreSQL data directory (PGDATA)
``<data_dir>/postgres.initdb``      where initdb runs before being renamed into place
``<data_dir>/postgres.secret``      the heimdall role's password, mode 0600
``<data_dir>/postgres.state.json``  method, port and where the server runs from
``<data_dir>/postgres.lock``        serializes start-db / stop-db on one data directory
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

from heimdall_core.dbctl.model import METHODS, DbctlError, Method
from heimdall_core.errors import KeyMaterialError

SECRET_BYTES = 32  # 256 bits of entropy, URL-safe base64 (ASCII, see scram.py)
SECRET_FILE_BYTES_MAX = 4096
STATE_FILE_BYTES_MAX = 64 * 1024
SECRET_MODE = 0o600
# Group or others may not read or write the secret.
SECRET_MODE_FORBIDDEN = stat.S_IRWXG | stat.S_IRWXO


@dataclass(frozen=True, slots=True)
class Layout:
    data_dir: Path

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def initdb_staging(self) -> Path:
        return self.data_dir / "postgres.initdb"

    @property
    def secret(self) -> Path:
        return self.data_dir / "postgres.secret"

    @property
    def state(self) -> Path:
        return self.data_dir / "postgres.state.json"

    @property
    def lock(self) -> Path:
        return self.data_dir / "postgres.lock"


@dataclass(frozen=True, slots=True)
class State:
    """What the last start-db chose; read back by status, stop and the next start."""

    method: Method
    port: int
    root: str | None = None  # the chroot root, for method "chroot"
    container: str | None = None  # the container name, for method "docker"


def read_state(layout: Layout) -> State | None:
    try:
        with layout.state.open("rb") as f:
            raw = f.read(STATE_FILE_BYTES_MAX + 1)
    except FileNotFoundError:
        return None
    if len(raw) > STATE_FILE_BYTES_MAX:
        raise DbctlError(f"{layout.state} is larger than {STATE_FILE_BYTES_MAX} bytes")
    try:
        data = json.loads(raw)
        return _state_from_json(data)
    except (ValueError, TypeError, KeyError) as e:
        raise DbctlError(f"{layout.state} is not a valid state file ({e}); remove it") from e


def _state_from_json(data: object) -> State:
    if not isinstance(data, dict):
        raise TypeError("not an object")
    method, port = data["method"], data["port"]
    if method not in METHODS or not isinstance(port, int) or isinstance(port, bool):
        raise ValueError(f"bad method or port: {method!r} {port!r}")
    root, container = data.get("root"), data.get("container")
    if not (root is None or isinstance(root, str)) or not (
        container is None or isinstance(container, str)
    ):
        raise TypeError("root and container must be strings")
    return State(method=cast(Method, method), port=port, root=root, container=container)


def write_state(layout: Layout, state: State) -> None:
    _write_atomically(layout.state, json.dumps(asdict(state), sort_keys=True).encode(), 0o644)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_or_create_secret(layout: Layout) -> str:
    """The heimdall role's password; created (mode 0600) on first use."""
    try:
        return _read_secret(layout.secret)
    except FileNotFoundError:
        pass
    password = secrets.token_urlsafe(SECRET_BYTES)
    try:
        fd = os.open(layout.secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, SECRET_MODE)
    except FileExistsError:
        # Another start-db created it between our read and our create: use theirs.
        return _read_secret(layout.secret)
    try:
        os.write(fd, password.encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return password


def _read_secret(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        mode = os.fstat(fd).st_mode
        if mode & SECRET_MODE_FORBIDDEN:
            raise KeyMaterialError(
                f"{path} is readable or writable by others (mode {stat.S_IMODE(mode):o});"
                f" run: chmod 600 {path}"
            )
        raw = os.read(fd, SECRET_FILE_BYTES_MAX + 1)
    finally:
        os.close(fd)
    password = raw.decode("ascii", errors="replace").strip()
    if not password or len(raw) > SECRET_FILE_BYTES_MAX or not password.isascii():
        raise KeyMaterialError(f"{path} does not hold a usable password; remove it to make a new one")
    return password


@contextlib.contextmanager
def locked(layout: Layout) -> Iterator[None]:
    """Holds an exclusive lock so two start-db / stop-db never interleave."""
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.lock, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
