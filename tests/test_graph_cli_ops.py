"""The graph commands as an operator meets them: a directory that is not a site, a graph
behind its log, changed merge rules, a database that is away when following starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ingest_helpers import ingested_site, last_json, run, site_env

FOLLOW_WAIT_S = 30.0
POLL_S = 0.1


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in list(os.environ) if n.startswith("HMD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HMD_LOG__FSYNC", "false")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return ingested_site(tmp_path, monkeypatch)




@pytest.mark.parametrize("command", [["state-hash"], ["query", "192.0.2.83"], ["project"], ["replay"],
                                     ["project", "--follow"], ["stop-db"]])
def test_a_directory_without_a_site_is_refused_and_left_alone(
        command: list[str], tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "not-a-site"
    empty.mkdir()
    code, out, err = run(capsys, "--data-dir", str(empty), *command)
    assert code == 2 and out == ""
    assert "no Heimdall site" in err and "heimdall init" in err
    assert list(empty.iterdir()) == []


def test_state_hash_says_when_the_graph_is_behind_the_log(site: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "state-hash")
    assert code == 0 and len(out.strip()) == 64
    assert "not current" in err and "behind" in err and "heimdall project" in err
    code, out, _ = run(capsys, "state-hash", "--json")
    assert last_json(out)["events_behind"] > 0 and last_json(out)["feeds_stopped"] == []
    assert run(capsys, "project")[0] == 0
    code, out, err = run(capsys, "state-hash")
    assert code == 0 and err == ""
    code, out, _ = run(capsys, "state-hash", "--json")
    assert last_json(out)["events_behind"] == 0


def test_replay_rebuilds_a_graph_built_under_other_rules(site: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`heimdall replay` is what the rules-changed message asks for: it must work."""
    assert run(capsys, "project")[0] == 0
    rules = tmp_path / "rules.toml"
    rules.write_text('[graph.rules.value]\nlast_seen_ms = "lww"\n')
    code, _, err = run(capsys, "--config", str(rules), "state-hash")
    assert code == 1 and "other merge rules" in err and "heimdall replay" in err
    code, _, err = run(capsys, "--config", str(rules), "project", "--follow")  # not a silent loop
    assert code == 1 and "other merge rules" in err and "heimdall replay" in err
    code, out, err = run(capsys, "--config", str(rules), "replay", "--json")
    assert code == 0 and last_json(out)["records"] > 50, err
    code, out, err = run(capsys, "--config", str(rules), "query", "192.0.2.83")
    assert code == 0 and "sample-dump.csv" in out and "other merge rules" not in err


def test_project_follow_waits_for_a_database_that_is_away(tmp_path: Path) -> None:
    """Like `heimdall serve`, not an exit 1 at once; SIGTERM still stops it cleanly."""
    data_dir = tmp_path / "site"
    env = site_env(data_dir, HMD_LOG__FSYNC="false", HMD_GRAPH__BACKEND="age",
                   HMD_GRAPH__POSTGRES_DSN="postgresql://u:Pw-s3cret@127.0.0.1:1/db")  # nothing listens
    subprocess.run([sys.executable, "-m", "heimdall_core.cli.main", "init"], env=env, check=True,
                   capture_output=True, timeout=60)
    stderr_path = tmp_path / "follow.err"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "heimdall_core.cli.main", "project", "--follow"],
                                env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline = time.monotonic() + FOLLOW_WAIT_S
            while stderr_path.read_text().count("retrying in") < 2:
                assert proc.poll() is None, stderr_path.read_text()
                assert time.monotonic() < deadline, "no retries logged"
                time.sleep(POLL_S)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=FOLLOW_WAIT_S) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    err = stderr_path.read_text()
    assert "graph database unavailable" in err and "Pw-s3cret" not in err


def test_db_status_reports_the_configured_dsn(tmp_path: Path, clean_env: None,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """An external graph.postgres_dsn is the graph's database: say which (redacted) and
    whether it answers, not that start-db's database is not running."""
    dsn = "postgresql://u:Pw-s3cret@127.0.0.1:1/db"  # nothing listens
    code, out, err = run(capsys, "--data-dir", str(tmp_path), "db", "status")
    assert code == 1 and "start-db" in out  # nothing configured: the local database's status
    monkeypatch.setenv("HMD_GRAPH__BACKEND", "age")
    monkeypatch.setenv("HMD_GRAPH__POSTGRES_DSN", dsn)
    code, out, err = run(capsys, "--data-dir", str(tmp_path), "db", "status")
    assert code == 1
    assert out.startswith("graph.postgres_dsn postgresql://u:***@127.0.0.1:1/db does not answer")
    assert "start-db" not in out and "Pw-s3cret" not in out + err
    code, out, _ = run(capsys, "--data-dir", str(tmp_path), "db", "status", "--json")
    answer = last_json(out)
    assert code == 1 and answer["running"] is False and answer["source"] == "graph.postgres_dsn"
    assert "Pw-s3cret" not in out
