"""Recovery at open: torn tails are cut, damage in acknowledged data stops the feed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from logutil import FAST, append_batches, body, make_site, parse_records, segment_path

from heimdall_core.errors import FeedStopped, IntegrityError
from heimdall_core.log.feed import FeedLog, LogOptions
from heimdall_core.log.records import T_CHECKPOINT, T_FRAME, T_SEGMENT_HEADER, encode_record
from heimdall_core.log.store import LogStore

SMALL_SEGMENTS = LogOptions(fsync=False, segment_bytes_max=2048)


def _open(store: LogStore) -> FeedLog:
    """Open the site's feed the way the store does (own key, head beside it)."""
    fresh = LogStore(store.data_dir, store.options)
    return fresh.writer()


def _snapshot(store: LogStore) -> tuple[bytes, bytes]:
    return segment_path(store).read_bytes(), (store.data_dir / "keys" / "site.head").read_bytes()


def test_torn_tail_at_every_cut_point_is_cut_back(tmp_path: Path) -> None:
    store = make_site(tmp_path)
    writer = store.writer()
    acked = append_batches(writer, [2, 1, 3])
    before_segment, before_head = _snapshot(store)
    append_batches(writer, [3], start=6)  # this batch's write is "torn" below
    after_segment, _ = _snapshot(store)
    store.close()
    seg = segment_path(store)
    head = tmp_path / "keys" / "site.head"
    assert after_segment.startswith(before_segment)
    for cut in range(len(before_segment), len(after_segment)):
        # Every cut point; at some, the file system also left zeroes or garbage behind it.
        tails = (b"", b"\0" * 64, os.urandom(40)) if cut % 5 == 0 else (b"",)
        for tail in tails:
            seg.write_bytes(after_segment[:cut] + tail)
            head.write_bytes(before_head)  # the crash came before the head was written
            log = _open(store)
            assert log.state.size == 6, (cut, tail)
            assert seg.read_bytes() == before_segment
            assert [f[56:] for _, f in log.read_frames(0, 6)] == acked
            log.close()
    # The whole batch written but the head not yet: the batch verifies and is kept.
    seg.write_bytes(after_segment)
    head.write_bytes(before_head)
    log = _open(store)
    assert log.state.size == 9
    log.close()
    assert LogStore(tmp_path, FAST).reader(store.site.feed).verify().size == 9


def test_torn_tail_in_a_fresh_segment(tmp_path: Path) -> None:
    store = make_site(tmp_path, options=SMALL_SEGMENTS)
    writer = store.writer()
    append_batches(writer, [5] * 6)
    segments_before = len(writer.segments())
    head_before = (tmp_path / "keys" / "site.head").read_bytes()
    size_before = writer.state.size
    while len(writer.segments()) == segments_before:
        head_before = (tmp_path / "keys" / "site.head").read_bytes()
        size_before = writer.state.size
        append_batches(writer, [5], start=writer.state.size)
    store.close()
    new_segment = segment_path(store)
    full = new_segment.read_bytes()
    for cut in (0, 10, 57, 57 + 30, len(full) - 1):
        new_segment.write_bytes(full[:cut])
        (tmp_path / "keys" / "site.head").write_bytes(head_before)
        log = _open(store)
        assert log.state.size == size_before, cut
        log.close()
        assert LogStore(tmp_path, SMALL_SEGMENTS).reader(store.site.feed).verify().size == size_before


def _layout(segment: bytes) -> list[tuple[int, int, int]]:
    """(start, end, expected seq) per record: a frame names its own sequence, a checkpoint
    the first sequence of its batch, the segment header the segment's first sequence."""
    out = []
    seq = batch_first = 0
    for kind, offset, payload in parse_records(segment, 0):
        end = offset + 9 + len(payload)
        if kind == T_SEGMENT_HEADER:
            out.append((offset, end, 0))
        elif kind == T_FRAME:
            out.append((offset, end, seq))
            seq += 1
        else:
            assert kind == T_CHECKPOINT
            out.append((offset, end, batch_first))
            batch_first = seq
    return out


@pytest.fixture(scope="module")
def small_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, list[tuple[int, int, int]]]:
    path = tmp_path_factory.mktemp("flip") / "site"
    store = make_site(path)
    append_batches(store.writer(), [2, 1, 3])
    store.close()
    segment = segment_path(store).read_bytes()
    return path, segment, _layout(segment)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_flipping_any_byte_is_detected_at_the_right_sequence(
        small_site: tuple[Path, bytes, list[tuple[int, int, int]]], tmp_path: Path,
        data: st.DataObject) -> None:
    source, segment, layout = small_site
    position = data.draw(st.integers(0, len(segment) - 1), label="position")
    mask = data.draw(st.integers(1, 255), label="mask")
    expected = next(seq for start, end, seq in layout if start <= position < end)
    site = tmp_path / f"s{position}-{mask}"
    shutil.copytree(source, site)
    store = LogStore(site, FAST)
    seg = segment_path(store)
    damaged = bytearray(segment)
    damaged[position] ^= mask
    seg.write_bytes(bytes(damaged))
    with pytest.raises(IntegrityError) as by_verify:
        store.reader(store.site.feed).verify()
    assert by_verify.value.seq == expected, (position, str(by_verify.value))
    assert by_verify.value.segment == seg.name
    with pytest.raises(IntegrityError) as by_open:
        store.writer()
    assert by_open.value.seq == expected, (position, str(by_open.value))
    assert by_open.value.offset is not None and by_open.value.offset <= position
    assert (store.feed_dir(store.site.feed) / "STOPPED").exists()


