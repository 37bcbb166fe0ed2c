"""Crash test with real processes: SIGKILL a writer at random moments, 50 times in a row.

After every kill the parent reopens the log (recovery) and checks: every acknowledged
event is there with the very bytes acknowledged, the log verifies, and sequence numbers
run 0..size-1 with no duplicate and no gap.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from log_child import event_body

from heimdall_core.events import HEADER_BYTES
from heimdall_core.log.feed import LogOptions
from heimdall_core.log.store import LogStore, init_site

KILLS = 50
DELAY_S_MIN = 0.005
DELAY_S_MAX = 0.080
CHILD = Path(__file__).with_name("log_child.py")
READY_TIMEOUT_S = 30


def _start(data_dir: Path, run: int) -> tuple[subprocess.Popen[bytes], int]:
    child = subprocess.Popen([sys.executable, str(CHILD), str(data_dir), str(run)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    line = child.stdout.readline().decode()
    if not line.startswith("ready ") or time.monotonic() > deadline:
        child.kill()
        _, err = child.communicate()
        pytest.fail(f"child {run} did not start: {line!r} {err.decode()[-2000:]}")
    return child, int(line.split()[1])


def _acks(output: bytes) -> list[tuple[int, int, int, int]]:
    acks = []
    for line in output.decode().split("\n"):
        parts = line.split()
        if len(parts) == 5 and parts[0] == "ack":  # a line cut by the kill has no newline
            acks.append((int(parts[1]), int(parts[2]), int(parts[3]), int(parts[4])))
    return acks


def _check(data_dir: Path, acked: dict[int, bytes]) -> int:
    store = LogStore(data_dir, LogOptions(fsync=True))
    writer = store.writer()  # recovery runs here
    size = writer.state.size
    assert size >= max(acked, default=-1) + 1, "an acknowledged event was lost"
    seqs = []
    for seq, frame in writer.read_frames(0, size):
        seqs.append(seq)
        if seq in acked:
            assert frame[HEADER_BYTES:] == acked[seq], f"event {seq} changed"
    assert seqs == list(range(size)), "a sequence number is duplicated or skipped"
    assert writer.verify().size == size
    store.close()
    return size


@pytest.mark.slow
def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    data_dir = tmp_path / "site"
    init_site(data_dir, "crash")
    rng = random.Random(20240229)
    acked: dict[int, bytes] = {}
    sizes = []
    for run in range(KILLS):
        child, ready_size = _start(data_dir, run)
        assert ready_size >= len(acked)
        time.sleep(rng.uniform(DELAY_S_MIN, DELAY_S_MAX))
        child.send_signal(signal.SIGKILL)
        output, _ = child.communicate()
        assert child.returncode == -signal.SIGKILL
        for first, count, ack_run, n in _acks(output):
            for k in range(count):
                assert first + k not in acked, "a sequence number was acknowledged twice"
                acked[first + k] = event_body(ack_run, n + k)
        sizes.append(_check(data_dir, acked))
    assert len(acked) > KILLS  # the kills really landed among appends
    assert sizes == sorted(sizes)
