"""The ingest pipeline end to end, through the real CLI and real files."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
from collections.abc import Sequence
from pathlib import Path

import pytest
import zstandard
from ingest_helpers import SAMPLE, cli, cli_json, events_of, write_dump


@pytest.fixture
def site(tmp_path: Path) -> Path:
    data = tmp_path / "site"
    cli(data, "init")
    return data


def test_sample_dump_ingests_with_summary_and_events(site: Path) -> None:
    summary = cli_json(site, "ingest", str(SAMPLE), "--source", "sample", "--json")
    assert summary["sha256"] == hashlib.sha256(SAMPLE.read_bytes()).hexdigest()
    assert summary["duplicate"] is False
    assert summary["records"] >= 55
    assert summary["quarantined"] >= 1
    assert summary["format"] == "csv"
    assert summary["mapping"]["email"] == "email"
    assert summary["mapping"]["ip"] == "ip"
    started = events_of(site, "dump.started")
    finished = events_of(site, "dump.finished")
    records = events_of(site, "records.ingested")
    assert len(started) == 1 and len(finished) == 1
    assert started[0].payload["dump"].hex() == summary["dump_id"]
    assert finished[0].payload["records"] == summary["records"]
    assert sum(len(e.payload["records"]) for e in records) == summary["records"]
    # Passwords are dropped by the default policy; emails never appear in clear.
    fields = [f for e in records for _, fs in e.payload["records"] for f in fs]
    assert not any(f["kind"] == "password" for f in fields)
    emails = [f for f in fields if f["kind"] == "email"]
    assert emails and all("v" not in f and "ct" in f and "bi" in f for f in emails)
    ips = [f for f in fields if f["kind"] == "ip"]
    assert ips and all("v" in f for f in ips)
    assert cli(site, "log", "verify").returncode == 0
    quarantine = Path(summary["quarantine_file"])
    lines = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert all(entry["position"] > 1 and entry["reason"] for entry in lines)
    assert (quarantine.stat().st_mode & 0o777) == 0o600


def test_reingest_is_a_noop_unless_forced(site: Path) -> None:
    first = cli_json(site, "ingest", str(SAMPLE), "--source", "sample", "--json")
    again = cli_json(site, "ingest", str(SAMPLE), "--source", "sample", "--json")
    assert again["duplicate"] is True and again["dump_id"] == first["dump_id"]
    assert len(events_of(site, "dump.started")) == 1
    other_source = cli_json(site, "ingest", str(SAMPLE), "--source", "other", "--json")
    assert other_source["duplicate"] is False
    forced = cli_json(site, "ingest", str(SAMPLE), "--source", "sample", "--force", "--json")
    # A new dump, but a repeat of the first (the same bytes of the same source).
    assert forced["duplicate"] is True and forced["duplicate_of"] == first["dump_id"]
    assert forced["dump_id"] != first["dump_id"]
    assert len(events_of(site, "dump.started")) == 3


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_forced_reingest_is_listed_as_a_repeat_and_not_counted_again(
        site: Path, tmp_path: Path, workers: str) -> None:
    """The same bytes POSTed without a sha256 are a repeat (duplicate_of); the same bytes
    forced in from the command line were a new dump whose records counted again."""
    path = tmp_path / "ips.csv"
    path.write_bytes(b"ip,domain\n" + b"".join(b"192.0.2.%d,h%d.example\n" % (i % 250, i)
                                               for i in range(4000)))
    first = cli_json(site, "ingest", str(path), "--source", "feed", "--workers", workers, "--json")
    forced = cli_json(site, "ingest", str(path), "--source", "feed", "--workers", workers,
                      "--force", "--json")
    assert forced["parts"] == int(workers)
    assert forced["duplicate"] is True and forced["duplicate_of"] == first["dump_id"]
    finished = {e.payload["dump"].hex(): e.payload for e in events_of(site, "dump.finished")}
    assert "duplicate_of" not in finished[first["dump_id"]]
    assert finished[forced["dump_id"]]["duplicate_of"].hex() == first["dump_id"]
    text = cli(site, "ingest", str(path), "--source", "feed", "--force").stdout
    assert f"a repeat of dump {first['dump_id']}" in text
    cli(site, "project")
    match = cli_json(site, "query", "192.0.2.7", "--json")["matches"][0]
    assert match["sightings"] == 16 and match["sightings_in_repeats"] == 32
    assert match["co_occurring"]["sightings_scanned"] == 16
    assert sorted(d["duplicate_of"] or "" for d in match["dumps"]) == ["", *[first["dump_id"]] * 2]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_forced_reingest_with_a_corrected_mapping_is_new_evidence(
        site: Path, tmp_path: Path, workers: str) -> None:
    """The summary advises `--map COL=KIND --force` for a mis-mapped column: that run
    reads the bytes another way, holds values the first did not, and must count."""
    path = tmp_path / "addrs.csv"
    path.write_bytes(b"addr,domain\n" + b"".join(b"10.1.2.%d,h%d.example\n" % (i % 250, i)
                                                 for i in range(4000)))
    wrong = cli_json(site, "ingest", str(path), "--source", "s", "--map", "addr=domain",
                     "--workers", workers, "--json")
    assert wrong["rejected_fields"] == 4000
    fixed = cli_json(site, "ingest", str(path), "--source", "s", "--map", "addr=ip", "--force",
                     "--workers", workers, "--json")
    assert fixed["duplicate"] is False and fixed["duplicate_of"] is None
    finished = {e.payload["dump"].hex(): e.payload for e in events_of(site, "dump.finished")}
    assert "duplicate_of" not in finished[fixed["dump_id"]]
    # Run again the corrected way, it repeats the corrected dump, not the first one.
    again = cli_json(site, "ingest", str(path), "--source", "s", "--map", "addr=ip", "--force",
                     "--workers", workers, "--json")
    assert again["duplicate"] is True and again["duplicate_of"] == fixed["dump_id"]
    cli(site, "project")
    match = cli_json(site, "query", "10.1.2.3", "--json")["matches"][0]
    assert match["sightings"] == 16 and match["sightings_in_repeats"] == 16


@pytest.mark.parametrize("compress", ["gzip", "bz2", "xz", "zstd"])
def test_compressed_input_is_read_transparently(site: Path, tmp_path: Path, compress: str) -> None:
    raw = SAMPLE.read_bytes()
    packed = {"gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress,
              "zstd": zstandard.ZstdCompressor().compress}[compress](raw)
    path = tmp_path / f"dump.{compress}"
    path.write_bytes(packed)
    summary = cli_json(site, "ingest", str(path), "--source", "s", "--json")
    plain = cli_json(site, "ingest", str(SAMPLE), "--source", "plain", "--json")
    assert summary["compression"] == compress
    assert summary["records"] == plain["records"]
    # A repeat says what the dump it repeats was: its compression and mapping.
    again = cli_json(site, "ingest", str(path), "--source", "s", "--json")
    assert again["duplicate"] is True and again["compression"] == compress
    assert again["mapping"] == summary["mapping"] and again["mapping"]


def test_ndjson_and_json_and_combo(site: Path, tmp_path: Path) -> None:
    nd = tmp_path / "a.ndjson"
    nd.write_text("\n".join(json.dumps({"user": {"mail": f"u{i}@example.com"}, "src_ip": f"192.0.2.{i}"})
                            for i in range(1, 40)) + "\n{broken\n")
    s1 = cli_json(site, "ingest", str(nd), "--source", "nd", "--json")
    assert s1["format"] == "ndjson" and s1["records"] == 39 and s1["quarantined"] == 1
    arr = tmp_path / "b.json"
    arr.write_text(json.dumps([{"domain": f"host{i}.example.org", "md5": "d41d8cd98f00b204e9800998ecf8427e"}
                               for i in range(30)]))
    s2 = cli_json(site, "ingest", str(arr), "--source", "arr", "--json")
    assert s2["format"] == "json" and s2["records"] == 30
    combo = tmp_path / "c.txt"
    combo.write_text("".join(f"user{i}@example.net:pa:ss{i}" + ":x" * (i % 3) + "\n" for i in range(50)))
    s3 = cli_json(site, "ingest", str(combo), "--source", "combo", "--json")
    assert s3["format"] == "combo" and s3["records"] == 50


def test_bad_inputs_have_clear_errors(site: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    proc = cli(site, "ingest", str(empty), "--source", "x", check=False)
    assert proc.returncode == 1 and "empty" in proc.stderr
    binary = tmp_path / "bin.csv"
    binary.write_bytes(bytes(range(256)) * 64)
    proc = cli(site, "ingest", str(binary), "--source", "x", check=False)
    assert proc.returncode == 1 and "bin.csv" in proc.stderr
    missing = cli(site, "ingest", str(tmp_path / "nope.csv"), "--source", "x", check=False)
    assert missing.returncode == 1 and "no such file" in missing.stderr
    wrong = cli(site, "ingest", str(SAMPLE), "--source", "x", "--format", "json", check=False)
    out = wrong.stdout + wrong.stderr
    assert wrong.returncode != 0 or "quarantined" in out


def test_an_error_names_the_file_once(site: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    proc = cli(site, "ingest", str(empty), str(tmp_path / "a.csv"), "--source", "x", check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("empty.csv") == 1 and "the file is empty" in proc.stderr
    assert proc.stderr.count("a.csv") == 1 and "no such file" in proc.stderr


def test_a_stream_is_refused_with_what_to_do_instead(site: Path) -> None:
    data = b"email,ip\na@example.com,192.0.2.1\n"
    for name in ("-", "/dev/stdin"):
        proc = cli(site, "ingest", name, "--source", "x", input_bytes=data, check=False)
        assert proc.returncode == 1 and "save the stream to a file first" in proc.stderr, name
    assert cli_json(site, "dumps", "--json") == []


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_mapped_column_the_input_lacks_is_a_usage_error(site: Path, tmp_path: Path,
                                                          workers: str) -> None:
    path = write_dump(tmp_path / "d.csv", [[f"a{i}@example.com", f"192.0.2.{i % 250}"]
                                           for i in range(5000)], ["email", "ip"])
    mapping = tmp_path / "map.toml"
    mapping.write_text('[columns]\nemial = "email"\n')
    proc = cli(site, "ingest", str(path), "--source", "m", "--mapping-file", str(mapping),
               "--workers", workers, check=False)
    assert proc.returncode == 2 and "'emial'" in proc.stderr and "email, ip" in proc.stderr
    assert events_of(site) == [], "refused before anything was written"


def test_invalid_utf8_and_overlong_lines_are_quarantined(site: Path, tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    rows = [b"email,ip"] + [f"a{i}@example.com,192.0.2.{i}".encode() for i in range(1, 30)]
    rows.insert(5, b"bad\xff\xfe@example.com,192.0.2.200")
    rows.insert(9, b"x" * 5000 + b",192.0.2.201")
    path.write_bytes(b"\n".join(rows) + b"\n")
    summary = cli_json(site, "ingest", str(path), "--source", "m", "--json",
                       HMD_INGEST__LINE_BYTES_MAX="4KiB")
    assert summary["records"] == 29
    assert summary["quarantined"] == 2
    text = Path(summary["quarantine_file"]).read_text()
    assert "UTF-8" in text or "utf-8" in text.lower()
    assert "bad" not in text and "xxxx" not in text  # reasons never quote the input


def test_map_override_and_unknown_kind(site: Path, tmp_path: Path) -> None:
    path = write_dump(tmp_path / "d.csv", [[f"v{i}", f"192.0.2.{i}"] for i in range(1, 20)], ["c1", "c2"])
    summary = cli_json(site, "ingest", str(path), "--source", "m", "--map", "c1=username", "--json")
    # c1 is a column name because the operator named it; c2 is no known column name, so
    # it may be data and is written by its place.
    assert summary["mapping"] == {"c1": "username", "col2": "ip"}
    bad = cli(site, "ingest", str(path), "--source", "m2", "--map", "c1=planet", check=False)
    assert bad.returncode == 2 and "c1" in bad.stderr and "planet" in bad.stderr


def test_a_crypt_hash_in_a_hash_column_takes_the_password_hash_action(site: Path, tmp_path: Path) -> None:
    """The plan holds the action of a column's mapped kind; a value that canonicalizes to
    another kind (a bcrypt string in a ``hash`` column) must get that kind's action."""
    bcrypt = "$2b$12$" + "a" * 53
    rows = [[f"u{i}@example.com", "ab" * 32 if i % 2 else bcrypt] for i in range(40)]
    path = write_dump(tmp_path / "h.csv", rows, ["email", "digest"])
    cli_json(site, "ingest", str(path), "--source", "h", "--map", "digest=hash", "--json")
    fields = [f for e in events_of(site, "records.ingested") for _, fs in e.payload["records"] for f in fs
              if f["col"] == "digest"]
    crypt = [f for f in fields if f["kind"] == "password_hash"]
    plain = [f for f in fields if f["kind"] == "hash"]
    assert len(crypt) == 20 and all("v" not in f and "bi" in f for f in crypt)
    assert len(plain) == 20 and all(f["v"] == "ab" * 32 for f in plain)


