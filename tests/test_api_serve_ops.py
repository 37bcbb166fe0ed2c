"""Operating `heimdall serve`: what its health says of the log, what an upload the server
cannot take answers (and logs), one server per data directory, a start line, a prompt
and logged stop. The process tests run the real command, as systemd does."""

from __future__ import annotations

import contextlib
import json
import re
import resource
import signal
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from ingest_helpers import SAMPLE, cli, free_port, serve_process

from heimdall_core import __version__, config
from heimdall_core.api.app import SHUTDOWN_TIMEOUT_S, create_app, server_fault
from heimdall_core.api.projection import STOP_WAIT_S
from heimdall_core.errors import FeedBroken, IngestError, KeyMaterialError
from heimdall_core.events import encode_body
from heimdall_core.log.feed import LogOptions
from heimdall_core.log.store import LogStore, init_site

STOP_BOUND_S = 30.0
"""A stop must end well within systemd's 90 s default, whatever is in hand."""
SLOW_CHUNK_S = 0.2  # between the chunks of a slow upload
SLOW_CHUNKS_MAX = 1_000  # a slow upload would last minutes: the stop must cut it off
HEAD_ROWS = 500  # sent at once, before the slow part
FILE_BYTES_MAX = 2 << 20
"""Less than an upload of DISK_FULL_ROWS new people needs in the key store and the log."""
DISK_FULL_ROWS = 60_000


def _settings(data_dir: Path) -> config.Settings:
    return config.load(None, {"HMD_DATA_DIR": str(data_dir), "HMD_LOG__FSYNC": "false"})


async def _upload(client: TestClient[Any, Any]) -> tuple[int, dict[str, Any], str | None]:
    response = await client.post("/v1/dumps", params={"source": "ops"}, data=SAMPLE.read_bytes(),
                                 headers={"Content-Type": "text/csv"})
    return response.status, await response.json(), response.headers.get("Retry-After")


async def test_a_stopped_own_feed_and_a_fork_make_health_degraded_and_uploads_503(tmp_path: Path) -> None:
    data_dir = tmp_path / "site"
    init_site(data_dir, "ops")
    with LogStore(data_dir, LogOptions(fsync=False)) as log_store:
        writer = log_store.writer()
        writer.append_bodies([encode_body("note", 1, {})])
        writer.stop("record checksum mismatch (test)")
        own = log_store.site.feed
    forks = data_dir / "log" / "forks"
    forks.mkdir(parents=True)
    (forks / "fork.json").write_text(json.dumps({"feed": "ab" * 32, "detected_ms": 1,
                                                 "smaller": {"size": 1}, "larger": {"size": 2}}))
    async with TestClient(TestServer(create_app(_settings(data_dir)))) as client:
        response = await client.get("/v1/health")
        body = await response.json()
        assert response.status == 200 and body["status"] == "degraded"
        assert any("site's own feed is stopped" in reason and "uploads are refused" in reason
                   for reason in body["reasons"])
        assert any("1 fork proof(s) held" in reason for reason in body["reasons"])
        assert own.hex() not in json.dumps(body)  # the reasons name no feed
        status, reply, _ = await _upload(client)
    assert status == 503, reply
    assert "integrity failure" in reply["error"] and str(data_dir) not in reply["error"]


async def test_an_upload_while_another_process_writes_the_feed_is_503_with_retry_after(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "site"
    init_site(data_dir, "ops")
    async with TestClient(TestServer(create_app(_settings(data_dir)))) as client:
        # An open writer holds the feed's flock, as a CLI ingest does from its own process.
        with LogStore(data_dir, LogOptions(fsync=False)) as other:
            other.writer()
            status, reply, retry_after = await _upload(client)
        assert status == 503 and retry_after is not None and int(retry_after) > 0, reply
        assert "another process" in reply["error"]
        status, reply, _ = await _upload(client)  # the other writer is gone
        assert status == 201, reply


# ------------------------------------------------------------------ a real process
def test_the_start_is_logged_without_the_dsn(tmp_path: Path) -> None:
    data = tmp_path / "site"
    cli(data, "init")
    # Nothing listens there: the server starts all the same, its projector waits.
    with serve_process(tmp_path, data, HMD_GRAPH__BACKEND="age",
                  HMD_GRAPH__POSTGRES_DSN="postgresql://heimdall:s3cret-pw@127.0.0.1:1/db") as (_, base, log):
        port = base.rsplit(":", 1)[1]
        started = [line for line in log.read_text().splitlines() if "serving" in line]
    assert len(started) == 1, log.read_text()
    assert " INFO " in started[0] and f"heimdall {__version__}" in started[0]
    assert str(data) in started[0] and f"127.0.0.1:{port}" in started[0]
    assert "graph backend age" in started[0]
    assert "s3cret" not in log.read_text()


def test_a_second_serve_on_one_data_directory_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "site"
    cli(data, "init")
    with serve_process(tmp_path, data) as (first, _, _):
        second = cli(data, "serve", check=False, HMD_API__PORT=str(free_port()))
        assert second.returncode == 1
        assert f"another heimdall serve (pid {first.pid}) uses this data directory" in second.stderr
        first.kill()  # the kernel releases the lock whatever way the process ends
        first.wait(timeout=STOP_BOUND_S)
    with serve_process(tmp_path, data) as (again, base, _):
        assert again.poll() is None and base


def _slow_upload(base: str, replies: list[tuple[int, str]]) -> None:
    """A chunked upload that sends a line every SLOW_CHUNK_S: its reply goes to ``replies``."""
    host, port = base.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)))
    conn.sendall(b"POST /v1/dumps?source=slow HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")

    def chunk(data: bytes) -> None:
        conn.sendall(b"%x\r\n%s\r\n" % (len(data), data))

    head = "email,ip\n" + "".join(f"u{i}@example.com,10.0.{i >> 8}.{i & 255}\n" for i in range(HEAD_ROWS))
    with contextlib.suppress(OSError):
        chunk(head.encode())
        for i in range(SLOW_CHUNKS_MAX):
            time.sleep(SLOW_CHUNK_S)
            chunk(f"late{i}@example.com,10.1.0.1\n".encode())
    with contextlib.suppress(OSError):
        reply = conn.makefile("rb").read().decode()
        status = int(reply.split(" ", 2)[1]) if reply else 0
        replies.append((status, reply))
    conn.close()


