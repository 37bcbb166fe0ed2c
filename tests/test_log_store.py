"""The set of feeds: accepting foreign batches (three cases), forks and their proofs."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from logutil import FAST, FakeClock, append_batches, body, make_site

from heimdall_core.clock import HLC_DRIFT_MAX_MS, Hlc
from heimdall_core.errors import FeedStopped, ForkDetected, IntegrityError
from heimdall_core.events import HEADER_BYTES, decode_header, encode_header
from heimdall_core.log.checkpoint import NoteVerifier
from heimdall_core.log.merkle import verify_consistency
from heimdall_core.log.store import LogStore, init_site
from heimdall_core.log.verify import ForkProof, check_fork_proof, origin_for


def _batches(store: LogStore, feed: bytes | None = None) -> list[tuple[int, list[bytes], bytes]]:
    return list(store.writer(feed).iter_batches())


def _frames(store: LogStore, feed: bytes) -> list[bytes]:
    writer = store.writer(feed)
    return [frame for _, frame in writer.read_frames(0, writer.state.size)]


@pytest.fixture
def origin(tmp_path: Path) -> LogStore:
    store = make_site(tmp_path / "origin", "origin")
    append_batches(store.writer(), [3, 3, 3])
    return store


@pytest.fixture
def holder(tmp_path: Path) -> LogStore:
    return make_site(tmp_path / "holder", "holder")


def test_accept_extending_batches(origin: LogStore, holder: LogStore) -> None:
    feed = origin.site.feed
    for first, frames, note in _batches(origin):
        result = holder.accept(feed, first, frames, note)
        assert result.appended == len(frames) and result.size == first + len(frames)
    assert _frames(holder, feed) == _frames(origin, feed)
    assert holder.reader(feed).verify().size == 9
    assert not holder.is_own(feed)
    assert feed in holder.feeds()


def test_accept_held_batches_is_a_no_op(origin: LogStore, holder: LogStore) -> None:
    feed = origin.site.feed
    batches = _batches(origin)
    for first, frames, note in batches:
        holder.accept(feed, first, frames, note)
    for first, frames, note in batches:  # behind and equal (the last one ends at our size)
        assert holder.accept(feed, first, frames, note).appended == 0
    assert holder.writer(feed).state.size == 9


def test_accept_overlapping_batch_appends_only_the_new_part(origin: LogStore, holder: LogStore) -> None:
    feed = origin.site.feed
    (f0, b0, n0), (f1, b1, n1), (_, b2, n2) = _batches(origin)
    holder.accept(feed, f0, b0, n0)
    holder.accept(feed, f1, b1, n1)
    result = holder.accept(feed, 4, b1[1:] + b2, n2)  # frames 4..8, signed at 9
    assert (result.appended, result.size) == (3, 9)
    assert _frames(holder, feed) == _frames(origin, feed)
    assert holder.reader(feed).verify().size == 9


def test_accept_refuses_a_gap(origin: LogStore, holder: LogStore) -> None:
    feed = origin.site.feed
    (f0, b0, n0), _, (f2, b2, n2) = _batches(origin)
    holder.accept(feed, f0, b0, n0)
    with pytest.raises(IntegrityError, match="missing") as caught:
        holder.accept(feed, f2, b2, n2)
    assert caught.value.seq == 3


def test_tampered_frame_in_a_held_range_is_not_a_fork(origin: LogStore, holder: LogStore) -> None:
    feed = origin.site.feed
    batches = _batches(origin)
    for first, frames, note in batches:
        holder.accept(feed, first, frames, note)
    first, frames, note = batches[1]
    forged = list(frames)
    forged[1] = forged[1][:-1] + b"\x00"
    with pytest.raises(IntegrityError, match="tampered") as caught:
        holder.accept(feed, first, forged, note)
    assert not isinstance(caught.value, ForkDetected)
    assert caught.value.seq == 4
    forged_overlap = [*frames[1:], *batches[2][1]]
    forged_overlap[0] = forged_overlap[0][:-1] + b"\x00"
    holder2 = make_site(holder.data_dir.parent / "holder2")
    for first2, frames2, note2 in batches[:2]:
        holder2.accept(feed, first2, frames2, note2)
    with pytest.raises(IntegrityError) as caught:
        holder2.accept(feed, 4, forged_overlap, batches[2][2])
    assert not isinstance(caught.value, ForkDetected)
    assert holder2.writer(feed).state.size == 6 and not holder2.forks()


def test_foreign_hlc_is_merged_into_our_clock(tmp_path: Path) -> None:
    wall = FakeClock(1_000_000)
    init_site(tmp_path / "ahead", "ahead")
    ahead = LogStore(tmp_path / "ahead", FAST, clock=FakeClock(1_000_000 + 3_600_000))
    append_batches(ahead.writer(), [2])
    init_site(tmp_path / "here", "here")
    here = LogStore(tmp_path / "here", FAST, clock=wall)
    for first, frames, note in _batches(ahead):
        here.accept(ahead.site.feed, first, frames, note)
    append_batches(here.writer(), [1])
    ours = decode_header(_frames(here, here.site.feed)[0]).hlc
    theirs = decode_header(_frames(ahead, ahead.site.feed)[-1]).hlc
    assert ours > theirs
    assert not here.hlc.observe(Hlc(wall.now + HLC_DRIFT_MAX_MS + 1, 0))


# ------------------------------------------------------------------------------ forks
def _copied_key_sites(tmp_path: Path, a_batches: tuple[int, ...] = (3,),
                      a2_batches: tuple[int, ...] = (2, 3)) -> tuple[LogStore, LogStore]:
    """Two sites with one key (a copied data dir) and different histories after 4 events."""
    first = make_site(tmp_path / "a", "a")
    append_batches(first.writer(), [2, 2])
    first.close()
    shutil.copytree(tmp_path / "a", tmp_path / "a2")
    a = LogStore(tmp_path / "a", FAST)
    a2 = LogStore(tmp_path / "a2", FAST)
    append_batches(a.writer(), a_batches, start=4, side="a")
    append_batches(a2.writer(), a2_batches, start=4, side="a2")
    assert a.site.feed == a2.site.feed
    return a, a2


def _check_proof_independently(path: Path, feed: bytes) -> None:
    """Re-verify a fork proof file with nothing but the Merkle code and the feed key."""
    record = json.loads(path.read_text())
    verifier = NoteVerifier(origin_for(feed), feed)
    smaller = verifier.verify(base64.b64decode(record["smaller"]["note"]))
    larger = verifier.verify(base64.b64decode(record["larger"]["note"]))
    assert smaller.size == record["smaller"]["size"] <= larger.size == record["larger"]["size"]
    root_at_smaller = base64.b64decode(record["root_at_smaller_size"])
    proof = [base64.b64decode(node) for node in record["consistency_proof"]]
    verify_consistency(smaller.size, larger.size, root_at_smaller, larger.root, proof)
    assert root_at_smaller != smaller.root  # the larger head commits to another history
    assert record["feed"] == feed.hex()
    check_fork_proof(ForkProof.from_json(record))


def test_own_feed_fork_from_a_copied_key(tmp_path: Path) -> None:
    a, a2 = _copied_key_sites(tmp_path)
    feed = a.site.feed
    batches = _batches(a2)
    with pytest.raises(ForkDetected) as caught:
        for first, frames, note in batches:
            a.accept(feed, first, frames, note)
    assert caught.value.seq == 4
    forks = a.forks()
    assert [f.feed for f in forks] == [feed]
    assert forks[0].sizes == (6, 7)  # their head at 6 (batch 4..5) against ours at 7
    _check_proof_independently(forks[0].path, feed)
    assert "fork" in a.stopped()[feed]
    with pytest.raises(FeedStopped):
        a.accept(feed, *batches[0])
    with pytest.raises(FeedStopped):
        a.writer().append_bodies([body(100)])
    with pytest.raises(FeedStopped):
        LogStore(tmp_path / "a", FAST).writer()


@pytest.mark.parametrize(("a_batches", "sizes", "held"), [
    ((3,), (7, 9), "larger"),  # we hold a2 (9); a's batch 4..6 lies within it
    ((1,), (5, 7), "smaller"),  # we hold a (5); a2's batch 4..6 overlaps our end
])
def test_foreign_fork_is_detected_either_way(tmp_path: Path, a_batches: tuple[int, ...],
                                            sizes: tuple[int, int], held: str) -> None:
    a, a2 = _copied_key_sites(tmp_path, a_batches, (3,) if held == "smaller" else (2, 3))
    feed = a.site.feed
    holder = make_site(tmp_path / "holder", "holder")
    first_source, second_source = (a2, a) if held == "larger" else (a, a2)
    for batch in _batches(first_source):
        holder.accept(feed, *batch)
    with pytest.raises(ForkDetected) as caught:
        for batch in _batches(second_source):
            holder.accept(feed, *batch)
    assert caught.value.seq == 4
    (report,) = holder.forks()
    assert report.sizes == sizes
    _check_proof_independently(report.path, feed)
    assert json.loads(report.path.read_text())["held_by_this_site"] == held
    with pytest.raises(FeedStopped):
        holder.accept(feed, *_batches(first_source)[0])
    assert holder.writer(feed, allow_behind=True).state.size == sum(
        len(frames) for _, frames, _ in _batches(first_source))


def test_accept_head_detects_a_fork_without_frames(tmp_path: Path) -> None:
    a, a2 = _copied_key_sites(tmp_path)
    feed = a.site.feed
    holder = make_site(tmp_path / "holder", "holder")
    for batch in _batches(a2):
        holder.accept(feed, *batch)
    holder.accept_head(feed, _batches(a2)[1][2])  # consistent: nothing happens
    assert not holder.forks()
    with pytest.raises(ForkDetected):
        holder.accept_head(feed, _batches(a)[-1][2])  # size 7, another root
    _check_proof_independently(holder.forks()[0].path, feed)


def test_frame_of_another_feed_with_a_valid_signature_is_rejected(origin: LogStore,
                                                                   holder: LogStore) -> None:
    """A batch of feed A presented as feed B: signatures are valid, but for A."""
    other = make_site(origin.data_dir.parent / "other", "other")
    append_batches(other.writer(), [3])
    first, frames, note = _batches(origin)[0]
    with pytest.raises(IntegrityError, match="belongs to feed") as caught:
        holder.accept(other.site.feed, first, frames, note)
    assert caught.value.seq == 0
    rewritten = [encode_header(other.site.feed, i, decode_header(f).hlc) + f[HEADER_BYTES:]
                 for i, f in enumerate(frames)]
    with pytest.raises(IntegrityError, match="checkpoint rejected"):
        holder.accept(other.site.feed, first, rewritten, note)
    assert holder.writer(other.site.feed).state.size == 0
