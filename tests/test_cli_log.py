"""The `heimdall` command for the log: init, log *, keys show, export, import, exit codes."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from logutil import segment_path

from heimdall_core.cli.main import main
from heimdall_core.errors import FeedBusy
from heimdall_core.log.store import LogStore


class Cli:
    """Runs `heimdall` in-process against one data directory."""

    def __init__(self, data_dir: Path, capsys: pytest.CaptureFixture[str],
                 monkeypatch: pytest.MonkeyPatch) -> None:
        self.data_dir = data_dir
        self.capsys = capsys
        self.monkeypatch = monkeypatch

    def __call__(self, *args: str, stdin: str = "", env: dict[str, str] | None = None,
                 data_dir: Path | None = None) -> tuple[int, str, str]:
        self.monkeypatch.setenv("HMD_DATA_DIR", str(data_dir or self.data_dir))
        self.monkeypatch.setenv("HMD_LOG__FSYNC", "false")
        for name, value in (env or {}).items():
            self.monkeypatch.setenv(name, value)
        self.monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
        self.capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
        out, err = self.capsys.readouterr()
        for name in env or {}:
            self.monkeypatch.delenv(name)
        return code, out, err


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    return Cli(tmp_path / "site", capsys, monkeypatch)


def _lines(n: int, start: int = 0) -> str:
    return "".join(json.dumps({"n": start + i, "msg": f"event {start + i}"}) + "\n" for i in range(n))


def test_init_creates_private_key_and_refuses_twice(cli: Cli) -> None:
    code, out, _ = cli("init", "--name", "north")
    assert code == 0
    site = json.loads((cli.data_dir / "site.json").read_text())
    assert site["name"] == "north" and site["feed"] in out
    key = cli.data_dir / "keys" / "site.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((cli.data_dir / "keys").stat().st_mode) == 0o700
    assert stat.S_IMODE(cli.data_dir.stat().st_mode) == 0o700
    assert key.read_text().strip() not in out
    before = key.read_bytes()
    code, _, err = cli("init")
    assert code == 1 and "already holds a site" in err
    assert key.read_bytes() == before
    assert cli("init", "--exist-ok")[0] == 0


def test_append_tail_stats_verify(cli: Cli) -> None:
    cli("init")
    code, out, _ = cli("log", "append", stdin=_lines(3) + "\n   \n" + _lines(2, 3))
    assert code == 0 and "appended 5 events" in out
    code, out, _ = cli("log", "tail", "-n", "2")
    assert code == 0
    rows = out.splitlines()
    assert len(rows) == 2 and rows[0].split()[0] == "3" and "note/v1" in rows[0]
    assert '"msg": "event 4"' in rows[1]
    code, out, _ = cli("log", "tail", "--json", "-n", "10")
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["seq"] for e in events] == [0, 1, 2, 3, 4]
    assert events[2]["payload"] == {"msg": "event 2", "n": 2} and events[2]["kind"] == "note"
    assert cli("log", "tail", "-n", "0")[1] == ""
    assert cli("log", "tail", "-n", "-1")[0] == 2
    code, out, _ = cli("log", "stats", "--json")
    (feed,) = json.loads(out)["feeds"]
    assert (feed["events"], feed["site"], feed["stopped"]) == (5, True, None)
    assert "site" in cli("log", "stats")[1]
    code, out, _ = cli("log", "verify")
    assert code == 0 and out.startswith("OK") and "5 events verified" in out
    code, out, _ = cli("keys", "show", "--json")
    shown = json.loads(out)
    assert shown["feed"] == feed["feed"] == shown["public_key"]
    assert shown["key_file_mode"] == "600"
    assert shown["verifier_key"].startswith(f"heimdall.feed/{feed['feed']}+")


def test_append_batches_by_the_configured_size(cli: Cli) -> None:
    cli("init")
    code, _, _ = cli("log", "append", stdin=_lines(5), env={"HMD_LOG__BATCH_EVENTS_MAX": "2"})
    assert code == 0
    store = LogStore(cli.data_dir)
    assert [size for size, _ in store.writer().checkpoints()] == [2, 4, 5]
    store.close()


@pytest.mark.parametrize(("bad", "what"), [
    ('{"n": 2\n', "not valid JSON"),
    ("[1, 2]\n", "must be a JSON object"),
    ('{"price": 1.5}\n', "floats are not allowed"),
])
def test_bad_line_is_named_and_earlier_lines_are_kept(cli: Cli, bad: str, what: str) -> None:
    cli("init")
    code, _, err = cli("log", "append", stdin=_lines(2) + "\n" + bad + _lines(1, 5))
    assert code == 1
    assert "stdin line 4" in err and what in err
    assert "the 2 events before it were appended" in err
    assert "2 events verified" in cli("log", "verify")[1]


def test_unknown_kind_is_refused(cli: Cli) -> None:
    cli("init")
    code, _, err = cli("log", "append", "--kind", "nonsense", stdin=_lines(1))
    assert code == 2 and "not a known event kind" in err


@pytest.mark.parametrize("kind", ["dump.started", "records.ingested", "dump.finished",
                                  "subject.shredded", "feed.announced"])
def test_kinds_that_need_binary_fields_are_refused(cli: Cli, kind: str) -> None:
    """Their ids are binary, which JSON cannot express: such an event, once signed, would
    stop the projection of the site's own feed for good."""
    cli("init")
    code, _, err = cli("log", "append", "--kind", kind, stdin='{"dump": "zz"}\n')
    assert code == 2 and kind in err and "binary" in err and "note" in err
    assert "0 events verified" in cli("log", "verify")[1]


