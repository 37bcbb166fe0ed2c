"""The SQL that makes a fresh cluster ready for Heimdall (pure).

Run through ``psql`` as the cluster's superuser over its Unix socket, at every start:
each statement is idempotent, so a half-done earlier start or a regenerated secret
file is repaired by the next start.
"""

from __future__ import annotations

_VERIFIER_PREFIX = "SCRAM-SHA-256$"
_VERIFIER_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=:$-"
)


def _check_verifier(verifier: str) -> None:
    # The verifier is spliced into a literal: allow only what the format holds.
    if not verifier.startswith(_VERIFIER_PREFIX) or not set(verifier) <= _VERIFIER_CHARS:
        raise ValueError("not a SCRAM-SHA-256 verifier")


def role_password_sql(verifier: str) -> str:
    _check_verifier(verifier)
    return _ROLE_PASSWORD_SQL.replace("@VERIFIER@", verifier)


# Spelled out, not formatted (ruff S608): the names are DB_ROLE and DB_NAME, which a
# test checks.
_ROLE_PASSWORD_SQL = "ALTER ROLE heimdall WITH LOGIN PASSWORD '@VERIFIER@';\n"  # noqa: S105
_CREATE_ROLE_SQL = (
    "SELECT 'CREATE ROLE heimdall'"
    " WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'heimdall') \\gexec\n"
    "ALTER ROLE heimdall WITH NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;\n"
)
_CREATE_DATABASE_SQL = (
    "SELECT 'CREATE DATABASE heimdall OWNER heimdall ENCODING ''UTF8'''"
    " WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'heimdall') \\gexec\n"
    "\\connect heimdall\n"
)
_GRANT_SQL = (
    "GRANT USAGE ON SCHEMA ag_catalog TO heimdall;\n"
    # Read-only: lets the application ask which graphs and labels exist.
    "GRANT SELECT ON ag_catalog.ag_graph, ag_catalog.ag_label TO heimdall;\n"
)


def cluster_bootstrap_sql(verifier: str) -> str:
    """Role (not superuser), database owned by it, AGE, and the grants AGE needs.

    AGE's functions live in schema ``ag_catalog``; a role without USAGE on it cannot
    even see ``cypher()``. Creating the extension needs a superuser, which is why it
    is done here and not by the application.
    """
    return (
        _CREATE_ROLE_SQL
        + role_password_sql(verifier)
        + _CREATE_DATABASE_SQL
        + age_extension_sql()
        + _GRANT_SQL
    )


def age_extension_sql() -> str:
    return "CREATE EXTENSION IF NOT EXISTS age;\n"


# Sized for a projector replaying millions of records (~5 kB of WAL each): with the
# default max_wal_size (1 GB) a 1M-record replay forces several extra checkpoints, and
# the default 128 MB of shared buffers cannot hold the value indexes queries read. Full
# page images after a checkpoint are most of that WAL; lz4 compresses them for little CPU
# (measured: a 300k-record AGE replay 7-9% faster, two runs each way).
TUNING: tuple[tuple[str, str], ...] = (
    ("shared_buffers", "256MB"), ("max_wal_size", "4GB"), ("wal_compression", "lz4"))


def heimdall_conf(port: int, socket_dir: str) -> str:
    """Server settings start-db owns, included last from postgresql.conf.

    Kept in the cluster (not on the pg_ctl command line) so that a server started by
    hand from this data directory is just as closed: loopback only, AGE preloaded,
    socket only for its own account. Logs rotate daily over a week of files.
    """
    return (
        "# Written by heimdall start-db at every start: edits here are overwritten.\n"
        "listen_addresses = '127.0.0.1'\n"
        f"port = {port:d}\n"
        "shared_preload_libraries = 'age'\n"
        f"unix_socket_directories = '{socket_dir}'\n"
        "unix_socket_permissions = 0700\n"
        "password_encryption = 'scram-sha-256'\n"
        "logging_collector = on\n"
        "log_directory = 'log'\n"
        "log_filename = 'postgresql-%a.log'\n"
        "log_rotation_age = '1d'\n"
        "log_rotation_size = 0\n"
        "log_truncate_on_rotation = on\n"
        + "".join(f"{name} = '{value}'\n" for name, value in TUNING)
    )


INCLUDE_LINE = "include_if_exists = 'heimdall.conf'"
