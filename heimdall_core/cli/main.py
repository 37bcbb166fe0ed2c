"""The `heimdall` command: parse arguments, build the context once, dispatch, map errors.

Exit status (scripts and monitoring rely on these):

    0    success
    1    an operational error: missing site, key or file, I/O error, bad input line
         (the message says what and where, and what to do)
    2    a usage or configuration error (argparse; a malformed argument such as a --feed
         that is not hex; a command that would write a data directory another user owns;
         or one line naming key, value, what is allowed and where it came from)
    3    an integrity problem: a damaged, tampered or stale log, a rejected bundle, a
         stopped feed, or a FORK (``heimdall log verify`` prints FORK lines)
    4    ``heimdall query``: the value was never seen (a well-formed question; with
         ``--json`` the body of the HTTP 404 is printed)
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from heimdall_core import __version__
from heimdall_core.cli.common import (
    EXIT_ERROR,
    EXIT_INTEGRITY,
    EXIT_USAGE,
    READ_ONLY_COMMANDS,
    Context,
    UsageError,
    build_context,
    command_name,
)
from heimdall_core.errors import (
    ConfigError,
    FeedStopped,
    HeimdallError,
    IntegrityError,
    StaleLogError,
)

# One module per command group; each has register(subparsers).
COMMAND_MODULES = (
    "heimdall_core.cli.sitecmd",
    "heimdall_core.cli.logcmd",
    "heimdall_core.cli.ingestcmd",
    "heimdall_core.cli.graphcmd",
    "heimdall_core.cli.dbcmd",
    "heimdall_core.cli.piicmd",
    "heimdall_core.cli.servecmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heimdall",
        description="Heimdall: signed, replicated threat-intelligence and breach-data store.")
    parser.add_argument("--version", action="version", version=f"heimdall {__version__}")
    parser.add_argument("--config", help="TOML configuration file (or set HMD_CONFIG)")
    parser.add_argument("--data-dir", help="data directory (or set HMD_DATA_DIR)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[Context], int] = args.func
    try:
        ctx = build_context(args)
        if command_name(args) not in READ_ONLY_COMMANDS:
            ctx.require_owner()
        return func(ctx)
    except ConfigError as exc:
        print(f"heimdall: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"heimdall: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (IntegrityError, StaleLogError, FeedStopped) as exc:
        print(f"heimdall: integrity error: {exc}", file=sys.stderr)
        return EXIT_INTEGRITY
    except HeimdallError as exc:
        print(f"heimdall: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # before OSError, its base: `heimdall ... | head` is no failure
        _quiet_stdout()
        return EXIT_OK_PIPE
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"heimdall: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("heimdall: interrupted", file=sys.stderr)
        return 130


def _quiet_stdout() -> None:
    """The reader of stdout has gone: point stdout at /dev/null, so that the interpreter's
    flush at exit does not fail again and print a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


EXIT_OK_PIPE = 0

if __name__ == "__main__":
    sys.exit(main())
