"""The site's HTTP API (aiohttp). Route groups live in their own modules and are
mounted here; the sync issue adds TLS 1.3 + OIDC and the sync routes.

Until then the API listens on 127.0.0.1 only (see ``serve``), whatever is configured.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from heimdall_core.config import Settings
from heimdall_core.errors import HeimdallError

log = logging.getLogger("heimdall.api")

SETTINGS_KEY = web.AppKey("settings", Settings)
LOOPBACK = "127.0.0.1"
# Route groups: modules with ``setup(app: web.Application) -> None``.
ROUTE_MODULES = (
    "heimdall_core.api.ingest_routes",
    "heimdall_core.api.query_routes",
)


def error_body(status: int, message: str, **extra: object) -> web.Response:
    body: dict[str, object] = {"error": message, "status": status}
    body.update(extra)
    return web.json_response(body, status=status)


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure becomes a JSON body with a status; never a bare 500 with a traceback."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except HeimdallError as exc:
        return error_body(400, str(exc))
    except Exception:
        # The route's template, never the path: a path can be personal data
        # (GET /v1/indicators/email/...). The traceback's frames hold no argument values.
        log.exception("unhandled error on %s %s", request.method, route_of(request))
        return error_body(500, "internal error; see the server log")


def route_of(request: web.BaseRequest) -> str:
    """The template of the route a request matched (``/v1/indicators/{kind}/{value}``),
    or "-" when none did (a request aiohttp refused before routing, e.g. a request line
    over its limit, has no match at all): what logs may say of a request."""
    try:
        match = getattr(request, "match_info", None)
    except AssertionError:  # web.Request.match_info of a request that was never routed
        return "-"
    if match is not None and match.route.resource is not None:
        return str(match.route.resource.canonical)
    return "-"


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request it cannot parse (a request line or header over its limit,
    bad syntax) at ERROR with a traceback whose message quotes the raw bytes: the path,
    and so the value asked about (``GET /v1/indicators/email/...``). Such a record is
    rewritten to one warning line naming the error's kind and status only."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "refused a malformed request (%s, HTTP %s)"
            record.args = (type(exc).__name__, exc.code)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _quiet_malformed_requests() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server_log.filters):
        server_log.addFilter(MalformedRequestFilter())


async def health(request: web.Request) -> web.Response:
    """200 while the server answers, "degraded" with the reasons when its projection is
    stopped or waiting (queries may then be stale; ingest goes on): see docs/operations.md."""
    from heimdall_core.api.projection import PROJECTION_KEY

    status = request.app.get(PROJECTION_KEY)
    problems = [] if status is None else status.problems()
    body: dict[str, object] = {"status": "degraded" if problems else "ok"}
    if problems:
        body["reasons"] = problems
    return web.json_response(body)


async def metrics_text(request: web.Request) -> web.Response:
    from heimdall_core import metrics
    from heimdall_core.api.projection import PROJECTION_KEY
    from heimdall_core.log.store import LogStore

    with LogStore(request.app[SETTINGS_KEY].data_dir) as store:
        metrics.LOG_FORKS.set(len(store.forks()))
        metrics.LOG_FEEDS_STOPPED.set(len(store.stopped()))
        sizes = dict(store.iter_feed_states())
    for feed, size in sizes.items():
        metrics.LOG_FEED_EVENTS.labels(feed.hex()[:16]).set(size)
    status = request.app.get(PROJECTION_KEY)
    if status is not None:
        metrics.GRAPH_EVENTS_BEHIND.labels(status.backend).set(status.events_behind(sizes))
        metrics.GRAPH_FEEDS_STOPPED.set(len(status.stopped))
        metrics.GRAPH_SECONDS_SINCE_PASS.set(status.seconds_since_pass())
        metrics.GRAPH_DATABASE_UNAVAILABLE.set(int(status.database_away))
        metrics.GRAPH_PROJECTION_FAILING.set(int(status.failing))
    return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


def create_app(settings: Settings, *, project: bool = False) -> web.Application:
    """The API; with ``project`` it also follows the log into the graph (``heimdall serve``)."""
    _quiet_malformed_requests()
    app = web.Application(middlewares=[errors_middleware],
                          client_max_size=1 << 20)  # streamed routes read bodies themselves
    app[SETTINGS_KEY] = settings
    app.router.add_get("/v1/health", health)
    app.router.add_get("/metrics", metrics_text)
    for name in ROUTE_MODULES:
        importlib.import_module(name).setup(app)
    if project:
        importlib.import_module("heimdall_core.api.projection").setup(app)
    return app


def serve(settings: Settings) -> None:
    """Run the API in the foreground on 127.0.0.1 (loopback only until TLS + OIDC exist)."""
    if settings.api.host != LOOPBACK:
        log.warning("api.host=%s ignored: the API listens on %s only until TLS and OIDC are "
                    "configured", settings.api.host, LOOPBACK)
    # aiohttp's default access log prints the request line, whose path and query string can
    # hold personal data (GET /v1/indicators/email/...): log the route template instead.
    web.run_app(create_app(settings, project=True), host=LOOPBACK, port=settings.api.port, print=None,
                access_log_class=RouteAccessLogger)


class RouteAccessLogger(AbstractAccessLogger):
    """One line per request: method, route template (never the concrete path), status, time."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %d %.1fms", request.method, route_of(request), response.status, time * 1000)
