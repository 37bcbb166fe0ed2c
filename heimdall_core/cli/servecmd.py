"""`heimdall serve`: the site's HTTP API in the foreground (systemd runs this)."""

from __future__ import annotations

import argparse

from heimdall_core.cli.common import EXIT_OK, Context


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("serve", help="run the HTTP API (127.0.0.1 only until TLS + OIDC)")
    parser.set_defaults(func=cmd_serve)


def cmd_serve(ctx: Context) -> int:
    # Imported here: the HTTP stack (aiohttp, ~0.1 s) is needed by this command only,
    # and every other command (an ingest's worker processes too) would pay for it.
    from heimdall_core.api.app import serve

    ctx.require_site()  # before serve.lock is created in a mistyped data directory
    serve(ctx.settings)
    return EXIT_OK
