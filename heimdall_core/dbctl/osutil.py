"""Processes, ports and mounts, as start-db needs them (Linux, I/O)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from heimdall_core.dbctl.model import LISTEN_HOST, DbctlError

STDERR_TAIL_CHARS = 2000
PROC = Path("/proc")
MOUNTINFO = PROC / "self" / "mountinfo"
MOUNTINFO_MOUNT_POINT_FIELD = 4
# A minimal, fixed environment: nothing from the caller's (PGPASSWORD, PGHOST, ...)
# leaks into the tools, and their messages are not translated.
TOOL_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
}


@dataclass(frozen=True, slots=True)
class RunAs:
    """Who a tool runs as; ``None`` fields mean "as we are"."""

    uid: int | None = None
    gid: int | None = None


def run(
    argv: Sequence[str],
    *,
    what: str,
    timeout_s: float,
    stdin_text: str | None = None,
    run_as: RunAs = RunAs(),
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> str:
    """Runs a tool and returns its stdout; raises DbctlError naming ``what`` on failure.

    ``stdin_text`` may carry secrets, so it never appears in an error message.
    """
    try:
        done = subprocess.run(
            list(argv),
            input=stdin_text,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=dict(TOOL_ENV if env is None else env),
            user=run_as.uid,
            group=run_as.gid,
            extra_groups=[] if run_as.gid is not None else None,
            cwd=cwd,
            check=False,
        )
    except FileNotFoundError as e:
        raise DbctlError(f"{what}: {argv[0]} not found") from e
    except subprocess.TimeoutExpired as e:
        raise DbctlError(f"{what}: no answer after {timeout_s:.0f} s ({argv[0]})") from e
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-STDERR_TAIL_CHARS:]
        raise DbctlError(f"{what} failed (exit {done.returncode}): {tail}")
    return done.stdout


def succeeds(argv: Sequence[str], *, timeout_s: float) -> bool:
    """True when the tool exists and exits 0 in time (output discarded)."""
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


# --- processes -------------------------------------------------------------------------


def process_cwd(pid: int) -> str | None:
    try:
        return os.readlink(PROC / str(pid) / "cwd")
    except OSError:
        return None


def process_comm(pid: int) -> str | None:
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return None


def _process_state(pid: int) -> str | None:
    try:
        stat_line = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) S ...": comm may hold spaces and parentheses, the state follows the last ")".
    rest = stat_line.rpartition(")")[2].split()
    return rest[0] if rest else None


def is_live_postgres(pid: int) -> bool:
    """A running PostgreSQL process; a killed one not yet reaped (zombie) is not."""
    return process_comm(pid) == "postgres" and _process_state(pid) not in (None, "Z", "X")


def processes_in(cwd: Path) -> list[int]:
    """Pids of the processes whose working directory is ``cwd``.

    A postmaster and every one of its children chdir to the data directory, so
    this finds a cluster's processes even after the pid file went stale.
    """
    target = str(cwd)
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit() and process_cwd(int(entry.name)) == target:
            found.append(int(entry.name))
    return found


def wait_until_gone(cwd: Path, timeout_s: float) -> list[int]:
    """Waits for the processes working in ``cwd`` to exit; returns those that did not."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = processes_in(cwd)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def wait_not_live_postgres(pid: int, timeout_s: float) -> None:
    """Waits until ``pid`` is no live PostgreSQL process (exited, or a zombie), or the
    time is up: a killed postmaster leaves its working directory (wait_until_gone is
    over) before it stops being a live process."""
    deadline = time.monotonic() + timeout_s
    while is_live_postgres(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def read_pid_file(path: Path) -> int | None:
    """The pid on the first line of a PostgreSQL pid or lock file, if any."""
    try:
        first = path.read_text(errors="replace").split("\n", 1)[0].strip()
    except FileNotFoundError:
        return None
    # A socket lock file of a server that has since exited may hold a negative pid.
    return abs(int(first)) if first.lstrip("-").isdigit() else None


# --- ports -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LISTEN_HOST, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As PostgreSQL binds: connections of a stopped server in TIME_WAIT do not
        # keep it from listening again on its port.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LISTEN_HOST, port))
        except OSError:
            return False
        return True



# --- mounts ------------------------------------------------------------------------------


def _unescape_mountinfo(field: str) -> str:
    # The kernel writes space, tab, newline and backslash in mount points as octal.
    for escaped, plain in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escaped, plain)
    return field


def parse_mount_points(mountinfo: str) -> set[str]:
    points = set()
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) > MOUNTINFO_MOUNT_POINT_FIELD:
            points.add(_unescape_mountinfo(fields[MOUNTINFO_MOUNT_POINT_FIELD]))
    return points


def mount_points() -> set[str]:
    return parse_mount_points(MOUNTINFO.read_text())


def is_mount_point(path: Path) -> bool:
    return str(path) in mount_points()
