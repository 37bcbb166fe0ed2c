"""Group commit: many concurrent appenders, one write and one fsync per batch (asyncio).

Appenders ``await writer.append(bodies)``; a single committer task takes everything
queued (up to the batch limit), appends it as one signed batch in a worker thread (so
the fsync does not block the event loop), and then resolves every waiter. A waiter is
resolved only after its events and their signed checkpoint are durable.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from heimdall_core.errors import HeimdallError
from heimdall_core.log.feed import FeedLog

QUEUE_APPENDS_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Ack:
    first_seq: int
    count: int
    size: int  # the feed size after the batch that carried these events


class GroupCommitWriter:
    def __init__(self, feed: FeedLog, *, delay_s: float = 0.0) -> None:
        self._feed = feed
        self._delay_s = delay_s
        self._queue: asyncio.Queue[tuple[Sequence[bytes], asyncio.Future[Ack]]] = asyncio.Queue(
            QUEUE_APPENDS_MAX)
        self._task: asyncio.Task[None] | None = None
        self._batch_max = feed.options.batch_events_max

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="group-commit")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def append(self, bodies: Sequence[bytes]) -> Ack:
        """Append event bodies; returns once they are durable and signed."""
        if not bodies:
            raise ValueError("nothing to append")
        if len(bodies) > self._batch_max:
            raise ValueError(f"at most {self._batch_max} events per append")
        if self._task is None:
            await self.start()
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        await self._queue.put((bodies, future))
        return await future

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            if self._delay_s:
                await asyncio.sleep(self._delay_s)
            pending = [first]
            count = len(first[0])
            while not self._queue.empty():
                bodies, future = self._queue.get_nowait()
                if count + len(bodies) > self._batch_max:
                    await self._commit(pending)
                    pending, count = [], 0
                pending.append((bodies, future))
                count += len(bodies)
            await self._commit(pending)

    async def _commit(self, pending: list[tuple[Sequence[bytes], asyncio.Future[Ack]]]) -> None:
        flat = [body for bodies, _ in pending for body in bodies]
        try:
            # Shielded: a cancelled appender must not interrupt a write half-way.
            result = await asyncio.shield(asyncio.to_thread(self._feed.append_bodies, flat))
        except HeimdallError as exc:
            for _, future in pending:
                if not future.done():
                    future.set_exception(exc)
            return
        except Exception as exc:  # an I/O error: every waiter learns it, nothing is acked
            for _, future in pending:
                if not future.done():
                    future.set_exception(exc)
            return
        seq = result.first_seq
        for bodies, future in pending:
            if not future.done():
                future.set_result(Ack(seq, len(bodies), result.checkpoint.size))
            seq += len(bodies)
