"""What an operator sees of a running server (the app of ``heimdall serve``, projector
included): /v1/health and /metrics report a stopped projection and a database that is
away; a failing request is logged by its route, never its path."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from heimdall_core import config
from heimdall_core.api import query_routes
from heimdall_core.api.app import RouteAccessLogger, create_app
from heimdall_core.events import encode_body
from heimdall_core.graph.backends import make_store
from heimdall_core.graph.projector import Projector
from heimdall_core.graph.rules import RuleSet
from heimdall_core.log.feed import LogOptions
from heimdall_core.log.store import LogStore, init_site

WAIT_S = 20.0  # for the server's projector to make its first pass (or attempt)
POLL_S = 0.05
SCRAPES = 40


def _site(tmp_path: Path) -> Path:
    data_dir = tmp_path / "site"
    init_site(data_dir, "ops")
    return data_dir


def _settings(data_dir: Path, **env: str) -> config.Settings:
    return config.load(None, {"HMD_DATA_DIR": str(data_dir), "HMD_LOG__FSYNC": "false", **env})


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} missing from /metrics"
    return float(found[1])


async def _until(check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await check():
        assert time.monotonic() < deadline, "the server's projector did not get there in time"
        await asyncio.sleep(POLL_S)


async def _health(client: TestClient[Any, Any]) -> tuple[int, dict[str, Any]]:
    response = await client.get("/v1/health")
    return response.status, await response.json()


async def _metrics(client: TestClient[Any, Any]) -> str:
    response = await client.get("/metrics")
    assert response.status == 200
    return await response.text()


async def test_health_and_metrics_report_a_stopped_projection(tmp_path: Path) -> None:
    data_dir = _site(tmp_path)
    with LogStore(data_dir, LogOptions(fsync=False)) as log_store:
        log_store.writer().append_bodies([encode_body("note", 1, {}), encode_body("strange.kind", 1, {}),
                                          encode_body("note", 1, {})])
    async with TestClient(TestServer(create_app(_settings(data_dir), project=True))) as client:
        async def stopped() -> bool:
            return _metric(await _metrics(client), "heimdall_graph_feeds_stopped") == 1

        await _until(stopped)
        text = await _metrics(client)
        assert 'heimdall_graph_events_behind{backend="sqlite"} 2.0' in text  # held at seq 1 of 3
        assert _metric(text, "heimdall_graph_database_unavailable") == 0
        assert _metric(text, "heimdall_graph_seconds_since_pass") < WAIT_S
        status, body = await _health(client)
        assert status == 200 and body["status"] == "degraded"
        assert any("1 feed(s) is stopped" in reason for reason in body["reasons"])


async def test_health_and_metrics_report_the_database_away(tmp_path: Path) -> None:
    data_dir = _site(tmp_path)
    settings = _settings(data_dir, HMD_GRAPH__BACKEND="age",
                         HMD_GRAPH__POSTGRES_DSN="postgresql://u:pw@127.0.0.1:1/db")  # nothing listens
    with LogStore(data_dir, LogOptions(fsync=False)) as log_store:
        log_store.writer().append_bodies([encode_body("note", 1, {})])
    async with TestClient(TestServer(create_app(settings, project=True))) as client:
        async def away() -> bool:
            return _metric(await _metrics(client), "heimdall_graph_database_unavailable") == 1

        await _until(away)
        text = await _metrics(client)
        assert 'heimdall_graph_events_behind{backend="age"} 1.0' in text
        status, body = await _health(client)
        assert status == 200 and body["status"] == "degraded"
        assert body["reasons"] == ["the graph database is unavailable; the projector is waiting for it"]
        assert "pw" not in str(body)


async def test_health_is_ok_when_the_projection_is_current(tmp_path: Path) -> None:
    data_dir = _site(tmp_path)
    with LogStore(data_dir, LogOptions(fsync=False)) as log_store:
        log_store.writer().append_bodies([encode_body("note", 1, {})])
    async with TestClient(TestServer(create_app(_settings(data_dir), project=True))) as client:
        async def current() -> bool:
            return 'heimdall_graph_events_behind{backend="sqlite"} 0.0' in await _metrics(client)

        await _until(current)
        assert await _health(client) == (200, {"status": "ok"})
        text = await _metrics(client)
        assert _metric(text, "heimdall_graph_feeds_stopped") == 0
        assert _metric(text, "heimdall_graph_database_unavailable") == 0
        assert _metric(text, "heimdall_graph_projection_failing") == 0


async def test_health_and_metrics_report_failing_passes(tmp_path: Path) -> None:
    """A graph built under other merge rules: every pass fails until `heimdall replay`."""
    data_dir = _site(tmp_path)
    with LogStore(data_dir, LogOptions(fsync=False)) as log_store:
        log_store.writer().append_bodies([encode_body("note", 1, {})])
        store = make_store(_settings(data_dir))
        await store.open()
        try:
            await Projector(log_store, store, RuleSet.default()).catch_up()
        finally:
            await store.close()
    settings = _settings(data_dir, HMD_GRAPH__RULES__VALUE__LAST_SEEN_MS="lww")
    async with TestClient(TestServer(create_app(settings, project=True))) as client:
        async def failing() -> bool:
            return _metric(await _metrics(client), "heimdall_graph_projection_failing") == 1

        await _until(failing)
        status, body = await _health(client)
        assert status == 200 and body["status"] == "degraded"
        assert body["reasons"] == ["projection passes are failing; see the server log"]


async def test_unhandled_error_logs_the_route_never_the_path(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*_: object, **__: object) -> dict[str, Any]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(query_routes, "query_value", broken)
    caplog.set_level(logging.INFO)
    server = TestServer(create_app(_settings(_site(tmp_path))))
    await server.start_server(access_log_class=RouteAccessLogger)  # as serve() runs it
    async with TestClient(server) as client:
        response = await client.get("/v1/indicators/email/victim.person@example.com")
        assert response.status == 500
        assert "victim" not in await response.text()
    assert "unhandled error on GET /v1/indicators/{kind}/{value}" in caplog.text
    assert "GET /v1/indicators/{kind}/{value} 500" in caplog.text  # the access log
    assert "victim" not in caplog.text


async def test_scraping_metrics_holds_no_file_open(tmp_path: Path) -> None:
    """Prometheus scrapes every few seconds for months: each scrape reads the log's state
    and must leave no descriptor behind."""
    data_dir = _site(tmp_path)
    with LogStore(data_dir, LogOptions(fsync=False)) as log_store:
        log_store.writer().append_bodies([encode_body("note", 1, {})])
    async with TestClient(TestServer(create_app(_settings(data_dir)))) as client:
        await _metrics(client)
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(SCRAPES):
            await _metrics(client)
        assert len(os.listdir("/proc/self/fd")) - before < SCRAPES // 2
