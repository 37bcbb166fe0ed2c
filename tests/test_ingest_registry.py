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
