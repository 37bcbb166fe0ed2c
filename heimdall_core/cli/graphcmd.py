"""`heimdall project`, `heimdall replay`, `heimdall state-hash`, `heimdall query`."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from heimdall_core.cli.common import EXIT_ERROR, EXIT_NOT_SEEN, EXIT_OK, EXIT_USAGE, Context, print_json
from heimdall_core.errors import DatabaseUnavailable
from heimdall_core.graph.backends import BACKENDS, make_store, rules_from
from heimdall_core.graph.store import CO_VALUES_DEFAULT, GraphStore

# asyncio, the projector, the query and the state hash are imported by the commands
# that use them: every other command (an ingest's worker processes too) would pay for them.
if TYPE_CHECKING:
    import asyncio

    from heimdall_core.graph.projector import Progress, ProjectionReport, ProjectorOptions
    from heimdall_core.graph.query import Unanswered

log = logging.getLogger("heimdall.graph")

PROGRESS_INTERVAL_S = 0.5

_T = TypeVar("_T")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def backend(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--backend", choices=BACKENDS,
                            help="graph back end (default: graph.backend from the configuration)")

    project = sub.add_parser("project", help="project the log into the graph (catch up once)")
    backend(project)
    project.add_argument("--follow", action="store_true", help="keep projecting new events until stopped")
    project.add_argument("--json", action="store_true")
    project.set_defaults(func=cmd_project)

    replay = sub.add_parser("replay", help="rebuild the graph from nothing, from the log")
    backend(replay)
    replay.add_argument("--json", action="store_true")
    replay.set_defaults(func=cmd_replay)

    state = sub.add_parser("state-hash", help="print the canonical hash of the graph's state")
    backend(state)
    state.add_argument("--json", action="store_true")
    state.set_defaults(func=cmd_state_hash)

    query = sub.add_parser("query", help="where a value was seen, with what, what is known")
    query.add_argument("value", help="the value (an IP, domain, e-mail, URL, hash, ...)")
    query.add_argument("--kind", help="its kind, when it cannot be told from the value")
    backend(query)
    query.add_argument("--limit", type=int, default=CO_VALUES_DEFAULT,
                       help=f"co-occurring values to list (default {CO_VALUES_DEFAULT})")
    query.add_argument("--reveal", action="store_true",
                       help="decrypt personal co-occurring values (they are shown protected otherwise)")
    query.add_argument("--json", action="store_true")
    query.set_defaults(func=cmd_query)


@contextlib.asynccontextmanager
async def _opened(ctx: Context) -> AsyncIterator[GraphStore]:
    ctx.require_site()  # before the store creates its file (or database graph)
    store = make_store(ctx.settings, ctx.args.backend, rules_from(ctx.settings))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


class ProgressBar:
    """One updating line on a terminal; nothing at all when stderr is not one."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self._label = label
        self._stream = stream or sys.stderr  # looked up now: tests and daemons swap it
        self._enabled = self._stream.isatty()
        self._started = time.monotonic()
        self._shown = 0.0

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if not self._enabled or now - self._shown < PROGRESS_INTERVAL_S:
            return
        self._shown = now
        total = max(progress.events_total, 1)
        width = 30
        filled = int(width * min(progress.events, total) / total)
        rate = progress.records / max(now - self._started, 1e-9)
        self._stream.write(f"\r{self._label} [{'#' * filled}{'.' * (width - filled)}] "
                           f"{progress.events:,}/{progress.events_total:,} events, "
                           f"{progress.records:,} records, {rate:,.0f} records/s ")
        self._stream.flush()

    def done(self) -> None:
        if self._enabled and self._shown:
            self._stream.write("\n")
            self._stream.flush()


