"""`heimdall serve` as a real process: upload a dump over HTTP, the background projector
folds it in, the indicator answers; SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

from ingest_helpers import SAMPLE, SERVE_STOP_WAIT_S, cli, serve_process

PROJECTED_WAIT_S = 30.0  # for the background projector to fold an upload in


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_serve_ingests_projects_and_answers(tmp_path: Path) -> None:
    data = tmp_path / "site"
    cli(data, "init")
    with serve_process(tmp_path, data) as (proc, base, log_file):
        request = urllib.request.Request(f"{base}/v1/dumps?source=served", data=SAMPLE.read_bytes(),
                                         method="POST", headers={"Content-Type": "text/csv"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 201
        deadline = time.monotonic() + PROJECTED_WAIT_S
        while True:
            status, body = _get(f"{base}/v1/indicators/domain/login.example.com")
            if status == 200:
                break
            assert status == 404 and time.monotonic() < deadline, body
            time.sleep(0.2)
        assert json.dumps(body).count("served") >= 1
        assert _get(f"{base}/v1/indicators/planet/mars")[0] == 400
        status, _ = _get(f"{base}/v1/indicators/email/Alice.0%40example.com")
        assert status == 200
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=SERVE_STOP_WAIT_S)
    err = log_file.read_bytes()
    assert returncode == 0, err.decode()
    # The access log names routes, never the values in request paths.
    assert b"/v1/indicators/{kind}/{value}" in err
    assert b"alice.0" not in err.lower() and b"login.example.com" not in err