def test_sigterm_cuts_a_slow_upload_off_says_so_and_stops_soon(tmp_path: Path) -> None:
    assert SHUTDOWN_TIMEOUT_S + STOP_WAIT_S < STOP_BOUND_S
    data = tmp_path / "site"
    cli(data, "init")
    replies: list[tuple[int, str]] = []
    with serve_process(tmp_path, data) as (proc, base, log):
        client = threading.Thread(target=_slow_upload, args=(base, replies))
        client.start()
        time.sleep(2)  # the head is in; the upload goes on a line at a time
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STOP_BOUND_S) == 0
        took = time.monotonic() - began
        client.join(timeout=STOP_BOUND_S)
    text = log.read_text()
    assert took < SHUTDOWN_TIMEOUT_S, text  # cut off at once, not after the timeout
    assert "stopping" in text and text.rstrip().endswith("stopped"), text
    (cut,) = [line for line in text.splitlines() if "upload cut off" in line]
    assert " WARNING " in cut and "the server is stopping" in cut
    kept = re.search(r"dump ([0-9a-f]{32}) stays incomplete with (\d+) records", cut)
    assert kept is not None, cut
    assert "example.com" not in text and "Traceback" not in text
    assert replies and replies[0][0] == 503 and kept[0] in replies[0][1], replies
    (row,) = json.loads(cli(data, "dumps", "--json").stdout)
    assert (row["dump"], row["finished"], row["records"]) == (kept[1], False, int(kept[2]))
    assert row["records"] >= HEAD_ROWS  # the whole records read before the stop are kept


def _no_room() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_BYTES_MAX, FILE_BYTES_MAX))


def test_an_upload_the_disk_cannot_hold_is_507_and_logged(tmp_path: Path) -> None:
    data = tmp_path / "site"
    cli(data, "init")
    # Values kept in clear: the key store stays small, the log's batch outgrows the limit.
    body = "ip,domain\n" + "".join(f"10.{i >> 16}.{i >> 8 & 255}.{i & 255},host{i}.example.org\n"
                                   for i in range(DISK_FULL_ROWS))
    with serve_process(tmp_path, data, preexec=_no_room,
                  HMD_LOG__SEGMENT_BYTES_MAX=str(256 << 10)) as (_, base, log):
        request = urllib.request.Request(f"{base}/v1/dumps?source=big", data=body.encode(),
                                         method="POST", headers={"Content-Type": "text/csv"})
        try:
            urllib.request.urlopen(request, timeout=120)
            raise AssertionError("the upload was accepted beyond the file-size limit")
        except urllib.error.HTTPError as exc:
            status, reply = exc.code, json.loads(exc.read())
        # A small one fits: the server recovered its feed instead of refusing until a restart.
        small = urllib.request.Request(f"{base}/v1/dumps?source=small", data=b"ip\n10.9.9.9\n",
                                       method="POST", headers={"Content-Type": "text/csv"})
        with urllib.request.urlopen(small, timeout=60) as response:
            assert response.status == 201
        text = log.read_text()
    cli(data, "log", "verify")
    assert status == 507, reply
    assert "no room left" in reply["error"] and str(data) not in reply["error"]
    (warning,) = [line for line in text.splitlines() if "POST /v1/dumps failed" in line]
    assert " WARNING " in warning and "(HTTP 507)" in warning and "appending to the log" in warning
    assert "example.org" not in text and "Traceback" not in text


def test_a_full_key_store_is_507_and_its_other_failures_503() -> None:
    """SQLite says SQLITE_FULL when the disk is full (ENOSPC); a file-size limit, as in
    the test above, makes it say "disk I/O error" instead, so this one is built by hand."""
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL
    broken = sqlite3.OperationalError("disk I/O error")
    broken.sqlite_errorcode = sqlite3.SQLITE_IOERR_WRITE

    def status_of(cause: BaseException) -> int | None:
        try:
            raise KeyMaterialError("PII key store DIR: ...") from cause
        except KeyMaterialError as exc:
            fault = server_fault(exc)
        return None if fault is None else fault.status

    assert (status_of(full), status_of(broken)) == (507, 503)
    assert status_of(ValueError("no sqlite code")) == 503
    # An upload queued behind a failed one meets the writer that failed, before it is
    # reopened: the server's fault, and worth a retry.
    behind = server_fault(FeedBroken("feed 51: an earlier write failed (OSError: ...)"))
    assert behind is not None and behind.status == 503 and behind.retry_after_s is not None
    assert server_fault(IngestError("not a dump")) is None  # the client's: 400
    assert server_fault(ConnectionResetError()) is None  # the client went away
