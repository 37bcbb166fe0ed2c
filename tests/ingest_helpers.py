"""Shared helpers for ingest tests: a site in a temp dir, the CLI in a subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "heimdall_core" / "samples" / "sample-dump.csv"


def ingested_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **environ: str) -> Path:
    """A site in ``tmp_path`` that ingested the bundled sample dump, for in-process CLI calls
    (``main([...])``): the environment holds only its data dir (no fsync) and ``environ``."""
    from heimdall_core.cli.main import main

    data_dir = tmp_path / "site"
    for name in [n for n in list(os.environ) if n.startswith("HMD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HMD_DATA_DIR", str(data_dir))
    monkeypatch.setenv("HMD_LOG__FSYNC", "false")
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert main(["init"]) == 0
    assert main(["ingest", "--source", "sample", str(SAMPLE), "--no-progress"]) == 0
    return data_dir


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``heimdall ARGS`` in process: (exit status, stdout, stderr)."""
    from heimdall_core.cli.main import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def last_json(out: str) -> Any:
    return json.loads(out.strip().splitlines()[-1])


@contextlib.asynccontextmanager
async def serving(settings: Any) -> AsyncIterator[str]:
    """The site's HTTP API on a real socket (a free port of 127.0.0.1): its base URL."""
    from aiohttp import web

    from heimdall_core.api.app import create_app

    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def site_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HMD_")}
    env["HMD_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


def cli(data_dir: Path, *args: str, input_bytes: bytes | None = None, check: bool = True,
        **env: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "heimdall_core.cli.main", *args],
        input=input_bytes.decode() if input_bytes is not None else None,
        capture_output=True, text=True, env=site_env(data_dir, **env), timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"heimdall {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def cli_json(data_dir: Path, *args: str, **env: str) -> Any:
    proc = cli(data_dir, *args, **env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_dump(path: Path, rows: list[list[str]], header: list[str]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(",".join(header) + "\n")
        for row in rows:
            handle.write(",".join(row) + "\n")
    return path


def events_of(data_dir: Path, kind: str | None = None) -> list[Any]:
    """Every event of every own feed, decoded (kind filter optional)."""
    from heimdall_core.events import decode_frame
    from heimdall_core.log.store import LogStore

    store = LogStore(data_dir)
    out = []
    for feed in store.own_feeds():
        reader = store.reader(feed)
        for _, frame in reader.read_frames(0, reader.state.size):
            event = decode_frame(frame)
            if kind is None or event.kind == kind:
                out.append(event)
    return out


SERVE_START_WAIT_S = 30.0  # for a server process to answer its first request
SERVE_STOP_WAIT_S = 30.0  # for it to stop after SIGTERM (well within systemd's 90 s)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_up(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + SERVE_START_WAIT_S
    while True:
        try:
            with urllib.request.urlopen(f"{base}/v1/health", timeout=5):
                return
        except (urllib.error.URLError, ConnectionError):
            assert proc.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.1)


@contextlib.contextmanager
def serve_process(tmp_path: Path, data: Path, *, preexec: Any = None,
                  **env: str) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """`heimdall serve` on a free port: the process, its base URL and its log file. It is
    stopped (SIGTERM) at the end unless the test stopped it."""
    port = free_port()
    log_file = tmp_path / f"serve-{port}.log"
    with log_file.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "heimdall_core.cli.main", "serve"],
                                env=site_env(data, HMD_API__PORT=str(port), HMD_LOG__FSYNC="false", **env),
                                stdout=subprocess.DEVNULL, stderr=err, preexec_fn=preexec)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_up(base, proc)
        yield proc, base, log_file
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=SERVE_STOP_WAIT_S)
