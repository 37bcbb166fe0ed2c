"""Deliberate tampering with a stored segment (CRCs recomputed, so only the verifier can tell)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from logutil import append_batches, make_site, parse_records, segment_path

from heimdall_core.errors import IntegrityError
from heimdall_core.keys import SigningKey
from heimdall_core.log.checkpoint import NoteSigner
from heimdall_core.log.records import T_CHECKPOINT, T_FRAME, encode_record
from heimdall_core.log.store import LogStore
from heimdall_core.log.verify import FeedState, origin_for, verify_note

Records = list[tuple[int, bytes]]


@pytest.fixture
def site(tmp_path: Path) -> LogStore:
    store = make_site(tmp_path / "a", "a")
    append_batches(store.writer(), [3, 2, 4])  # batches 0..2, 3..4, 5..8
    store.close()
    return store


def _tamper(store: LogStore, change: Callable[[Records, list[int]], Records]) -> None:
    path = segment_path(store)
    parsed = parse_records(path.read_bytes(), 0)
    records = [(kind, payload) for kind, _, payload in parsed]
    frames = [i for i, (kind, _) in enumerate(records) if kind == T_FRAME]
    path.write_bytes(b"".join(encode_record(kind, payload) for kind, payload in change(records, frames)))


def _verify_error(store: LogStore) -> IntegrityError:
    with pytest.raises(IntegrityError) as caught:
        LogStore(store.data_dir, store.options).reader(store.site.feed).verify()
    assert caught.value.feed == store.site.feed.hex()
    return caught.value


def test_modified_frame(site: LogStore) -> None:
    def change(records: Records, frames: list[int]) -> Records:
        kind, payload = records[frames[4]]
        records[frames[4]] = (kind, payload[:-1] + bytes([payload[-1] ^ 1]))
        return records

    _tamper(site, change)
    error = _verify_error(site)
    assert error.seq == 4 and "do not match the signed checkpoint" in str(error)


def test_removed_frame(site: LogStore) -> None:
    _tamper(site, lambda records, frames: [r for i, r in enumerate(records) if i != frames[6]])
    error = _verify_error(site)
    assert error.seq == 6 and "out of place" in str(error)
    with pytest.raises(IntegrityError) as caught:
        LogStore(site.data_dir, site.options).writer()
    assert caught.value.seq == 6


def test_reordered_frames(site: LogStore) -> None:
    def change(records: Records, frames: list[int]) -> Records:
        records[frames[1]], records[frames[2]] = records[frames[2]], records[frames[1]]
        return records

    _tamper(site, change)
    assert _verify_error(site).seq == 1


def test_duplicated_frame(site: LogStore) -> None:
    def change(records: Records, frames: list[int]) -> Records:
        return [*records[:frames[4] + 1], records[frames[4]], *records[frames[4] + 1:]]

    _tamper(site, change)
    assert _verify_error(site).seq == 5


def test_checkpoint_signed_by_the_wrong_key(site: LogStore) -> None:
    feed = site.site.feed
    impostor = NoteSigner(origin_for(feed), SigningKey.generate().private)

    def change(records: Records, frames: list[int]) -> Records:
        index = frames[4] + 1
        assert records[index][0] == T_CHECKPOINT
        genuine = verify_note(FeedState(feed), records[index][1])
        records[index] = (T_CHECKPOINT, impostor.sign(genuine))
        return records

    _tamper(site, change)
    error = _verify_error(site)
    assert error.seq == 3 and "no signature from key" in str(error)


def test_frame_of_another_feed(site: LogStore, tmp_path: Path) -> None:
    other = make_site(tmp_path / "other", "other")
    append_batches(other.writer(), [5])
    foreign = next(f for _, f in other.writer().read_frames(4, 5))

    def change(records: Records, frames: list[int]) -> Records:
        records[frames[4]] = (T_FRAME, foreign)  # a genuine frame, signed for its own feed
        return records

    _tamper(site, change)
    error = _verify_error(site)
    assert error.seq == 4 and "out of place" in str(error)
