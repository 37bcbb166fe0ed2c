"""What the operator sees while a command runs and when projection stops on a feed:
the progress lines of `ingest` and `project`/`replay`, `project`'s exit status and
message for a feed whose projection stopped, and output cut short by its reader."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ingest_helpers import ingested_site

from heimdall_core.cli import graphcmd, ingestcmd
from heimdall_core.cli.main import main
from heimdall_core.events import encode_body
from heimdall_core.graph.projector import Progress as ProjectionProgress
from heimdall_core.ingest.pipeline import Progress as IngestProgress
from heimdall_core.log.feed import LogOptions
from heimdall_core.log.store import LogStore


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def no_redraw_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every call draws (the bars redraw at most twice a second on a real terminal)."""
    monkeypatch.setattr(graphcmd, "PROGRESS_INTERVAL_S", 0.0)
    monkeypatch.setattr(ingestcmd, "PROGRESS_INTERVAL_S", 0.0)


def test_projection_bar_draws_events_records_and_rate_on_a_terminal(no_redraw_limit: None) -> None:
    screen = Terminal()
    bar = graphcmd.ProgressBar("replay", screen)
    bar(ProjectionProgress(events=5, events_total=20, records=4_000))
    bar(ProjectionProgress(events=20, events_total=20, records=16_000))
    bar.done()
    lines = screen.getvalue().split("\r")[1:]
    assert len(lines) == 2
    assert lines[0].startswith("replay [" + "#" * 7 + "." * 23 + "]") and "5/20 events" in lines[0]
    assert "4,000 records" in lines[0] and "records/s" in lines[0]
    assert "[" + "#" * 30 + "]" in lines[1] and "20/20 events, 16,000 records" in lines[1]
    assert screen.getvalue().endswith("\n")  # the shell prompt starts on a line of its own


def test_projection_bar_writes_nothing_when_stderr_is_not_a_terminal(no_redraw_limit: None) -> None:
    log_file = io.StringIO()  # a daemon's or a pipe's stderr: no carriage-return noise in logs
    bar = graphcmd.ProgressBar("project", log_file)
    bar(ProjectionProgress(events=1, events_total=2, records=10))
    bar.done()
    assert log_file.getvalue() == ""


def test_ingest_bar_shows_bytes_rate_quarantined_and_eta(no_redraw_limit: None,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    bar = ingestcmd.ProgressBar("breach-2024.csv.gz", 4 << 20)
    bar(IngestProgress(bytes_in=1 << 20, records=10_000, quarantined=7))
    bar.done()
    err = capsys.readouterr().err
    assert err.startswith("\rbreach-2024.csv.gz") and err.endswith("\n")
    assert " 25.0% " in err and "10000 rec" in err and "rec/s" in err
    assert "      7 quarantined" in err and "ETA" in err


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return ingested_site(tmp_path, monkeypatch)


def test_project_exits_1_naming_the_stopped_feed_and_where(site: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    with LogStore(site, LogOptions(fsync=False)) as log_store:  # an event of a later Heimdall
        writer = log_store.writer()
        stopped_at = writer.append_bodies([encode_body("future.kind", 1, {"x": 1})]).first_seq
        feed = log_store.site.feed.hex()
    capsys.readouterr()
    assert main(["project", "--json"]) == 1
    out, err = capsys.readouterr()
    report = json.loads(out.strip().splitlines()[-1])
    assert list(report["stopped"]) == [feed]
    assert report["records"] > 50  # what came before the unknown event was projected
    assert f"feed {feed} is stopped" in err and f"seq {stopped_at}" in err and "'future.kind'" in err
    assert main(["project"]) == 1  # and again on the next pass: never skipped
    assert f"feed {feed} is stopped" in capsys.readouterr().err


def test_output_piped_into_a_reader_that_stops_early_is_no_failure(site: Path) -> None:
    """`heimdall dumps | head -1`: the reader goes away; no error, no traceback, exit 0."""
    proc = subprocess.Popen([sys.executable, "-m", "heimdall_core.cli.main", "config", "show"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    assert proc.stdout is not None
    proc.stdout.close()  # long before the program's first line (its start takes ~0.3 s)
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err.decode()) == (0, "")
