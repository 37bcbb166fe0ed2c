"""Where a local PostgreSQL with Apache AGE comes from: the host, or the chroot root.

Both run the same way (pg_ctl on ``<data_dir>/postgres``); they differ only in how a
tool is invoked, as which account, and how paths look to the server. That
difference lives here and nowhere else.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from heimdall_core.dbctl.osutil import RunAs

ROOT_ENV = "HMD_PG_ROOT"
ROOT_DEFAULT = Path("/opt/heimdall/pg-age-root")
# Written by scripts/install-postgres-age after every step succeeded.
ROOT_MARKER = ".heimdall-pg-age-installed"
ROOT_MOUNT_PARENT = "srv/heimdall"
ROOT_SOCKET_DIR = "/run/postgresql"
ROOT_ACCOUNT = "postgres"
CHROOT_TOOL = "/usr/sbin/chroot"
# Debian/Ubuntu packages, then PGDG RPMs.
HOST_AGE_GLOBS: tuple[str, ...] = (
    "/usr/lib/postgresql/*/lib/age.so",
    "/usr/pgsql-*/lib/age.so",
)
HOST_SOCKET_DIR_AS_ROOT = "/run/postgresql"
_MAJOR_IN_PATH = re.compile(r"(?:postgresql/|pgsql-)(\d+)/")
MOUNT_KEY_HEX_CHARS = 16


@dataclass(frozen=True, slots=True)
class Runtime:
    """A PostgreSQL installation with AGE that can run a cluster of ours."""

    method: Literal["local", "chroot"]
    major: int
    bindir: str  # as the server sees it
    socket_dir: str  # as the server sees it
    account: str  # the OS account running the server; also the cluster's superuser
    uid: int
    gid: int
    root: Path | None = None  # the chroot root, for method "chroot"

    def tool_argv(self, tool: str, *args: str) -> list[str]:
        exe = f"{self.bindir}/{tool}"
        if self.root is None:
            return [exe, *args]
        # Numeric ids: the host's passwd does not know the root's accounts.
        return [
            CHROOT_TOOL,
            f"--userspec={self.uid}:{self.gid}",
            f"--groups={self.gid}",
            str(self.root),
            exe,
            *args,
        ]

    def tool_run_as(self) -> RunAs:
        """chroot switches account itself; on the host a root caller drops to the account."""
        if self.root is not None or os.geteuid() == self.uid:
            return RunAs()
        return RunAs(uid=self.uid, gid=self.gid)

    def needs_root(self) -> bool:
        return self.root is not None

    def describe(self) -> str:
        where = f"chroot {self.root}" if self.root is not None else f"host {self.bindir}"
        return f"PostgreSQL {self.major} + AGE ({where})"


@dataclass(frozen=True, slots=True)
class ClusterPaths:
    """One cluster's data directory as the host and as the server see it."""

    host_pgdata: Path
    server_pgdata: str
    # What /proc/<pid>/cwd shows for the server's processes, seen from here.
    seen_cwd: Path
    # The bind mount point in the root, for method "chroot".
    mount_point: Path | None


def cluster_paths(rt: Runtime, pgdata: Path) -> ClusterPaths:
    pgdata = pgdata.absolute()
    if rt.root is None:
        resolved = pgdata.resolve()
        return ClusterPaths(pgdata, str(resolved), resolved, None)
    key = hashlib.sha256(str(pgdata).encode()).hexdigest()[:MOUNT_KEY_HEX_CHARS]
    inside = f"/{ROOT_MOUNT_PARENT}/{key}"
    mount_point = rt.root / ROOT_MOUNT_PARENT / key
    return ClusterPaths(pgdata, inside, mount_point, mount_point)


# --- discovery ---------------------------------------------------------------------------


def root_dir() -> Path:
    return Path(os.environ.get(ROOT_ENV) or ROOT_DEFAULT)


def _marker_major(root: Path) -> int | None:
    try:
        text = (root / ROOT_MARKER).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "pg_major" and value.strip().isdigit():
            return int(value)
    return None


def _root_account(root: Path, name: str) -> tuple[int, int] | None:
    try:
        lines = (root / "etc" / "passwd").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(":")
        if len(fields) >= 4 and fields[0] == name and fields[2].isdigit() and fields[3].isdigit():
            return int(fields[2]), int(fields[3])
    return None


def find_chroot_runtime(root: Path | None = None) -> Runtime | None:
    """The root built by scripts/install-postgres-age, if it is complete."""
    root = (root or root_dir()).absolute()
    major = _marker_major(root)
    if major is None:
        return None
    bindir = f"/usr/lib/postgresql/{major}/bin"
    libdir = root / f"usr/lib/postgresql/{major}/lib"
    account = _root_account(root, ROOT_ACCOUNT)
    if account is None or not (root / bindir.lstrip("/") / "postgres").is_file():
        return None
    if not (libdir / "age.so").is_file():
        return None
    uid, gid = account
    return Runtime("chroot", major, bindir, ROOT_SOCKET_DIR, ROOT_ACCOUNT, uid, gid, root)


def find_host_runtime() -> Runtime | None:
    """The newest host PostgreSQL whose lib directory holds age.so, if any."""
    found: list[tuple[int, Path]] = []
    for pattern in HOST_AGE_GLOBS:
        for so in Path("/").glob(pattern.lstrip("/")):
            match = _MAJOR_IN_PATH.search(str(so))
            if match and (so.parent.parent / "bin" / "pg_ctl").is_file():
                found.append((int(match.group(1)), so.parent.parent / "bin"))
    if not found:
        return None
    major, bindir = max(found)
    account = _host_account()
    if account is None:
        return None
    name, uid, gid = account
    socket_dir = HOST_SOCKET_DIR_AS_ROOT if os.geteuid() == 0 else tempfile.gettempdir()
    return Runtime("local", major, str(bindir), socket_dir, name, uid, gid)


def _host_account() -> tuple[str, int, int] | None:
    """Root runs the server as ``postgres`` (PostgreSQL refuses root); others as themselves."""
    try:
        entry = pwd.getpwnam("postgres") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
    except KeyError:
        return None
    return entry.pw_name, entry.pw_uid, entry.pw_gid
