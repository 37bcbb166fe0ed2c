"""POST /v1/dumps: a dump streamed in the request body, through the one ingest pipeline.

Query parameters: ``source`` (required), ``name``, ``format`` (csv, json, ndjson, combo),
``map`` (COL=KIND, repeatable), ``sha256`` (hex; lets a repeat be refused before any
record is read). The body is read chunk by chunk, handed to the pipeline through a
small bounded queue (backpressure: at most QUEUE_CHUNKS_MAX chunks in memory), and
never held whole. Over ``ingest.body_bytes_max``: 413 (before reading when
Content-Length says so). A format that is unknown or not text: 415, naming the accepted
Content-Types and ``format=``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import re
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import PayloadEncodingError

from heimdall_core.api.app import SETTINGS_KEY, STOPPING_KEY, error_body, fault_reply, server_fault
from heimdall_core.errors import ConfigError, HeimdallError, IngestError, UnsupportedInput
from heimdall_core.ingest.mapping import parse_map_args
from heimdall_core.ingest.pipeline import DumpIngestor, InputCut
from heimdall_core.ingest.registry import DumpRegistry
from heimdall_core.ingest.run import IngestSite, ingest_chunks, record_metrics

log = logging.getLogger("heimdall.api")
SITE_KEY = web.AppKey("ingest_site", IngestSite)
# One thread owns the ingest resources (the key store's SQLite connection, the feed
# writer): uploads are ingested one after another, each streamed with backpressure.
EXECUTOR_KEY = web.AppKey("ingest_executor", ThreadPoolExecutor)
FORMATS = ("csv", "json", "ndjson", "combo")
CONTENT_TYPES = {
    "text/csv": "csv", "text/tab-separated-values": "csv", "application/json": "json",
    "application/x-ndjson": "ndjson", "application/ndjson": "ndjson", "text/plain": None,
    "application/octet-stream": None, "application/gzip": None, "application/x-gzip": None,
    "application/x-bzip2": None, "application/x-xz": None, "application/zstd": None, "": None,
    # curl --data-binary sends this unless told otherwise: it says nothing about the body.
    "application/x-www-form-urlencoded": None,
}
_ECHOED_CHARS_MAX = 40
"""Of a client's format or Content-Type, at most this much is quoted back in an error."""
CHUNK_BYTES = 1 << 20
QUEUE_CHUNKS_MAX = 4
PUT_WAIT_S = 0.5
SOURCE_RE = re.compile(r"^[\w.\-:@ ]{1,128}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
CLIENT_GONE = (ConnectionError, PayloadEncodingError)
"""What reading the body raises when the client disconnects or cuts a chunked body."""
_END = b""
_ABORT = b"\x00abort"  # an object identity marker: never compared by value


class UploadAborted(InputCut):
    """The upload was cut off (over the limit or the client went away)."""


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/dumps", post_dump)
    app.cleanup_ctx.append(_site_context)


async def _site_context(app: web.Application) -> AsyncIterator[None]:
    executor = ThreadPoolExecutor(1, thread_name_prefix="ingest")
    loop = asyncio.get_running_loop()
    site = await loop.run_in_executor(executor, IngestSite, app[SETTINGS_KEY])
    app[SITE_KEY] = site
    app[EXECUTOR_KEY] = executor
    yield
    await loop.run_in_executor(executor, site.close)
    executor.shutdown(wait=True)


def _format_of(request: web.Request) -> tuple[str | None, str | None]:
    """The format the client chose (``format=``), taken as it is, and the one its
    Content-Type claims, only a hint that the pipeline checks against the body.
    Raises :class:`UnsupportedInput` (415) naming what is accepted."""
    fmt = request.query.get("format")
    if fmt is not None:
        if fmt not in FORMATS:
            raise UnsupportedInput(f"unknown format {fmt[:_ECHOED_CHARS_MAX]!r}; use one of: "
                                   f"{', '.join(FORMATS)}")
        return fmt, None
    content_type = request.content_type if request.headers.get("Content-Type") else ""
    if content_type not in CONTENT_TYPES:
        accepted = ", ".join(sorted(t for t in CONTENT_TYPES if t))
        raise UnsupportedInput(
            f"content type {content_type[:_ECHOED_CHARS_MAX]!r} is not a dump format; send one "
            f"of: {accepted}, or none (the body is sniffed either way), or give the format with "
            f"?format= ({', '.join(FORMATS)})")
    return None, CONTENT_TYPES[content_type]


async def post_dump(request: web.Request) -> web.StreamResponse:
    site = request.app[SITE_KEY]
    limit = site.settings.ingest.body_bytes_max
    source = request.query.get("source", "")
    if not SOURCE_RE.match(source):
        return error_body(400, "query parameter 'source' is required (1-128 letters, digits, . - _ : @)")
    try:
        fmt, fmt_hint = _format_of(request)
    except UnsupportedInput as exc:
        return error_body(415, str(exc))
    if request.content_length is not None and request.content_length > limit:
        return error_body(413, f"body of {request.content_length} bytes exceeds the limit of {limit}")
    try:
        overrides = parse_map_args(request.query.getall("map", []))
    except ConfigError as exc:
        return error_body(400, str(exc))
    declared = request.query.get("sha256")
    if declared is not None and not SHA256_RE.match(declared):
        return error_body(400, "query parameter 'sha256' must be 64 lower-case hex digits")
    loop = asyncio.get_running_loop()
    executor = request.app[EXECUTOR_KEY]
    if declared:
        registry = DumpRegistry(site.store)
        await loop.run_in_executor(executor, registry.refresh)
        done = registry.find_complete(source, declared)
        if done is not None:
            return web.json_response({"dump_id": done.dump, "duplicate": True, "records": done.records,
                                      "quarantined": done.quarantined, "sha256": declared})
    options = site.options(source, fmt=fmt, fmt_hint=fmt_hint, mapping=overrides)
    chunks: queue.Queue[bytes] = queue.Queue(QUEUE_CHUNKS_MAX)

    def body() -> Iterator[bytes]:
        while (chunk := chunks.get()) is not _END:
            if chunk is _ABORT:
                raise UploadAborted("upload aborted; records read so far stay as an incomplete dump")
            yield chunk

    name = request.query.get("name", "-")[:255]
    parts: list[DumpIngestor] = []  # the dump's ingestor, once the pipeline made it
    work = loop.run_in_executor(executor, functools.partial(
        ingest_chunks, site, body(), options, name=name, expected_sha256=declared, on_part=parts.append))
    received = 0
    try:
        while chunk := await _read_chunk(request):
            received += len(chunk)
            if received > limit:
                return error_body(413, f"body exceeds the limit of {limit} bytes; the records "
                                  "read so far are logged as an incomplete dump")
            if not await _put(chunks, chunk, work):
                break
        await _put(chunks, _END, work)
        summary = await work
    except UnsupportedInput as exc:
        return error_body(415, str(exc))
    except IngestError as exc:
        return error_body(400, str(exc))
    except CLIENT_GONE:
        # Not a server fault: one line, no traceback, nothing of the body.
        await _cut(chunks, work)
        log.warning("POST /v1/dumps: the client went away after %d bytes; %s", received, _kept(parts))
        return error_body(400, "upload cut off by the client")
    except ServerStopping:
        await _cut(chunks, work)
        log.warning("POST /v1/dumps: upload cut off after %d bytes, the server is stopping; %s",
                    received, _kept(parts))
        return error_body(503, "the server is stopping: upload cut off; " + _kept(parts)
                          + "; send the dump again once the server is back")
    except (HeimdallError, OSError) as exc:
        # The server's own failures (storage, its log or key store, another writer): a
        # status the client may retry on, and one warning line; anything else is bad input.
        fault = server_fault(exc)
        if fault is None:
            return error_body(400, str(exc))
        # A failed append leaves the feed's writer refusing every later one: close it in
        # the thread that owns it, and the next upload reopens it (its recovery cuts a torn
        # batch back to the last signed checkpoint) instead of failing until a restart.
        await loop.run_in_executor(executor, site.store.close)
        return fault_reply(fault, exc, request)
    finally:
        if not work.done():
            # Over the limit, or a failure above: the dump stays incomplete (no
            # dump.finished), and `heimdall dumps` reports it.
            await _cut(chunks, work)
    record_metrics(summary)
    reply = summary.as_json()
    if summary.quarantine_file is not None:
        # Where the server keeps its files is none of the client's business.
        quarantine = Path(summary.quarantine_file)
        reply["quarantine_file"] = str(quarantine.relative_to(site.settings.data_dir))
    return web.json_response(reply, status=200 if summary.duplicate else 201)


class ServerStopping(Exception):
    """The server began to stop while an upload was being read."""


async def _read_chunk(request: web.Request) -> bytes:
    """The body's next chunk (b"" at its end), or ``ServerStopping`` when the server begins
    to stop first: an upload must not hold a stopping server for minutes. The stop is
    checked before and after the read: with the body already buffered the read is ready at
    once, and would otherwise win every time the two are ready together."""
    stop = request.app[STOPPING_KEY]
    if stop.is_set():
        raise ServerStopping
    read = asyncio.ensure_future(request.content.read(CHUNK_BYTES))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((read, stopping), return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            raise ServerStopping
        return read.result()
    finally:
        stopping.cancel()
        read.cancel()  # nothing once it is done


async def _cut(chunks: queue.Queue[bytes], work: asyncio.Future[Any]) -> None:
    """End an upload cut off: the pipeline keeps the whole records read so far."""
    await _put(chunks, _ABORT, work)
    with contextlib.suppress(Exception):
        await work


def _kept(parts: list[DumpIngestor]) -> str:
    """What a cut-off upload left in the log, in words for the log and the client."""
    if not parts or not parts[0].result.records:
        return "no record was logged"
    return f"dump {parts[0].dump.hex()} stays incomplete with {parts[0].result.records} records"


async def _put(chunks: queue.Queue[bytes], chunk: bytes, work: asyncio.Future[Any]) -> bool:
    """Hand a chunk to the pipeline thread; False if the pipeline already stopped."""
    while not work.done():
        try:
            chunks.put_nowait(chunk)
            return True
        except queue.Full:
            await asyncio.sleep(0.005)
    return False
