"""The projector: tails every feed of the log and folds it into the graph (I/O shell).

One pass reads each feed from the position the store holds for it up to the feed's
durable signed head, folds the events (:mod:`heimdall_core.graph.fold`) and hands the
store one delta per transaction, positions included: an event is applied exactly once
whatever crashes. Work is bounded per transaction (events and records).

* An event this build cannot fold (unknown kind or version, malformed payload) stops
  that feed at that event, logged with feed, sequence and kind; other feeds go on, and
  the feed is retried (and stops again, loudly) on every later pass: never a silent skip.
* The database going away (:class:`DatabaseUnavailable`) makes the projector wait with
  capped exponential backoff, reopen the store, and start a fresh pass from the positions
  the store committed; the log keeps growing meanwhile and nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import cast

import msgpack

from heimdall_core.config import GraphSettings, Settings
from heimdall_core.errors import DatabaseUnavailable, EncodingError, GraphError, HeimdallError
from heimdall_core.events import HEADER_BYTES, Event, check_kind, decode_header
from heimdall_core.graph.backends import make_store, rules_from
from heimdall_core.graph.fold import Folder
from heimdall_core.graph.model import Delta
from heimdall_core.graph.rules import RuleSet
from heimdall_core.graph.store import GraphStore, OverlappingApply
from heimdall_core.log.feed import LogOptions
from heimdall_core.log.store import LogStore

log = logging.getLogger("heimdall.graph")

BATCH_EVENTS_DEFAULT = 5_000
BATCH_RECORDS_DEFAULT = 50_000
"""Records per transaction: big transactions amortize SQLite's page writes (random
inserts touch most index pages once per transaction, whatever its size)."""

RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 30.0
FOLLOW_POLL_S = 1.0
GIL_SWITCH_S = 0.000_2
"""While projecting: SQLite releases the GIL around every row it steps and needs it back
for the next; at Python's default 5 ms switch interval the fold starves the database
thread (measured: pipelining was then slower than none)."""


@dataclass(frozen=True, slots=True)
class ProjectorOptions:
    batch_events: int = BATCH_EVENTS_DEFAULT
    batch_records: int = BATCH_RECORDS_DEFAULT
    retry_initial_s: float = RETRY_INITIAL_S
    retry_max_s: float = RETRY_MAX_S
    attempts_max: int | None = None  # None: wait for the database for ever

    @classmethod
    def from_settings(cls, graph: GraphSettings) -> ProjectorOptions:
        return cls(batch_events=graph.batch_events, batch_records=graph.batch_records)

    def backoff(self) -> Backoff:
        """The waits between attempts to reach the graph database, for every way of
        following the log (a pass, ``project --follow``, the server's projection loop)."""
        return Backoff(self.retry_initial_s, self.retry_max_s)


@dataclass(slots=True)
class Backoff:
    """Capped exponential backoff: ``initial_s``, doubling, at most ``max_s``."""

    initial_s: float
    max_s: float
    _next_s: float = field(init=False)

    def __post_init__(self) -> None:
        self._next_s = self.initial_s

    def next(self) -> float:
        """The wait before the next attempt (each one twice the last, up to the cap)."""
        wait_s = self._next_s
        self._next_s = min(wait_s * 2, self.max_s)
        return wait_s

    def reset(self) -> None:
        """After a success: the next failure waits ``initial_s`` again."""
        self._next_s = self.initial_s


@dataclass(frozen=True, slots=True)
class Progress:
    events: int
    events_total: int
    records: int


@dataclass(slots=True)
class ProjectionReport:
    events: int = 0
    records: int = 0
    batches: int = 0
    retries: int = 0
    seconds: float = 0.0
    stopped: dict[bytes, str] = field(default_factory=dict)
    positions: dict[bytes, int] = field(default_factory=dict)

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


Sleep = Callable[[float], Awaitable[None]]
ProgressFn = Callable[[Progress], None]


def decode_event(frame: bytes, frame_bytes_max: int) -> Event:
    """A frame of the local log as an event.

    Frames were verified (foreign) or written by our own encoder (own) before they were
    stored, and each read is CRC-checked, so this skips the canonical re-encoding check of
    ``events.decode_frame``, which would cost more than projecting the event.
    """
    header = decode_header(frame)
    try:
        body = msgpack.unpackb(frame[HEADER_BYTES:], raw=False, max_bin_len=frame_bytes_max,
                               max_str_len=frame_bytes_max, max_array_len=frame_bytes_max,
                               max_map_len=frame_bytes_max, max_ext_len=0)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise EncodingError(f"event body is not valid msgpack: {type(exc).__name__}") from None
    if not (isinstance(body, list) and len(body) == 3 and isinstance(body[0], str)
            and isinstance(body[2], dict)):
        raise EncodingError("event body must be [kind: str, version: int, payload: map]")
    check_kind(body[0], body[1])
    return Event(header.feed, header.seq, header.hlc, body[0], body[1], body[2])


def feed_sizes(log_store: LogStore) -> dict[bytes, int]:
    """Each feed of the log and how many durable events it holds."""
    return {feed: log_store.reader(feed).state.size for feed in log_store.feeds()}


def events_behind(sizes: Mapping[bytes, int], positions: Mapping[bytes, int]) -> int:
    """Events of the log (``sizes``) that a store at ``positions`` does not hold yet."""
    return sum(max(0, size - positions.get(feed, 0)) for feed, size in sizes.items())


class Projector:
    """Projects a site's log into one graph store."""

    def __init__(self, log_store: LogStore, store: GraphStore, rules: RuleSet,
                 options: ProjectorOptions | None = None, *, sleep: Sleep = asyncio.sleep,
                 progress: ProgressFn | None = None) -> None:
        self.log = log_store
        self.store = store
        self.rules = rules
        self.options = options or ProjectorOptions()
        self._sleep = sleep
        self._progress = progress
        self._stop_logged: dict[bytes, int] = {}

    async def catch_up(self) -> ProjectionReport:
        """Project every feed up to its durable head as of now; retry while the DB is away."""
        with _projecting():
            return await self._catch_up()

    async def _catch_up(self) -> ProjectionReport:
        report = ProjectionReport()
        started = time.perf_counter()
        backoff = self.options.backoff()
        reopen = False
        while True:
            try:
                if reopen:
                    await self.store.open()
                    reopen = False
                await self._pass(report)
                break
            except DatabaseUnavailable as exc:
                report.retries += 1
                if self.options.attempts_max is not None and report.retries >= self.options.attempts_max:
                    raise
                delay = backoff.next()
                log.warning("graph database unavailable (%s); retrying in %.1fs", exc, delay)
                await self.store.close()
                reopen = True
                await self._sleep(delay)
        report.seconds = time.perf_counter() - started
        return report

    async def follow(self, stop: asyncio.Event, poll_s: float = FOLLOW_POLL_S) -> None:
        """Keep catching up until ``stop`` is set.

        A failure that is not the database being away (a damaged segment, a store bug) is
        logged and retried after ``retry_max_s``: a server's projector must not die quietly.
        """
        while not stop.is_set():
            wait_s = poll_s
            try:
                report = await self.catch_up()
            except HeimdallError:
                log.exception("projection pass failed; retrying in %.0fs", self.options.retry_max_s)
                wait_s = self.options.retry_max_s
            else:
                if report.events:
                    log.info("projected %d events (%d records) in %.2fs", report.events, report.records,
                             report.seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait_s)

    async def _pass(self, report: ProjectionReport) -> None:
        positions = await self.store.positions()
        targets = feed_sizes(self.log)
        total = events_behind(targets, positions)
        pipeline = _Pipeline(self.store, report, total, self._progress)
        folder = Folder(self.rules)
        try:
            for feed, size in targets.items():
                start = positions.get(feed, 0)
                if start >= size:
                    continue
                for event in self._events(feed, start, size, report):
                    try:
                        for _ in folder.steps(event):
                            await asyncio.sleep(0)  # let the previous batch's statements go on
                    except GraphError as exc:  # unknown kind or version, malformed payload
                        self._stopped(report, event.feed, event.seq, str(exc))
                        break
                    if self._full(folder):
                        await pipeline.submit(folder.take())
                    else:
                        await asyncio.sleep(0)
            await pipeline.submit(folder.take())
            await pipeline.drain()
        finally:
            await pipeline.abandon()
        report.positions = await self.store.positions()

    def _events(self, feed: bytes, start: int, stop: int, report: ProjectionReport) -> Iterator[Event]:
        reader = self.log.reader(feed)
        limit = reader.options.frame_bytes_max
        seq = start
        for seq, frame in reader.read_frames(start, stop):
            try:
                event = decode_event(frame, limit)
            except EncodingError as exc:
                self._stopped(report, feed, seq, f"feed {feed.hex()} seq {seq}: undecodable event ({exc})")
                return
            if event.seq != seq or event.feed != feed:
                self._stopped(report, feed, seq, f"feed {feed.hex()} seq {seq}: frame out of place")
                return
            yield event

    def _stopped(self, report: ProjectionReport, feed: bytes, seq: int, reason: str) -> None:
        report.stopped[feed] = reason
        if self._stop_logged.get(feed) != seq:
            self._stop_logged[feed] = seq
            log.error("projection of feed %s stopped at seq %d: %s", feed.hex(), seq, reason)

    def _full(self, folder: Folder) -> bool:
        delta = folder.delta
        return delta.events >= self.options.batch_events or delta.records >= self.options.batch_records



@contextlib.contextmanager
def _projecting() -> Iterator[None]:
    """Process settings for a projection run (restored afterwards).

    A batch holds ~10^6 live containers; the cyclic collector would traverse them all
    again and again (it measured a third of projection time) and would find nothing: deltas
    hold no reference cycles. Reference counting still frees everything."""
    enabled = gc.isenabled()
    switch = sys.getswitchinterval()
    gc.disable()
    sys.setswitchinterval(min(switch, GIL_SWITCH_S))
    try:
        yield
    finally:
        sys.setswitchinterval(switch)
        if enabled:
            gc.enable()


class _Pipeline:
    """Applies one batch while the next is folded: SQLite works in its own thread while
    Python decodes and folds, so the two cores both work. Batches commit in order, so
    positions only ever move forward.

    At most one batch is in flight, except with a store whose applies overlap
    (:class:`OverlappingApply`, AGE): once the batch in flight has built its rows, the next
    one starts (its lookups and rows) while the server still writes the first, and is
    not handed on until the first committed. Measured on AGE, the server's tail of each
    batch (~0.8-1 s of 50,000 records) was the longest time Python had nothing to do."""

    def __init__(self, store: GraphStore, report: ProjectionReport, total: int,
                 progress: ProgressFn | None) -> None:
        self._store = store
        self._overlaps = isinstance(store, OverlappingApply)
        self._report = report
        self._total = total
        self._done_before = report.events
        self._progress = progress
        self._pending: asyncio.Task[None] | None = None
        self._pending_delta: Delta | None = None

    async def submit(self, delta: Delta) -> None:
        if delta.is_empty():
            await self.drain()
            return
        if self._pending is not None and self._overlaps:
            await cast("OverlappingApply", self._store).apply_built()
            if not self._pending.done():
                await self._overlap(delta)
                return
        await self.drain()
        self._start(delta)

    def _start(self, delta: Delta) -> None:
        self._pending_delta = delta
        self._pending = asyncio.create_task(self._store.apply(delta))

    async def _overlap(self, delta: Delta) -> None:
        """Start ``delta`` while the batch in flight commits; it stays in flight after."""
        task = asyncio.create_task(self._store.apply(delta))
        try:
            await self.drain()
        except BaseException:  # it must not commit after the one before it failed
            task.cancel()
            await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # the earlier batch's failure is the one that is raised
            raise
        self._pending, self._pending_delta = task, delta

    async def drain(self) -> None:
        if self._pending is None:
            return
        task, delta = self._pending, self._pending_delta
        self._pending = self._pending_delta = None
        await task
        assert delta is not None
        report = self._report
        report.events += delta.events
        report.records += delta.records
        report.batches += 1
        if self._progress is not None:
            self._progress(Progress(report.events - self._done_before, self._total, report.records))

    async def abandon(self) -> None:
        """After a failure elsewhere: wait for the batch in flight, whatever its outcome."""
        if self._pending is not None:
            task, self._pending = self._pending, None
            with contextlib.suppress(Exception):
                await task


async def project_data_dir(settings: Settings, backend: str | None = None, *, replay: bool = False,
                           progress: ProgressFn | None = None,
                           options: ProjectorOptions | None = None) -> ProjectionReport:
    """Project a site's data directory once (``replay``: from nothing); for commands and benches."""
    rules = rules_from(settings)
    store = make_store(settings, backend, rules)
    log_options = LogOptions.from_settings(settings.log)
    options = options or ProjectorOptions.from_settings(settings.graph)
    await store.open()
    try:
        if replay:
            await store.reset()
        with LogStore(settings.data_dir, log_options) as log_store:
            return await Projector(log_store, store, rules, options, progress=progress).catch_up()
    finally:
        await store.close()
