"""Ingest past one core without locks: N processes, N disjoint byte ranges, N feeds.

The parent reads the head of the file to fix the format, columns and mapping, cuts the
file into N ranges at record boundaries, announces each worker's feed in the site's
main feed, and writes dump.started. Each worker process parses, normalizes and
protects its own range and appends to its own single-writer feed (its own key). The
parent then writes dump.finished with the totals. Events of every part carry the same
dump id, so the dump stays one dump.

Cutting at record boundaries: a newline ends a record unless it is inside a quoted
field. In delimited text a doubled quote ("") keeps the count of quote characters
even, so a newline is a boundary exactly when the number of quotes before it is even.
Counting is done with ``bytes.count`` (C speed), one pass over the file. A stray quote
in an unquoted field (``5'10"``) is data to the CSV reader but flips the count, so a cut
with any quote before it is checked by parsing CUT_CHECK_ROWS records from it: if they
are not whole records, the file is ingested by one process (a warning says so).
Compressed files and JSON arrays cannot be cut this way and are ingested by one
process (a notice says so).
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heimdall_core import kinds
from heimdall_core.config import Settings
from heimdall_core.errors import IngestError
from heimdall_core.events import encode_body
from heimdall_core.ingest.mapping import merge_mapping
from heimdall_core.ingest.parsers import RawRecord, make_parser
from heimdall_core.ingest.pipeline import (
    SAMPLE_RECORDS,
    DumpIngestor,
    IngestOptions,
    PartResult,
    Progress,
    Quarantine,
    declared_columns,
    dump_finished_body,
    dump_started_body,
    infer_from_sample,
    mapped_columns,
    public_names,
)
from heimdall_core.ingest.registry import DumpState
from heimdall_core.ingest.sources import detect_compression, sniff_format

if TYPE_CHECKING:
    from heimdall_core.ingest.run import IngestSite, IngestSummary

log = logging.getLogger("heimdall.ingest")

HEAD_BYTES = 256 * 1024
CUT_CHECK_ROWS = 64
"""Records parsed from a cut that follows a quote, to check it is a record boundary."""
CUT_CHECK_BYTES = 1 << 20
"""Most bytes read for that check; records longer than this fail it (one process then)."""
SCAN_CHUNK_BYTES = 8 << 20
WORKERS_MAX = 64
POLL_S = 0.2


@dataclass(frozen=True, slots=True)
class Plan:
    fmt: str
    delimiter: str | None
    columns: tuple[str, ...]
    mapping: dict[str, str]
    header: bool
    ranges: tuple[tuple[int, int, int], ...]  # (start, end, first line number)


@dataclass(frozen=True, slots=True)
class PartJob:
    settings: Settings
    path: str
    feed: str
    dump: bytes
    part: int
    start: int
    end: int
    first_line: int
    plan: Plan
    options: IngestOptions
    skip_through: int
    quarantine: str


def _head_plan(path: Path, options: IngestOptions, declared: frozenset[str]
               ) -> tuple[str, str | None, tuple[str, ...], dict[str, str], bool] | None:
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
    if detect_compression(head) is not None:
        return None
    fmt = sniff_format(head, forced=options.fmt, hint=options.fmt_hint)
    if fmt == "json":
        return None
    cut = head.rfind(b"\n") + 1 if len(head) == HEAD_BYTES else len(head)
    parser = make_parser(fmt, delimiter=options.delimiter, header=options.header,
                         line_bytes_max=options.line_bytes_max, declared=declared)
    items = parser.feed(head[:cut]) + (parser.close() if cut == len(head) else [])
    columns = tuple(parser.columns)
    overrides = mapped_columns(options.mapping, columns, declared)  # before any event is written
    # The same inference as a single process (records may each have their own keys).
    sample = [item for item in items if isinstance(item, RawRecord)][:SAMPLE_RECORDS]
    mapping = merge_mapping(infer_from_sample(columns, sample), overrides)
    delimiter = getattr(parser, "delimiter", None) or options.delimiter
    header = bool(getattr(parser, "has_header", options.header))
    return fmt, delimiter, columns, mapping, header


def split_ranges(path: Path, parts: int, *, quoted: bool, delimiter: str = ",",
                 columns: int = 0) -> tuple[tuple[int, int, int], ...]:
    """Cut ``path`` into ``parts`` byte ranges at record boundaries: (start, end, first line).

    ``quoted``: CSV, whose quoted fields may hold newlines; a cut after a quote is then
    checked (see the module doc) against records of ``columns`` fields, and if one fails,
    the whole file is one range."""
    ranges = _parity_ranges(path, parts, quoted=quoted)
    suspect = [start for start, _end, _line, quotes_before in ranges if quotes_before]
    if suspect and not all(_cut_is_clean(path, start, delimiter, columns) for start in suspect):
        log.warning("%s: a quote in an unquoted field makes record boundaries uncertain; "
                    "ingesting it with one process", path.name)
        return ((0, path.stat().st_size, 1),)
    return tuple((start, end, line) for start, end, line, _quotes in ranges)


def _cut_is_clean(path: Path, start: int, delimiter: str, columns: int) -> bool:
    """Whether the first CUT_CHECK_ROWS records from ``start`` parse as whole records of
    ``columns`` fields, a quoted field never left open (strict CSV)."""
    with open(path, "rb") as handle:
        handle.seek(start)
        window = handle.read(CUT_CHECK_BYTES)
    if len(window) == CUT_CHECK_BYTES:
        window = window[: window.rfind(b"\n") + 1]
    text = window.decode("utf-8", errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        for row in itertools.islice(reader, CUT_CHECK_ROWS):
            if row and len(row) != columns:
                return False
    except csv.Error:
        return False
    return True


def _parity_ranges(path: Path, parts: int, *, quoted: bool) -> list[tuple[int, int, int, int]]:
    """Cuts by quote parity: (start, end, first line, quotes before start)."""
    size = path.stat().st_size
    targets = [size * i // parts for i in range(1, parts)]
    cuts: list[tuple[int, int, int]] = [(0, 1, 0)]  # (offset, line number there, quotes before)
    lines = 1
    quotes = 0
    offset = 0
    with open(path, "rb") as handle:
        while targets and (chunk := handle.read(SCAN_CHUNK_BYTES)):
            position = 0
            while targets and position < len(chunk):
                target = targets[0] - offset
                if target > len(chunk):
                    break
                target = max(target, position)
                newline = chunk.find(b"\n", target)
                if newline < 0:
                    break
                lines += chunk.count(b"\n", position, newline)
                quotes += chunk.count(b'"', position, newline) if quoted else 0
                position = newline + 1
                lines += 1
                if quotes % 2 == 0:
                    cuts.append((offset + position, lines, quotes))
                    targets.pop(0)
                    while targets and targets[0] < offset + position:
                        targets.pop(0)
            lines += chunk.count(b"\n", position)
            quotes += chunk.count(b'"', position) if quoted else 0
            offset += len(chunk)
    ends = [start for start, _, _ in cuts[1:]] + [size]
    return [(start, end, line, quotes) for (start, line, quotes), end in zip(cuts, ends, strict=True)
            if end > start]


def plan_parts(path: Path, options: IngestOptions, workers: int,
               declared: frozenset[str]) -> Plan | None:
    head = _head_plan(path, options, declared)
    if head is None:
        return None
    fmt, delimiter, columns, mapping, header = head
    ranges = split_ranges(path, min(workers, WORKERS_MAX), quoted=fmt == "csv",
                          delimiter=delimiter or ",", columns=len(columns))
    return Plan(fmt, delimiter, columns, mapping, header, ranges)


def _run_part(job: PartJob) -> tuple[int, int, int, int, int]:
    """In a worker process: ingest one byte range into this worker's own feed."""
    import gc

    from heimdall_core.ingest.run import IngestSite

    gc.set_threshold(200_000, 50, 100)  # see run._fewer_gc_passes; this process only ingests
    site = IngestSite(job.settings)
    try:
        append = site.appender(bytes.fromhex(job.feed))
        plan = job.plan
        options = IngestOptions(**{**{f: getattr(job.options, f) for f in job.options.__slots__},
                                   "delimiter": plan.delimiter})
        ingestor = DumpIngestor(
            dump=job.dump, part=job.part, options=options, protector=site.protector,
            policy=site.policy, append=append,
            quarantine=Quarantine(Path(job.quarantine), job.dump.hex(), options.source),
            columns=None if job.part == 0 and plan.header else plan.columns, fmt=plan.fmt,
            mapping=plan.mapping, skip_through=job.skip_through, first_line=job.first_line,
            parts=len(plan.ranges),
            on_progress=functools.partial(_report, job.part),
            keys_busy=site.keystore.write_locked)  # the other workers share the key store
        remaining = job.end - job.start
        try:
            with open(job.path, "rb") as handle:
                handle.seek(job.start)
                while remaining > 0:
                    chunk = handle.read(min(remaining, site.settings.ingest.chunk_bytes))
                    if not chunk:
                        break
                    remaining -= len(chunk)
                    ingestor.feed(chunk)
            result: PartResult = ingestor.finish()
        except BaseException:
            ingestor.abort()
            raise
        return (job.part, result.records, result.quarantined, result.rejected_fields,
                result.undetected_values)
    finally:
        site.close()


