"""THE verifier: bytes and keys in, a verdict out (pure, no I/O).

Every path that accepts frames of a feed goes through :func:`verify_batch`: a site's own
log at open and in ``heimdall log verify``, frames from a peer over the network, and
frames from an export bundle. A batch is a run of consecutive frames that ends with the
feed's signed checkpoint. It is accepted only if

* every frame is well formed, of the right feed, at the next sequence number, with a
  strictly increasing HLC, and (``deep``) its body is canonical;
* the checkpoint is signed by the feed's own key, names the feed as its origin, has the
  size the frames reach, and its root equals the Merkle root over all the feed's frames.

Errors name the sequence number of the first bad frame; nothing after it is accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from heimdall_core.clock import ZERO, Hlc
from heimdall_core.errors import EncodingError, IntegrityError
from heimdall_core.events import (
    FEED_ID_BYTES,
    FRAME_BYTES_MAX_DEFAULT,
    HEADER_BYTES,
    decode_body,
    decode_header,
)
from heimdall_core.log.checkpoint import Checkpoint, NoteVerifier
from heimdall_core.log.merkle import Frontier, leaf_hash

ORIGIN_PREFIX = "heimdall.feed/"


def origin_for(feed: bytes) -> str:
    """The checkpoint origin (and signing key name) of a feed: its id, in hex."""
    return ORIGIN_PREFIX + feed.hex()


def note_verifier(feed: bytes) -> NoteVerifier:
    """The feed id is the feed's Ed25519 public key, so a feed verifies itself."""
    if len(feed) != FEED_ID_BYTES:
        raise IntegrityError(f"feed id must be {FEED_ID_BYTES} bytes, got {len(feed)}")
    return NoteVerifier(origin_for(feed), feed)


@dataclass(slots=True)
class FeedState:
    """What a verifier knows of a feed: how far it is verified, and its tree frontier."""

    feed: bytes
    size: int = 0
    frontier: Frontier = field(default_factory=Frontier)
    last_hlc: Hlc = ZERO
    head_note: bytes | None = None

    def copy(self) -> FeedState:
        return FeedState(self.feed, self.size, self.frontier.copy(), self.last_hlc, self.head_note)


@dataclass(frozen=True, slots=True)
class VerifiedBatch:
    feed: bytes
    first_seq: int
    frames: tuple[bytes, ...]
    leaf_hashes: tuple[bytes, ...]
    checkpoint: Checkpoint
    note: bytes
    state: FeedState  # the feed state after this batch

    def __repr__(self) -> str:
        return (f"VerifiedBatch(feed={self.feed.hex()[:16]}…, seqs={self.first_seq}.."
                f"{self.first_seq + len(self.frames) - 1}, size={self.checkpoint.size})")


def check_frames(
    state: FeedState,
    frames: Sequence[bytes],
    *,
    frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
    deep: bool = True,
) -> tuple[list[bytes], Hlc]:
    """Check frames as the continuation of ``state``; return their leaf hashes and last HLC."""
    hashes: list[bytes] = []
    last = state.last_hlc
    feed_hex = state.feed.hex()
    for index, frame in enumerate(frames):
        expected = state.size + index
        if len(frame) > frame_bytes_max:
            raise IntegrityError(f"frame of {len(frame)} bytes exceeds the limit {frame_bytes_max}",
                                 feed=feed_hex, seq=expected)
        try:
            header = decode_header(frame)
            if deep:
                decode_body(frame[HEADER_BYTES:], frame_bytes_max)
        except EncodingError as exc:
            raise IntegrityError(f"malformed frame: {exc}", feed=feed_hex, seq=expected) from None
        if header.feed != state.feed:
            raise IntegrityError(f"frame belongs to feed {header.feed.hex()}, not this feed",
                                 feed=feed_hex, seq=expected)
        if header.seq != expected:
            raise IntegrityError(
                f"frame out of order: expected sequence {expected}, found {header.seq} "
                "(a frame is missing, duplicated or reordered)", feed=feed_hex, seq=expected)
        if header.hlc <= last:
            raise IntegrityError(f"HLC {header.hlc} does not increase (previous {last})",
                                 feed=feed_hex, seq=expected)
        last = header.hlc
        hashes.append(leaf_hash(frame))
    return hashes, last


def verify_note(state: FeedState, note: bytes) -> Checkpoint:
    """Check a signed checkpoint of the feed: signature, origin (not yet the size or root)."""
    try:
        checkpoint = note_verifier(state.feed).verify(note)
    except IntegrityError as exc:
        raise IntegrityError(f"checkpoint rejected: {exc}", feed=state.feed.hex(),
                             seq=state.size) from None
    if checkpoint.origin != origin_for(state.feed):
        raise IntegrityError(f"checkpoint origin {checkpoint.origin!r} is not this feed",
                             feed=state.feed.hex(), seq=state.size)
    return checkpoint


def verify_batch(
    state: FeedState,
    frames: Sequence[bytes],
    note: bytes,
    *,
    frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
    deep: bool = True,
) -> VerifiedBatch:
    """Verify ``frames`` (continuing ``state``) against the signed checkpoint ``note``."""
    hashes, last_hlc = check_frames(state, frames, frame_bytes_max=frame_bytes_max, deep=deep)
    checkpoint = verify_note(state, note)
    new_size = state.size + len(frames)
    feed_hex = state.feed.hex()
    if checkpoint.size != new_size:
        raise IntegrityError(
            f"checkpoint covers {checkpoint.size} frames but the frames reach {new_size}",
            feed=feed_hex, seq=state.size)
    frontier = state.frontier.copy()
    frontier.extend(hashes)
    if frontier.root() != checkpoint.root:
        raise IntegrityError(
            f"frames {state.size}..{new_size - 1} do not match the signed checkpoint of size "
            f"{new_size} (tampered, replaced or reordered frames)", feed=feed_hex, seq=state.size)
    after = FeedState(state.feed, new_size, frontier, last_hlc, note)
    return VerifiedBatch(state.feed, state.size, tuple(frames), tuple(hashes), checkpoint, note,
                         after)
