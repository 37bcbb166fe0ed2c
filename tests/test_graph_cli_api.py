"""The graph commands and GET /v1/indicators on a site that ingested the bundled sample dump."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from heimdall_core import config
from heimdall_core.api.app import create_app
from heimdall_core.cli.main import main

SAMPLE = Path(__file__).resolve().parent.parent / "heimdall_core" / "samples" / "sample-dump.csv"


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data_dir = tmp_path / "site"
    for name in [n for n in list(os.environ) if n.startswith("HMD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HMD_DATA_DIR", str(data_dir))
    monkeypatch.setenv("HMD_LOG__FSYNC", "false")
    assert main(["init"]) == 0
    assert main(["ingest", "--source", "sample", str(SAMPLE), "--no-progress"]) == 0
    return data_dir


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def last_json(out: str) -> Any:
    return json.loads(out.strip().splitlines()[-1])


def test_project_query_replay_state_hash(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "project", "--json")
    report = last_json(out)
    assert code == 0 and report["records"] > 50 and report["stopped"] == {}
    code, out, _ = run(capsys, "query", "192.0.2.83")
    assert code == 0 and "sample-dump.csv" in out and "[protected]" in out and "login.example.com" in out
    code, out, _ = run(capsys, "query", "Alice.0@EXAMPLE.COM", "--json")
    answer = last_json(out)
    assert answer["query"] == {"kind": "email", "value": "alice.0@example.com"}
    assert answer["matches"][0]["form"] == "blind_index"
    code, out, _ = run(capsys, "query", "Alice.0@EXAMPLE.COM", "--reveal")
    assert code == 0 and "alice0" in out
    code, live_hash, _ = run(capsys, "state-hash")
    assert code == 0 and len(live_hash.strip()) == 64
    code, out, _ = run(capsys, "replay", "--json")
    assert code == 0 and last_json(out)["events"] == report["events"]
    assert run(capsys, "state-hash")[1] == live_hash
    code, out, _ = run(capsys, "state-hash", "--json")
    assert last_json(out)["state_hash"] == live_hash.strip() and last_json(out)["backend"] == "sqlite"


def test_query_says_when_the_graph_is_behind_the_log(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Ingested, not projected: "not seen" alone would be a wrong answer.
    code, _, err = run(capsys, "query", "192.0.2.83")
    assert code == 1 and "not seen" in err and "behind" in err and "heimdall project" in err
    assert run(capsys, "project")[0] == 0
    code, out, err = run(capsys, "query", "192.0.2.83")
    assert code == 0 and "sample-dump.csv" in out and "behind" not in err
    assert main(["ingest", "--source", "second", str(SAMPLE), "--no-progress"]) == 0
    code, out, err = run(capsys, "query", "192.0.2.83", "--json")
    assert code == 0 and last_json(out)["matches"][0]["dumps"][0]["name"] == "sample-dump.csv"
    assert "may be incomplete" in err and "behind" in err


def test_query_errors_exit_nonzero_with_a_message(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "project")[0] == 0
    code, _, err = run(capsys, "query", "203.0.113.99")
    assert code == 1 and "not seen" in err
    code, _, err = run(capsys, "query", "plain words")
    assert code == 1 and "--kind" in err
    with pytest.raises(SystemExit):
        main(["query", "x", "--backend", "nosuch"])


async def test_http_answer_equals_cli_json(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The CLI runs its own event loop: give it a thread of its own.
    assert await asyncio.to_thread(main, ["project"]) == 0
    assert await asyncio.to_thread(main, ["query", "192.0.2.83", "--json"]) == 0
    cli_answer = last_json(capsys.readouterr().out)
    settings = config.load(None, {"HMD_DATA_DIR": str(site), "HMD_LOG__FSYNC": "false"})
    async with TestClient(TestServer(create_app(settings))) as client:
        response = await client.get("/v1/indicators/ip/192.0.2.83")
        assert response.status == 200 and await response.json() == cli_answer
        email = await client.get("/v1/indicators/email/alice.0%40example.com")
        body = await email.json()
        assert email.status == 200 and body["matches"][0]["form"] == "blind_index"
        assert all(v["value"] is None for v in body["matches"][0]["co_occurring"]["values"] if v["protected"])
        for path, status in [("/v1/indicators/colour/x", 400), ("/v1/indicators/ip/999.1.1.1", 400),
                             ("/v1/indicators/ip/203.0.113.99", 404), ("/v1/indicators/cidr/10.0.0.0/8", 404),
                             ("/v1/indicators/url/http://example.com/a/b", 404),
                             ("/v1/indicators/ip/192.0.2.83?limit=zero", 400)]:
            response = await client.get(path)
            assert response.status == status, path
            error = await response.json()
            assert error["status"] == status and error["error"]