def _worker_feeds(site: IngestSite, count: int) -> list[bytes]:
    existing = [feed for feed in site.store.own_feeds() if feed != site.store.site.feed]
    feeds = existing[:count]
    while len(feeds) < count:
        feeds.append(site.store.create_own_feed())
    return feeds


def ingest_file_parallel(site: IngestSite, path: Path, options: IngestOptions, *, sha256: str, size: int,
                         workers: int, on_progress: Callable[[Progress], None] | None,
                         began: float, resume: DumpState | None = None,
                         pool: WorkerPool | None = None,
                         supersedes: Sequence[DumpState] = (),
                         repeat_of: Sequence[DumpState] = ()) -> IngestSummary:
    """Ingest ``path`` in parts, one worker process each; ``pool``, if given, is used
    (and left open), otherwise one is started here. ``supersedes``: the dumps of this
    input that ``--restart`` abandons (closed with this dump's start); ``repeat_of``:
    the complete dumps of the same bytes that this one may repeat (``run.repeat_id``)."""
    if pool is None:
        with WorkerPool(workers) as own:
            return ingest_file_parallel(site, path, options, sha256=sha256, size=size,
                                        workers=workers, on_progress=on_progress, began=began,
                                        resume=resume, pool=own, supersedes=supersedes,
                                        repeat_of=repeat_of)
    from heimdall_core.ingest.run import (
        _ingest_single,
        _summary,
        check_resumed_reading,
        marked_repeat,
        repeat_id,
        superseded_bodies,
    )

    declared = declared_columns(options, site.policy)
    plan = (plan_parts(path, options, workers, declared) if resume is None
            else _resume_plan(path, options, resume, declared))
    if plan is None or len(plan.ranges) < 2:
        log.info("--workers ignored: compressed, JSON or too small input is ingested by one process")
        return _ingest_single(site, path, options, sha256, size, resume, on_progress, began,
                              supersedes=supersedes, repeat_of=repeat_of)
    # The names every part writes its columns under (DumpIngestor._public).
    names = public_names(plan.columns, plan.mapping, declared)
    mapping = {names[c]: k for c, k in plan.mapping.items()}
    if resume is not None:  # before anything is written
        check_resumed_reading(resume, plan.fmt, mapping)
    dump = bytes.fromhex(resume.dump) if resume else os.urandom(kinds.DUMP_ID_BYTES)
    feeds = _worker_feeds(site, len(plan.ranges))
    append_main = site.appender()
    bodies = [encode_body(*kinds.FEED_ANNOUNCED, {"feed": feed, "role": "ingest-worker",
                                                  "dump": dump, "part": part})
              for part, feed in enumerate(feeds)]
    if resume is None:
        bodies.append(dump_started_body(
            dump=dump, options=options, name=path.name, fmt=plan.fmt, compression="none",
            sha256=sha256, size=size,
            columns=[names[c] for c in plan.columns],
            mapping=mapping, parts=len(plan.ranges), ranges=plan.ranges))
        bodies += superseded_bodies(supersedes, dump)
    append_main(bodies)
    jobs = [PartJob(site.settings, str(path), feed.hex(), dump, part, start, end, line, plan, options,
                    resume.progress.get(str(part), 0) if resume else 0,
                    str(site.quarantine_path(dump, part)))
            for part, ((start, end, line), feed) in enumerate(zip(plan.ranges, feeds, strict=True))]
    results = _run_jobs(pool, jobs, on_progress)
    records = sum(r[1] for r in results)
    quarantined = sum(r[2] for r in results)
    rejected = sum(r[3] for r in results)
    undetected = sum(r[4] for r in results)
    quarantine = _merge_quarantine(site.quarantine_path(dump), [Path(j.quarantine) for j in jobs])
    repeated = repeat_id(repeat_of, plan.fmt, mapping)
    append_main([dump_finished_body(dump=dump, records=records, quarantined=quarantined,
                                    rejected_fields=rejected, sha256=sha256, size=size,
                                    duplicate_of=repeated)])
    return marked_repeat(_summary(
        dump, options, path.name, None, records, quarantined, rejected, sha256, size,
        resumed=resume is not None, parts=len(plan.ranges), began=began, quarantine=quarantine,
        fmt=plan.fmt, compression="none", mapping=mapping, undetected=undetected), repeated)