def test_bad_byte_in_acknowledged_data_stops_the_feed(tmp_path: Path) -> None:
    store = make_site(tmp_path)
    append_batches(store.writer(), [2, 3, 2])
    store.close()
    seg = segment_path(store)
    data = bytearray(seg.read_bytes())
    layout = _layout(bytes(data))
    start, _, seq = layout[5]  # header, 0, 1, checkpoint, 2, then 3: inside the second batch
    assert seq == 3
    data[start + 30] ^= 0x40
    seg.write_bytes(bytes(data))
    again = LogStore(tmp_path, FAST)
    with pytest.raises(IntegrityError) as caught:
        again.writer()
    error = caught.value
    assert (error.feed, error.segment, error.offset, error.seq) == (
        store.site.feed.hex(), seg.name, start, 3)
    stopped = (store.feed_dir(store.site.feed) / "STOPPED").read_text()
    for part in (store.site.feed.hex(), seg.name, f"offset {start}", "sequence 3", "not repaired"):
        assert part in stopped
    assert seg.read_bytes() == bytes(data)  # not repaired
    with pytest.raises(FeedStopped):
        LogStore(tmp_path, FAST).writer()
    assert "checksum" in again.stopped()[store.site.feed]


def test_complete_batch_after_the_head_that_fails_verification_is_not_cut(tmp_path: Path) -> None:
    store = make_site(tmp_path)
    writer = store.writer()
    append_batches(writer, [2])
    head_before = (tmp_path / "keys" / "site.head").read_bytes()
    append_batches(writer, [2], start=2)
    store.close()
    seg = segment_path(store)
    records = parse_records(seg.read_bytes(), 0)
    kind, offset, payload = records[-2]  # the last frame: change its body, fix its CRC
    assert kind == T_FRAME
    forged = payload[:-1] + bytes([payload[-1] ^ 1])
    data = seg.read_bytes()
    seg.write_bytes(data[:offset] + encode_record(T_FRAME, forged) + data[offset + 9 + len(payload):])
    (tmp_path / "keys" / "site.head").write_bytes(head_before)
    with pytest.raises(IntegrityError, match="does not match the frames") as caught:
        LogStore(tmp_path, FAST).writer()
    assert caught.value.seq == 2


def test_reopen_keeps_appending_after_a_cut(tmp_path: Path) -> None:
    store = make_site(tmp_path)
    writer = store.writer()
    append_batches(writer, [3])
    head = (tmp_path / "keys" / "site.head").read_bytes()
    append_batches(writer, [3], start=3)
    store.close()
    seg = segment_path(store)
    seg.write_bytes(seg.read_bytes()[:-5])
    (tmp_path / "keys" / "site.head").write_bytes(head)
    again = LogStore(tmp_path, FAST)
    assert again.writer().state.size == 3
    append_batches(again.writer(), [2], start=3)
    again.close()
    final = LogStore(tmp_path, FAST)
    assert final.reader(final.site.feed).verify().size == 5
    assert [seq for seq, _ in final.writer().read_frames(0, 5)] == [0, 1, 2, 3, 4]


def test_truncating_acknowledged_data_is_damage_not_a_torn_tail(tmp_path: Path) -> None:
    store = make_site(tmp_path)
    append_batches(store.writer(), [3, 3])
    store.close()
    seg = segment_path(store)
    seg.write_bytes(seg.read_bytes()[:-5])  # the head (in keys/) says 6 were acknowledged
    with pytest.raises(IntegrityError, match="not repaired") as caught:
        LogStore(tmp_path, FAST).writer()
    assert caught.value.seq == 3  # the checkpoint of the batch 3..5 is cut short


def test_body_of_unacked_torn_frame_is_ignored(tmp_path: Path) -> None:
    store = make_site(tmp_path)
    append_batches(store.writer(), [1])
    store.close()
    seg = segment_path(store)
    seg.write_bytes(seg.read_bytes() + encode_record(T_FRAME, b"HE\x01\x00" + bytes(60))[:40])
    assert LogStore(tmp_path, FAST).writer().state.size == 1
    assert body(0)
