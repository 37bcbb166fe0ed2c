"""GET /v1/indicators/{kind}/{value}: the answer of ``heimdall query --json``, over HTTP.

An unknown kind or a value that is not valid for its kind is 400, a value never seen is
404, the graph database being away is 503; each with a JSON body, never a 500. Personal
values are found by blind index but never revealed over HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from heimdall_core.api.app import SETTINGS_KEY, error_body
from heimdall_core.config import Settings
from heimdall_core.errors import DatabaseUnavailable, GraphError, HeimdallError, NotFound, QueryError
from heimdall_core.graph.backends import make_store, rules_from
from heimdall_core.graph.query import CO_VALUES_MAX, QueryKeys, open_keystore, query_value
from heimdall_core.graph.store import CO_VALUES_DEFAULT, GraphStore
from heimdall_core.ingest.run import normalize_options
from heimdall_core.normalize import KINDS

log = logging.getLogger("heimdall.api.query")


class GraphHandle:
    """The app's graph store, opened on first use (the database may come up later)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rules = rules_from(settings)
        self.options = normalize_options(settings)
        self._store: GraphStore | None = None
        self._keys: QueryKeys | None = None
        self._lock = asyncio.Lock()

    async def store(self) -> GraphStore:
        async with self._lock:
            if self._store is None:
                store = make_store(self.settings, rules=self.rules)
                await store.open()
                self._store = store
            return self._store

    def keys(self) -> QueryKeys:
        """Index keys only: enough to find personal values, never to decrypt them."""
        if self._keys is None:
            keystore = open_keystore(self.settings.data_dir)
            if keystore is None:
                self._keys = QueryKeys(None)
            else:
                with keystore:
                    self._keys = QueryKeys(keystore.index_keys)
        return self._keys

    async def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            await store.close()


GRAPH_KEY = web.AppKey("graph", GraphHandle)


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/indicators/{kind}/{value:.+}", get_indicator)
    app.cleanup_ctx.append(_graph_context)


async def _graph_context(app: web.Application) -> AsyncIterator[None]:
    handle = GraphHandle(app[SETTINGS_KEY])
    app[GRAPH_KEY] = handle
    yield
    await handle.close()


async def get_indicator(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    value = request.match_info["value"]
    if kind not in KINDS:
        return error_body(400, f"unknown kind {kind!r}", kinds=sorted(KINDS))
    try:
        limit = int(request.query.get("limit", CO_VALUES_DEFAULT))
    except ValueError:
        return error_body(400, f"limit must be an integer 1..{CO_VALUES_MAX}")
    handle = request.app[GRAPH_KEY]
    try:
        answer = await query_value(await handle.store(), handle.rules, value, kind=kind, keys=handle.keys(),
                                   co_values=limit, options=handle.options)
    except NotFound as exc:
        return error_body(404, str(exc), kind=kind)
    except QueryError as exc:
        return error_body(400, str(exc), kind=kind)
    except DatabaseUnavailable as exc:
        log.warning("query: graph database unavailable: %s", exc)
        return error_body(503, "the graph database is unavailable; retry later")
    except GraphError as exc:
        log.error("query: graph error: %s", exc)
        return error_body(503, "the graph cannot answer right now; see the server log")
    except HeimdallError as exc:
        return error_body(400, str(exc), kind=kind)
    return web.json_response(answer)
