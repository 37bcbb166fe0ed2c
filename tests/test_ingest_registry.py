"""The dump registry: what `heimdall dumps` lists and what an ingest resumes or skips."""

from __future__ import annotations

from pathlib import Path

import pytest
from ingest_helpers import SAMPLE, cli, cli_json

from heimdall_core import kinds
from heimdall_core.events import encode_body
from heimdall_core.log.store import LogStore

_DUMP_ID = bytes(16)


@pytest.mark.parametrize(("kind", "payload"), [
    (kinds.DUMP_STARTED, {"dump": "zz"}),
    (kinds.DUMP_STARTED, {"dump": _DUMP_ID, "source": "s", "name": "n", "sha256": "", "format": "csv",
                          "parts": "1", "bytes": 1}),
    (kinds.RECORDS_INGESTED, {"dump": "zz", "part": 0, "records": [[2, []]]}),
    (kinds.RECORDS_INGESTED, {"dump": _DUMP_ID, "part": 0, "records": [["2", []]]}),
    (kinds.DUMP_FINISHED, {"dump": _DUMP_ID, "records": 1, "quarantined": 0, "sha256": "",
                           "bytes": 1, "duplicate_of": "zz"}),
], ids=["started-text-id", "started-text-parts", "records-text-id", "records-text-position",
        "finished-text-duplicate"])
def test_a_malformed_event_is_skipped_with_one_warning(tmp_path: Path, kind: tuple[str, int],
                                                       payload: dict[str, object]) -> None:
    """Such an event (written by an older `log append`, say) must not stop the listing of
    every other dump, nor an ingest: it is skipped, and the warning says where it is."""
    data = tmp_path / "site"
    cli(data, "init")
    with LogStore(data) as store:
        feed = store.site.feed
        store.writer().append_bodies([encode_body(*kind, payload)])
    listed = cli(data, "dumps", "--json")
    assert listed.stdout.strip() == "[]"
    assert f"feed {feed.hex()} seq 0" in listed.stderr and kind[0] in listed.stderr
    summary = cli_json(data, "ingest", str(SAMPLE), "--source", "sample", "--json")
    assert summary["duplicate"] is False and summary["records"] > 0
    again = cli(data, "dumps")
    assert "complete" in again.stdout and "seq 0" not in again.stderr, "warned once, not per look"


def _dump_events(dump: bytes, finished: dict[str, object]) -> list[bytes]:
    started = {"dump": dump, "source": "s", "name": f"{dump.hex()[:4]}.csv", "sha256": "ab" * 32,
               "format": "csv", "parts": 1, "bytes": 10}
    return [encode_body(*kinds.DUMP_STARTED, started),
            encode_body(*kinds.DUMP_FINISHED, {"dump": dump, "records": 200, "quarantined": 0,
                                               "sha256": "ab" * 32, "bytes": 10, **finished})]


def test_dumps_shows_rejected_field_values_so_loss_is_visible(tmp_path: Path) -> None:
    """A dump whose 200 password hashes were all rejected must not list as a clean
    ``complete 200 0``: the rejected count is a column, in --json, and summed below."""
    data = tmp_path / "site"
    cli(data, "init")
    lossy, clean, older = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16
    with LogStore(data) as store:
        store.writer().append_bodies([*_dump_events(lossy, {"rejected_fields": 200}),
                                      *_dump_events(clean, {"rejected_fields": 0}),
                                      *_dump_events(older, {})])
    rows = {row["dump"]: row for row in cli_json(data, "dumps", "--json")}
    assert rows[lossy.hex()]["rejected_fields"] == 200
    assert rows[clean.hex()]["rejected_fields"] == 0
    assert rows[older.hex()]["rejected_fields"] is None  # its dump.finished does not say
    table = cli(data, "dumps").stdout.splitlines()
    assert table[0].split()[:6] == ["dump", "state", "records", "quar.", "rejected", "source"]
    by_dump = {line.split()[0]: line.split() for line in table[1:4]}
    assert by_dump[lossy.hex()][1:5] == ["complete", "200", "0", "200"]
    assert by_dump[clean.hex()][1:5] == ["complete", "200", "0", "0"]
    assert by_dump[older.hex()][1:5] == ["complete", "200", "0", "?"]
    assert "200 field value(s) rejected in 1 dump(s)" in "\n".join(table)


def test_a_malformed_rejected_count_is_skipped_with_a_warning(tmp_path: Path) -> None:
    data = tmp_path / "site"
    cli(data, "init")
    with LogStore(data) as store:
        store.writer().append_bodies(_dump_events(b"\x04" * 16, {"rejected_fields": -1}))
    listed = cli(data, "dumps", "--json")
    assert "rejected_fields" in listed.stderr and "dump.finished" in listed.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_ingest_logs_its_rejected_count_for_dumps(tmp_path: Path, workers: str) -> None:
    data = tmp_path / "site"
    cli(data, "init")
    dump = tmp_path / "d.csv"
    dump.write_text("email,ip\n" + "".join(f"u{i}@example.com,{'192.0.2.1' if i % 4 else 'x.y'}\n"
                                            for i in range(400)))
    summary = cli_json(data, "ingest", str(dump), "--source", "r", "--map", "ip=ip", "--json",
                       "--workers", workers)
    assert summary["rejected_fields"] == 100
    [row] = cli_json(data, "dumps", "--json")
    assert row["rejected_fields"] == 100
