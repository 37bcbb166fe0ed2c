"""A request aiohttp refuses before routing (a request line over its 8,190-byte limit)
must not put the path, and so the value asked about, in the server's log, and must not
break the access log: `heimdall serve` as a real process, the request over a raw socket."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ingest_helpers import cli, site_env

PERSONAL = "john.doe%40corp.example"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _send(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _up(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if b" 200 " in _send(port, b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"):
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "server did not come up"
        time.sleep(0.1)


def test_an_overlong_request_line_is_refused_without_logging_its_path(tmp_path: Path) -> None:
    data = tmp_path / "site"
    cli(data, "init")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "heimdall_core.cli.main", "serve"],
                            env=site_env(data, HMD_API__PORT=str(port)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _up(port)
        path = f"/v1/indicators/email/{PERSONAL}?value={'x' * 9000}"
        reply = _send(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert reply.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")  # to the sender only
        # The server goes on answering.
        assert b" 200 " in _send(port, b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    log = err.decode()
    assert proc.returncode == 0, log
    assert "john.doe" not in log and "xxxxxxxx" not in log, log
    assert "Traceback" not in log and "AssertionError" not in log, log
    assert "refused a malformed request (LineTooLong, HTTP 400)" in log, log
