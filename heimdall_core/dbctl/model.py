"""Values and errors of start-db / stop-db / db status (pure: no I/O).

A DSN carries the role's password, so ``DbInfo.dsn`` is kept out of ``repr`` and
every string meant for people goes through ``redact_dsn``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from heimdall_core.errors import HeimdallError

Method = Literal["docker", "local", "chroot"]
METHODS: tuple[Method, ...] = ("docker", "local", "chroot")

DB_NAME = "heimdall"
DB_ROLE = "heimdall"
# Only loopback: the graph database is an implementation detail of one site.
LISTEN_HOST = "127.0.0.1"
REDACTED = "***"
PORT_MIN = 1
PORT_MAX = 65535


class DbctlError(HeimdallError):
    """start-db / stop-db could not do what was asked; the message says what to do."""


class NoPostgresAvailable(DbctlError):
    """Neither a Docker engine nor a local PostgreSQL with Apache AGE is available."""


def make_dsn(port: int, password: str | None) -> str:
    """The libpq URI of the heimdall database; ``password=None`` gives the redacted form."""
    if not PORT_MIN <= port <= PORT_MAX:
        raise DbctlError(f"port {port} is outside {PORT_MIN}..{PORT_MAX}")
    secret = REDACTED if password is None else quote(password, safe="")
    return f"postgresql://{DB_ROLE}:{secret}@{LISTEN_HOST}:{port}/{DB_NAME}"


def redact_dsn(port: int) -> str:
    return make_dsn(port, None)


@dataclass(frozen=True, slots=True)
class DbInfo:
    """A running graph database. ``dsn`` holds the password: give it to programs only."""

    dsn: str = field(repr=False)
    port: int
    method: Method
    pgdata: Path

    @property
    def dsn_redacted(self) -> str:
        return redact_dsn(self.port)


@dataclass(frozen=True, slots=True)
class DbStatus:
    """What ``db status`` reports. ``detail`` is one line for an operator."""

    running: bool
    pgdata: Path
    detail: str
    method: Method | None = None
    port: int | None = None
    pid: int | None = None

    @property
    def dsn_redacted(self) -> str | None:
        return None if self.port is None else redact_dsn(self.port)
