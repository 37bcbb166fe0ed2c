"""PII never leaves in clear: not in the data directory, not in log output, not in metrics.

Ingests a dump of known emails, names, usernames, phones and passwords through the CLI
and through the HTTP API, then searches every byte under the data directory, the
program's own output and the metrics text for each plaintext and its lower-case form.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
from ingest_helpers import cli, cli_json, events_of, serving, write_dump

from heimdall_core import config
from heimdall_core.errors import ShreddedError
from heimdall_core.pii.keystore import KeyStore
from heimdall_core.pii.protect import reveal

COUNT = 40


def _secrets(i: int) -> dict[str, str]:
    return {
        "email": f"Quorra.Leaktest{i}@Example.COM",
        "full_name": f"Quintessa Marblefoot{i}",
        "username": f"ZephyrLeak{i}",
        "phone": f"+4477009{i:05d}",
        "password": f"S3cr3t-Pa55-{i}!",
    }


def _all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


async def _post_and_scrape(data: Path, body: bytes) -> str:
    settings = config.load(environ={"HMD_DATA_DIR": str(data), "HMD_LOG_LEVEL": "debug"})
    async with serving(settings) as url, aiohttp.ClientSession() as session:
        async with session.post(f"{url}/v1/dumps", params={"source": "api-leak"}, data=body) as response:
            assert response.status == 201, await response.text()
        async with session.get(f"{url}/metrics") as response:
            return await response.text()


def test_no_plaintext_anywhere_and_shredding_makes_values_unrecoverable(tmp_path: Path) -> None:
    data = tmp_path / "site"
    cli(data, "init")
    rows = [_secrets(i) for i in range(COUNT)]
    header = [*rows[0].keys(), "ip"]
    dump = write_dump(tmp_path / "people.csv", [[*r.values(), f"192.0.2.{i + 1}"] for i, r in
                                                 enumerate(rows)], header)
    # A few bad lines: the quarantine file must not quote them either.
    with open(dump, "a") as handle:
        handle.write("Leaky.Broken@Example.COM,only-two\n")
    proc = cli(data, "ingest", str(dump), "--source", "leak", "--map", "full_name=name",
               "--map", "phone=phone", "--json", HMD_LOG_LEVEL="debug")
    summary = cli_json(data, "dumps", "--json")
    assert summary and summary[0]["records"] == COUNT
    http_body = dump.read_bytes().replace(b"Leaktest", b"Leaktesu")
    metrics = asyncio.run(_post_and_scrape(data, http_body))
    output = proc.stdout + proc.stderr + metrics
    for extra in ("log", "tail", "-n", "1000"), ("log", "stats"), ("dumps",), ("log", "verify"):
        run = cli(data, *extra, HMD_LOG_LEVEL="debug")
        output += run.stdout + run.stderr
    plaintexts = [v for r in rows for k, v in r.items()] + ["Leaky.Broken@Example.COM"]
    plaintexts += [p.replace("Leaktest", "Leaktesu") for p in plaintexts]
    needles = {p.encode() for p in plaintexts} | {p.lower().encode() for p in plaintexts}
    files = _all_files(data)
    assert len(files) > 10
    blobs = {path: path.read_bytes() for path in files}
    for needle in needles:
        assert needle.decode() not in output, "plaintext in program output or metrics"
        for path, blob in blobs.items():
            assert needle not in blob, f"plaintext found in {path.relative_to(data)}"

    # Shred the first person: every sealed value of that subject is gone for good.
    cli(data, "pii", "shred", "--kind", "email", rows[0]["email"])
    events = events_of(data, "records.ingested")
    with KeyStore.open(data / "pii") as keys:
        subject = keys.subject_id_for("email", rows[0]["email"].lower())
        sealed = [f for e in events for _, fields in e.payload["records"] for f in fields
                  if f.get("sub") == subject and "ct" in f]
        assert sealed, "the shredded subject had sealed fields"
        for field in sealed:
            try:
                reveal(field, keys)
            except ShreddedError as exc:
                assert rows[0]["email"] not in str(exc)
            else:
                raise AssertionError("a shredded value could still be revealed")
        others = [f for e in events for _, fields in e.payload["records"] for f in fields
                  if "ct" in f and f.get("sub") != subject]
        assert reveal(others[0], keys)  # everyone else's values still open
    assert cli(data, "log", "verify").returncode == 0
    shredded = events_of(data, "subject.shredded")
    assert [e.payload["subject"] for e in shredded] == [subject]


# Files without a header and a dump keyed by account: the first row and the keys are
# data, so no usable column name comes from them (they are not known column names).
_USERS = [("jsmith77", "Winter2024"), ("maria.k", "P@ssw0rd!"), ("tom_r9", "qwerty#1"),
          ("anna.leak", "Secr3t$$")]
_HEADERLESS = {
    "users.csv": ("csv", "".join(f"{u},{p}\n" for u, p in _USERS)),
    "users.tsv": ("csv", "".join(f"{u}\t{p}\n" for u, p in _USERS)),
    "combo.txt": ("combo", "".join(f"{u}:{p}\n" for u, p in _USERS)),
    "accounts.json": ("json", json.dumps({u: {"password": p, "ip": f"192.0.2.{i + 1}"}
                                          for i, (u, p) in enumerate(_USERS)})),
}


async def _post_all(data: Path, bodies: list[tuple[str, bytes]]) -> str:
    """POST each body (declared format, body); return the replies' text."""
    settings = config.load(environ={"HMD_DATA_DIR": str(data), "HMD_LOG_LEVEL": "debug"})
    replies = ""
    async with serving(settings) as url, aiohttp.ClientSession() as session:
        for fmt, body in bodies:
            async with session.post(f"{url}/v1/dumps", params={"source": "api-headerless", "format": fmt},
                                    data=body) as response:
                replies += await response.text()
                assert response.status == 201, replies
    return replies


def test_headerless_files_and_account_keys_never_reach_the_log(tmp_path: Path) -> None:
    data = tmp_path / "site"
    cli(data, "init")
    output = ""
    for name, (_fmt, text) in _HEADERLESS.items():
        path = tmp_path / name
        path.write_text(text)
        proc = cli(data, "ingest", str(path), "--source", "headerless", "--json")
        output += proc.stdout + proc.stderr
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        assert summary["records"] == (1 if name.endswith(".json") else len(_USERS)), name
    # The same over HTTP, other bytes (not a repeat), the format given by the client.
    bodies = [(fmt, text.replace("9", "8").encode()) for fmt, text in _HEADERLESS.values()]
    output += asyncio.run(_post_all(data, bodies))
    output += cli(data, "dumps").stdout + cli(data, "log", "tail", "-n", "1000").stdout
    plaintexts = [value for pair in _USERS for value in pair]
    plaintexts += [p.replace("9", "8") for p in plaintexts]
    blobs = {path: path.read_bytes() for path in _all_files(data)}
    for plaintext in plaintexts:
        assert plaintext not in output, f"{plaintext!r} in program output or an HTTP reply"
        for path, blob in blobs.items():
            assert plaintext.encode() not in blob, f"{plaintext!r} in {path.relative_to(data)}"