def _run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run``, with asyncio imported by the graph commands only."""
    import asyncio

    return asyncio.run(coroutine)


def _options(ctx: Context) -> ProjectorOptions:
    from heimdall_core.graph.projector import ProjectorOptions

    return ProjectorOptions.from_settings(ctx.settings.graph)


async def _project(ctx: Context, *, replay: bool, label: str) -> ProjectionReport:
    from heimdall_core.graph.projector import ProjectionReport, Projector

    bar = ProgressBar(label)
    if getattr(ctx.args, "follow", False):
        try:
            await _follow(ctx, bar)
        finally:
            bar.done()
        return ProjectionReport()
    async with _opened(ctx) as store:
        if replay:
            await store.reset()
        with ctx.store() as log_store:
            projector = Projector(log_store, store, rules_from(ctx.settings), _options(ctx), progress=bar)
            try:
                return await projector.catch_up()
            finally:
                bar.done()


async def _follow(ctx: Context, bar: ProgressBar) -> None:
    """``project --follow``: like ``heimdall serve``, a database that is away at the start
    is waited for (with the projector's backoff), not a reason to exit."""
    import asyncio
    import signal

    from heimdall_core.graph.projector import Projector

    ctx.require_site()
    rules = rules_from(ctx.settings)
    options = _options(ctx)
    store = make_store(ctx.settings, ctx.args.backend, rules)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        if not await _open_when_reachable(store, stop, options):
            return  # stopped while waiting
        try:
            # A graph to replay first (other merge rules, an old schema) fails here, once,
            # rather than on every pass of a follow that never projects anything.
            await store.positions()
            with ctx.store() as log_store:
                await Projector(log_store, store, rules, options, progress=bar).follow(stop)
        finally:
            await store.close()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _open_when_reachable(store: GraphStore, stop: asyncio.Event, options: ProjectorOptions) -> bool:
    """Open ``store``, retrying with capped backoff while its database is unreachable;
    False when ``stop`` was set first."""
    import asyncio

    backoff = options.backoff()
    while True:
        try:
            await store.open()
        except DatabaseUnavailable as exc:
            delay = backoff.next()
            log.warning("graph database unavailable (%s); retrying in %.1fs", exc, delay)
        else:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return False


def _report(ctx: Context, report: ProjectionReport, verb: str) -> int:
    stopped = {feed.hex(): reason for feed, reason in report.stopped.items()}
    if ctx.args.json:
        print_json({"events": report.events, "records": report.records, "batches": report.batches,
                    "seconds": round(report.seconds, 3), "records_per_s": round(report.records_per_s),
                    "retries": report.retries, "stopped": stopped,
                    "positions": {feed.hex(): seq for feed, seq in report.positions.items()}})
    else:
        print(f"{verb} {report.events:,} events ({report.records:,} records) in {report.seconds:.2f}s"
              f" ({report.records_per_s:,.0f} records/s)")
    for feed, reason in stopped.items():
        print(f"heimdall: feed {feed} is stopped: {reason}", file=sys.stderr)
    return EXIT_ERROR if stopped else EXIT_OK


def cmd_project(ctx: Context) -> int:
    report = _run(_project(ctx, replay=False, label="project"))
    if ctx.args.follow:
        return EXIT_OK
    return _report(ctx, report, "projected")


def cmd_replay(ctx: Context) -> int:
    report = _run(_project(ctx, replay=True, label="replay"))
    return _report(ctx, report, "replayed")


async def _state_hash(ctx: Context) -> dict[str, Any]:
    from heimdall_core.graph.projector import events_behind, feed_sizes
    from heimdall_core.graph.statehash import StateHasher

    rules = rules_from(ctx.settings)
    hasher = StateHasher(rules)
    async with _opened(ctx) as store:
        async for entry in store.iter_state():
            hasher.add(entry)
        positions = await store.positions()
        backend = store.backend
    with ctx.store() as log_store:
        behind = events_behind(feed_sizes(log_store), positions)
        stopped = sorted(feed.hex() for feed in log_store.stopped())
    return {"state_hash": hasher.hexdigest(), "backend": backend, "items": hasher.items,
            "positions": {feed.hex(): seq for feed, seq in sorted(positions.items())},
            "events_behind": behind, "feeds_stopped": stopped}


def cmd_state_hash(ctx: Context) -> int:
    answer = _run(_state_hash(ctx))
    if ctx.args.json:
        print_json(answer)
    else:
        print(answer["state_hash"])
    # Two sites' hashes are comparable only when both graphs hold all their logs hold.
    if answer["events_behind"]:
        print(f"heimdall: note: this hash is of a graph that is not current; "
              f"{_behind_text(answer['events_behind'])}", file=sys.stderr)
    for feed in answer["feeds_stopped"]:
        print(f"heimdall: note: feed {feed} of the log is stopped (integrity failure or fork, "
              "see 'heimdall log verify'): sites may differ by it", file=sys.stderr)
    return EXIT_OK


async def _query(ctx: Context) -> tuple[dict[str, Any] | Unanswered, int]:
    """The answer (or why there is none) and how many log events the graph is behind."""
    from heimdall_core.graph.query import QueryKeys, Unanswered, open_keystore, query_value
    from heimdall_core.ingest.run import normalize_options, pii_policy

    keystore = open_keystore(ctx.data_dir)
    try:
        keys = None
        if keystore is not None:
            keys = QueryKeys(keystore.index_keys, keystore if ctx.args.reveal else None)
        async with _opened(ctx) as store:
            behind = await _unprojected(ctx, store)
            try:
                answer: dict[str, Any] | Unanswered = await query_value(
                    store, rules_from(ctx.settings), ctx.args.value, kind=ctx.args.kind, keys=keys,
                    reveal_values=ctx.args.reveal, co_values=ctx.args.limit,
                    options=normalize_options(ctx.settings), policy=pii_policy(ctx.settings))
            except Unanswered as exc:
                answer = exc
    finally:
        if keystore is not None:
            keystore.close()
    return answer, behind


async def _unprojected(ctx: Context, store: GraphStore) -> int:
    """Events of the log the graph does not hold yet. ``heimdall serve`` projects them as
    they come; without it, an ingest is in the graph only after ``heimdall project``, and
    an analyst must not read "not seen" where the truth is "not projected yet"."""
    from heimdall_core.graph.projector import events_behind, feed_sizes

    positions = await store.positions()
    with ctx.store() as log_store:
        return events_behind(feed_sizes(log_store), positions)


def _behind_text(events: int) -> str:
    return (f"the graph is {events} log event(s) behind: run `heimdall project` (or keep "
            "`heimdall serve` running) to include them")


def cmd_query(ctx: Context) -> int:
    """Exit 0 with an answer, 4 (EXIT_NOT_SEEN) for a value not seen, 2 for a bad question
    or one the PII policy makes unanswerable; with ``--json`` the last two print the body
    HTTP gives (404, 422) on stdout."""
    from heimdall_core.errors import QueryError
    from heimdall_core.graph.query import NotSeen, render_text

    try:
        answer, behind = _run(_query(ctx))
    except QueryError as exc:
        print(f"heimdall: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not isinstance(answer, dict):
        if ctx.args.json:
            print_json(answer.body)
        # "Not seen" may only mean "not projected yet": say so where it is read.
        note = f"; {_behind_text(behind)}" if behind and isinstance(answer, NotSeen) else ""
        print(f"heimdall: {answer}{note}", file=sys.stderr)
        return EXIT_NOT_SEEN if isinstance(answer, NotSeen) else EXIT_USAGE
    if ctx.args.json:
        print_json(answer)  # the same JSON as GET /v1/indicators; the note goes to stderr
    else:
        print(render_text(answer))
    if behind:
        print(f"heimdall: note: this answer may be incomplete; {_behind_text(behind)}", file=sys.stderr)
    return EXIT_OK