def _resume_plan(path: Path, options: IngestOptions, resume: DumpState,
                 declared: frozenset[str]) -> Plan:
    """The parts exactly as the interrupted run cut them (skip positions are per part)."""
    if not resume.ranges or len(resume.ranges) != resume.parts:
        raise IngestError(f"dump {resume.dump} was cut into {resume.parts} parts by a version that "
                          "did not record them; it cannot be resumed: run again with --restart")
    if resume.size != path.stat().st_size:
        raise IngestError(f"its size changed since dump {resume.dump} started; "
                          "run again with --restart")
    head = _head_plan(path, options, declared)
    if head is None:
        raise IngestError("cannot be resumed in parts; run again with --restart")
    fmt, delimiter, columns, mapping, header = head
    ranges = tuple((int(a), int(b), int(c)) for a, b, c in resume.ranges)
    return Plan(fmt, delimiter, columns, mapping, header, ranges)


def resume_parallel(site: IngestSite, path: Path, options: IngestOptions, incomplete: DumpState, *,
                    size: int, on_progress: Callable[[Progress], None] | None,
                    began: float, pool: WorkerPool | None = None,
                    repeat_of: Sequence[DumpState] = ()) -> IngestSummary:
    return ingest_file_parallel(site, path, options, sha256=incomplete.sha256, size=size,
                                workers=incomplete.parts, on_progress=on_progress, began=began,
                                resume=incomplete, pool=pool, repeat_of=repeat_of)


