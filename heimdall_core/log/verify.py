"""THE verifier: bytes and keys in, a verdict out (pure, no I/O).

Every path that accepts frames of a feed goes through :func:`verify_batch`: a site's own
log in ``heimdall log verify``, frames from a peer over the network, and frames from an
export bundle. A batch is a run of consecutive frames that ends with the feed's signed
checkpoint. It is accepted only if

* every frame is well formed, of the right feed, at the next sequence number, with a
  strictly increasing HLC, and (``deep``) its body is canonical;
* the checkpoint is signed by the feed's own key, names the feed as its origin, has the
  size the frames reach, and its root equals the Merkle root over all the feed's frames.

Errors name the sequence number of the first bad frame (for a checkpoint that does not
verify: the first sequence number of its batch); nothing after it is accepted.

A fork is two signed checkpoints of one feed that are not consistent. :class:`ForkProof`
holds both notes and an RFC 9162 consistency proof, and :func:`check_fork_proof` lets
anyone re-check it with nothing but the feed id.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from heimdall_core.clock import ZERO, Hlc
from heimdall_core.errors import EncodingError, IntegrityError
from heimdall_core.events import (
    FEED_ID_BYTES,
    FRAME_BYTES_MAX_DEFAULT,
    FRAME_PREFIX,
    HEADER_BYTES,
    BodyError,
    check_bodies,
    decode_header,
)
from heimdall_core.log.checkpoint import Checkpoint, NoteVerifier
from heimdall_core.log.merkle import (
    Frontier,
    ProofError,
    consistency_proof,
    leaf_hash,
    root_from_leaf_hashes,
    verify_consistency,
)

ORIGIN_PREFIX = "heimdall.feed/"
FORK_PROOF_FORMAT = "heimdall.fork-proof/1"
# seq (u64), HLC physical ms (u64), HLC logical (u32): bytes 36..56 of a frame header.
_POSITION = struct.Struct(">QQI")
_POSITION_OFFSET = 4 + FEED_ID_BYTES
_PHYSICAL_MS_MAX = (1 << 63) - 1


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
    """Check frames as the continuation of ``state``; return their leaf hashes and last HLC.

    The header loop does a prefix compare and one ``struct`` call per frame; bodies are
    checked as one run. The error names the first bad frame, whichever check fails.
    """
    bad_index, last = _check_headers(state, frames, frame_bytes_max)
    checked = frames if bad_index is None else frames[:bad_index]
    if deep:
        try:
            check_bodies(checked)
        except BodyError as exc:
            raise IntegrityError(f"malformed frame: {exc}", feed=state.feed.hex(),
                                 seq=state.size + exc.index) from None
    if bad_index is not None:
        _raise_header_error(state, frames[bad_index], state.size + bad_index, frame_bytes_max,
                            last)
    return list(map(leaf_hash, frames)), Hlc(*last)


def _check_headers(state: FeedState, frames: Sequence[bytes], frame_bytes_max: int,
                   ) -> tuple[int | None, tuple[int, int]]:
    """Index of the first frame with a bad header (None if all are good), and the last HLC."""
    prefix = FRAME_PREFIX + state.feed
    last = (state.last_hlc.physical_ms, state.last_hlc.logical)
    seq = state.size
    unpack = _POSITION.unpack_from
    for index, frame in enumerate(frames):
        if not HEADER_BYTES < len(frame) <= frame_bytes_max or not frame.startswith(prefix):
            return index, last
        frame_seq, physical, logical = unpack(frame, _POSITION_OFFSET)
        hlc = (physical, logical)
        if frame_seq != seq + index or hlc <= last or physical > _PHYSICAL_MS_MAX:
            return index, last
        last = hlc
    return None, last


def _raise_header_error(state: FeedState, frame: bytes, expected: int, frame_bytes_max: int,
                        last: tuple[int, int]) -> None:
    """Say precisely what is wrong with the header of ``frame`` (the slow path)."""
    feed_hex = state.feed.hex()
    if len(frame) > frame_bytes_max:
        raise IntegrityError(f"frame of {len(frame)} bytes exceeds the limit {frame_bytes_max}",
                             feed=feed_hex, seq=expected)
    try:
        header = decode_header(frame)
    except EncodingError as exc:
        raise IntegrityError(f"malformed frame: {exc}", feed=feed_hex, seq=expected) from None
    if header.feed != state.feed:
        raise IntegrityError(f"frame belongs to feed {header.feed.hex()}, not this feed",
                             feed=feed_hex, seq=expected)
    if header.seq != expected:
        raise IntegrityError(
            f"frame out of order: expected sequence {expected}, found {header.seq} "
            "(a frame is missing, duplicated or reordered)", feed=feed_hex, seq=expected)
    raise IntegrityError(f"HLC {header.hlc} does not increase (previous {Hlc(*last)})",
                         feed=feed_hex, seq=expected)


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
    feed_hex = state.feed.hex()
    if not frames:
        raise IntegrityError("a batch must hold at least one frame", feed=feed_hex, seq=state.size)
    hashes, last_hlc = check_frames(state, frames, frame_bytes_max=frame_bytes_max, deep=deep)
    checkpoint = verify_note(state, note)
    new_size = state.size + len(frames)
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


# ------------------------------------------------------------------------- fork proofs
@dataclass(frozen=True, slots=True)
class ForkProof:
    """Two signed checkpoints of one feed that no single history can explain.

    ``larger`` commits (through ``consistency_proof``) to ``root_at_smaller_size`` at the
    size of ``smaller``, and ``smaller`` signs a different root at that size. For equal
    sizes the proof is empty and the two notes simply sign different roots.
    """

    feed: bytes
    smaller_note: bytes
    larger_note: bytes
    root_at_smaller_size: bytes
    consistency_proof: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        b64 = _b64
        smaller = verify_note(FeedState(self.feed), self.smaller_note)
        larger = verify_note(FeedState(self.feed), self.larger_note)
        return {
            "format": FORK_PROOF_FORMAT,
            "feed": self.feed.hex(),
            "smaller": {"size": smaller.size, "note": b64(self.smaller_note)},
            "larger": {"size": larger.size, "note": b64(self.larger_note)},
            "root_at_smaller_size": b64(self.root_at_smaller_size),
            "consistency_proof": [b64(node) for node in self.consistency_proof],
        }

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> ForkProof:
        try:
            if record["format"] != FORK_PROOF_FORMAT:
                raise ValueError(f"format {record['format']!r}")
            return cls(bytes.fromhex(record["feed"]), _unb64(record["smaller"]["note"]),
                       _unb64(record["larger"]["note"]), _unb64(record["root_at_smaller_size"]),
                       tuple(_unb64(node) for node in record["consistency_proof"]))
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise IntegrityError(f"fork proof is malformed: {exc}") from None


def make_fork_proof(feed: bytes, note_a: bytes, note_b: bytes,
                    leaves_of_larger: Sequence[bytes]) -> ForkProof:
    """A fork proof from two signed notes and the leaf hashes of the larger tree."""
    state = FeedState(feed)
    a, b = verify_note(state, note_a), verify_note(state, note_b)
    if a.size > b.size:
        a, b, note_a, note_b = b, a, note_b, note_a
    leaves = leaves_of_larger[:b.size]
    if len(leaves) != b.size or root_from_leaf_hashes(leaves) != b.root:
        raise IntegrityError("the leaves given do not make the larger signed tree",
                             feed=feed.hex(), seq=a.size)
    root_at_a = root_from_leaf_hashes(leaves[:a.size])
    proof = consistency_proof(leaves, a.size, b.size) if a.size < b.size else []
    fork = ForkProof(feed, note_a, note_b, root_at_a, tuple(proof))
    check_fork_proof(fork)
    return fork


def check_fork_proof(fork: ForkProof) -> tuple[Checkpoint, Checkpoint]:
    """Raise IntegrityError unless ``fork`` proves two inconsistent signed heads of its feed."""
    state = FeedState(fork.feed)
    smaller = verify_note(state, fork.smaller_note)
    larger = verify_note(state, fork.larger_note)
    if smaller.size > larger.size:
        raise IntegrityError("fork proof: 'smaller' is larger than 'larger'", feed=fork.feed.hex())
    try:
        verify_consistency(smaller.size, larger.size, fork.root_at_smaller_size, larger.root,
                           fork.consistency_proof)
    except ProofError as exc:
        raise IntegrityError(f"fork proof: {exc}", feed=fork.feed.hex()) from None
    if fork.root_at_smaller_size == smaller.root:
        raise IntegrityError("fork proof: the two heads are consistent, there is no fork",
                             feed=fork.feed.hex())
    return smaller, larger


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise TypeError("expected a base64 string")
    return base64.b64decode(text, validate=True)