def test_a_payload_the_projector_would_refuse_is_not_appended(cli: Cli) -> None:
    cli("init")
    good = {"provider": "dns", "kind": "ip", "value": "192.0.2.1", "facts": {"asn": 64500},
            "observed_ms": 1}
    bad = {key: value for key, value in good.items() if key != "observed_ms"}
    stdin = json.dumps(good) + "\n" + json.dumps(bad) + "\n"
    code, _, err = cli("log", "append", "--kind", "enrichment.received", stdin=stdin)
    assert code == 1 and "stdin line 2" in err and "'observed_ms' must be an integer" in err
    assert "the 1 events before it were appended" in err
    assert "1 events verified" in cli("log", "verify")[1]
    code, _, err = cli("project")
    assert code == 0, err


def _enrichment(kind: str, value: str) -> str:
    return json.dumps({"kind": kind, "value": value, "provider": "hibp", "facts": {"breaches": 3},
                       "observed_ms": 1795619000000}) + "\n"


def _files_holding(root: Path, needle: bytes) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file() and needle in path.read_bytes()]


@pytest.mark.parametrize(("kind", "value"), [("email", "carol@example.com"),
                                             ("username", "carol"), ("phone", "+31201234567"),
                                             ("url", "https://carol:pw@example.com/")])
def test_an_enrichment_about_a_person_is_refused_and_nothing_of_it_kept(
        cli: Cli, kind: str, value: str) -> None:
    """Facts keyed on a person's value in clear would be signed into the log, where no
    shredding reaches them: refused before signing, as a usage error, without the value."""
    cli("init")
    stdin = _enrichment("ip", "192.0.2.1") + _enrichment(kind, value)
    code, out, err = cli("log", "append", "--kind", "enrichment.received", stdin=stdin)
    assert code == 2 and "stdin line 2" in err and "never about a person" in err
    assert "ip, cidr, domain, hash" in err and "the 1 events before it were appended" in err
    assert "carol" not in out + err and "+3120" not in out + err
    assert _files_holding(cli.data_dir, b"carol") == [] and _files_holding(cli.data_dir, b"+3120") == []
    code, out, _ = cli("log", "tail", "--json")
    assert code == 0 and [json.loads(line)["payload"]["value"] for line in out.splitlines()] == \
        ["192.0.2.1"]


def test_an_enrichment_value_is_written_in_canonical_form(cli: Cli) -> None:
    """A query canonicalizes what it is asked: facts on any other spelling were never found."""
    cli("init")
    stdin = _enrichment("domain", "EVIL.example.") + _enrichment("ip", "192.0.2[.]7") + \
        _enrichment("hash", " D41D8CD98F00B204E9800998ECF8427E")
    code, _, err = cli("log", "append", "--kind", "enrichment.received", stdin=stdin)
    assert code == 0, err
    code, out, _ = cli("log", "tail", "--json")
    assert [json.loads(line)["payload"]["value"] for line in out.splitlines()] == \
        ["evil.example", "192.0.2.7", "d41d8cd98f00b204e9800998ecf8427e"]
    assert cli("project")[0] == 0
    code, out, err = cli("query", "EVIL.example.", "--json")
    assert code == 0, err
    assert json.loads(out)["matches"][0]["facts"] == {"breaches": 3}


