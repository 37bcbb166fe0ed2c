"""Cutting a CSV file into byte ranges for parallel ingest: cuts only at record boundaries."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import pytest

from heimdall_core.ingest.workers import split_ranges


def _records(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(), newline="")))


def _rows_of_ranges(path: Path, ranges: tuple[tuple[int, int, int], ...]) -> list[list[str]]:
    data = path.read_bytes()
    rows: list[list[str]] = []
    for start, end, _line in ranges:
        rows += _records(data[start:end])
    return rows


def test_quoted_newlines_are_never_cut(tmp_path: Path) -> None:
    path = tmp_path / "quoted.csv"
    lines = [f'{i},"note {i}\nsecond line, with a comma",x{i}\n' for i in range(2000)]
    path.write_bytes(("id,note,tag\n" + "".join(lines)).encode())
    ranges = split_ranges(path, 4, quoted=True, delimiter=",", columns=3)
    assert len(ranges) == 4
    assert _rows_of_ranges(path, ranges) == _records(path.read_bytes())


def test_a_stray_quote_falls_back_to_one_range(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A quote inside an unquoted field (a height in inches) flips the quote parity: every
    cut after it would land inside the quoted multi-line fields that follow."""
    path = tmp_path / "stray.csv"
    head = 'id,note,tag\n0,5\'10" tall,x0\n'
    lines = [f'{i},"note {i}\nsecond line",x{i}\n' for i in range(1, 2000)]
    path.write_bytes((head + "".join(lines)).encode())
    with caplog.at_level(logging.WARNING, logger="heimdall.ingest"):
        ranges = split_ranges(path, 4, quoted=True, delimiter=",", columns=3)
    assert ranges == ((0, path.stat().st_size, 1),)
    assert "one process" in caplog.text


def test_files_without_quotes_are_cut_at_lines(tmp_path: Path) -> None:
    path = tmp_path / "plain.csv"
    path.write_bytes(("a,b\n" + "".join(f"{i},v{i}\n" for i in range(10_000))).encode())
    ranges = split_ranges(path, 3, quoted=True, delimiter=",", columns=2)
    assert len(ranges) == 3
    assert [start for start, _, _ in ranges[1:]] == [end for _, end, _ in ranges[:-1]]
    assert _rows_of_ranges(path, ranges) == _records(path.read_bytes())
    data = path.read_bytes()
    for start, _end, line in ranges:
        assert data.count(b"\n", 0, start) + 1 == line
