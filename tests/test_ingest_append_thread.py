"""DumpIngestor's append thread: order, durability on finish, errors surface, bounded."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import msgpack
import pytest

from heimdall_core.ingest.pipeline import EVENTS_PER_APPEND, DumpIngestor, IngestOptions, Quarantine
from heimdall_core.pii.blind_index import IndexKeys
from heimdall_core.pii.policy import PiiPolicy
from heimdall_core.pii.protect import Protector

PER_EVENT = 4
PER_BATCH = PER_EVENT * EVENTS_PER_APPEND
ROWS = PER_BATCH * 3 + 5


class MemoryKeys:
    def __init__(self) -> None:
        self.deks: dict[bytes, bytes | None] = {}

    def data_keys(self, subjects: Sequence[bytes]) -> Mapping[bytes, bytes | None]:
        for s in subjects:
            self.deks.setdefault(s, os.urandom(32))
        return {s: self.deks[s] for s in subjects}


class Appender:
    """Records what was appended and from which thread; can fail on the n-th call."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[list[bytes]] = []
        self.threads: set[int] = set()
        self.fail_on = fail_on
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()

    def __call__(self, bodies: Sequence[bytes]) -> None:
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            self.threads.add(threading.get_ident())
            if self.fail_on is not None and len(self.calls) + 1 == self.fail_on:
                raise OSError("disk full")
            self.calls.append(list(bodies))
        finally:
            with self._lock:
                self.in_flight -= 1

    def positions(self) -> list[int]:
        out: list[int] = []
        for bodies in self.calls:
            for body in bodies:
                _, _, payload = msgpack.unpackb(body, raw=False)
                out.extend(position for position, _ in payload["records"])
        return out


def make(tmp_path: Path, append: Appender) -> DumpIngestor:
    keys = IndexKeys(blind_index_key=os.urandom(32), subject_key=os.urandom(32))
    policy = PiiPolicy.default()
    return DumpIngestor(
        dump=b"d" * 16, part=0, options=IngestOptions(source="t", records_per_event=PER_EVENT),
        protector=Protector(policy, keys, MemoryKeys()), policy=policy, append=append,
        quarantine=Quarantine(tmp_path / "q.jsonl", "00", "t"))


def dump_bytes(rows: int) -> bytes:
    lines = ["email,ip"] + [f"user{i}@example.com,192.0.2.{i % 250 + 1}" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def test_every_record_is_appended_in_order_once_finish_returns(tmp_path: Path) -> None:
    append = Appender()
    ingestor = make(tmp_path, append)
    data = dump_bytes(ROWS)
    for start in range(0, len(data), 4096):
        ingestor.feed(data[start:start + 4096])
    result = ingestor.finish()
    assert result.records == ROWS
    assert append.positions() == list(range(2, ROWS + 2))  # line numbers, after the header
    assert len(append.calls) == 4  # three full batches and the rest
    assert threading.get_ident() not in append.threads  # appended off the parsing thread
    assert append.most_in_flight == 1
    assert not any(t.name.startswith("ingest-") for t in threading.enumerate())


def test_an_append_error_surfaces_and_stops_later_appends(tmp_path: Path) -> None:
    append = Appender(fail_on=2)
    ingestor = make(tmp_path, append)
    with pytest.raises(OSError, match="disk full"):
        ingestor.feed(dump_bytes(ROWS))
        ingestor.finish()
    assert len(append.calls) == 1
    assert append.positions() == list(range(2, PER_BATCH + 2))
    assert not any(t.name.startswith("ingest-") for t in threading.enumerate())