@pytest.mark.parametrize(("kind", "value", "reason"), [
    ("ip", "10.000.0.01", "not a valid ip (leading_zero"),
    ("domain", "evil..example", "not a valid domain (empty_label"),
    ("hash", "$2b$12$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234", "is a password_hash"),
])
def test_an_enrichment_value_that_is_not_valid_is_refused(cli: Cli, kind: str, value: str,
                                                          reason: str) -> None:
    cli("init")
    code, _, err = cli("log", "append", "--kind", "enrichment.received", stdin=_enrichment(kind, value))
    assert code == 2 and "stdin line 1" in err and reason in err and value not in err
    assert "0 events verified" in cli("log", "verify")[1]


def test_verify_exit_codes(cli: Cli) -> None:
    cli("init")
    cli("log", "append", stdin=_lines(4))
    cli("log", "append", stdin=_lines(4, 4))
    store = LogStore(cli.data_dir)
    seg = segment_path(store)
    data = bytearray(seg.read_bytes())
    data[120] ^= 1
    seg.write_bytes(bytes(data))
    code, out, _ = cli("log", "verify")
    assert code == 3 and out.startswith("FAIL") and "seq=" in out
    code, out, _ = cli("log", "verify", "--json")
    assert code == 3 and json.loads(out)["ok"] is False
    code, _, err = cli("log", "append", stdin=_lines(1))  # opening for writing stops the feed
    assert code == 3 and "not repaired" in err
    code, out, _ = cli("log", "verify")
    assert code == 3 and "stopped" in out


def test_export_import_and_tampered_import(cli: Cli, tmp_path: Path) -> None:
    other = tmp_path / "other"
    cli("init")
    cli("log", "append", stdin=_lines(3))
    cli("log", "append", stdin=_lines(3, 3))
    bundle = tmp_path / "x.bundle"
    code, out, _ = cli("export", str(bundle), "--json")
    assert code == 0 and json.loads(out)["frames"] == 6
    cli("init", data_dir=other)
    code, out, _ = cli("import", str(bundle), data_dir=other)
    assert code == 0 and "appended 6 new" in out
    code, out, _ = cli("import", str(bundle), "--json", data_dir=other)
    assert json.loads(out)["appended"] == 0
    code, out, _ = cli("export", str(tmp_path / "since.bundle"), "--since", "3", "--json")
    assert json.loads(out)["frames"] == 3
    data = bytearray(bundle.read_bytes())
    data[-200] ^= 0x55
    bundle.write_bytes(bytes(data))
    third = tmp_path / "third"
    cli("init", data_dir=third)
    code, _, err = cli("import", str(bundle), data_dir=third)
    assert code == 3 and "import rejected" in err and "offset=" in err and "seq=" in err
    code, out, _ = cli("log", "stats", "--json", data_dir=third)
    sizes = sorted(f["events"] for f in json.loads(out)["feeds"])
    assert sizes == [0, 3]  # the first batch was whole and verified; nothing after the damage


def test_fork_is_reported_by_import_and_verify(cli: Cli, tmp_path: Path) -> None:
    cli("init")
    cli("log", "append", stdin=_lines(2))
    copy = tmp_path / "copy"
    shutil.copytree(cli.data_dir, copy)  # a copied key: the classic fork
    cli("log", "append", stdin=_lines(2, 2))
    cli("log", "append", stdin=_lines(3, 10), data_dir=copy)
    bundle = tmp_path / "copy.bundle"
    cli("export", str(bundle), data_dir=copy)
    code, _, err = cli("import", str(bundle))
    assert code == 3 and "FORK" in err
    code, out, _ = cli("log", "verify")
    assert code == 3 and "FORK" in out
    forks = list((cli.data_dir / "log" / "forks").glob("*.json"))
    assert len(forks) == 1 and str(forks[0]) in out
    code, out, _ = cli("log", "stats", "--json")
    assert json.loads(out)["forks"][0]["proof"] == str(forks[0])
    code, _, err = cli("log", "append", stdin=_lines(1))
    assert code == 3 and "stopped" in err
    code, _, err = cli("import", str(bundle))
    assert code == 3 and "stopped" in err


