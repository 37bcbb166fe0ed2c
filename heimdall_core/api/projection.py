"""The projector as a background task of the site's server (``heimdall serve``).

The server keeps its graph up to date by following the log: new events (from HTTP
uploads, CLI ingests, imports) are folded in within a poll interval. The projector waits
and retries with backoff while the database is away; ingest keeps appending meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from heimdall_core.api.app import SETTINGS_KEY
from heimdall_core.graph.backends import make_store, rules_from
from heimdall_core.graph.projector import Projector, ProjectorOptions
from heimdall_core.log.feed import LogOptions
from heimdall_core.log.store import LogStore

log = logging.getLogger("heimdall.api")

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_projector_context)


async def _projector_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    rules = rules_from(settings)
    store = make_store(settings, None, rules)
    stop = asyncio.Event()
    log_store = LogStore(settings.data_dir, LogOptions.from_settings(settings.log))
    projector = Projector(log_store, store, rules, ProjectorOptions.from_settings(settings.graph))

    async def run() -> None:
        # The server must never go on answering from a graph nobody updates: any failure
        # of a pass is logged with its traceback and the projector starts again (backoff).
        delay = RETRY_FIRST_S
        while not stop.is_set():
            try:
                await store.open()
                try:
                    await projector.follow(stop)
                finally:
                    await store.close()
            except Exception:
                log.exception("projector failed; retrying in %.0f s", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, RETRY_MAX_S)

    task = asyncio.create_task(run(), name="projector")
    yield
    stop.set()
    with contextlib.suppress(asyncio.CancelledError):
        try:
            await asyncio.wait_for(task, 30)
        except TimeoutError:
            log.warning("projector did not stop within 30 s; cancelling it")
            task.cancel()
            await task
    log_store.close()