_COUNTERS: Any = None  # in a worker process: the shared progress counters


def _init_worker(counters: Any) -> None:
    """At the start of each worker process: keep the counters and import what a part's
    ingest needs, while the parent is still hashing and planning the file."""
    global _COUNTERS
    _COUNTERS = counters
    import heimdall_core.ingest.run  # noqa: F401


def _report(part: int, progress: Progress) -> None:
    """Publish a part's progress (bytes, records, quarantined) to the parent."""
    if _COUNTERS is not None:
        base = part * 3
        _COUNTERS[base], _COUNTERS[base + 1], _COUNTERS[base + 2] = (
            progress.bytes_in, progress.records, progress.quarantined)


def _no_op() -> None:
    """A task that makes the executor start one more process (see WorkerPool)."""


class WorkerPool:
    """The worker processes of one parallel ingest, started as soon as the parent knows
    it will need them: their start (a new interpreter and its imports, ~0.3-1 s) then
    overlaps the parent's own work before the parts are handed out.

    ProcessPoolExecutor (not multiprocessing.Pool): a worker that dies is reported
    (BrokenProcessPool) instead of silently replaced while the parent waits forever.
    """

    def __init__(self, workers: int) -> None:
        self.size = max(1, min(workers, WORKERS_MAX))
        context = multiprocessing.get_context("spawn")
        self.counters = context.Array("q", 3 * self.size, lock=False)
        self.executor = ProcessPoolExecutor(self.size, mp_context=context, initializer=_init_worker,
                                            initargs=(self.counters,))
        # The executor starts a process per task submitted while none is idle: one no-op
        # each starts them all now (each runs _init_worker first).
        for _ in range(self.size):
            self.executor.submit(_no_op)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def _run_jobs(pool: WorkerPool, jobs: list[PartJob],
              on_progress: Callable[[Progress], None] | None) -> list[tuple[int, int, int, int, int]]:
    if len(jobs) > pool.size:
        raise IngestError(f"{len(jobs)} parts for {pool.size} worker processes")
    counters = pool.counters
    for index in range(len(counters)):
        counters[index] = 0
    futures = [pool.executor.submit(_run_part, job) for job in jobs]
    pending = set(futures)
    while pending:
        _, pending = wait(pending, timeout=POLL_S, return_when=FIRST_EXCEPTION)
        if on_progress is not None:
            values = list(counters)
            on_progress(Progress(bytes_in=sum(values[0::3]), records=sum(values[1::3]),
                                 quarantined=sum(values[2::3])))
        failed = [f for f in futures if f.done() and f.exception() is not None]
        if failed:
            for future in pending:
                future.cancel()
            exc = failed[0].exception()
            raise IngestError(f"an ingest worker failed: {exc}; the dump stays incomplete "
                              "and can be resumed") from exc
    return sorted(f.result() for f in futures)


def _merge_quarantine(target: Path, parts: list[Path]) -> Path | None:
    existing = [p for p in parts if p.exists()]
    if not existing:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        for part in existing:
            out.write(part.read_bytes())
            part.unlink()
        out.flush()
        os.fsync(out.fileno())
    return target

