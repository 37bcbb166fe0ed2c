"""A request aiohttp refuses before routing (a request line over its 8,190-byte limit)
must not put the path, and so the value asked about, in the server's log, and must not
break the access log: `heimdall serve` as a real process, the request over a raw socket."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from ingest_helpers import SERVE_STOP_WAIT_S, cli, serve_process

PERSONAL = "john.doe%40corp.example"


def _send(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_an_overlong_request_line_is_refused_without_logging_its_path(tmp_path: Path) -> None:
    data = tmp_path / "site"
    cli(data, "init")
    with serve_process(tmp_path, data) as (proc, base, log_file):
        port = int(base.rsplit(":", 1)[1])
        path = f"/v1/indicators/email/{PERSONAL}?value={'x' * 9000}"
        reply = _send(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert reply.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")  # to the sender only
        # The server goes on answering.
        assert b" 200 " in _send(port, b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=SERVE_STOP_WAIT_S) == 0
    log = log_file.read_text()
    assert "john.doe" not in log and "xxxxxxxx" not in log, log
    assert "Traceback" not in log and "AssertionError" not in log, log
    assert "refused a malformed request (LineTooLong, HTTP 400)" in log, log
