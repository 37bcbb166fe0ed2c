"""The projector as a background task of the site's server (``heimdall serve``).

The server keeps its graph up to date by following the log: new events (from HTTP
uploads, CLI ingests, imports) are folded in within a poll interval. The projector waits
and retries with backoff while the database is away; ingest keeps appending meanwhile.
What it last did is kept in a :class:`ProjectionStatus`, which ``/v1/health`` and
``/metrics`` report: a projection that is stopped or waiting must be visible from outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from heimdall_core.api.app import SETTINGS_KEY
from heimdall_core.errors import DatabaseUnavailable
from heimdall_core.graph.backends import make_store, rules_from
from heimdall_core.graph.projector import (
    FOLLOW_POLL_S,
    ProjectionReport,
    Projector,
    ProjectorOptions,
    events_behind,
)
from heimdall_core.graph.store import GraphStore
from heimdall_core.log.feed import LogOptions
from heimdall_core.log.store import LogStore

log = logging.getLogger("heimdall.api")

STOP_WAIT_S = 15.0
"""For the pass in hand when the server stops, before it is cancelled (each batch is one
transaction with its log positions: a cancelled pass loses nothing, the next start goes on).
With the API's SHUTDOWN_TIMEOUT_S it keeps a stop well under systemd's stop timeout."""


@dataclass(slots=True)
class ProjectionStatus:
    """What the server's projector last did (read by /v1/health and /metrics)."""

    backend: str
    started: float = field(default_factory=time.monotonic)
    last_pass: float | None = None  # monotonic time the last completed pass ended
    positions: dict[bytes, int] = field(default_factory=dict)  # the graph's, after that pass
    stopped: frozenset[bytes] = frozenset()  # feeds held at an event this build cannot fold
    database_away: bool = False  # the last attempt found the graph database unreachable
    failing: bool = False  # the last pass failed for another reason (the log says why)

    def passed(self, report: ProjectionReport) -> None:
        self.last_pass = time.monotonic()
        self.positions = dict(report.positions)
        self.stopped = frozenset(report.stopped)
        self.database_away = self.failing = False

    def seconds_since_pass(self) -> float:
        """Since the last completed pass, or since the start while none has completed."""
        return time.monotonic() - (self.started if self.last_pass is None else self.last_pass)

    def events_behind(self, sizes: Mapping[bytes, int]) -> int:
        """Events of a log of ``sizes`` that the graph did not hold at the last pass."""
        return events_behind(sizes, self.positions)

    def problems(self) -> list[str]:
        """Why the projection is degraded, in words fit for anyone (no values, no DSN)."""
        found = []
        if self.database_away:
            found.append("the graph database is unavailable; the projector is waiting for it")
        if self.failing:
            found.append("projection passes are failing; see the server log")
        if self.stopped:
            found.append(f"the projection of {len(self.stopped)} feed(s) is stopped; see the server log")
        return found


PROJECTION_KEY = web.AppKey("projection", ProjectionStatus)


def setup(app: web.Application) -> None:
    settings = app[SETTINGS_KEY]
    app[PROJECTION_KEY] = ProjectionStatus(settings.graph.backend)
    app.cleanup_ctx.append(_projector_context)


async def _projector_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    rules = rules_from(settings)
    store = make_store(settings, None, rules)
    stop = asyncio.Event()
    log_store = LogStore(settings.data_dir, LogOptions.from_settings(settings.log))
    # One attempt per pass: the waiting for the database is done below, where it is seen.
    options = dataclasses.replace(ProjectorOptions.from_settings(settings.graph), attempts_max=1)
    projector = Projector(log_store, store, rules, options)
    task = asyncio.create_task(_follow(store, projector, app[PROJECTION_KEY], stop), name="projector")
    yield
    stop.set()
    with contextlib.suppress(asyncio.CancelledError):
        try:
            await asyncio.wait_for(task, STOP_WAIT_S)
        except TimeoutError:
            log.warning("projector did not stop within %.0f s; cancelling it", STOP_WAIT_S)
            task.cancel()
            await task
    log_store.close()


async def _follow(store: GraphStore, projector: Projector, status: ProjectionStatus,
                  stop: asyncio.Event) -> None:
    """Catch up, wait a poll interval, again, until ``stop``. The server must never go on
    answering from a graph nobody updates: any failure of a pass is logged and recorded in
    ``status``, and the store is opened again after a backoff."""
    backoff = projector.options.backoff()
    opened = False
    try:
        while not stop.is_set():
            wait_s = FOLLOW_POLL_S
            try:
                if not opened:
                    await store.open()
                    opened = True
                report = await projector.catch_up()
            except DatabaseUnavailable as exc:
                status.database_away, status.failing = True, False
                wait_s = backoff.next()
                log.warning("graph database unavailable (%s); retrying in %.0fs", exc, wait_s)
            except Exception:
                status.database_away, status.failing = False, True
                wait_s = backoff.next()
                log.exception("projector failed; retrying in %.0f s", wait_s)
            else:
                status.passed(report)
                backoff.reset()
                if report.events:
                    log.info("projected %d events (%d records) in %.2fs", report.events, report.records,
                             report.seconds)
            if status.database_away or status.failing:
                await store.close()  # the next attempt opens afresh
                opened = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait_s)
    finally:
        await store.close()

