"""start-db / stop-db / db status: Heimdall's own PostgreSQL + Apache AGE.

See docs/postgres-age.md for how an operator gets PostgreSQL + AGE and where the
data, ports and secrets live.
"""

from heimdall_core.dbctl.control import db_status, no_postgres_message, start_db, stop_db
from heimdall_core.dbctl.model import (
    DbctlError,
    DbInfo,
    DbStatus,
    Method,
    NoPostgresAvailable,
    redact_dsn,
)

__all__ = [
    "DbInfo",
    "DbStatus",
    "DbctlError",
    "Method",
    "NoPostgresAvailable",
    "db_status",
    "no_postgres_message",
    "redact_dsn",
    "start_db",
    "stop_db",
]
