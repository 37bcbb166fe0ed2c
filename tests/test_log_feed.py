"""One feed on disk: append, reopen, read, verify, segments, indexes, heads, stale logs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from logutil import FAST, FakeClock, append_batches, body, make_site, segment_path

from heimdall_core.clock import Hlc
from heimdall_core.errors import (
    EncodingError,
    FeedBroken,
    FeedStopped,
    HeimdallError,
    IntegrityError,
    StaleLogError,
)
from heimdall_core.events import HEADER_BYTES, decode_header, encode_body
from heimdall_core.log.feed import FeedLog, LogOptions
from heimdall_core.log.merkle import Frontier, root_from_leaf_hashes
from heimdall_core.log.records import T_CHECKPOINT, T_FRAME
from heimdall_core.log.segments import HEAD_SLOT_BYTES, INDEX_ENTRY, SEGMENT_HEADER_RECORD_BYTES, HeadFile
from heimdall_core.log.store import LogStore
from heimdall_core.log.verify import FeedState, verify_note

SMALL_SEGMENTS = LogOptions(fsync=False, segment_bytes_max=2048)


def _bodies_of(log: FeedLog, start: int, stop: int) -> list[bytes]:
    return [frame[HEADER_BYTES:] for _, frame in log.read_frames(start, stop)]


def test_append_reopen_read_verify(tmp_path: Path) -> None:
    store = make_site(tmp_path)
    writer = store.writer()
    bodies = append_batches(writer, [1, 5, 3])
    assert writer.state.size == 9
    root = writer.state.frontier.root()
    store.close()

    again = LogStore(tmp_path, FAST)
    reopened = again.writer()
    assert reopened.state.size == 9
    assert reopened.state.frontier.root() == root
    assert _bodies_of(reopened, 0, 9) == bodies
    assert _bodies_of(reopened, 3, 7) == bodies[3:7]
    assert _bodies_of(reopened, 8, 9) == bodies[8:]
    assert _bodies_of(reopened, 4, 4) == []
    assert [seq for seq, _ in reopened.read_frames(2, 5)] == [2, 3, 4]
    state = again.reader(again.site.feed).verify()
    assert state.size == 9 and state.frontier.root() == root
    more = append_batches(reopened, [2], start=9)
    assert _bodies_of(reopened, 0, 11) == bodies + more
    again.close()


def test_batches_checkpoints_and_roots(tmp_path: Path) -> None:
    store = make_site(tmp_path)
    writer = store.writer()
    append_batches(writer, [1, 5, 3])
    batches = [(first, len(frames)) for first, frames, _ in writer.iter_batches()]
    assert batches == [(0, 1), (1, 5), (6, 3)]
    assert [(f, len(fr)) for f, fr, _ in writer.iter_batches(5)] == [(1, 5), (6, 3)]
    assert [(f, len(fr)) for f, fr, _ in writer.iter_batches(6)] == [(6, 3)]
    assert [(f, len(fr)) for f, fr, _ in writer.iter_batches(9)] == []
    assert [(f, len(fr)) for f, fr, _ in writer.iter_batches(0, 6)] == [(0, 1), (1, 5)]
    sizes = [size for size, _ in writer.checkpoints()]
    assert sizes == [1, 6, 9]
    leaves = writer.leaf_hashes(0, 9)
    for size, note in writer.checkpoints():
        assert verify_note(FeedState(writer.feed), note).root == root_from_leaf_hashes(leaves[:size])
        assert writer.checkpoint_at(size) == note
        assert writer.root_at(size) == root_from_leaf_hashes(leaves[:size])
    assert writer.checkpoint_at(4) is None
    assert writer.root_at(4) == root_from_leaf_hashes(leaves[:4])
    assert writer.durable_size() == 9
    store.close()


def test_segment_rollover(tmp_path: Path) -> None:
    store = make_site(tmp_path, options=SMALL_SEGMENTS)
    writer = store.writer()
    bodies = append_batches(writer, [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5])
    segments = writer.segments()
    assert len(segments) >= 4
    assert segments[0][0] == 0
    batch_starts = {first for first, _, _ in writer.iter_batches()}
    assert {first for first, _ in segments} <= batch_starts  # a batch never spans segments
    for _, path in segments[:-1]:
        assert path.stat().st_size <= 2048 + 1024
    store.close()
    again = LogStore(tmp_path, SMALL_SEGMENTS)
    reopened = again.writer()
    assert _bodies_of(reopened, 0, len(bodies)) == bodies
    assert _bodies_of(reopened, 20, 30) == bodies[20:30]
    assert again.reader(again.site.feed).verify().size == len(bodies)
    later = [f for f, _, _ in reopened.iter_batches(segments[-1][0])]
    assert later[0] == segments[-1][0]
    again.close()


def _index_files(store: LogStore) -> tuple[bytes, bytes]:
    directory = store.feed_dir(store.site.feed)
    return (directory / "index").read_bytes(), (directory / "checkpoints.idx").read_bytes()


def test_index_rebuilt_at_open_when_deleted_or_truncated(tmp_path: Path) -> None:
    store = make_site(tmp_path, options=SMALL_SEGMENTS)
    append_batches(store.writer(), [4] * 12)
    original = _index_files(store)
    store.close()
    directory = store.feed_dir(store.site.feed)
    for damage in ("delete", "truncate", "garbage"):
        index = directory / "index"
        if damage == "delete":
            index.unlink()
            (directory / "checkpoints.idx").unlink()
        elif damage == "truncate":
            index.write_bytes(original[0][:INDEX_ENTRY.size * 5 + 7])
        else:
            index.write_bytes(original[0][:-INDEX_ENTRY.size * 20] + os.urandom(INDEX_ENTRY.size * 20))
        again = LogStore(tmp_path, SMALL_SEGMENTS)
        assert again.writer().state.size == 48
        assert _index_files(again) == original, damage
        assert again.reader(again.site.feed).verify().size == 48
        again.close()


def test_corrupt_index_is_reported_and_reindex_restores_it(tmp_path: Path) -> None:
    store = make_site(tmp_path, options=SMALL_SEGMENTS)
    append_batches(store.writer(), [4] * 12)
    original = _index_files(store)
    store.close()
    index = store.feed_dir(store.site.feed) / "index"
    damaged = bytearray(original[0])
    damaged[INDEX_ENTRY.size * 2 + 20] ^= 0xFF  # a leaf hash in the first segment
    index.write_bytes(bytes(damaged))
    again = LogStore(tmp_path, SMALL_SEGMENTS)
    with pytest.raises(IntegrityError, match="reindex") as caught:
        again.reader(again.site.feed).verify()
    assert caught.value.seq == 0
    assert again.writer().rebuild_indexes() == 48
    assert _index_files(again) == original
    assert again.reader(again.site.feed).verify().size == 48
    again.close()


def test_missing_middle_segment_stops_the_feed(tmp_path: Path) -> None:
    store = make_site(tmp_path, options=SMALL_SEGMENTS)
    append_batches(store.writer(), [4] * 12)
    store.close()
    segment_path(store, index=1).unlink()
    again = LogStore(tmp_path, SMALL_SEGMENTS)
    with pytest.raises(IntegrityError) as caught:
        again.writer()
    assert caught.value.feed == store.site.feed.hex()
    with pytest.raises(FeedStopped):
        again.writer()


def test_deleted_last_segment_is_a_stale_log(tmp_path: Path) -> None:
    store = make_site(tmp_path, options=SMALL_SEGMENTS)
    append_batches(store.writer(), [4] * 12)
    store.close()
    segment_path(store).unlink()
    again = LogStore(tmp_path, SMALL_SEGMENTS)
    with pytest.raises(StaleLogError, match="refusing to write"):
        again.writer()
    with pytest.raises(StaleLogError):
        again.writer()
    with pytest.raises(StaleLogError):
        again.reader(again.site.feed).verify()
    assert not (store.feed_dir(store.site.feed) / "STOPPED").exists()  # not damage: behind


def test_restored_backup_of_the_log_dir_is_stale_until_it_catches_up(tmp_path: Path) -> None:
    site = tmp_path / "site"
    store = make_site(site)
    writer = store.writer()
    append_batches(writer, [2, 3])
    feed_dir = store.feed_dir(store.site.feed)
    backup = tmp_path / "backup"
    shutil.copytree(feed_dir, backup)
    append_batches(writer, [4, 1], start=5)
    batches = list(writer.iter_batches(5))
    store.close()
    shutil.rmtree(feed_dir)
    shutil.copytree(backup, feed_dir)  # the log is back at 5 events; keys/site.head says 10

    again = LogStore(site, FAST)
    with pytest.raises(StaleLogError, match="holds 5 events but its last signed head covers 10"):
        again.writer()
    behind = again.writer(allow_behind=True)
    assert behind.behind is not None and behind.state.size == 5
    with pytest.raises(StaleLogError):
        behind.append_bodies([body(99)])
    for first, frames, note in batches:  # the missing batches come back (bundle or peer)
        again.accept(again.site.feed, first, frames, note)
    assert again.writer().behind is None
    append_batches(again.writer(), [1], start=10)
    assert again.reader(again.site.feed).verify().size == 11
    again.close()


def test_torn_head_slot_falls_back_to_the_other(tmp_path: Path) -> None:
    store = make_site(tmp_path)
    append_batches(store.writer(), [2, 2, 2])
    store.close()
    head = tmp_path / "keys" / "site.head"
    data = bytearray(head.read_bytes())
    assert len(data) == 2 * HEAD_SLOT_BYTES
    generation_3_slot = 3 % 2
    data[generation_3_slot * HEAD_SLOT_BYTES + 30] ^= 1
    head.write_bytes(bytes(data))
    again = LogStore(tmp_path, FAST)
    assert again.reader(again.site.feed).state.size == 4  # the previous head
    assert again.writer().state.size == 6  # the log is ahead of it: kept, head rewritten
    assert again.reader(again.site.feed).state.size == 6
    again.close()


def test_one_writer_per_feed(tmp_path: Path) -> None:
    store = make_site(tmp_path)
    store.writer()
    other = LogStore(tmp_path, FAST)
    with pytest.raises(HeimdallError, match="another process"):
        other.writer()
    store.close()
    assert other.writer().state.size == 0
    other.close()


def test_append_checks_bodies_and_limits(tmp_path: Path) -> None:
    store = make_site(tmp_path, options=LogOptions(fsync=False, batch_events_max=4,
                                                   frame_bytes_max=1024))
    writer = store.writer()
    unsorted = b"\x93\xa4note\x01\x82\xa1b\x01\xa1a\x02"
    with pytest.raises(EncodingError, match="event 1 of the batch"):
        writer.append_bodies([body(0), unsorted])
    with pytest.raises(ValueError):
        writer.append_bodies([])
    with pytest.raises(ValueError):
        writer.append_bodies([body(i) for i in range(5)])
    with pytest.raises(EncodingError, match="frame limit"):
        writer.append_bodies([encode_body("note", 1, {"x": "y" * 2000})])
    assert writer.state.size == 0 and not writer.segments()
    writer.append_bodies([body(0)])
    assert writer.state.size == 1
    store.close()


def test_foreign_feed_cannot_be_appended_to_directly(tmp_path: Path) -> None:
    log = FeedLog.open_for_writing(tmp_path / "f", bytes(32), options=FAST)
    with pytest.raises(HeimdallError, match="not this site's"):
        log.append_bodies([body(0)])
    log.close()


def test_failed_write_needs_a_reopen(tmp_path: Path) -> None:
    store = make_site(tmp_path)
    writer = store.writer()
    append_batches(writer, [2])
    os.close(writer._seg_fd)  # type: ignore[arg-type]  # the disk goes away under the writer
    with pytest.raises(OSError):
        writer.append_bodies([body(2)])
    writer._seg_fd = None
    with pytest.raises(FeedBroken, match="reopen"):  # a class of its own: HTTP answers 503
        writer.append_bodies([body(3)])
    store._writers.clear()
    writer.close()
    again = LogStore(tmp_path, FAST)
    assert again.writer().state.size == 2
    append_batches(again.writer(), [1], start=2)
    assert again.reader(again.site.feed).verify().size == 3
    again.close()


def test_hlc_keeps_increasing_across_reopen_with_a_clock_going_back(tmp_path: Path) -> None:
    from heimdall_core.log.store import init_site

    init_site(tmp_path, "x")
    wall = FakeClock(5_000)
    store = LogStore(tmp_path, FAST, clock=wall)
    append_batches(store.writer(), [3])
    store.close()
    wall.now = 10
    again = LogStore(tmp_path, FAST, clock=wall)
    append_batches(again.writer(), [2], start=3)
    hlcs = [decode_header(frame).hlc for _, frame in again.writer().read_frames(0, 5)]
    assert hlcs == sorted(hlcs) and len(set(hlcs)) == 5
    assert hlcs[-1].physical_ms == 5_000
    again.close()


def test_segment_records_are_frames_then_one_checkpoint(tmp_path: Path) -> None:
    from logutil import parse_records

    store = make_site(tmp_path)
    append_batches(store.writer(), [2, 1])
    store.close()
    records = parse_records(segment_path(store).read_bytes(), 0)
    assert [kind for kind, _, _ in records][1:] == [T_FRAME, T_FRAME, T_CHECKPOINT, T_FRAME,
                                                    T_CHECKPOINT]


def test_a_reader_never_reads_past_the_durable_head(tmp_path: Path) -> None:
    store = make_site(tmp_path)
    writer = store.writer()
    bodies = append_batches(writer, [3])
    with open(segment_path(store), "ab") as segment:  # another process is mid-write
        segment.write(b"\x00\x00\x01\x00\x02partial")
    reader = LogStore(tmp_path, FAST).reader(store.site.feed)
    assert _bodies_of(reader, 0, 100) == bodies
    assert [f for f, _, _ in reader.iter_batches(0, 100)] == [0]
    store.close()



def test_a_feed_killed_inside_its_first_batch_stays_readable(tmp_path: Path) -> None:
    """Killed after the first segment's header and before the first batch's head: the
    feed has a segment but no head. Recovery must not write a head without a signed
    checkpoint (it wrote one with an empty note, which every later open and every reader
    in another process then refused: "signed note has no blank line")."""
    store = make_site(tmp_path)
    append_batches(store.writer(), [3])
    segment = segment_path(store, index=0)
    store.close()
    data = segment.read_bytes()
    segment.write_bytes(data[:SEGMENT_HEADER_RECORD_BYTES] + data[SEGMENT_HEADER_RECORD_BYTES:][:40])
    (tmp_path / "keys" / "site.head").unlink()
    for _ in range(2):
        again = LogStore(tmp_path, FAST)
        assert again.writer().state.size == 0
        assert again.reader(again.site.feed).state.size == 0
        again.close()
    again = LogStore(tmp_path, FAST)
    append_batches(again.writer(), [2])
    assert again.reader(again.site.feed).verify().size == 2
    again.close()


def test_a_head_of_nothing_from_older_builds_reads_as_no_head(tmp_path: Path) -> None:
    """Older builds wrote a head with an empty note and an empty frontier for a feed
    killed inside its first batch; such a site must open, not stop."""
    store = make_site(tmp_path)
    feed = store.site.feed
    store.close()
    head = HeadFile(tmp_path / "keys" / "site.head", feed)
    head.write(1, b"", Frontier(), Hlc(0, 0), fsync=False)
    head.close()
    assert head.read() is None
    again = LogStore(tmp_path, FAST)
    append_batches(again.writer(), [2])
    assert again.reader(feed).verify().size == 2
    again.close()
