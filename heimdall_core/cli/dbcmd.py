"""`heimdall start-db`, `heimdall stop-db`, `heimdall db status`: the local PostgreSQL + AGE.

Thin: the work is heimdall_core.dbctl's. Nothing printed here carries the role's
password (DSNs are shown redacted); the graph store reads the real DSN itself when
``graph.postgres_dsn`` is empty.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from heimdall_core.cli.common import EXIT_ERROR, EXIT_OK, Context, print_json

PROBE_TIMEOUT_S = 5.0  # for a configured database to take a connection

# heimdall_core.dbctl is imported by the commands that use it, not by every command.
if TYPE_CHECKING:
    from heimdall_core.dbctl import DbInfo, DbStatus


def _port(text: str) -> int:
    from heimdall_core.dbctl.model import PORT_MAX, PORT_MIN

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not PORT_MIN <= value <= PORT_MAX:
        raise argparse.ArgumentTypeError(f"{value}: a port is {PORT_MIN}..{PORT_MAX}")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    start = sub.add_parser("start-db", help="start (creating on first use) the local PostgreSQL + AGE")
    start.add_argument("--port", type=_port,
                       help="TCP port on 127.0.0.1 (default: the last one, or a free one)")
    start.add_argument("--json", action="store_true")
    start.set_defaults(func=cmd_start)

    stop = sub.add_parser("stop-db", help="stop the local PostgreSQL + AGE (its data stays)")
    stop.add_argument("--json", action="store_true")
    stop.set_defaults(func=cmd_stop)

    db = sub.add_parser("db", help="the local PostgreSQL + AGE")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    status = db_sub.add_parser("status", help="is it running, where, on which port")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)


def _info_json(info: DbInfo) -> dict[str, Any]:
    return {"running": True, "method": info.method, "port": info.port, "pgdata": str(info.pgdata),
            "dsn": info.dsn_redacted}


def cmd_start(ctx: Context) -> int:
    from heimdall_core.dbctl import start_db

    info = start_db(ctx.data_dir, ctx.args.port)
    if ctx.args.json:
        print_json(_info_json(info))
    else:
        print(f"PostgreSQL + AGE running ({info.method}) on 127.0.0.1:{info.port}, data in {info.pgdata}")
        print(f"DSN {info.dsn_redacted} (the graph store reads the password itself; "
              "set graph.backend = \"age\" to use it)")
    return EXIT_OK


def cmd_stop(ctx: Context) -> int:
    from heimdall_core.dbctl import db_status, stop_db

    ctx.require_site()  # stop_db takes its lock file in the directory: not in a mistyped one
    stop_db(ctx.data_dir)
    status = db_status(ctx.data_dir)
    if ctx.args.json:
        print_json(_status_json(status))
    else:
        print(f"PostgreSQL + AGE of {ctx.data_dir}: {status.detail}")
    return EXIT_ERROR if status.running else EXIT_OK


def _status_json(status: DbStatus) -> dict[str, Any]:
    return {"running": status.running, "method": status.method, "port": status.port, "pid": status.pid,
            "pgdata": str(status.pgdata), "dsn": status.dsn_redacted, "detail": status.detail}


def cmd_status(ctx: Context) -> int:
    """Exit 0 when running, 1 when not (for scripts), with one line saying why.

    With ``graph.postgres_dsn`` set, the graph's database is that one, not start-db's:
    the answer is then whether it answers."""
    from heimdall_core.dbctl import db_status

    if ctx.settings.graph.postgres_dsn:
        return _configured_status(ctx)
    status = db_status(ctx.data_dir)
    if ctx.args.json:
        print_json({**_status_json(status), "source": "start-db"})
    elif status.running:
        print(f"running ({status.method}, pid {status.pid}) on 127.0.0.1:{status.port}, "
              f"data in {status.pgdata}; DSN {status.dsn_redacted}")
    else:
        print(f"not running: {status.detail} (data: {status.pgdata}); start it with 'heimdall start-db'")
    return EXIT_OK if status.running else EXIT_ERROR


def _configured_status(ctx: Context) -> int:
    import asyncio

    from heimdall_core.pgdsn import redact_dsn

    dsn = ctx.settings.graph.postgres_dsn
    answers, detail = asyncio.run(_probe(dsn))
    if ctx.args.json:
        print_json({"running": answers, "source": "graph.postgres_dsn", "dsn": redact_dsn(dsn),
                    "detail": detail})
    else:
        state = "answers" if answers else "does not answer"
        print(f"graph.postgres_dsn {redact_dsn(dsn)} {state}: {detail}")
    return EXIT_OK if answers else EXIT_ERROR


async def _probe(dsn: str) -> tuple[bool, str]:
    """Whether the database of ``dsn`` takes a connection, and whether it has Apache AGE.
    The driver's messages name the host and role, never the password."""
    import asyncpg

    try:
        conn = await asyncpg.connect(dsn, timeout=PROBE_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    try:
        age = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'age'")
    finally:
        await conn.close()
    if age is None:
        return True, "connected, but Apache AGE is not installed in that database (CREATE EXTENSION age)"
    return True, f"connected; Apache AGE {age}"
