"""POST /v1/dumps over real HTTP: streamed into the same pipeline as the CLI."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from ingest_helpers import SAMPLE, events_of, serving

from heimdall_core import config
from heimdall_core.api.app import STOPPING_KEY
from heimdall_core.api.ingest_routes import ServerStopping, _read_chunk
from heimdall_core.log.store import init_site


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    data = tmp_path / "site"
    init_site(data, "api-test")
    settings = config.load(environ={"HMD_DATA_DIR": str(data), "HMD_INGEST__BODY_BYTES_MAX": "64KiB"})
    async with serving(settings) as url:
        yield url, data


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def test_streamed_upload_gives_dump_id_and_counts(api: tuple[str, Path]) -> None:
    base, data = api
    body = SAMPLE.read_bytes()
    # A generator body goes out with chunked transfer encoding: no Content-Length.
    async with aiohttp.ClientSession() as session, session.post(
            f"{base}/v1/dumps", params={"source": "web", "name": "s.csv"},
            data=_chunks(body, 777)) as response:
        assert response.status == 201, await response.text()
        summary = await response.json()
    assert summary["sha256"] == hashlib.sha256(body).hexdigest()
    assert summary["records"] >= 55 and summary["quarantined"] >= 1
    assert len(events_of(data, "dump.finished")) == 1
    assert events_of(data, "dump.started")[0].payload["source"] == "web"


async def test_same_body_twice_is_flagged_duplicate(api: tuple[str, Path]) -> None:
    base, _ = api
    body = SAMPLE.read_bytes()
    digest = hashlib.sha256(body).hexdigest()
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/v1/dumps", params={"source": "dup"}, data=body) as first:
            assert first.status == 201
        async with session.post(f"{base}/v1/dumps", params={"source": "dup"}, data=body) as second:
            summary = await second.json()
            assert second.status == 200 and summary["duplicate"] is True
        # With the digest declared up front, the repeat is refused before reading.
        async with session.post(f"{base}/v1/dumps", params={"source": "dup", "sha256": digest},
                                data=body) as third:
            assert third.status == 200 and (await third.json())["duplicate"] is True


async def test_limits_and_media_types(api: tuple[str, Path]) -> None:
    base, _ = api
    big = b"email\n" + b"".join(b"u%d@example.com\n" % i for i in range(10000))
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/v1/dumps", params={"source": "big"}, data=big) as r:
            assert r.status == 413
            assert "limit" in (await r.json())["error"]
        async with session.post(f"{base}/v1/dumps", params={"source": "big"},
                                data=_chunks(big, 4096)) as r:
            assert r.status == 413
        async with session.post(f"{base}/v1/dumps", params={"source": "x", "format": "xml"},
                                data=b"<a/>") as r:
            assert r.status == 415
        async with session.post(f"{base}/v1/dumps", params={"source": "x"}, data=b"\x89PNG",
                                headers={"Content-Type": "image/png"}) as r:
            assert r.status == 415
        async with session.post(f"{base}/v1/dumps", params={"source": "x"},
                                data=b"\x00\x01\x02" * 100) as r:
            assert r.status == 415
            assert "binary" in (await r.json())["error"]
        async with session.post(f"{base}/v1/dumps", data=b"a\n") as r:
            assert r.status == 400 and "source" in (await r.json())["error"]
        async with session.get(f"{base}/metrics") as r:
            assert r.status == 200
            assert "heimdall_ingest_dumps" in await r.text()


class _ClientQuits(Exception):
    """Raised by the body generator: aiohttp then drops the connection mid-body."""


async def _then_quit(data: bytes, size: int) -> AsyncIterator[bytes]:
    async for chunk in _chunks(data, size):
        yield chunk
    await asyncio.sleep(0.5)  # the server reads and parses what was sent
    raise _ClientQuits


async def test_client_gone_mid_upload_keeps_what_was_read_as_incomplete(
        api: tuple[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    base, data = api
    sent = b"email,password\n" + b"".join(b"u%d@example.com,Pw-%d-secret\n" % (i, i)
                                          for i in range(300))
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as session:
        with pytest.raises((_ClientQuits, aiohttp.ClientError)):
            async with session.post(f"{base}/v1/dumps", params={"source": "quitter"},
                                    data=_then_quit(sent + b"u300@exa", 4096)):
                pass
    for _ in range(200):  # the server notices, logs the records read, then says so
        if "went away" in caplog.text:
            break
        await asyncio.sleep(0.05)
    records = [r for e in events_of(data, "records.ingested") for r in e.payload["records"]]
    assert [position for position, _ in records] == list(range(2, 302))
    (started,) = events_of(data, "dump.started")
    assert not events_of(data, "dump.finished")
    ours = [r for r in caplog.records if r.name.startswith("heimdall")]
    assert [r.levelno for r in ours] == [logging.WARNING], [r.getMessage() for r in ours]
    assert "went away" in ours[0].getMessage() and not ours[0].exc_info
    # It names the dump left incomplete and what it kept.
    assert (f"dump {started.payload['dump'].hex()} stays incomplete with 300 records"
            in ours[0].getMessage())
    assert "u1@example.com" not in caplog.text and "Pw-1-" not in caplog.text


async def test_declared_format_is_a_hint_and_the_body_is_still_sniffed(api: tuple[str, Path]) -> None:
    base, _ = api
    ndjson = b"".join(b'{"email": "u%d@example.com"}\n' % i for i in range(20))
    async with aiohttp.ClientSession() as session:
        for body, content_type in ((bytes(range(256)) * 40, "text/csv"),
                                   (ndjson, "text/csv"),
                                   (b"email,ip\na@b.example,192.0.2.1\n", "application/json")):
            async with session.post(f"{base}/v1/dumps", params={"source": "hint"}, data=body,
                                    headers={"Content-Type": content_type}) as r:
                assert r.status == 415, await r.text()
        async with session.post(f"{base}/v1/dumps", params={"source": "hint", "format": "csv"},
                                data=bytes(range(256)) * 40) as r:
            assert r.status == 415 and "binary" in (await r.json())["error"]
        async with session.post(f"{base}/v1/dumps", params={"source": "hint"}, data=ndjson,
                                headers={"Content-Type": "application/json"}) as r:
            assert r.status == 201 and (await r.json())["records"] == 20


async def test_curls_default_content_type_is_no_hint(api: tuple[str, Path]) -> None:
    """``curl --data-binary @c.csv.gz URL`` says application/x-www-form-urlencoded: no claim
    about the body, which is sniffed (and decompressed) as without a Content-Type."""
    base, _ = api
    body = gzip.compress(b"email,ip\n" + b"".join(b"u%d@example.com,192.0.2.%d\n" % (i, i)
                                                  for i in range(1, 31)))
    async with aiohttp.ClientSession() as session, session.post(
            f"{base}/v1/dumps", params={"source": "curl"}, data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
        assert r.status == 201, await r.text()
        summary = await r.json()
    assert summary["records"] == 30 and summary["compression"] == "gzip"


@pytest.mark.parametrize("content_type", ["image/png", 'text/x-"odd"', "multipart/form-data"])
async def test_a_refused_content_type_says_what_is_accepted(api: tuple[str, Path],
                                                            content_type: str) -> None:
    base, _ = api
    async with aiohttp.ClientSession() as session, session.post(
            f"{base}/v1/dumps", params={"source": "x"}, data=b"email\na@b.example\n",
            headers={"Content-Type": content_type}) as r:
        assert r.status == 415
        error = (await r.json())["error"]
    assert "text/csv" in error and "application/x-ndjson" in error and "?format=" in error
    assert "combo" in error


async def test_reply_names_the_quarantine_file_relative_to_the_data_dir(api: tuple[str, Path]) -> None:
    base, data = api
    body = b"email,ip\na@b.example,192.0.2.1\nonly-one-field\n"
    async with aiohttp.ClientSession() as session, session.post(
            f"{base}/v1/dumps", params={"source": "q"}, data=body) as r:
        reply = await r.json()
    assert r.status == 201 and reply["quarantined"] == 1
    assert reply["quarantine_file"] == f"quarantine/{reply['dump_id']}.jsonl"
    assert (data / reply["quarantine_file"]).is_file()
    assert str(data) not in json.dumps(reply)


class _Buffered:
    """A request body whose next chunk is already there: a read completes at once."""

    async def read(self, size: int) -> bytes:
        return b"email\na@b.example\n"[:size]


def _upload(stopping: bool) -> web.Request:
    app = web.Application()
    app[STOPPING_KEY] = asyncio.Event()
    if stopping:
        app[STOPPING_KEY].set()
    return make_mocked_request("POST", "/v1/dumps", app=app, payload=_Buffered())


async def test_a_stopping_server_cuts_off_an_upload_even_with_data_buffered() -> None:
    """A read and the stop both ready at once: the stop wins, or a client that keeps the
    buffer full would hold a stopping server until its shutdown timeout."""
    assert await _read_chunk(_upload(stopping=False)) == b"email\na@b.example\n"
    with pytest.raises(ServerStopping):
        await _read_chunk(_upload(stopping=True))
