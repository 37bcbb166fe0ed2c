"""Group commit: concurrent appenders share writes, fsyncs and signatures."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest
from logutil import body, make_site

from heimdall_core.errors import EncodingError, HeimdallError
from heimdall_core.events import HEADER_BYTES
from heimdall_core.log.feed import FeedLog, LogOptions
from heimdall_core.log.store import LogStore
from heimdall_core.log.writer import Ack, GroupCommitWriter

APPENDERS = 8
APPENDS_EACH = 40


async def test_eight_appenders_are_coalesced_and_every_ack_is_durable(tmp_path: Path) -> None:
    # fsync on: the commit takes real time, so appenders queue up behind it.
    store = make_site(tmp_path, options=LogOptions(fsync=True))
    feed = store.writer()
    reader_dir, head_path = store.feed_dir(store.site.feed), tmp_path / "keys" / "site.head"
    acked: dict[int, bytes] = {}

    async def appender(number: int, writer: GroupCommitWriter) -> None:
        for k in range(APPENDS_EACH):
            payload = body(number * 1000 + k)
            ack = await writer.append([payload])
            assert ack.count == 1
            # Acknowledged means on disk: a fresh reader (another "process") sees it now.
            reader = FeedLog.open_for_reading(reader_dir, store.site.feed, head_path=head_path)
            assert reader.state.size >= ack.size > ack.first_seq
            assert [f[HEADER_BYTES:] for _, f in reader.read_frames(ack.first_seq,
                                                                   ack.first_seq + 1)] == [payload]
            acked[ack.first_seq] = payload

    async with GroupCommitWriter(feed) as writer:
        await asyncio.gather(*(appender(n, writer) for n in range(APPENDERS)))
        assert writer.events == APPENDERS * APPENDS_EACH
        assert writer.batches < APPENDERS * APPENDS_EACH / 2
    assert sorted(acked) == list(range(APPENDERS * APPENDS_EACH))
    store.close()
    again = LogStore(tmp_path)
    state = again.reader(again.site.feed).verify()
    assert state.size == APPENDERS * APPENDS_EACH
    frames = dict(again.writer().read_frames(0, state.size))
    assert {seq: frame[HEADER_BYTES:] for seq, frame in frames.items()} == acked
    batches = list(again.writer().iter_batches())
    assert len(batches) < APPENDERS * APPENDS_EACH / 2
    again.close()


async def test_batches_respect_the_limit_and_acks_carry_positions(tmp_path: Path) -> None:
    store = make_site(tmp_path, options=LogOptions(fsync=False, batch_events_max=10))
    writer = GroupCommitWriter(store.writer())
    acks: list[Ack] = await asyncio.gather(*(writer.append([body(i)] * 3) for i in range(9)))
    await writer.close()
    assert sorted(a.first_seq for a in acks) == list(range(0, 27, 3))
    assert all(a.count == 3 and a.size >= a.first_seq + 3 for a in acks)
    assert all(len(frames) <= 10 for _, frames, _ in store.writer().iter_batches())
    with pytest.raises(ValueError):
        await GroupCommitWriter(store.writer()).append([body(0)] * 11)
    store.close()


async def test_a_bad_append_fails_alone(tmp_path: Path) -> None:
    store = make_site(tmp_path)
    writer = GroupCommitWriter(store.writer())
    unsorted = b"\x93\xa4note\x01\x82\xa1b\x01\xa1a\x02"
    results = await asyncio.gather(writer.append([body(1)]), writer.append([unsorted]),
                                   writer.append([body(2)]), return_exceptions=True)
    await writer.close()
    assert isinstance(results[1], EncodingError)
    assert isinstance(results[0], Ack) and isinstance(results[2], Ack)
    assert store.writer().state.size == 2
    store.close()


async def test_close_drains_and_then_refuses(tmp_path: Path) -> None:
    store = make_site(tmp_path)
    writer = GroupCommitWriter(store.writer(), delay_s=0.01)
    pending = [asyncio.create_task(writer.append([body(i)])) for i in range(20)]
    await asyncio.sleep(0)
    await writer.close()
    assert all(task.done() and not task.exception() for task in pending)
    assert store.writer().state.size == 20
    with pytest.raises(HeimdallError, match="closed"):
        await writer.append([body(0)])
    store.close()


async def test_a_cancelled_appender_does_not_break_its_batch(tmp_path: Path) -> None:
    store = make_site(tmp_path, options=LogOptions(fsync=True))
    writer = GroupCommitWriter(store.writer())
    first = asyncio.create_task(writer.append([body(0)]))
    second = asyncio.create_task(writer.append([body(1)]))
    await asyncio.sleep(0)
    first.cancel()
    ack = await second
    await writer.close()
    assert ack.count == 1
    assert store.writer().state.size in (1, 2)  # the cancelled one may already be written
    assert store.reader(store.site.feed).verify().size == store.writer().state.size
    store.close()


async def test_a_failed_commit_fails_its_waiters_and_nothing_is_acked(tmp_path: Path) -> None:
    store = make_site(tmp_path)
    feed = store.writer()
    writer = GroupCommitWriter(feed)
    await writer.append([body(0)])
    feed.stop("test: stopped under the writer")
    with pytest.raises(HeimdallError, match="stopped"):
        await writer.append([body(1)])
    await writer.close()
    assert feed.state.size == 1
    store.close()


def test_a_failed_write_names_the_feed_directory_and_acknowledges_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk: the operator's message says where, and the feed takes no more appends."""
    store = make_site(tmp_path / "site")
    feed = store.writer()
    feed.append_bodies([body(0)])

    def no_room(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("heimdall_core.log.feed.write_all", no_room)
    with pytest.raises(OSError) as failed:
        feed.append_bodies([body(1)])
    assert failed.value.errno == errno.ENOSPC and failed.value.filename == str(feed.directory)
    assert failed.value.strerror \
        == "No space left on device (appending to the log; nothing of this batch was acknowledged)"
    assert feed.state.size == 1
    monkeypatch.undo()
    with pytest.raises(HeimdallError):  # only a reopen (recovery) may touch the files again
        feed.append_bodies([body(2)])
    store.close()
