"""Group commit: many concurrent appenders, one write and one fsync per batch (asyncio).

Appenders ``await writer.append(bodies)``; a single committer task takes everything
queued (up to the batch limit), appends it as one signed batch in a worker thread (so
the fsync does not block the event loop), and then resolves every waiter. A waiter is
resolved only after its events and their signed checkpoint are durable; if the batch
fails, every waiter of that batch gets the error and nothing of it is acknowledged.

``close`` drains: appends already queued are committed, later ones are refused. A
commit in flight is never abandoned, even when the committer task is cancelled: the
write finishes in its thread and its waiters learn the outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from heimdall_core.errors import HeimdallError
from heimdall_core.log.feed import AppendResult, FeedLog, check_body_batch

QUEUE_APPENDS_MAX = 10_000

_Pending = tuple[Sequence[bytes], "asyncio.Future[Ack]"]


@dataclass(frozen=True, slots=True)
class Ack:
    first_seq: int
    count: int
    size: int  # the feed size after the batch that carried these events


class GroupCommitWriter:
    def __init__(self, feed: FeedLog, *, delay_s: float = 0.0) -> None:
        self._feed = feed
        self._delay_s = delay_s
        # None is the close marker: everything queued before it is committed.
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue(QUEUE_APPENDS_MAX)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._batch_max = feed.options.batch_events_max
        self.batches = 0  # commits done (one signed checkpoint and one fsync each)
        self.events = 0

    async def start(self) -> None:
        if self._closed:
            raise HeimdallError("group commit writer is closed")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="group-commit")

    async def close(self) -> None:
        """Commit what is queued, then stop. Appends after this are refused."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            await self._queue.put(None)
            await self._task
            self._task = None

    async def __aenter__(self) -> GroupCommitWriter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def append(self, bodies: Sequence[bytes]) -> Ack:
        """Append event bodies; returns once they are durable and signed."""
        if not bodies:
            raise ValueError("nothing to append")
        if len(bodies) > self._batch_max:
            raise ValueError(f"at most {self._batch_max} events per append")
        if self._closed:
            raise HeimdallError("group commit writer is closed")
        # Checked here, per append: one appender's bad event must not fail the others'.
        check_body_batch(bodies)
        if self._task is None:
            await self.start()
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        await self._queue.put((bodies, future))
        return await future

    async def _run(self) -> None:
        try:
            closing = False
            while not closing:
                first = await self._queue.get()
                if first is None:
                    return
                if self._delay_s:
                    await asyncio.sleep(self._delay_s)
                pending, closing = await self._gather(first)
                await self._commit(pending)
        finally:
            self._fail_queued(HeimdallError("group commit writer stopped before this append"))

    async def _gather(self, first: _Pending) -> tuple[list[_Pending], bool]:
        """Everything queued behind ``first``, committing early whenever a batch is full."""
        pending = [first]
        count = len(first[0])
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is None:
                return pending, True
            if count + len(item[0]) > self._batch_max:
                await self._commit(pending)
                pending, count = [], 0
            pending.append(item)
            count += len(item[0])
        return pending, False

    async def _commit(self, pending: list[_Pending]) -> None:
        flat = [body for bodies, _ in pending for body in bodies]
        write = asyncio.ensure_future(asyncio.to_thread(self._feed.append_bodies, flat, checked=True))
        cancelled = False
        while not write.done():
            try:
                await asyncio.wait({write})
            except asyncio.CancelledError:
                # The write runs on in its thread; wait for it so no waiter is left unsure.
                cancelled = True
        self._settle(pending, write)
        if cancelled:
            raise asyncio.CancelledError

    def _settle(self, pending: list[_Pending], write: asyncio.Future[AppendResult]) -> None:
        error = write.exception()
        if error is not None:
            for _, future in pending:
                if not future.done():
                    future.set_exception(error)
            return
        result = write.result()
        self.batches += 1
        self.events += result.count
        seq = result.first_seq
        for bodies, future in pending:
            if not future.done():
                future.set_result(Ack(seq, len(bodies), result.checkpoint.size))
            seq += len(bodies)

    def _fail_queued(self, error: HeimdallError) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None and not item[1].done():
                item[1].set_exception(error)