def test_column_names_that_look_personal_never_reach_the_log(site: Path, tmp_path: Path) -> None:
    # A JSON dump keyed by account: the keys are personal data, not column names.
    path = tmp_path / "keyed.json"
    path.write_text(json.dumps([{"zed.keyname@example.com": {"ip": f"192.0.2.{i}"}}
                                for i in range(1, 30)]))
    summary = cli_json(site, "ingest", str(path), "--source", "keyed", "--json")
    assert summary["records"] == 29
    assert "zed.keyname" not in json.dumps(summary)
    for event in events_of(site):
        assert b"zed.keyname" not in json.dumps(event.payload, default=repr).encode()
    for file in site.rglob("*"):
        if file.is_file():
            assert b"zed.keyname" not in file.read_bytes(), file


def test_a_forced_format_still_refuses_binary_input(site: Path, tmp_path: Path) -> None:
    path = tmp_path / "bigbin.dat"
    path.write_bytes(bytes(range(256)) * 8192)
    bad = cli(site, "ingest", str(path), "--format", "csv", "--source", "bin", check=False)
    assert bad.returncode == 1 and "binary" in bad.stderr
    assert not events_of(site)[1:], "nothing but the site's own first event"


def test_wrong_format_fails_and_the_retry_needs_no_force(site: Path, tmp_path: Path) -> None:
    path = tmp_path / "arr.json"
    path.write_text(json.dumps([{"email": f"u{i}@example.com"} for i in range(10)], indent=1))
    wrong = cli(site, "ingest", str(path), "--format", "ndjson", "--source", "s", check=False)
    assert wrong.returncode == 1
    assert "records are malformed" in wrong.stderr and "probably not NDJSON" in wrong.stderr
    assert not events_of(site, "dump.started")
    right = cli_json(site, "ingest", str(path), "--source", "s", "--json")
    assert right["duplicate"] is False and right["records"] == 10


