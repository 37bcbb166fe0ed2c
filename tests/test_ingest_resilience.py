"""Killed ingests resume without loss or duplicates; --workers splits across processes/feeds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from ingest_helpers import cli, cli_json, events_of, site_env

from heimdall_core.ingest.registry import DumpRegistry
from heimdall_core.log.store import LogStore

POLL_S = 0.005


def _make_csv(path: Path, rows: int, quoted_every: int = 0) -> Path:
    with open(path, "w") as handle:
        handle.write("email,username,ip,note\n")
        for i in range(rows):
            note = f'"multi\nline {i}, with ""quotes"""' if quoted_every and i % quoted_every == 0 else "x"
            handle.write(f"user{i}@example.com,user{i},10.0.{(i >> 8) % 256}.{i % 256},{note}\n")
    return path


def _positions(data: Path, dump: str) -> Counter[int]:
    seen: Counter[int] = Counter()
    for event in events_of(data, "records.ingested"):
        if event.payload["dump"].hex() == dump:
            seen.update(position for position, _ in event.payload["records"])
    return seen


def _wait_for_acknowledged_records(data: Path, timeout_s: float = 90.0) -> None:
    """Return as soon as the ingest running on ``data`` has acknowledged some records.

    Polled in this process (a `heimdall dumps` per poll took ~0.3-0.5 s under load, long
    enough for a whole parallel ingest of these files to finish before the kill)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        store = LogStore(data)
        try:
            registry = DumpRegistry(store)
            registry.refresh()
            if any(dump.records > 0 for dump in registry.dumps()):
                return
        finally:
            store.close()
        time.sleep(POLL_S)
    raise AssertionError(f"no records acknowledged within {timeout_s} s")


def _ingest_in_background(data: Path, *args: str, stderr: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    """``heimdall ingest ARGS`` in its own process group (its workers included), returned
    once it has acknowledged records: killed then, it leaves an incomplete dump."""
    command = [sys.executable, "-m", "heimdall_core.cli.main", "ingest", *args, "--no-progress"]
    proc = subprocess.Popen(command, env=site_env(data), stdout=subprocess.DEVNULL, stderr=stderr,
                            text=True, start_new_session=True)
    _wait_for_acknowledged_records(data)
    return proc


def test_killed_ingest_is_reported_incomplete_and_resumes(tmp_path: Path) -> None:
    data = tmp_path / "site"
    cli(data, "init")
    rows = 120_000
    dump_file = _make_csv(tmp_path / "big.csv", rows)
    proc = _ingest_in_background(data, str(dump_file), "--source", "big")
    os.kill(proc.pid, signal.SIGKILL)  # without warning
    proc.wait()
    dumps = cli_json(data, "dumps", "--json")
    assert len(dumps) == 1 and dumps[0]["finished"] is False
    acked = dumps[0]["records"]
    assert 0 < acked < rows
    listing = cli(data, "dumps").stdout
    assert "INCOMPLETE" in listing and "resume" in listing
    assert cli(data, "log", "verify").returncode == 0
    summary = cli_json(data, "ingest", str(dump_file), "--source", "big", "--json")
    assert summary["resumed"] is True and summary["dump_id"] == dumps[0]["dump"]
    assert summary["records"] == rows
    positions = _positions(data, summary["dump_id"])
    assert set(positions) == set(range(2, rows + 2)), "every record exactly once"
    assert max(positions.values()) == 1, "no record written twice"
    assert len(events_of(data, "dump.started")) == 1
    assert cli_json(data, "dumps", "--json")[0]["finished"] is True


def test_workers_split_a_dump_across_processes_and_feeds(tmp_path: Path) -> None:
    data = tmp_path / "site"
    cli(data, "init")
    rows = 20_000
    dump_file = _make_csv(tmp_path / "w.csv", rows, quoted_every=97)
    summary = cli_json(data, "ingest", str(dump_file), "--source", "w", "--workers", "2", "--json")
    assert summary["parts"] == 2
    assert summary["records"] == rows
    announced = events_of(data, "feed.announced")
    assert len(announced) == 2 and {e.payload["part"] for e in announced} == {0, 1}
    feeds_with_records = {e.feed for e in events_of(data, "records.ingested")}
    assert feeds_with_records == {e.payload["feed"] for e in announced}
    # Positions are the line numbers of the file, across both parts, each exactly once.
    expected, line = [], 2
    for i in range(rows):
        expected.append(line)
        line += 2 if i % 97 == 0 else 1
    positions = _positions(data, summary["dump_id"])
    assert sorted(positions) == expected and max(positions.values()) == 1
    assert cli(data, "log", "verify").returncode == 0
    finished = events_of(data, "dump.finished")
    assert finished[0].payload["records"] == rows
    # The workers' feeds are read after the main feed's dump.finished: not counted again.
    listed = cli_json(data, "dumps", "--json")
    assert [(d["finished"], d["records"]) for d in listed] == [(True, rows)]


def test_killed_parallel_ingest_resumes_each_part_exactly_once(tmp_path: Path) -> None:
    data = tmp_path / "site"
    cli(data, "init")
    rows = 160_000
    dump_file = _make_csv(tmp_path / "p.csv", rows, quoted_every=101)
    proc = _ingest_in_background(data, str(dump_file), "--source", "p", "--workers", "2")
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and its worker processes
    proc.wait()
    dumps = cli_json(data, "dumps", "--json")
    assert dumps[0]["finished"] is False and 0 < dumps[0]["records"] < rows
    summary = cli_json(data, "ingest", str(dump_file), "--source", "p", "--workers", "2", "--json")
    assert summary["resumed"] is True and summary["records"] == rows and summary["parts"] == 2
    expected, line = [], 2
    for i in range(rows):
        expected.append(line)
        line += 2 if i % 101 == 0 else 1
    positions = _positions(data, summary["dump_id"])
    assert sorted(positions) == expected and max(positions.values()) == 1
    assert cli(data, "log", "verify").returncode == 0
    listed = cli_json(data, "dumps", "--json")
    assert [(d["finished"], d["records"]) for d in listed] == [(True, rows)]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_restart_closes_the_interrupted_dump_as_superseded(tmp_path: Path, workers: str) -> None:
    """--restart replaces a killed dump: the old one is no longer offered for resume, its
    partial records are not new sightings, and the input counts as ingested once."""
    data = tmp_path / "site"
    cli(data, "init")
    rows = 120_000
    dump_file = _make_csv(tmp_path / "r.csv", rows)
    ingest = ["ingest", str(dump_file), "--source", "r", "--workers", workers]
    proc = _ingest_in_background(data, *ingest[1:])
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    [old] = cli_json(data, "dumps", "--json")
    assert old["finished"] is False and 0 < old["records"] < rows
    new = cli_json(data, *ingest, "--restart", "--json")
    assert new["resumed"] is False and new["records"] == rows and new["dump_id"] != old["dump"]
    listed = {d["dump"]: d for d in cli_json(data, "dumps", "--json")}
    assert listed[old["dump"]]["finished"] is True and listed[old["dump"]]["superseded"] is True
    assert listed[old["dump"]]["duplicate_of"] == new["dump_id"]
    # Its records as the log holds them (a killed worker's last signed batch is kept by the
    # recovery the restart runs first, so there may be more than `dumps` showed before).
    assert listed[old["dump"]]["records"] == sum(_positions(data, old["dump"]).values())
    assert listed[new["dump_id"]]["records"] == rows and not listed[new["dump_id"]]["superseded"]
    listing = cli(data, "dumps").stdout
    assert "INCOMPLETE" not in listing and "resume" not in listing
    assert "superseded" in listing and f"replaced by {new['dump_id']}" in listing
    again = cli_json(data, *ingest, "--json")
    assert again["duplicate"] is True and again["duplicate_of"] == new["dump_id"]
    assert cli(data, "log", "verify").returncode == 0
    cli(data, "project")
    # A user whose record the abandoned dump had logged (line 2 holds user0).
    user = min(_positions(data, old["dump"])) - 2
    [match] = cli_json(data, "query", f"user{user}@example.com", "--json")["matches"]
    assert match["sightings"] == 1, "the abandoned dump's partial records are not new sightings"
    assert match["sightings_in_repeats"] == 1


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_names_the_incomplete_dump_and_how_to_resume(tmp_path: Path, workers: str) -> None:
    data = tmp_path / "site"
    cli(data, "init")
    rows = 120_000
    dump_file = _make_csv(tmp_path / "c.csv", rows)
    ingest = ["ingest", str(dump_file), "--source", "c", "--workers", workers]
    proc = _ingest_in_background(data, *ingest[1:], stderr=subprocess.PIPE)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the parent and its workers
    _, err = proc.communicate(timeout=120)
    [dump] = cli_json(data, "dumps", "--json")
    assert proc.returncode == 130, err
    assert dump["finished"] is False
    assert f"dump {dump['dump']} is incomplete" in err and "run the same command again" in err
    assert err.rstrip().endswith("heimdall: interrupted")
    summary = cli_json(data, *ingest, "--json")
    assert summary["resumed"] is True and summary["records"] == rows


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_dump_resumes_only_read_as_it_began(tmp_path: Path, workers: str) -> None:
    """Resumed with another --map, a dump would mix two mappings under one id (and be
    judged a repeat, or not, on the wrong one): refused, naming what differs."""
    data = tmp_path / "site"
    cli(data, "init")
    dump_file = _make_csv(tmp_path / "big.csv", 120_000)
    proc = _ingest_in_background(data, str(dump_file), "--source", "big", "--map", "note=other",
                                 "--workers", workers)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (incomplete,) = cli_json(data, "dumps", "--json")
    refused = []
    for _ in range(2):
        other = cli(data, "ingest", str(dump_file), "--source", "big", "--map", "note=username",
                    "--workers", workers, check=False)
        assert other.returncode != 0
        assert f"dump {incomplete['dump']} began reading this input" in other.stderr
        assert all(part in other.stderr for part in ("note=other", "note=username", "--restart"))
        refused.append(cli_json(data, "dumps", "--json")[0]["records"])
    # Nothing added by a refused run. (The first one may count more than `incomplete`: an
    # ingest settles its feeds first, and recovery keeps what a killed worker had written
    # and signed but not yet made its head.)
    assert refused[0] == refused[1]
    # Without --map it resumes with the mapping it recorded, not one inferred anew (which
    # here would be note=other by inference too, but may differ in another version).
    same = cli_json(data, "ingest", str(dump_file), "--source", "big", "--workers", workers, "--json")
    assert same["resumed"] is True and same["records"] == 120_000
    assert same["mapping"]["note"] == "other"


def test_a_resume_without_map_keeps_the_mapping_the_dump_began_with(tmp_path: Path) -> None:
    """Begun with --map username=email (not what inference says), then resumed by the
    plain command: the dump goes on as it began, not refused for a mapping it never had."""
    data = tmp_path / "site"
    cli(data, "init")
    dump_file = _make_csv(tmp_path / "big.csv", 120_000)
    proc = _ingest_in_background(data, str(dump_file), "--source", "big", "--map", "note=username")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = cli_json(data, "ingest", str(dump_file), "--source", "big", "--json")
    assert resumed["resumed"] is True and resumed["records"] == 120_000
    assert resumed["mapping"]["note"] == "username"
