"""Running out of room mid-ingest: real files, a real process, a real write failure.

The ingest runs under a file-size limit (RLIMIT_FSIZE, the kernel refusing any write
past it with EFBIG, as a full disk refuses with ENOSPC: no privileges needed), so it
fails part way through writing the log or the key store. Then the operator is told which
dump is incomplete and how to resume, nothing acknowledged is lost, the log verifies,
and the same command with room again finishes the dump with every record once."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from ingest_helpers import cli, cli_json, site_env

from heimdall_core.ingest.registry import DumpRegistry
from heimdall_core.log.feed import LogOptions
from heimdall_core.log.store import LogStore

ROWS = 120_000
FILE_BYTES_MAX = 8 << 20
"""Less than the key store needs for ROWS new people (~11 MiB): it fails part way, after
the log acknowledged several batches (~6 MiB each)."""
NO_ROOM_BYTES = 64 << 10
"""No file may grow past this: the first write of the resume fails."""
SEGMENT_BYTES = 1 << 20
"""Log segments roll after each batch, so no segment reaches the limit."""


def _limit(file_bytes_max: int) -> Callable[[], None]:
    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes_max, file_bytes_max))
    return limited


def _ingest_limited(data: Path, dump_file: Path,
                    file_bytes_max: int = FILE_BYTES_MAX) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "heimdall_core.cli.main", "ingest", str(dump_file), "--source", "s",
         "--no-progress"], env=site_env(data, HMD_LOG__SEGMENT_BYTES_MAX=str(SEGMENT_BYTES)),
        capture_output=True, text=True, timeout=300, preexec_fn=_limit(file_bytes_max))


def _dump(path: Path) -> Path:
    with path.open("w") as out:
        out.write("email,username,ip,domain\n")
        for i in range(ROWS):
            out.write(f"user{i}@example.com,user{i},10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255},"
                      f"host{i % 97}.example.org\n")
    return path


def test_a_write_failure_mid_ingest_names_the_dump_and_resuming_finishes_it(tmp_path: Path) -> None:
    data = tmp_path / "site"
    cli(data, "init")
    dump_file = _dump(tmp_path / "users.csv")
    failed = _ingest_limited(data, dump_file)
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr
    assert "PII key store" in failed.stderr and str(data) in failed.stderr  # what failed, where
    with LogStore(data, LogOptions(fsync=False)) as store:
        registry = DumpRegistry(store)
        registry.refresh()
        (started,) = registry.dumps()
    assert not started.finished and 0 < started.records < ROWS
    assert (f"dump {started.dump} is incomplete ({started.records} records logged); "
            "run the same command again to resume it") in failed.stderr

    # Still no room: the resume fails before it logs a record, and says so just the same.
    again = _ingest_limited(data, dump_file, NO_ROOM_BYTES)
    assert again.returncode == 1
    assert f"dump {started.dump} is incomplete ({started.records} records logged)" in again.stderr

    cli(data, "log", "verify")
    summary = cli_json(data, "ingest", str(dump_file), "--source", "s", "--json", "--no-progress")
    assert summary["dump_id"] == started.dump and summary["records"] == ROWS
    (row,) = json.loads(cli(data, "dumps", "--json").stdout)
    assert row["finished"] and row["records"] == ROWS
    cli(data, "log", "verify")


def test_listing_dumps_works_when_the_registry_cache_cannot_be_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "site"
    cli(data, "init")
    cli(data, "ingest", str(_dump(tmp_path / "users.csv")), "--source", "s", "--no-progress")
    cache = data / "ingest" / "registry.json"
    cache.unlink(missing_ok=True)

    def no_room(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("heimdall_core.ingest.registry.os.replace", no_room)
    with LogStore(data, LogOptions(fsync=False)) as store:
        registry = DumpRegistry(store)
        registry.refresh()
        (row,) = registry.dumps()
    assert row.finished and row.records == ROWS
    assert not cache.exists() and not list(cache.parent.glob(".registry-*"))  # no litter either
    assert any("cache not saved (No space left on device)" in r.getMessage() for r in caplog.records)
