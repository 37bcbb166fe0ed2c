"""GET /v1/indicators/{kind}/{value}: the answer of ``heimdall query --json``, over HTTP.

The value is one path segment, percent-encoded (``quote(value, safe="")``,
``encodeURIComponent``): it is percent-decoded exactly once, here, from the path as sent,
so ``%`` must be sent as ``%25`` and ``?`` as ``%3F`` (a bare ``?`` starts the query
string: the rest would be taken for parameters, which is refused). A ``/`` may be left
as is. ``GET /v1/indicators/{kind}?value=...`` is the same question with the value as
a form-encoded query parameter (there ``+`` is a space and ``&`` must be ``%26``).

Statuses, each with a JSON body ``{"error", "status", ...}``, never a 500: 200 the
answer; 400 a bad question (unknown kind, no value, a value that is not UTF-8 or not
valid for its kind, a bad parameter); 404 a value never seen; 422 a value of a kind the
site's PII policy keeps unsearchable (``drop``, or ``encrypt`` without a blind index);
503 the graph database away. 400, 404 and 422 bodies say what was asked in ``query``:
the kind, and the value only for a kind the policy keeps in clear (never a personal
value). Personal values are found by blind index but never revealed over HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, unquote_to_bytes

from aiohttp import web

from heimdall_core.api.app import SETTINGS_KEY, error_body
from heimdall_core.config import Settings
from heimdall_core.errors import DatabaseUnavailable, GraphError, HeimdallError, QueryError
from heimdall_core.graph.backends import make_store, rules_from
from heimdall_core.graph.query import CO_VALUES_MAX, QueryKeys, Unanswered, asked, open_keystore, query_value
from heimdall_core.graph.store import CO_VALUES_DEFAULT, GraphStore
from heimdall_core.ingest.run import normalize_options, pii_policy
from heimdall_core.normalize import KINDS

log = logging.getLogger("heimdall.api.query")

PARAMETERS = ("limit", "value")
PATH_SEGMENTS_BEFORE_VALUE = 4
"""``""``, ``v1``, ``indicators`` and the kind: what ``str.split("/")`` gives before the value."""


class BadRequest(Exception):
    """A 400 found while reading the request, before the question is asked."""


class GraphHandle:
    """The app's graph store, opened on first use (the database may come up later)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rules = rules_from(settings)
        self.options = normalize_options(settings)
        self.policy = pii_policy(settings)
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
    # The value as ?value=, or missing: a JSON 400 rather than aiohttp's plain-text 404.
    app.router.add_get("/v1/indicators/{kind}", get_indicator)
    app.router.add_get("/v1/indicators/{kind}/", get_indicator)
    app.router.add_get("/v1/indicators", no_kind)
    app.router.add_get("/v1/indicators/", no_kind)
    app.cleanup_ctx.append(_graph_context)


async def _graph_context(app: web.Application) -> AsyncIterator[None]:
    handle = GraphHandle(app[SETTINGS_KEY])
    app[GRAPH_KEY] = handle
    yield
    await handle.close()


async def no_kind(_: web.Request) -> web.Response:
    return error_body(400, "say the kind and the value: GET /v1/indicators/{kind}/{value}",
                      kinds=sorted(KINDS))


async def get_indicator(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    if kind not in KINDS:
        return error_body(400, f"unknown kind {kind!r}", kinds=sorted(KINDS), query={"kind": kind})
    handle = request.app[GRAPH_KEY]
    try:
        params = _parameters(request)
        value = _value(request, params)
    except BadRequest as exc:
        return error_body(400, str(exc), query={"kind": kind})
    try:
        limit = _limit(params)
    except BadRequest as exc:
        return error_body(400, str(exc), query=asked(kind, value, handle.policy))
    try:
        answer = await query_value(await handle.store(), handle.rules, value, kind=kind, keys=handle.keys(),
                                   co_values=limit, options=handle.options, policy=handle.policy)
    except Unanswered as exc:
        return web.json_response(exc.body, status=exc.status)
    except QueryError as exc:
        return error_body(400, str(exc), query=asked(kind, value, handle.policy))
    except DatabaseUnavailable as exc:
        log.warning("query: graph database unavailable: %s", exc)
        return error_body(503, "the graph database is unavailable; retry later")
    except GraphError as exc:
        log.error("query: graph error: %s", exc)
        return error_body(503, "the graph cannot answer right now; see the server log")
    except HeimdallError as exc:
        return error_body(400, str(exc), query={"kind": kind})
    return web.json_response(answer)


def _parameters(request: web.Request) -> dict[str, str]:
    """The query string, decoded once and strictly (aiohttp's view of it is lenient)."""
    try:
        pairs = parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True,
                          encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("the query string is not valid UTF-8 once percent-decoded") from None
    names = [name for name, _ in pairs]
    if any(name not in PARAMETERS for name in names):
        # Likely a '?' of the value itself, sent bare: its name could be personal data.
        raise BadRequest(f"unknown query parameter; the parameters are {', '.join(PARAMETERS)} "
                         "(a '?' in the value must be percent-encoded as %3F)")
    if len(set(names)) != len(names):
        raise BadRequest("a query parameter is given more than once")
    return dict(pairs)


def _value(request: web.Request, params: dict[str, str]) -> str:
    """The value, from the path (percent-decoded once, from the bytes sent) or ?value=."""
    segments = request.rel_url.raw_path.split("/", PATH_SEGMENTS_BEFORE_VALUE)
    in_path = segments[PATH_SEGMENTS_BEFORE_VALUE] if len(segments) > PATH_SEGMENTS_BEFORE_VALUE else ""
    if in_path and "value" in params:
        raise BadRequest("give the value once: in the path or as ?value=, not both")
    if not in_path:
        value = params.get("value", "")
    else:
        try:
            value = unquote_to_bytes(in_path).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("the value is not valid UTF-8 once percent-decoded") from None
    if not value:
        raise BadRequest("the value is empty: GET /v1/indicators/{kind}/{value} (percent-encoded) "
                         "or /v1/indicators/{kind}?value=...")
    return value


def _limit(params: dict[str, str]) -> int:
    try:
        return int(params.get("limit", CO_VALUES_DEFAULT))
    except ValueError:
        raise BadRequest(f"limit must be an integer 1..{CO_VALUES_MAX}") from None