def test_latin1_input_fails_with_an_encoding_hint(site: Path, tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"email,name\n" + b"".join(b"u%d@example.com,Jos\xe9 %d\n" % (i, i)
                                                   for i in range(50)))
    bad = cli(site, "ingest", str(path), "--source", "l1", check=False)
    assert bad.returncode == 1
    assert "all 50 records are malformed" in bad.stderr and "iconv" in bad.stderr
    assert not events_of(site, "dump.started")


def test_text_after_a_json_document_is_quarantined_and_the_dump_completes(
        site: Path, tmp_path: Path) -> None:
    count = 20_000  # more than one batch: the last one was lost with the whole dump
    path = tmp_path / "trailing.json"
    path.write_text(json.dumps([{"email": f"u{i}@example.com"} for i in range(count)]) + "\n}\n")
    summary = cli_json(site, "ingest", str(path), "--source", "t", "--json")
    assert summary["records"] == count and summary["quarantined"] == 1
    (entry,) = [json.loads(line) for line in Path(summary["quarantine_file"]).read_text().splitlines()]
    assert entry["position"] == count + 1 and "after the JSON document" in entry["reason"]
    assert events_of(site, "dump.finished")[0].payload["records"] == count


def _odd_key_records(count: int, late: Sequence[tuple[str, int, int]]) -> list[dict[str, str]]:
    """NDJSON records each with "ip" and one key that is no column name (it may be data):
    xa (emails), xb (notes), xc (IPs) in turn; a ``late`` key (name, first, last record)
    in every fourth record of its stretch."""
    values = {"xa": "u{}@example.com", "xb": "note {}", "xc": "198.51.100.{}"}
    rows = []
    for i in range(count):
        key = next((name for name, first, last in late if first <= i < last and i % 4 == 3),
                   ("xa", "xb", "xc")[i % 3])
        rows.append({key: values.get(key, "late {}").format(i % 250), "ip": f"192.0.2.{i % 250}"})
    return rows