def test_stale_log_and_other_exit_codes(cli: Cli, tmp_path: Path) -> None:
    assert cli("log", "verify")[0] == 1  # no site yet
    assert cli("log", "verify", env={"HMD_LOG__FSYNC": "sometimes"})[0] == 2
    cli("init")
    cli("log", "append", stdin=_lines(2))
    cli("log", "append", stdin=_lines(2, 2))
    os.remove(segment_path(LogStore(cli.data_dir)))  # the log is gone, keys/site.head is not
    code, _, err = cli("log", "append", stdin=_lines(1))
    assert code == 3 and "refusing to write" in err
    code, out, _ = cli("log", "verify")
    assert code == 3 and "FAIL" in out


def test_reindex(cli: Cli) -> None:
    cli("init")
    cli("log", "append", stdin=_lines(5))
    index = LogStore(cli.data_dir).feed_dir(LogStore(cli.data_dir).site.feed) / "index"
    original = index.read_bytes()
    index.write_bytes(original[:48] + b"\x00" * (len(original) - 48))
    assert cli("log", "verify")[0] == 3
    code, out, _ = cli("log", "reindex")
    assert code == 0 and "5 events" in out
    assert index.read_bytes() == original
    assert cli("log", "verify")[0] == 0


def test_quick_start_through_the_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("heimdall")
    env = dict(os.environ, HMD_DATA_DIR=str(tmp_path / "qs"))
    subprocess.run([str(script), "init"], env=env, check=True, capture_output=True)
    subprocess.run([str(script), "log", "append"], env=env, check=True, capture_output=True,
                   input=_lines(3).encode())
    result = subprocess.run([str(script), "log", "verify"], env=env, capture_output=True, text=True)
    assert result.returncode == 0 and "3 events verified" in result.stdout


def test_the_command_line_leaves_the_server_and_graph_stacks_unimported() -> None:
    """Every command (and an ingest's worker processes) builds the parser; only `serve`,
    the graph commands and the database commands need aiohttp, asyncio or dbctl."""
    code = ("import sys; from heimdall_core.cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in ('aiohttp', 'asyncio', 'heimdall_core.api.app', "
            "'heimdall_core.dbctl', 'heimdall_core.graph.projector') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


_HOLDER = """import fcntl, sys, time
lock = open(sys.argv[1], "a")
fcntl.flock(lock, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def held_feed(cli: Cli, tmp_path: Path) -> Iterator[int]:
    """The site's feed, its writer lock held by a process that looks like 'heimdall serve'
    (the pid of which is yielded)."""
    cli("init")
    store = LogStore(cli.data_dir)
    script = tmp_path / "heimdall_holder.py"
    script.write_text(_HOLDER)
    holder = subprocess.Popen([sys.executable, str(script), str(store.feed_dir(store.site.feed) / "lock"),
                               "serve"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def test_a_busy_feed_gives_each_command_its_own_advice(cli: Cli, held_feed: int, tmp_path: Path) -> None:
    """An erasure request was told to upload a dump: each command says who holds the feed
    and what to do for itself."""
    holder = f"pid {held_feed}, 'heimdall serve'"
    code, _, err = cli("pii", "shred", "--kind", "email", "carol@example.com")
    assert code == 1 and holder in err and "nothing was shredded" in err
    assert "systemctl stop heimdall" in err and "run this shred again" in err
    assert "POST /v1/dumps" not in err and "carol" not in err
    assert cli("pii", "subject", "--kind", "email", "carol@example.com")[1].count("shredded") == 0
    code, _, err = cli("log", "append", stdin=_lines(1))
    assert code == 1 and holder in err and "nothing was appended" in err
    assert "systemctl stop heimdall" in err and "POST /v1/dumps" not in err
    dump = tmp_path / "d.csv"
    dump.write_text("ip\n192.0.2.1\n")
    code, _, err = cli("ingest", str(dump), "--source", "s")
    assert code == 1 and holder in err and "POST /v1/dumps" in err
    code, _, err = cli("log", "reindex")  # any other writer: the general advice
    assert code == 1 and holder in err and "wait for that process to end" in err
    assert "0 events verified" in cli("log", "verify")[1]


def test_feed_busy_keeps_its_parts_across_processes() -> None:
    """An ingest worker's refusal reaches the parent pickled: it must arrive whole."""
    busy = FeedBusy("feed ab is being written by another process (pid 7)", "wait")
    again = pickle.loads(pickle.dumps(busy))
    assert (again.held, again.advice, str(again)) == (busy.held, busy.advice, str(busy))
    assert str(busy.advise("stop it")) == "feed ab is being written by another process (pid 7); stop it"
