"""Running an ingest: the site's resources, dedupe and resume, single or multi-process.

Every entrance (CLI, HTTP API, daemon) builds an :class:`IngestSite` and calls
:func:`ingest_file` or :func:`ingest_chunks`; both drive the same ``DumpIngestor``.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heimdall_core import kinds
from heimdall_core.config import Settings
from heimdall_core.errors import IngestError
from heimdall_core.events import encode_body
from heimdall_core.ingest.pipeline import (
    DumpIngestor,
    IngestOptions,
    InputCut,
    PartResult,
    Progress,
    Quarantine,
    dump_finished_body,
    dump_started_body,
)
from heimdall_core.ingest.registry import DumpRegistry, DumpState
from heimdall_core.log.feed import LogOptions
from heimdall_core.log.store import LogStore
from heimdall_core.normalize import NormalizeOptions
from heimdall_core.pii.keystore import KeyStore
from heimdall_core.pii.policy import Action, PiiPolicy
from heimdall_core.pii.protect import Protector

if TYPE_CHECKING:
    from heimdall_core.ingest.workers import WorkerPool

HASH_CHUNK_BYTES = 4 << 20


@dataclass(slots=True)
class IngestSummary:
    dump_id: str
    source: str
    name: str
    format: str
    compression: str
    records: int
    quarantined: int
    rejected_fields: int
    sha256: str
    bytes: int
    duplicate: bool
    duplicate_of: str | None
    resumed: bool
    elapsed_s: float
    records_per_s: float
    parts: int
    quarantine_file: str | None
    mapping: dict[str, str] = field(default_factory=dict)
    # Values of an ``auto`` column of no detectable kind, kept as kind ``other``.
    undetected_values: int = 0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def pii_policy(settings: Settings) -> PiiPolicy:
    policy_map = dict(settings.pii.policy)
    if settings.pii.allow_passwords and "password" not in policy_map:
        policy_map["password"] = Action.ENCRYPT_BLIND_INDEX.value
    return PiiPolicy.from_config(policy_map, settings.pii.overrides)


def normalize_options(settings: Settings) -> NormalizeOptions:
    n = settings.normalize
    return NormalizeOptions(email_keep_local_case=n.email_keep_local_case,
                            email_fold_dots_domains=frozenset(n.email_fold_dots_domains),
                            email_strip_plus_domains=frozenset(n.email_strip_plus_domains))


class IngestSite:
    """The resources one process needs to ingest: log store, key store, policy."""

    def __init__(self, settings: Settings, store: LogStore | None = None) -> None:
        self.settings = settings
        self.store = store or LogStore(settings.data_dir, LogOptions.from_settings(settings.log))
        self.keystore = KeyStore.open(settings.data_dir / "pii", create=True)
        self.policy = pii_policy(settings)
        self.protector = Protector(self.policy, self.keystore.index_keys, self.keystore)
        self._append_lock = threading.Lock()
        # The SHA-256 of the file being ingested, once known: the dump a failure leaves
        # incomplete is the unfinished one of its source with this digest (the one the same
        # command resumes).
        self.input_sha256: str | None = None

    def close(self) -> None:
        self.keystore.close()
        self.store.close()

    def appender(self, feed: bytes | None = None) -> Callable[[Sequence[bytes]], None]:
        writer = self.store.writer(feed)
        batch_max = self.settings.log.batch_events_max

        def append(bodies: Sequence[bytes]) -> None:
            with self._append_lock:  # HTTP uploads ingest in threads; one writer per feed
                for start in range(0, len(bodies), batch_max):
                    writer.append_bodies(bodies[start:start + batch_max])
        return append

    def options(self, source: str, **kwargs: Any) -> IngestOptions:
        return IngestOptions(source=source, line_bytes_max=self.settings.ingest.line_bytes_max,
                             normalize=normalize_options(self.settings), **kwargs)

    def quarantine_path(self, dump: bytes, part: int | None = None) -> Path:
        suffix = f".part{part}" if part is not None else ""
        return self.settings.data_dir / "quarantine" / f"{dump.hex()}{suffix}.jsonl"


def file_sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


# Why a pipe cannot be ingested from the command line, and what to do instead.
_SAVE_IT_FIRST = ("an ingest hashes its input before reading it (to find a repeat) and "
                  "re-reads it to resume; save the stream to a file first and ingest that, "
                  "or upload it to the HTTP API (POST /v1/dumps)")


def _check_file(path: Path) -> None:
    """Messages leave the path out: the caller names the file."""
    if str(path) == "-":
        raise IngestError(f"standard input cannot be ingested: {_SAVE_IT_FIRST}")
    if not path.exists():
        raise IngestError("no such file")
    if not path.is_file():
        raise IngestError(f"not a regular file (a pipe or a device?): {_SAVE_IT_FIRST}")
    if not os.access(path, os.R_OK):
        raise IngestError("not readable")


class _OnePart:
    """One dump ingested by this process as a single part (a file or an HTTP stream).

    dump.started goes to the log right before the first records (the format, columns and
    mapping are known only once the head of the input is parsed), or at the end when no
    record was usable; dump.finished closes the dump.
    """

    def __init__(self, site: IngestSite, options: IngestOptions, name: str, *, sha256: str,
                 size: int, resume: DumpState | None = None,
                 supersedes: Sequence[DumpState] = (),
                 on_progress: Callable[[Progress], None] | None = None) -> None:
        self.dump = bytes.fromhex(resume.dump) if resume else os.urandom(kinds.DUMP_ID_BYTES)
        self._supersedes = supersedes
        self._options = options
        self._name = name
        self._sha256 = sha256
        self._size = size
        self._append = site.appender()
        self._started = resume is not None  # a resumed dump's start is already logged
        self._resume = resume
        self._reading_checked = False
        self.quarantine_path = site.quarantine_path(self.dump)
        self.ingestor = DumpIngestor(
            dump=self.dump, part=0, options=options, protector=site.protector, policy=site.policy,
            append=self._append_records,
            quarantine=Quarantine(self.quarantine_path, self.dump.hex(), options.source),
            skip_through=resume.progress.get("0", 0) if resume else 0, on_progress=on_progress)

    @property
    def reading(self) -> tuple[str, dict[str, str]]:
        """How the input is read, as dump.started records it: format and public mapping."""
        return self.ingestor.format or "?", self.ingestor.public_mapping

    def _started_bodies(self) -> list[bytes]:
        """dump.started, and in the same batch the close of each dump it replaces."""
        ing = self.ingestor
        fmt, mapping = self.reading
        started = dump_started_body(dump=self.dump, options=self._options, name=self._name,
                                    fmt=fmt, compression=ing.compression,
                                    sha256=self._sha256, size=self._size, columns=ing.public_columns,
                                    mapping=mapping, parts=1)
        return [started, *superseded_bodies(self._supersedes, self.dump)]

    def _append_records(self, bodies: Sequence[bytes]) -> None:
        self._check_reading()
        if not self._started:
            bodies = [*self._started_bodies(), *bodies]
            self._started = True
        self._append(bodies)

    def run(self, chunks: Iterable[bytes]) -> PartResult:
        try:
            for chunk in chunks:
                self.ingestor.feed(chunk)
            return self.ingestor.finish()
        except InputCut:
            self.ingestor.keep_read()
            raise
        except BaseException:
            self.ingestor.abort()
            raise

    def _check_reading(self) -> None:
        """A resumed dump goes on only if read as it began (once its mapping is known)."""
        if self._resume is not None and not self._reading_checked:
            check_resumed_reading(self._resume, *self.reading)
            self._reading_checked = True

    def finish(self, result: PartResult, *, sha256: str, size: int,
               repeat_of: Sequence[DumpState] = ()) -> bytes | None:
        """Close the dump; returns the dump of ``repeat_of`` it repeats (``repeat_id``), if any."""
        self._check_reading()
        duplicate_of = repeat_id(repeat_of, *self.reading)
        bodies = [] if self._started else self._started_bodies()
        self._started = True
        bodies.append(dump_finished_body(dump=self.dump, records=result.records,
                                         quarantined=result.quarantined,
                                         rejected_fields=result.rejected_fields, sha256=sha256, size=size,
                                         duplicate_of=duplicate_of))
        self._append(bodies)
        return duplicate_of


def check_resumed_reading(dump: DumpState, fmt: str, mapping: Mapping[str, str]) -> None:
    """Refuse to resume ``dump`` reading its input another way than it began: its records
    would mix two mappings under one dump, and whether it repeats an earlier dump would
    be judged on the wrong one. Names columns by their public names only."""
    if not dump.mapping and dump.format == fmt:
        return  # no mapping recorded: a dump started by a version that did not record it
    if reads_alike(dump, fmt, mapping):
        return
    began = ", ".join(f"{c}={k}" for c, k in sorted(dump.mapping.items()))
    now = ", ".join(f"{c}={k}" for c, k in sorted(mapping.items()))
    raise IngestError(f"dump {dump.dump} began reading this input as {dump.format} ({began}); this "
                      f"run reads it as {fmt} ({now}): resume with the options it began with "
                      "(--format, --map), or start over with --restart")


def superseded_bodies(abandoned: Sequence[DumpState], dump: bytes) -> list[bytes]:
    """dump.finished for each dump that ``--restart`` abandons in favour of ``dump``.

    Written with the new dump's dump.started, in one batch: an abandoned dump is never
    closed without the dump that replaces it. ``duplicate_of`` makes the graph leave its
    partial records out of the sightings (the new dump reads the same input again), and
    ``superseded`` tells the registry it is closed, not to be resumed, and not a repeat.
    """
    return [encode_body(*kinds.DUMP_FINISHED, {
        "dump": bytes.fromhex(old.dump), "records": old.records, "quarantined": old.quarantined,
        "sha256": old.sha256, "bytes": old.size, "duplicate_of": dump, "superseded": True,
    }) for old in abandoned]


def _file_chunks(path: Path, chunk_bytes: int) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            yield chunk


@contextlib.contextmanager
def _fewer_gc_passes() -> Iterator[None]:
    """Ingest allocates millions of short-lived containers that never form cycles; the
    default collector thresholds make it rescan the heap every 700 allocations (measured:
    3-5 us per record). Raise them for the duration of a dump."""
    old = gc.get_threshold()
    gc.set_threshold(200_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*old)


def ingest_file(site: IngestSite, path: Path, options: IngestOptions, *, force: bool = False,
                workers: int = 1, restart: bool = False,
                on_progress: Callable[[Progress], None] | None = None) -> IngestSummary:
    """Ingest one file (any supported format and compression)."""
    site.input_sha256 = None
    _check_file(path)
    began = time.monotonic()
    with _worker_pool(workers) as pool:
        return _ingest_file(site, path, options, force=force, workers=workers, restart=restart,
                            on_progress=on_progress, began=began, pool=pool)


@contextlib.contextmanager
def _worker_pool(workers: int) -> Iterator[WorkerPool | None]:
    """With more than one worker, their processes are started now, so that they start
    while this one hashes the file; unused (a duplicate, a JSON file) they just exit."""
    if workers <= 1:
        yield None
        return
    from heimdall_core.ingest.workers import WorkerPool

    with WorkerPool(workers) as pool:
        yield pool


def _ingest_file(site: IngestSite, path: Path, options: IngestOptions, *, force: bool, workers: int,
                 restart: bool, on_progress: Callable[[Progress], None] | None, began: float,
                 pool: WorkerPool | None) -> IngestSummary:
    sha256, size = file_sha256(path)
    if size == 0:
        raise IngestError("the file is empty")
    site.input_sha256 = sha256
    # Settle every own feed first: a worker killed between writing a signed batch and its
    # head leaves records that recovery keeps; resuming must count them, or they would be
    # written twice.
    for feed in site.store.own_feeds():
        site.store.settle(feed)
    registry = DumpRegistry(site.store)
    registry.refresh()
    done = registry.find_complete(options.source, sha256)
    if done is not None and not force:
        return _duplicate_summary(done, options, path.name, size, began)
    # A forced run reads the same bytes of the same source again: read the same way as a
    # complete dump, it is a repeat of it (duplicate_of), listed but not counted again as
    # sightings, exactly as the same bytes uploaded without a declared sha256 (repeat_id).
    repeats = registry.complete(options.source, sha256)
    incomplete = None if restart else registry.find_incomplete(options.source, sha256)
    if incomplete is not None and incomplete.mapping and not options.mapping:
        # Resumed as it began: with the mapping it recorded, not one inferred anew
        # (inference may differ in another version, and a dump must not mix two).
        options = replace(options, mapping=dict(incomplete.mapping))
    abandoned = registry.incomplete(options.source, sha256) if restart else []
    if workers > 1 and incomplete is None:
        from heimdall_core.ingest.workers import ingest_file_parallel

        summary = ingest_file_parallel(site, path, options, sha256=sha256, size=size,
                                       workers=workers, on_progress=on_progress, began=began,
                                       pool=pool, supersedes=abandoned, repeat_of=repeats)
    elif incomplete is not None and incomplete.parts > 1:
        from heimdall_core.ingest.workers import resume_parallel

        summary = resume_parallel(site, path, options, incomplete, size=size,
                                  on_progress=on_progress, began=began, repeat_of=repeats,
                                  pool=pool if pool is not None and pool.size >= incomplete.parts
                                  else None)
    else:
        with _fewer_gc_passes():
            summary = _ingest_single(site, path, options, sha256, size, incomplete, on_progress,
                                     began, supersedes=abandoned, repeat_of=repeats)
    return summary


def reads_alike(dump: DumpState, fmt: str, mapping: Mapping[str, str]) -> bool:
    """Whether ``dump`` read its input as ``fmt`` with every column to the same kind."""
    return dump.format == fmt and dump.mapping == dict(mapping)


def repeat_id(earlier: Sequence[DumpState], fmt: str, mapping: Mapping[str, str]) -> bytes | None:
    """The id of the complete dump (of the same bytes and source) that a new dump of them
    repeats, or None: the first of ``earlier`` that read them the same way (format, and
    every column to the same kind). A re-ingest with a corrected mapping (``--map COL=KIND
    --force``, as the summary advises for a mis-mapped column) holds values the earlier
    dump did not, and is new evidence; run again the same way, it repeats that one."""
    for state in earlier:
        if reads_alike(state, fmt, mapping):
            return bytes.fromhex(state.dump)
    return None


def marked_repeat(summary: IngestSummary, repeated: bytes | None) -> IngestSummary:
    """The summary of a new dump that repeats dump ``repeated`` (if any) says so."""
    if repeated is not None:
        summary.duplicate, summary.duplicate_of = True, repeated.hex()
    return summary


def _ingest_single(site: IngestSite, path: Path, options: IngestOptions, sha256: str, size: int,
                   incomplete: DumpState | None,
                   on_progress: Callable[[Progress], None] | None, began: float, *,
                   supersedes: Sequence[DumpState] = (),
                   repeat_of: Sequence[DumpState] = ()) -> IngestSummary:
    part = _OnePart(site, options, path.name, sha256=sha256, size=size, resume=incomplete,
                    supersedes=supersedes, on_progress=on_progress)
    result = part.run(_file_chunks(path, site.settings.ingest.chunk_bytes))
    repeated = part.finish(result, sha256=sha256, size=size, repeat_of=repeat_of)
    return marked_repeat(_summary(
        part.dump, options, path.name, part.ingestor, result.records, result.quarantined,
        result.rejected_fields, sha256, size, resumed=incomplete is not None, parts=1, began=began,
        quarantine=part.quarantine_path, undetected=result.undetected_values), repeated)


def ingest_chunks(site: IngestSite, chunks: Iterable[bytes], options: IngestOptions, *,
                  name: str = "-", expected_sha256: str | None = None,
                  on_part: Callable[[DumpIngestor], None] | None = None) -> IngestSummary:
    """Ingest a stream (an HTTP body). The SHA-256 is known only at the end, so a repeat
    of an earlier dump is recorded as a duplicate (``duplicate_of``) unless the caller
    gave ``expected_sha256`` and it was caught up front (see the API). ``on_part`` is
    given the dump's ingestor before any record is read: after a cut-off stream the
    caller can name the dump left incomplete and the records it kept."""
    began = time.monotonic()
    # The digest of a stream is known (and checked) only at the end; dump.finished carries
    # it. An unchecked one in dump.started could make a CLI run "resume" other content.
    part = _OnePart(site, options, name, sha256="", size=-1)
    if on_part is not None:
        on_part(part.ingestor)
    result = part.run(chunks)
    sha256 = part.ingestor.sha256.hexdigest()
    if expected_sha256 and expected_sha256 != sha256:
        raise IngestError(f"the body's SHA-256 is {sha256}, not the declared {expected_sha256}; "
                          "the records were logged under dump " + part.dump.hex())
    registry = DumpRegistry(site.store)
    registry.refresh()
    size = part.ingestor.bytes_in
    repeated = part.finish(result, sha256=sha256, size=size,
                           repeat_of=registry.complete(options.source, sha256))
    return marked_repeat(_summary(
        part.dump, options, name, part.ingestor, result.records, result.quarantined,
        result.rejected_fields, sha256, size, resumed=False, parts=1, began=began,
        quarantine=part.quarantine_path, undetected=result.undetected_values), repeated)


def record_metrics(summary: IngestSummary) -> None:
    from heimdall_core import metrics

    outcome = "duplicate" if summary.duplicate else ("resumed" if summary.resumed else "complete")
    metrics.INGEST_DUMPS.labels(summary.source, outcome).inc()
    if summary.duplicate and summary.dump_id == summary.duplicate_of:  # nothing ingested
        return
    metrics.INGEST_RECORDS.labels(summary.source).inc(summary.records)
    metrics.INGEST_QUARANTINED.labels(summary.source).inc(summary.quarantined)
    metrics.INGEST_BYTES.labels(summary.source).inc(summary.bytes)
    metrics.INGEST_SECONDS.observe(summary.elapsed_s)


def _summary(dump: bytes, options: IngestOptions, name: str, ingestor: DumpIngestor | None,
             records: int, quarantined: int, rejected: int, sha256: str, size: int, *, resumed: bool,
             parts: int, began: float, quarantine: Path | None, fmt: str | None = None,
             compression: str | None = None, mapping: dict[str, str] | None = None,
             undetected: int = 0) -> IngestSummary:
    elapsed = time.monotonic() - began
    return IngestSummary(
        dump_id=dump.hex(), source=options.source, name=name,
        format=(ingestor.format if ingestor else fmt) or "?",
        compression=(ingestor.compression if ingestor else compression) or "none",
        records=records, quarantined=quarantined, rejected_fields=rejected, sha256=sha256,
        bytes=size, duplicate=False, duplicate_of=None, resumed=resumed,
        elapsed_s=round(elapsed, 3), records_per_s=round(records / elapsed, 1) if elapsed else 0.0,
        parts=parts,
        quarantine_file=str(quarantine) if quarantine and quarantine.exists() else None,
        mapping=ingestor.public_mapping if ingestor else dict(mapping or {}),
        undetected_values=undetected)


def _duplicate_summary(done: DumpState, options: IngestOptions, name: str, size: int,
                       began: float) -> IngestSummary:
    return IngestSummary(
        dump_id=done.dump, source=options.source, name=name, format=done.format, compression=done.compression,
        records=done.records, quarantined=done.quarantined, rejected_fields=done.rejected_fields or 0,
        sha256=done.sha256,
        bytes=size, duplicate=True, duplicate_of=done.dump, resumed=False,
        elapsed_s=round(time.monotonic() - began, 3), records_per_s=0.0, parts=done.parts,
        quarantine_file=None, mapping=dict(done.mapping))


__all__ = ["IngestSite", "IngestSummary", "ingest_chunks", "ingest_file"]