@pytest.mark.parametrize("workers", ["1", "2"])
def test_each_json_key_that_may_be_data_keeps_one_name_of_its_own(site: Path, tmp_path: Path,
                                                                 workers: str) -> None:
    """A key that may be personal data is written as col<N>, N its place in the dump's
    columns: the same in dump.started and in every record (and every part), and never
    shared with another key (it was each record's own place: all three were col1)."""
    # xd and xe show up past the head the parts are planned from, in part 0 and 1 of 2.
    count = 20_000
    rows = _odd_key_records(count, [("xd", 7_000, 9_000), ("xe", 12_000, count)])
    path = tmp_path / "odd.ndjson"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = cli_json(site, "ingest", str(path), "--source", "odd", "--workers", workers, "--json")
    assert summary["records"] == count and summary["parts"] == int(workers)
    started = events_of(site, "dump.started")[0].payload
    # One process samples a whole first chunk, which may already hold xd: then it is col5.
    assert started["columns"][:4] == ["col1", "ip", "col3", "col4"]
    expected = {"col1": "email", "ip": "ip", "col3": "other", "col4": "ip"}
    assert {c: k for c, k in started["mapping"].items() if c in expected} == expected
    assert summary["mapping"] == started["mapping"]
    names: dict[str, set[str]] = {}
    for event in events_of(site, "records.ingested"):
        for position, fields in event.payload["records"]:
            key = next(k for k in rows[position - 1] if k != "ip")
            names.setdefault(key, set()).update(f["col"] for f in fields if f["col"] != "ip")
    assert names["xa"] == {"col1"} and names["xb"] == {"col3"} and names["xc"] == {"col4"}
    (xd,), (xe,) = names["xd"], names["xe"]  # each one name of its own, after the planned ones
    assert xd != xe and all(c.startswith("col") and int(c[3:]) > 4 for c in (xd, xe))
    assert set(started["columns"][4:]) <= {xd, xe}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_bad_stretch_at_the_start_fails_no_part(site: Path, tmp_path: Path, workers: str) -> None:
    """The first part of a file cut for --workers is one stretch of it: bad records only
    there do not make the file wrong ("all N records are malformed" failed the dump,
    its resume and --restart forever), as they do not with one process."""
    bad, good = 20, 2000
    path = tmp_path / "head.csv"
    path.write_bytes(b"email,ip\n" + b"".join(b"x" * 10_000 + b",192.0.2.1\n" for _ in range(bad))
                     + b"".join(b"u%d@example.com,192.0.2.%d\n" % (i, i % 250) for i in range(good)))
    summary = cli_json(site, "ingest", str(path), "--source", "h", "--workers", workers, "--json",
                       HMD_INGEST__LINE_BYTES_MAX="4KiB")  # each bad record is too long
    assert summary["parts"] == int(workers)
    assert summary["records"] == good and summary["quarantined"] == bad
    finished = events_of(site, "dump.finished")[0].payload
    assert finished["records"] == good and finished["quarantined"] == bad


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_part_starting_in_a_bad_stretch_is_no_wrong_format(site: Path, tmp_path: Path,
                                                            workers: str) -> None:
    """A later part's first records are not the file's: 1000 bad ones there ("the first
    1000 records are all malformed") said nothing of the format, and failed the dump."""
    good = b"".join(b"u%d@example.com,192.0.2.%d\n" % (i, i % 250) for i in range(4000))
    bad = b"".join(b"a\xffb%d,192.0.2.1\n" % i for i in range(3000))  # invalid UTF-8
    path = tmp_path / "mid.csv"
    path.write_bytes(b"email,ip\n" + good + bad + good)  # the cut of 2 parts is in `bad`
    summary = cli_json(site, "ingest", str(path), "--source", "m", "--workers", workers, "--json")
    assert summary["parts"] == int(workers)
    assert summary["records"] == 8000 and summary["quarantined"] == 3000


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_json_rows_of_scalars_map_each_place_on_its_own(site: Path, tmp_path: Path, fmt: str) -> None:
    """``[["aa1@example.com", "5.6.7.1"], ...]``: each place is a column of its own kind, so
    neither the emails nor the addresses are rejected as the other's kind."""
    rows = [[f"aa{i}@example.com", f"5.6.7.{i}"] for i in range(1, 41)]
    path = tmp_path / f"rows.{fmt}"
    path.write_text(json.dumps(rows) if fmt == "json" else "".join(json.dumps(r) + "\n" for r in rows))
    summary = cli_json(site, "ingest", str(path), "--source", f"rows-{fmt}", "--json")
    assert summary["mapping"] == {"col1": "email", "col2": "ip"}
    assert summary["records"] == 40 and summary["rejected_fields"] == 0 and summary["quarantined"] == 0
    cli(site, "project")
    for value, kind in (("5.6.7.3", "ip"), ("AA3@example.com", "email")):
        answer = json.loads(cli(site, "query", value, "--json").stdout)
        assert answer["query"]["kind"] == kind
        assert answer["matches"][0]["dumps"][0]["name"] == path.name


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_unnamed_header_cell_never_takes_a_name_of_the_header(site: Path, tmp_path: Path,
                                                               workers: str) -> None:
    """``email,col3,``: the trailing unnamed cell is the third column, but ``col3`` is the
    second's name; it was named ``col3`` too, and the two columns were merged under one
    public name (columns email, col2, col2) that --map could not tell apart."""
    count = 4000
    path = tmp_path / "trailing.csv"
    path.write_bytes(b"email,col3,\n" + b"".join(b"u%d@example.com,x%d,y%d\n" % (i, i, i)
                                                  for i in range(count)))
    summary = cli_json(site, "ingest", str(path), "--source", "t", "--workers", workers, "--json")
    assert summary["records"] == count and summary["parts"] == int(workers)
    started = events_of(site, "dump.started")[0].payload
    columns = started["columns"]
    assert len(columns) == 3 and len(set(columns)) == 3, columns
    assert summary["mapping"] == started["mapping"] and len(started["mapping"]) == 3
    names = {f["col"] for event in events_of(site, "records.ingested")
             for _, fields in event.payload["records"] for f in fields}
    assert names == set(columns)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_map_names_columns_as_the_dump_shows_them(site: Path, tmp_path: Path, workers: str) -> None:
    """``email,x,`` shows its columns as email, x, col3: --map col3=... is the unnamed
    third column, as shown (refused before: "the input does not have col3")."""
    path = tmp_path / "trailing.csv"
    path.write_bytes(b"email,x,\n" + b"".join(b"u%d@example.com,h%d.example,192.0.2.%d\n"
                                               % (i, i, i % 250) for i in range(4000)))
    summary = cli_json(site, "ingest", str(path), "--source", "t", "--workers", workers,
                       "--map", "x=domain", "--map", "col3=ip", "--json")
    assert summary["mapping"] == {"email": "email", "x": "domain", "col3": "ip"}
    assert summary["rejected_fields"] == 0
    # ``email,col3,``: the header's own ``col3`` is the second column, shown as col2, and
    # col3 is the third's shown name: --map col3 is refused, not guessed.
    odd = tmp_path / "odd.csv"
    odd.write_bytes(b"email,col3,\n" + path.read_bytes().split(b"\n", 1)[1])
    twice = cli(site, "ingest", str(odd), "--source", "u", "--map", "col3=domain", "--map", "col2=ip",
                check=False)
    assert twice.returncode == 2 and "names two columns" in twice.stderr, twice.stderr


def test_a_place_name_of_the_header_is_kept_only_at_its_place(site: Path, tmp_path: Path) -> None:
    """``col3`` named in --map but first in the header was kept as ``col3``, and the third
    column, whose name may be data, was written as ``col3`` too: one public name for two
    columns, and the mapping lost ``email`` (``col3=other``). It is ``col1`` now."""
    path = tmp_path / "places.csv"
    path.write_bytes(b"col3,foo,bar\n" + b"".join(b"u%d@example.com,x%d,y%d\n" % (i, i, i)
                                                   for i in range(50)))
    # col3 is the first column's own name and the third's shown one: refused, not guessed.
    ambiguous = cli(site, "ingest", str(path), "--source", "p", "--map", "col3=email", check=False)
    assert ambiguous.returncode == 2 and "names two columns" in ambiguous.stderr
    summary = cli_json(site, "ingest", str(path), "--source", "p", "--map", "col1=email", "--json")
    started = events_of(site, "dump.started")[0].payload
    assert started["columns"] == ["col1", "col2", "col3"]
    assert summary["mapping"] == started["mapping"] == {"col1": "email", "col2": "other", "col3": "other"}
