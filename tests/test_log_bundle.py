"""Export/import bundles between real sites, and every way to tamper with one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
from logutil import append_batches, bundle_records, make_site, write_bundle

from heimdall_core.errors import IntegrityError
from heimdall_core.events import FRAME_BYTES_MAX_DEFAULT, HEADER_BYTES, decode_header, encode_header
from heimdall_core.keys import SigningKey
from heimdall_core.log.bundle import BundleError, export_bundle, import_bundle
from heimdall_core.log.checkpoint import NoteSigner
from heimdall_core.log.records import T_BUNDLE_END, T_BUNDLE_FEED, T_CHECKPOINT, T_FRAME
from heimdall_core.log.store import LogStore
from heimdall_core.log.verify import FeedState, origin_for, verify_note

LIMIT = FRAME_BYTES_MAX_DEFAULT
Records = list[tuple[int, bytes]]


@pytest.fixture
def origin(tmp_path: Path) -> LogStore:
    store = make_site(tmp_path / "a", "a")
    append_batches(store.writer(), [3, 2, 4])  # batches 0..2, 3..4, 5..8
    return store


def _import(store: LogStore, path: Path) -> int:
    return import_bundle(store, path, LIMIT).frames_appended


def _segments(store: LogStore, feed: bytes) -> list[bytes]:
    return [path.read_bytes() for _, path in store.writer(feed).segments()]


def test_round_trip_between_two_sites(tmp_path: Path, origin: LogStore) -> None:
    path = tmp_path / "a.bundle"
    summary = export_bundle(origin, path)
    assert (summary.feeds, summary.frames, summary.checkpoints) == (1, 9, 3)
    b = make_site(tmp_path / "b", "b")
    result = import_bundle(b, path, LIMIT)
    assert (result.frames_seen, result.frames_appended, result.batches) == (9, 9, 3)
    feed = origin.site.feed
    assert _segments(b, feed) == _segments(origin, feed)  # stored byte for byte
    assert b.reader(feed).verify().size == 9
    assert not (tmp_path / "a.bundle.partial").exists()


def test_since_and_incremental_reimport(tmp_path: Path, origin: LogStore) -> None:
    feed = origin.site.feed
    b = make_site(tmp_path / "b", "b")
    full = tmp_path / "full.bundle"
    export_bundle(origin, full)
    assert _import(b, full) == 9
    assert _import(b, full) == 0  # idempotent
    append_batches(origin.writer(), [2, 2], start=9)
    since = tmp_path / "since.bundle"
    export_bundle(origin, since, since=b.writer(feed).state.size)
    starts = [msgpack.unpackb(p)["from"] for kind, p in bundle_records(since) if kind == T_BUNDLE_FEED]
    assert starts == [9]
    assert _import(b, since) == 4
    export_bundle(origin, full)
    assert _import(b, full) == 0
    assert b.reader(feed).verify().size == 13
    assert _segments(b, feed) == _segments(origin, feed)


def test_since_inside_a_batch_starts_at_the_batch(tmp_path: Path, origin: LogStore) -> None:
    path = tmp_path / "since.bundle"
    export_bundle(origin, path, since=4)
    starts = [msgpack.unpackb(p)["from"] for kind, p in bundle_records(path) if kind == T_BUNDLE_FEED]
    assert starts == [3]
    fresh = make_site(tmp_path / "fresh", "fresh")
    with pytest.raises(BundleError, match="missing") as caught:
        _import(fresh, path)
    assert (caught.value.feed, caught.value.seq) == (origin.site.feed.hex(), 0)
    assert fresh.writer(origin.site.feed).state.size == 0


def test_relay_a_to_b_to_c(tmp_path: Path, origin: LogStore) -> None:
    feed = origin.site.feed
    b = make_site(tmp_path / "b", "b")
    append_batches(b.writer(), [2])
    export_bundle(origin, tmp_path / "a.bundle")
    _import(b, tmp_path / "a.bundle")
    export_bundle(b, tmp_path / "b.bundle")
    c = make_site(tmp_path / "c", "c")
    summary = import_bundle(c, tmp_path / "b.bundle", LIMIT)
    assert summary.feeds == {feed, b.site.feed}
    assert _segments(c, feed) == _segments(origin, feed)
    assert c.reader(feed).verify().size == 9
    assert c.reader(b.site.feed).verify().size == 2
    frames = [f for _, f in c.writer(feed).read_frames(0, 9)]
    assert frames == [f for _, f in origin.writer().read_frames(0, 9)]


# ------------------------------------------------------------------ damaged bundles
def _offsets(path: Path, records: Records) -> list[int]:
    return write_bundle(path, records)


def _frame_indexes(records: Records) -> list[int]:
    return [i for i, (kind, _) in enumerate(records) if kind == T_FRAME]


def _check_rejected(tmp_path: Path, records: Records, *, offset_of: int, seq: int, applied: int,
                    feed: bytes, match: str) -> BundleError:
    path = tmp_path / "bad.bundle"
    offsets = write_bundle(path, records)
    target = make_site(tmp_path / "target", "target")
    with pytest.raises(BundleError, match=match) as caught:
        _import(target, path)
    error = caught.value
    assert (error.offset, error.feed, error.seq) == (offsets[offset_of], feed.hex(), seq), str(error)
    assert str(error).count("offset=") == 1, str(error)
    assert target.writer(feed).state.size == applied  # nothing from the bad batch on
    assert target.reader(feed).verify().size == applied
    return error


@pytest.fixture
def good(tmp_path: Path, origin: LogStore) -> Records:
    path = tmp_path / "good.bundle"
    export_bundle(origin, path)
    return bundle_records(path)


def _refit(records: Records, index: int, change: Callable[[bytes], bytes]) -> Records:
    out = list(records)
    out[index] = (out[index][0], change(out[index][1]))
    return out


def test_modified_frame_body(tmp_path: Path, origin: LogStore, good: Records) -> None:
    frames = _frame_indexes(good)
    bad = _refit(good, frames[4], lambda f: f[:-1] + bytes([f[-1] ^ 1]))  # seq 4, batch 3..4
    error = _check_rejected(tmp_path, bad, offset_of=frames[3], seq=3, applied=3,
                            feed=origin.site.feed, match="do not match the signed checkpoint")
    assert "tampered" in str(error)


def test_modified_frame_header(tmp_path: Path, origin: LogStore, good: Records) -> None:
    frames = _frame_indexes(good)

    def later_hlc(frame: bytes) -> bytes:
        header = decode_header(frame)
        return encode_header(header.feed, header.seq, header.hlc.__class__(
            header.hlc.physical_ms + 10**9, 0)) + frame[HEADER_BYTES:]

    bad = _refit(good, frames[6], later_hlc)  # seq 6: its HLC now runs ahead of seq 7
    _check_rejected(tmp_path, bad, offset_of=frames[7], seq=7, applied=5, feed=origin.site.feed,
                    match="HLC")


def test_removed_frame(tmp_path: Path, origin: LogStore, good: Records) -> None:
    frames = _frame_indexes(good)
    bad = [r for i, r in enumerate(good) if i != frames[6]]
    _check_rejected(tmp_path, bad, offset_of=frames[6], seq=6, applied=5, feed=origin.site.feed,
                    match="expected sequence 6, found 7")


def test_reordered_frames(tmp_path: Path, origin: LogStore, good: Records) -> None:
    frames = _frame_indexes(good)
    bad = list(good)
    bad[frames[1]], bad[frames[2]] = bad[frames[2]], bad[frames[1]]
    _check_rejected(tmp_path, bad, offset_of=frames[1], seq=1, applied=0, feed=origin.site.feed,
                    match="expected sequence 1, found 2")


def test_duplicated_frame(tmp_path: Path, origin: LogStore, good: Records) -> None:
    frames = _frame_indexes(good)
    bad = list(good)
    bad.insert(frames[4] + 1, good[frames[4]])
    _check_rejected(tmp_path, bad, offset_of=frames[4] + 1, seq=5, applied=3,
                    feed=origin.site.feed, match="expected sequence 5, found 4")


def test_reordered_batches(tmp_path: Path, origin: LogStore, good: Records) -> None:
    frames = _frame_indexes(good)
    second = good[frames[3]:frames[4] + 2]  # frames 3, 4 and their checkpoint
    bad = good[:frames[3]] + good[frames[5]:-1] + second + good[-1:]
    _check_rejected(tmp_path, bad, offset_of=frames[3], seq=3, applied=3, feed=origin.site.feed,
                    match="expected sequence 3, found 5")


def test_checkpoint_signed_by_the_wrong_key(tmp_path: Path, origin: LogStore, good: Records) -> None:
    frames = _frame_indexes(good)
    checkpoint_index = frames[4] + 1
    feed = origin.site.feed
    genuine = verify_note(FeedState(feed), good[checkpoint_index][1])
    impostor = NoteSigner(origin_for(feed), SigningKey.generate().private)
    bad = _refit(good, checkpoint_index, lambda _: impostor.sign(genuine))
    _check_rejected(tmp_path, bad, offset_of=frames[3], seq=3, applied=3, feed=feed,
                    match="no signature from key")


def test_frame_of_another_feed_valid_for_it(tmp_path: Path, origin: LogStore, good: Records) -> None:
    other = make_site(tmp_path / "other", "other")
    append_batches(other.writer(), [2])
    export_bundle(other, tmp_path / "other.bundle")
    theirs = [r for r in bundle_records(tmp_path / "other.bundle") if r[0] in (T_FRAME, T_CHECKPOINT)]
    frames = _frame_indexes(good)
    bad = good[:frames[3]] + theirs + good[frames[3]:]  # other's signed batch inside a's section
    _check_rejected(tmp_path, bad, offset_of=frames[3], seq=3, applied=3, feed=origin.site.feed,
                    match="inside the section of another feed")
    relabelled = [(kind, encode_header(origin.site.feed, 3 + i, decode_header(p).hlc) + p[HEADER_BYTES:])
                  if kind == T_FRAME else (kind, p) for i, (kind, p) in enumerate(theirs)]
    bad = good[:frames[3]] + relabelled + good[frames[5]:]
    (tmp_path / "2").mkdir()
    _check_rejected(tmp_path / "2", bad, offset_of=frames[3], seq=3, applied=3,
                    feed=origin.site.feed, match="checkpoint rejected")


def test_nothing_after_the_bad_batch_is_applied_to_any_feed(tmp_path: Path, origin: LogStore) -> None:
    other = make_site(tmp_path / "other", "other")
    append_batches(other.writer(), [2])
    export_bundle(other, tmp_path / "other.bundle")
    _import(origin, tmp_path / "other.bundle")
    export_bundle(origin, tmp_path / "both.bundle", feeds=[origin.site.feed, other.site.feed])
    records = bundle_records(tmp_path / "both.bundle")
    frames = _frame_indexes(records)
    bad = _refit(records, frames[8], lambda f: f[:-1] + bytes([f[-1] ^ 1]))  # a's last batch
    path = tmp_path / "bad.bundle"
    write_bundle(path, bad)
    target = make_site(tmp_path / "target", "target")
    with pytest.raises(BundleError):
        _import(target, path)
    assert target.writer(origin.site.feed).state.size == 5
    assert target.writer(other.site.feed).state.size == 0  # came later in the file


def test_truncated_bundle_keeps_earlier_batches(tmp_path: Path, origin: LogStore) -> None:
    path = tmp_path / "a.bundle"
    export_bundle(origin, path)
    records = bundle_records(path)
    offsets = write_bundle(path, records)
    frames = _frame_indexes(records)
    data = path.read_bytes()
    cut = offsets[frames[6]] + 20  # inside the frame of sequence 6
    path.write_bytes(data[:cut])
    target = make_site(tmp_path / "target", "target")
    with pytest.raises(BundleError, match="truncated") as caught:
        _import(target, path)
    error = caught.value
    assert (error.offset, error.feed, error.seq) == (offsets[frames[6]], origin.site.feed.hex(), 6)
    assert target.writer(origin.site.feed).state.size == 5
    path.write_bytes(data[:offsets[-1]])  # cut exactly before the end record
    with pytest.raises(BundleError, match="no end record") as caught:
        _import(target, path)
    assert caught.value.offset == offsets[-1]
    assert target.writer(origin.site.feed).state.size == 9  # every batch was whole


def test_malformed_bundles(tmp_path: Path, origin: LogStore, good: Records) -> None:
    target = make_site(tmp_path / "target", "target")
    path = tmp_path / "x.bundle"
    path.write_bytes(b"NOTABNDL" + b"\0" * 20)
    with pytest.raises(BundleError, match="magic"):
        _import(target, path)
    write_bundle(path, [*good, (T_FRAME, good[2][1])])
    with pytest.raises(BundleError, match="after the end"):
        _import(target, path)
    target2 = make_site(tmp_path / "target2", "target2")
    write_bundle(path, [*good[:-1], (T_BUNDLE_END, msgpack.packb({"frames": 1, "checkpoints": 3}))])
    with pytest.raises(BundleError, match="end record counts"):
        _import(target2, path)
    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="damaged record"):
        _import(make_site(tmp_path / "t3", "t3"), path)
