"""The site's HTTP API (aiohttp). Route groups live in their own modules and are
mounted here; the sync issue adds TLS 1.3 + OIDC and the sync routes.

Until then the API listens on 127.0.0.1 only (see ``serve``), whatever is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import importlib
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from heimdall_core import __version__
from heimdall_core.config import Settings
from heimdall_core.errors import (
    DatabaseUnavailable,
    FeedBroken,
    FeedBusy,
    FeedStopped,
    HeimdallError,
    IntegrityError,
    KeyMaterialError,
    StaleLogError,
)
from heimdall_core.log.store import LogStore

log = logging.getLogger("heimdall.api")

SETTINGS_KEY = web.AppKey("settings", Settings)
# Set when the server begins to stop: uploads in hand are cut off at once (see post_dump).
STOPPING_KEY = web.AppKey("stopping", asyncio.Event)
LOOPBACK = "127.0.0.1"
SHUTDOWN_TIMEOUT_S = 10.0
"""How long requests in hand may run once the server stops, before they are cancelled.
With the projector's STOP_WAIT_S it bounds a stop well under systemd's stop timeout."""
SERVE_LOCK_FILE = "serve.lock"
FEED_BUSY_RETRY_AFTER_S = 30
"""Retry-After of a 503 while another process (a CLI ingest) writes the site's feed."""
NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
SQLITE_PRIMARY_CODE_MASK = 0xFF  # extended result codes keep the primary one in the low byte
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
    except Exception as exc:
        fault = server_fault(exc)
        if fault is not None:
            return fault_reply(fault, exc, request)
        if isinstance(exc, HeimdallError):
            return error_body(400, str(exc))
        # The route's template, never the path: a path can be personal data
        # (GET /v1/indicators/email/...). The traceback's frames hold no argument values.
        log.exception("unhandled error on %s %s", request.method, route_of(request))
        return error_body(500, "internal error; see the server log")


@dataclass(frozen=True, slots=True)
class ServerFault:
    """A failure that is the server's, not the request's: a client may retry it later."""

    status: int  # 503, or 507 when storage ran out
    message: str  # for the client: what failed and what to do, never a value or a path
    retry_after_s: int | None = None


def server_fault(exc: BaseException) -> ServerFault | None:
    """What ``exc`` means when it is the server's fault (storage, its log, its key store,
    another writer), or None when the request itself was bad (400)."""
    if isinstance(exc, FeedBusy):
        return ServerFault(503, "the site's feed is being written by another process (a CLI "
                           "ingest?); retry later", FEED_BUSY_RETRY_AFTER_S)
    if isinstance(exc, FeedBroken):  # the upload before this one failed to write: reopened next
        return ServerFault(503, "the site's log could not be written just now (see the server "
                           "log); retry", FEED_BUSY_RETRY_AFTER_S)
    if isinstance(exc, FeedStopped | IntegrityError | StaleLogError):
        return ServerFault(503, "the site's log refuses writes after an integrity failure until "
                           "an operator repairs it (docs/operations.md)")
    if isinstance(exc, DatabaseUnavailable):
        return ServerFault(503, "the graph database is unavailable; retry later")
    if isinstance(exc, OSError) and not isinstance(exc, ConnectionError):  # not the client's
        if exc.errno in NO_ROOM_ERRNOS:
            return ServerFault(507, "the server's storage has no room left; retry once an "
                               "operator freed space")
        return ServerFault(503, "an I/O error on the server's storage; see the server log")
    if isinstance(exc, KeyMaterialError):
        code = getattr(exc.__cause__, "sqlite_errorcode", None)  # set by SQLite, if it failed
        full = isinstance(code, int) and code & SQLITE_PRIMARY_CODE_MASK == sqlite3.SQLITE_FULL
        if full:
            return ServerFault(507, "the PII key store has no room left; retry once an operator "
                               "freed space")
        return ServerFault(503, "the PII key store cannot be used; see the server log")
    return None


