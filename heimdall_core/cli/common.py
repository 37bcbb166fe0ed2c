"""What every CLI command shares: settings, the store, output helpers, exit codes."""

from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heimdall_core import config
from heimdall_core.errors import ConfigError, HeimdallError
from heimdall_core.log.feed import LogOptions
from heimdall_core.log.store import LogStore, read_site

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTEGRITY = 3
EXIT_NOT_SEEN = 4  # `heimdall query`: a well-formed question about a value never seen
FEED_PREFIX_CHARS_MIN = 8
FEED_ID_HEX_CHARS = 64  # a feed id is its Ed25519 public key: 32 bytes
_FEED_NAME = re.compile(f"[0-9a-f]{{{FEED_PREFIX_CHARS_MIN},{FEED_ID_HEX_CHARS}}}")

# Commands checked to write nothing in the data directory, not even a cache or an empty
# graph file (`dumps` saves its registry, `state-hash` and `query` may create the graph,
# `log verify` stops a damaged feed): any user who can read the site may run them.
READ_ONLY_COMMANDS = frozenset({"config show", "keys show", "log tail", "log stats", "export", "db status"})

# The loggers `log_level` applies to: Heimdall's own (all named heimdall.*), and the HTTP
# access log, one line per request whose format names the route template, never the values
# in the path (heimdall_core.api.app.RouteAccessLogger).
LOGGERS_AT_LOG_LEVEL = ("heimdall", "aiohttp.access")
THIRD_PARTY_LOG_LEVEL = logging.WARNING


class UsageError(HeimdallError):
    """The command line asks for something it cannot mean (exit 2, like argparse's errors)."""


@dataclass(frozen=True, slots=True)
class Context:
    settings: config.Settings
    args: argparse.Namespace

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    def log_options(self) -> LogOptions:
        return LogOptions.from_settings(self.settings.log)

    def store(self) -> LogStore:
        return LogStore(self.data_dir, self.log_options())

    def require_owner(self) -> None:
        """Refuse to write a data directory another user owns (root included): what this
        process creates there (segments, index, heads, the PII key store) would belong to
        it, and the owner, the service, could no longer read its own keys."""
        try:
            owner = self.data_dir.stat().st_uid
        except FileNotFoundError:
            return  # a new site belongs to whoever creates it
        if owner == os.geteuid():
            return
        raise UsageError(
            f"data_dir {self.data_dir} belongs to {_account(owner)} (uid {owner}), and this command runs as "
            f"uid {os.geteuid()}: what it wrote there would lock the owner out of its own files; run it "
            f"as the owner: {self._as_owner(owner)}")

    def _as_owner(self, owner: int) -> str:
        """The command line that runs this command as the owner (never its arguments: they
        may be personal data, e.g. the value of `heimdall pii shred --kind email`)."""
        settings = [f"HMD_DATA_DIR={self.data_dir.absolute()}"]
        config_file = self.args.config or os.environ.get(config.ENV_CONFIG_FILE)
        if config_file:
            settings.append(f"{config.ENV_CONFIG_FILE}={Path(config_file).absolute()}")
        command = f"{_program()} {command_name(self.args)} ..."
        return f"sudo -u {_account(owner)} env {' '.join(settings)} {command}"

    def require_site(self) -> None:
        """Refuse, before anything is created there, a data directory that holds no site
        (a mistyped --data-dir must not leave graph or database files behind)."""
        try:
            read_site(self.data_dir)  # there, and whole
        except HeimdallError as exc:
            raise ConfigError(f"data_dir: {exc}, or name the site's directory (--data-dir or "
                              "HMD_DATA_DIR)") from None


def build_context(args: argparse.Namespace) -> Context:
    environ = None
    if getattr(args, "data_dir", None):
        # --data-dir outranks HMD_DATA_DIR: it is the environment layer with one more value.
        environ = dict(os.environ)
        environ["HMD_DATA_DIR"] = str(args.data_dir)
    settings = config.load(Path(args.config) if args.config else None, environ)
    configure_logging(settings.log_level)
    return Context(settings, args)


def configure_logging(level: str) -> None:
    """Apply ``log_level`` to Heimdall's own loggers and its route-only access log. Every
    other library logs at WARNING whatever the level: at DEBUG aiosqlite logs each SQL statement with its
    parameters (blind indexes, subject ids, ciphertexts), and asyncio, asyncpg and aiohttp's
    internals add volume, never anything an operator acts on."""
    logging.basicConfig(level=THIRD_PARTY_LOG_LEVEL, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in LOGGERS_AT_LOG_LEVEL:
        logging.getLogger(name).setLevel(level.upper())


def command_name(args: argparse.Namespace) -> str:
    """The command as typed, without arguments: "ingest", "log verify" (each group keeps its
    subcommand in ``<group>_command``)."""
    sub = getattr(args, f"{args.command}_command", None)
    return f"{args.command} {sub}" if sub else str(args.command)


def _account(uid: int) -> str:
    """A user's name for sudo, or ``#UID`` (which sudo also takes) when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"'#{uid}'"


def _program() -> str:
    """The heimdall program as this process was started (the full path of the console
    script, which sudo's own PATH may not find), or plain ``heimdall`` under ``python -m``."""
    started = Path(sys.argv[0])
    return str(started.absolute()) if started.name == "heimdall" else "heimdall"


def resolve_feed(store: LogStore, text: str | None) -> bytes:
    """A feed from its hex id or a unique prefix of at least 8 hex digits (default: the site's).
    Text that cannot name a feed is a usage error; a well-formed name no feed has is not."""
    if text is None:
        return store.site.feed
    text = text.lower()
    if not _FEED_NAME.fullmatch(text):
        raise UsageError(f"--feed {text!r}: not a feed id; give its {FEED_ID_HEX_CHARS} hex digits or "
                         f"a unique prefix of at least {FEED_PREFIX_CHARS_MIN} (see 'heimdall log stats')")
    matches = [feed for feed in store.feeds() if feed.hex().startswith(text)]
    if not matches:
        raise HeimdallError(f"feed {text!r}: no such feed on this site (see 'heimdall log stats')")
    if len(matches) > 1:
        raise HeimdallError(f"feed {text!r} is ambiguous: {len(matches)} feeds start with it")
    return matches[0]


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, sort_keys=True) + "\n")


def short(feed: bytes) -> str:
    return feed.hex()[:16]
