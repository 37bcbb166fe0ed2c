"""Columns decided value by value, end to end through the CLI: indicator feeds (a column
of URLs, domains, networks, IPs and e-mails), defanged and IDN lists, combo lists of
e-mail and user-name logins; and dates that must not become a record's subject."""

from __future__ import annotations

import json
import os
from pathlib import Path

import aiohttp
import pytest
from ingest_helpers import events_of, last_json, run, serving

from heimdall_core import config
from heimdall_core.errors import ShreddedError
from heimdall_core.normalize import Canonical, canonicalize
from heimdall_core.pii.keystore import KeyStore
from heimdall_core.pii.protect import reveal

ROWS = 40


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Path:
    data_dir = tmp_path / "site"
    for name in [n for n in os.environ if n.startswith("HMD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HMD_DATA_DIR", str(data_dir))
    monkeypatch.setenv("HMD_LOG__FSYNC", "false")
    assert run(capsys, "init")[0] == 0
    return data_dir


def ingest(capsys: pytest.CaptureFixture[str], path: Path, *args: str) -> dict[str, object]:
    code, out, err = run(capsys, "ingest", str(path), "--source", path.stem, "--no-progress",
                         "--json", *args)
    assert code == 0, err
    summary: dict[str, object] = last_json(out)
    return summary


def seen_in(capsys: pytest.CaptureFixture[str], value: str, *kind: str) -> list[str]:
    """The names of the dumps ``heimdall query VALUE`` finds the value in."""
    code, out, err = run(capsys, "query", value, "--json", *(("--kind", *kind) if kind else ()))
    assert code == 0, f"{value!r}: {err}"
    return sorted(d["name"] for match in last_json(out)["matches"] for d in match["dumps"])


def test_indicator_feeds_are_searchable_by_each_kind(
        site: Path, tmp_path: Path, testdata_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    feed = tmp_path / "feed.csv"
    feed.write_text("indicator,type,first_seen\n" + "".join(
        f"http://evil{i}.example.com/p,url,2024-01-01\nbad{i}.example.org,domain,2024-01-02\n"
        f"10.{i}.0.0/16,cidr,2024-01-03\n2001:db8::{i:x},ip,2024-01-04\n"
        f"phish{i}@mail.example.net,email,01.02.2024\nunknown thing {i},other,2024-01-06\n"
        for i in range(ROWS)))
    iocs = tmp_path / "iocs.json"
    iocs.write_text(json.dumps([{"ioc": v} for i in range(ROWS)
                                for v in (f"evil{i}.com", f"45.9.21.{i}", f"hxxp://x{i}[.]example/a")]))
    defanged = tmp_path / "defanged.txt"
    defanged.write_text("".join(f"evil{i}[.]example[.]org\n" for i in range(ROWS)))
    defanged_ips = tmp_path / "defanged-ips.txt"
    defanged_ips.write_text("".join(f"45.9.20[.]{i}\n" for i in range(ROWS)))
    idn = tmp_path / "idn.txt"
    idn.write_text("".join(f"bücher{i}.example\n" for i in range(ROWS)))
    stix = testdata_dir / "stix" / "infrastructure.json"

    summary = ingest(capsys, feed)
    assert summary["mapping"] == {"indicator": "auto", "type": "other", "first_seen": "other"}
    assert summary["undetected_values"] == ROWS and summary["quarantined"] == 0
    assert ingest(capsys, iocs)["mapping"] == {"ioc": "auto"}
    assert ingest(capsys, defanged)["mapping"] == {"col1": "domain"}
    assert ingest(capsys, defanged_ips)["mapping"] == {"col1": "ip"}
    assert ingest(capsys, idn)["mapping"] == {"col1": "domain"}
    assert ingest(capsys, stix)["mapping"]["value"] == "auto"
    assert run(capsys, "project")[0] == 0

    for value in ("http://evil7.example.com/p", "bad7.example.org", "10.7.0.0/16", "2001:db8::7",
                  "Phish7@Mail.Example.NET"):
        assert seen_in(capsys, value) == ["feed.csv"], value
    for value in ("evil7.com", "45.9.21.7", "http://x7.example/a"):
        assert seen_in(capsys, value) == ["iocs.json"], value
    assert seen_in(capsys, "evil7.example.org") == ["defanged.txt"]
    assert seen_in(capsys, "45.9.20.7") == ["defanged-ips.txt"]
    assert seen_in(capsys, "bücher7.example") == ["idn.txt"]
    assert seen_in(capsys, "xn--bcher7-3ya.example") == ["idn.txt"]
    assert seen_in(capsys, "198.51.100.3") == seen_in(capsys, "example.com") == ["infrastructure.json"]
    # The e-mail of an indicator column is personal: sealed and blind-indexed, never clear.
    fields = [f for e in events_of(site, "records.ingested") for _, fs in e.payload["records"] for f in fs]
    emails = [f for f in fields if f["kind"] == "email"]
    assert len(emails) == ROWS and all("v" not in f and "ct" in f and "bi" in f for f in emails)
    undetected = [f for f in fields if f["col"] == "indicator" and f["kind"] == "other"]
    assert len(undetected) == ROWS and all("v" not in f and "ct" in f for f in undetected)
    code, _, err = run(capsys, "query", "unknown thing 7", "--kind", "other")
    assert code == 2 and "not searchable" in err  # kept as the policy keeps `other`


def test_a_combo_list_of_email_and_username_logins_loses_no_line(
        site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    combo = tmp_path / "combo.txt"
    combo.write_text("".join(f"user{i}@example.com:pw{i}\n" if i % 4 else f"user{i};{i:032x}\n"
                             for i in range(200)))
    summary = ingest(capsys, combo)
    assert summary["mapping"]["login"] == "email_or_username"
    assert summary["records"] == 200 and summary["quarantined"] == 0
    assert run(capsys, "project")[0] == 0
    assert seen_in(capsys, "user1@example.com") == ["combo.txt"]
    assert seen_in(capsys, "user4", "username") == ["combo.txt"]
    code, _, _ = run(capsys, "query", "user4@example.com")
    assert code == 4  # user4 is a user name, not an e-mail


async def test_a_per_value_kind_can_be_asked_for_over_http(site: Path) -> None:
    """``map=COL=auto`` on POST /v1/dumps: a column of mostly one kind (which inference
    would give that kind, rejecting the rest) is decided value by value."""
    body = "".join(f"bad{i}.example.org\n" for i in range(30)) + "192.0.2.7\nnot an indicator\n"
    settings = config.load(environ={"HMD_DATA_DIR": str(site)})
    params = {"source": "http-feed", "map": "col1=auto"}
    async with serving(settings) as url, aiohttp.ClientSession() as session, \
            session.post(f"{url}/v1/dumps", params=params, data=body.encode()) as response:
        assert response.status == 201, await response.text()
        summary = await response.json()
    assert summary["mapping"] == {"col1": "auto"}
    assert summary["records"] == 32 and summary["quarantined"] == 0
    assert summary["undetected_values"] == 1 and summary["rejected_fields"] == 0
    kinds = sorted(f["kind"] for e in events_of(site, "records.ingested") for _, fs in e.payload["records"]
                   for f in fs)
    assert kinds == ["domain"] * 30 + ["ip", "other"]


def _name_subject(keys: KeyStore, name: str) -> bytes:
    result = canonicalize("name", name)
    assert isinstance(result, Canonical)
    return keys.subject_id_for("name", result.value)


def test_a_date_column_is_no_subject_and_shredding_a_person_erases_that_person_only(
        site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    people = tmp_path / "people.csv"
    people.write_text("full_name,created,ip\n" + "".join(
        f"Person {i},2024-01-0{i % 3 + 1},192.0.2.{i + 1}\n" for i in range(30)))
    summary = ingest(capsys, people)
    assert summary["mapping"] == {"full_name": "name", "created": "other", "ip": "ip"}
    code, _, err = run(capsys, "pii", "shred", "--kind", "name", "Person 0")
    assert code == 0, err
    fields = [f for e in events_of(site, "records.ingested") for _, fs in e.payload["records"] for f in fs]
    with KeyStore.open(site / "pii") as keys:
        shredded = _name_subject(keys, "Person 0")
        gone = [f for f in fields if f.get("sub") == shredded]
        assert sorted(f["kind"] for f in gone) == ["name", "other"]  # the person and their date
        for field in gone:
            with pytest.raises(ShreddedError):
                reveal(field, keys)
        # Everyone else, created the same day or not, is untouched.
        others = [f for f in fields if "sub" in f and f["sub"] != shredded]
        assert len(others) == 2 * 29
        assert {reveal(f, keys) for f in others if f["kind"] == "name"} == {
            f"Person {i}" for i in range(1, 30)}
        assert {f["sub"] for f in others} == {_name_subject(keys, f"Person {i}") for i in range(1, 30)}


LOGINS = "alice@example.com,10.0.0.1\nbob@example.org,10.0.0.2\ncarol@example.net,10.0.0.3\n" \
         "john.smith,10.0.0.4\nmaria.k,10.0.0.5\n"


def test_user_names_shaped_like_domains_are_never_written_in_clear(
        site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A headerless login column of e-mails and user names is ``email_or_username``;
    asked for as ``auto``, the names with no known public suffix are ``other`` (sealed):
    neither writes ``john.smith`` or ``maria.k`` anywhere in the data dir."""
    logins = tmp_path / "logins.csv"
    logins.write_text(LOGINS)
    as_auto = tmp_path / "as-auto.csv"
    as_auto.write_text(LOGINS)
    assert ingest(capsys, logins)["mapping"] == {"col1": "email_or_username", "col2": "ip"}
    summary = ingest(capsys, as_auto, "--map", "col1=auto")
    assert summary["undetected_values"] == 2 and summary["rejected_fields"] == 0
    assert run(capsys, "project")[0] == 0
    code, out, _ = run(capsys, "log", "tail", "--json")
    assert code == 0 and "10.0.0.4" in out
    for path in (p for p in site.rglob("*") if p.is_file()):
        data = path.read_bytes()
        assert b"john.smith" not in data and b"maria.k" not in data, path
    fields = [f for e in events_of(site, "records.ingested") for _, fs in e.payload["records"] for f in fs]
    assert sorted(f["kind"] for f in fields if f["col"] == "col1") == [
        "email"] * 6 + ["other"] * 2 + ["username"] * 2
    assert all("v" not in f and "sub" in f for f in fields if f["col"] == "col1")
    assert seen_in(capsys, "john.smith", "username") == ["logins.csv"]


def test_single_label_host_names_beside_addresses_stay_domains(
        site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hosts = tmp_path / "hosts.csv"
    hosts.write_text("host,port\n" + "".join(f"{h},443\n" for h in (
        "server01", "192.0.2.7", "DC01", "mail.example.org", "10.0.0.0/8", "localhost", "2001:db8::1")))
    summary = ingest(capsys, hosts)
    assert summary["mapping"] == {"host": "domain_or_ip", "port": "other"}
    assert summary["rejected_fields"] == 0 and summary["undetected_values"] == 0
    assert run(capsys, "project")[0] == 0
    for value in ("server01", "dc01", "localhost", "mail.example.org"):
        assert seen_in(capsys, value, "domain") == ["hosts.csv"], value
    for value in ("192.0.2.7", "10.0.0.0/8", "2001:db8::1"):
        assert seen_in(capsys, value) == ["hosts.csv"], value


def test_a_few_odd_values_are_rejected_not_decided_per_value(
        site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One network among a full sample of addresses does not make the column per-value
    (each value decided, no column pass): it is rejected and counted, as before."""
    addresses = tmp_path / "addresses.csv"
    addresses.write_text("ip,note\n" + "".join(
        f"{'10.9.0.0/16' if i == 500 else f'10.0.{i % 250}.{i // 250}'},n{i}\n" for i in range(1500)))
    summary = ingest(capsys, addresses)
    assert summary["mapping"] == {"ip": "ip", "note": "other"}
    assert summary["records"] == 1500 and summary["rejected_fields"] == 1