def fault_reply(fault: ServerFault, exc: BaseException, request: web.BaseRequest) -> web.Response:
    """Log one warning line for a server-side failure (our own message: it names files
    and positions, never a value) and answer with its status and cause."""
    log.warning("%s %s failed (HTTP %d): %s: %s", request.method, route_of(request), fault.status,
                type(exc).__name__, exc)
    reply = error_body(fault.status, fault.message)
    if fault.retry_after_s is not None:
        reply.headers["Retry-After"] = str(fault.retry_after_s)
    return reply


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
    """200 while the server answers, "degraded" with the reasons when a feed of its log is
    stopped (the site's own: uploads are refused) or forked, or its projection is stopped
    or waiting (queries may then be stale): see docs/operations.md."""
    from heimdall_core.api.projection import PROJECTION_KEY

    status = request.app.get(PROJECTION_KEY)
    problems = log_problems(request.app[SETTINGS_KEY].data_dir)
    problems += [] if status is None else status.problems()
    body: dict[str, object] = {"status": "degraded" if problems else "ok"}
    if problems:
        body["reasons"] = problems
    return web.json_response(body)


def log_problems(data_dir: Path) -> list[str]:
    """Stopped feeds and forks of the log, in words fit for anyone (no feed ids: the
    server log and `heimdall log stats` have them)."""
    with LogStore(data_dir) as store:
        stopped = store.stopped()
        forks = len(store.forks())
        own = store.site.feed
    found = []
    if own in stopped:
        found.append("the site's own feed is stopped (integrity failure or fork): uploads are "
                     "refused until an operator repairs it; see the server log")
    if others := len(stopped) - (own in stopped):
        found.append(f"{others} other feed(s) of the log are stopped (integrity failure or fork); "
                     "see 'heimdall log stats'")
    if forks:
        found.append(f"{forks} fork proof(s) held: a feed presented two histories; see "
                     "'heimdall log verify'")
    return found


async def metrics_text(request: web.Request) -> web.Response:
    from heimdall_core import metrics
    from heimdall_core.api.projection import PROJECTION_KEY

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
    app[STOPPING_KEY] = asyncio.Event()
    app.on_shutdown.append(_stopping)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/metrics", metrics_text)
    for name in ROUTE_MODULES:
        importlib.import_module(name).setup(app)
    if project:
        importlib.import_module("heimdall_core.api.projection").setup(app)
    return app


async def _stopping(app: web.Application) -> None:
    log.info("stopping: uploads in hand are cut off, other requests get up to %.0f s",
             SHUTDOWN_TIMEOUT_S)
    app[STOPPING_KEY].set()


def serve(settings: Settings) -> None:
    """Run the API in the foreground on 127.0.0.1 (loopback only until TLS + OIDC exist),
    the only server of its data directory."""
    with serve_lock(settings.data_dir):
        if settings.api.host != LOOPBACK:
            log.warning("api.host=%s ignored: the API listens on %s only until TLS and OIDC are "
                        "configured", settings.api.host, LOOPBACK)
        # aiohttp's default access log prints the request line, whose path and query string
        # can hold personal data (GET /v1/indicators/email/...): log the route template
        # instead. run_app calls ``print`` once, when it listens: that is the start line.
        web.run_app(create_app(settings, project=True), host=LOOPBACK, port=settings.api.port,
                    print=functools.partial(_log_started, settings), access_log_class=RouteAccessLogger,
                    shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    log.info("stopped")


def _log_started(settings: Settings, _banner: str) -> None:
    # The back end's name only: its DSN can hold a password.
    log.info("heimdall %s serving data directory %s on %s:%d (graph backend %s)", __version__,
             settings.data_dir, LOOPBACK, settings.api.port, settings.graph.backend)


@contextlib.contextmanager
def serve_lock(data_dir: Path) -> Iterator[None]:
    """Hold ``data_dir/serve.lock`` (flock) while serving: two servers on one data directory
    would both project into one graph. The kernel releases the lock when the process ends,
    however it ends (SIGKILL too), so a stale file never blocks a start."""
    fd = os.open(data_dir / SERVE_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise HeimdallError(f"another heimdall serve (pid {holder}) uses this data directory "
                                f"({data_dir}); stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


class RouteAccessLogger(AbstractAccessLogger):
    """One line per request: method, route template (never the concrete path), status, time."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %d %.1fms", request.method, route_of(request), response.status, time * 1000)
