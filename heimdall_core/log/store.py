"""The set of feeds of one site: its own (signed here) and foreign ones (verified here).

Layout under the data directory:

    site.json                    site name and main feed id
    keys/site.key, site.head     the site's main feed key (0600) and its durable signed head
    keys/feeds/<feed>.key|.head  further own feeds (ingest workers), same rules
    log/feeds/<feed>/            the feed's segment files and indexes (see feed.py)
    log/forks/<feed>.json        fork proofs: two signed, inconsistent heads of one feed

Foreign frames enter through :meth:`LogStore.accept` only: the peer sync and bundle
import both call it, and it calls the one verifier.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from heimdall_core.clock import Clock, HybridClock
from heimdall_core.errors import (
    FeedBusy,
    FeedStopped,
    ForkDetected,
    HeimdallError,
    IntegrityError,
    KeyMaterialError,
    StaleLogError,
)
from heimdall_core.keys import (
    KEY_DIR_MODE,
    SigningKey,
    ensure_private_dir,
    load_signing_key,
    save_signing_key,
)
from heimdall_core.log.feed import FeedLog, LogOptions
from heimdall_core.log.merkle import Frontier, leaf_hash, root_from_leaf_hashes
from heimdall_core.log.segments import fsync_dir
from heimdall_core.log.verify import (
    FeedState,
    ForkProof,
    VerifiedBatch,
    make_fork_proof,
    verify_batch,
    verify_note,
)

log = logging.getLogger("heimdall.log")

SITE_FILE = "site.json"
FORK_EXPLANATION = (
    "Two signed checkpoints of one feed that no single history explains. 'larger' commits, "
    "through 'consistency_proof' (RFC 9162), to 'root_at_smaller_size' at the size of "
    "'smaller', but 'smaller' signs a different root at that size. Check with "
    "heimdall_core.log.verify.check_fork_proof or any RFC 9162 verifier and the feed's "
    "Ed25519 key (the feed id).")


@dataclass(frozen=True, slots=True)
class SiteInfo:
    name: str
    feed: bytes
    created_ms: int


@dataclass(frozen=True, slots=True)
class AcceptResult:
    feed: bytes
    appended: int  # frames newly appended
    size: int  # the feed's size afterwards


@dataclass(frozen=True, slots=True)
class ForkReport:
    feed: bytes
    path: Path
    detected_ms: int
    sizes: tuple[int, int]  # (smaller, larger) tree sizes of the two signed heads


def init_site(data_dir: Path, name: str) -> SiteInfo:
    """Create a site: its key (0600) and its main feed. Refuses to overwrite an existing site."""
    if not data_dir.exists():
        data_dir.mkdir(parents=True, mode=KEY_DIR_MODE)
    site_path = data_dir / SITE_FILE
    if site_path.exists():
        raise HeimdallError(f"{data_dir} already holds a site ({site_path}); refusing to re-initialise")
    ensure_private_dir(data_dir / "keys")
    key = SigningKey.generate()
    save_signing_key(data_dir / "keys" / "site.key", key)
    info = SiteInfo(name, key.public, time.time_ns() // 1_000_000)
    record = {"name": name, "feed": key.public.hex(), "created_ms": info.created_ms}
    _write_json_atomically(site_path, record)
    return info


def _write_json_atomically(path: Path, record: object) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as handle:
        handle.write(json.dumps(record, indent=2) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_site(data_dir: Path) -> SiteInfo:
    path = data_dir / SITE_FILE
    try:
        record = json.loads(path.read_text())
        return SiteInfo(str(record["name"]), bytes.fromhex(record["feed"]), int(record["created_ms"]))
    except FileNotFoundError:
        raise HeimdallError(f"no Heimdall site in {data_dir}; run 'heimdall init' first") from None
    except (ValueError, KeyError, TypeError):
        raise HeimdallError(f"{path} is damaged; it must hold name, feed and created_ms") from None


class LogStore:
    """All feeds of a site. One instance per process; writers are opened lazily and cached.

    Own feeds share one hybrid logical clock, which also merges the timestamps of every
    foreign batch accepted, so this site's events order after what it has seen.
    """

    def __init__(self, data_dir: Path, options: LogOptions | None = None,
                 clock: Clock | None = None) -> None:
        self.data_dir = data_dir
        self.options = options or LogOptions()
        self.clock = clock
        self.hlc = HybridClock(clock)
        self.site = read_site(data_dir)
        self.feeds_dir = data_dir / "log" / "feeds"
        self.forks_dir = data_dir / "log" / "forks"
        self._writers: dict[bytes, FeedLog] = {}
        self._lock = threading.RLock()
        self._feed_locks: dict[bytes, threading.Lock] = {}

    # ------------------------------------------------------------ own feeds
    def _own_key_paths(self, feed: bytes) -> tuple[Path, Path] | None:
        keys = self.data_dir / "keys"
        if feed == self.site.feed:
            return keys / "site.key", keys / "site.head"
        key_path = keys / "feeds" / f"{feed.hex()}.key"
        if key_path.exists():
            return key_path, keys / "feeds" / f"{feed.hex()}.head"
        return None

    def is_own(self, feed: bytes) -> bool:
        return self._own_key_paths(feed) is not None

    def own_feeds(self) -> list[bytes]:
        feeds = [self.site.feed]
        feeds_dir = self.data_dir / "keys" / "feeds"
        if feeds_dir.is_dir():
            feeds += sorted(bytes.fromhex(p.stem) for p in feeds_dir.glob("*.key"))
        return feeds

    def create_own_feed(self) -> bytes:
        """A new feed of this site with its own key (one per ingest worker process)."""
        key = SigningKey.generate()
        save_signing_key(self.data_dir / "keys" / "feeds" / f"{key.public.hex()}.key", key)
        return key.public

    def writer(self, feed: bytes | None = None, *, allow_behind: bool = False) -> FeedLog:
        """The open, locked, recovered log of a feed (own: signs; foreign: verified appends).

        A log behind its durable head raises ``StaleLogError`` unless ``allow_behind``
        (what :meth:`accept` uses, so the missing batches can come back).
        """
        feed = self.site.feed if feed is None else feed
        with self._lock:
            existing = self._writers.get(feed)
            if existing is None:
                existing = self._open_writer(feed, allow_behind)
                self._writers[feed] = existing
            if existing.behind is not None and not allow_behind:
                raise StaleLogError(
                    f"feed {feed.hex()} is behind its durable head ({existing.state.size} of "
                    f"{existing.behind.size} events); import the missing events first")
            return existing

    def settle(self, feed: bytes) -> bool:
        """Run recovery on a feed nobody writes right now, then release it.

        Recovery may keep a complete signed batch written after the durable head (durable,
        but never acknowledged); readers see it only once the head says so. Whoever needs
        the feed's final state before choosing what to write (a resumed ingest) settles
        it first. False if another process holds the feed (its tail is its own business).
        """
        with self._lock:
            if feed in self._writers:
                return True
            try:
                opened = self._open_writer(feed, allow_behind=True)
            except FeedBusy:
                return False
            opened.close()
            return True

    def _open_writer(self, feed: bytes, allow_behind: bool) -> FeedLog:
        paths = self._own_key_paths(feed)
        key: SigningKey | None = None
        head_path: Path | None = None
        if paths is not None:
            key_path, head_path = paths
            key = load_signing_key(key_path)
            if key.public != feed:
                raise KeyMaterialError(f"key file {key_path} does not hold the key of feed {feed.hex()}")
        return FeedLog.open_for_writing(self.feed_dir(feed), feed, head_path=head_path,
                                        options=self.options, key=key, clock=self.clock,
                                        hlc=self.hlc if key is not None else None,
                                        allow_behind=allow_behind)

    def reader(self, feed: bytes) -> FeedLog:
        paths = self._own_key_paths(feed)
        return FeedLog.open_for_reading(self.feed_dir(feed), feed,
                                        head_path=paths[1] if paths else None, options=self.options)

    def feed_dir(self, feed: bytes) -> Path:
        return self.feeds_dir / feed.hex()

    def feeds(self) -> list[bytes]:
        """Every feed this site holds (own and foreign)."""
        found = set(self.own_feeds())
        if self.feeds_dir.is_dir():
            for path in self.feeds_dir.iterdir():
                try:
                    feed = bytes.fromhex(path.name)
                except ValueError:
                    continue
                if len(feed) == 32:
                    found.add(feed)
        return sorted(found)

    def close(self) -> None:
        with self._lock:
            for writer in self._writers.values():
                writer.close()
            self._writers.clear()

    def __enter__(self) -> LogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ foreign frames
    def accept(self, feed: bytes, first_seq: int, frames: Sequence[bytes], note: bytes) -> AcceptResult:
        """Verify a batch of a feed (from a peer or a bundle) and append what is new.

        ``frames`` are the frames ``first_seq..`` and ``note`` the feed's signed checkpoint
        that covers exactly up to the last of them. Three cases:

        * it lies within what we hold: the note must sign our root at its size (else a
          fork) and the frames must be ours (else they were tampered with); nothing is
          appended;
        * it overlaps our end: the overlapping frames must be ours; the rest is verified
          and appended. Different frames whose note verifies are a fork;
        * it starts at our end: verified and appended.

        A fork keeps a proof on disk, stops the feed and raises ``ForkDetected``.
        """
        if not frames:
            raise IntegrityError("a batch must hold at least one frame", feed=feed.hex(),
                                 seq=first_seq)
        self._refuse_stopped(feed)
        with self._feed_lock(feed):
            writer = self.writer(feed, allow_behind=True)
            held = writer.state.size
            if first_seq > held:
                raise IntegrityError(
                    f"batch starts at sequence {first_seq} but this site holds only {held} events "
                    "of the feed; the frames in between are missing", feed=feed.hex(), seq=held)
            end = first_seq + len(frames)
            if end <= held:
                self._check_held(writer, first_seq, frames, note)
                return AcceptResult(feed, 0, held)
            batch = self._verify_extension(writer, first_seq, frames, note)
            self._check_durable_head(writer, batch)
            if self.is_own(feed):
                log.warning("feed %s: accepting %d events of this site's own feed from elsewhere "
                            "(restoring from a bundle or a peer)", feed.hex(), len(batch.frames))
            writer.append_verified(batch)
            if not self.is_own(feed) and not self.hlc.observe(batch.state.last_hlc):
                log.warning("feed %s: HLC %s is more than the allowed drift ahead of our clock; "
                            "not merged", feed.hex(), batch.state.last_hlc)
            return AcceptResult(feed, len(batch.frames), writer.state.size)

    def _check_held(self, writer: FeedLog, first_seq: int, frames: Sequence[bytes],
                    note: bytes) -> None:
        """A batch entirely within what we hold: same root at its size, same frames."""
        feed = writer.feed
        end = first_seq + len(frames)
        checkpoint = verify_note(FeedState(feed, first_seq), note)
        if checkpoint.size != end:
            raise IntegrityError(f"checkpoint covers {checkpoint.size} frames but the frames reach "
                                 f"{end}", feed=feed.hex(), seq=first_seq)
        if checkpoint.root != writer.root_at(end):
            differs = _first_difference(writer.leaf_hashes(first_seq, end), frames)
            self._fork(writer, writer.state.head_note or b"", note,
                       writer.leaf_hashes(0, writer.state.size),
                       seq=first_seq + differs if differs is not None else end)
        differs = _first_difference(writer.leaf_hashes(first_seq, end), frames)
        if differs is not None:
            raise IntegrityError("frame differs from the one held at this position, although the "
                                 "checkpoint matches (tampered frame)", feed=feed.hex(),
                                 seq=first_seq + differs)

    def _verify_extension(self, writer: FeedLog, first_seq: int, frames: Sequence[bytes],
                          note: bytes) -> VerifiedBatch:
        """Verify a batch that reaches past our end; a verified different history is a fork."""
        held = writer.state.size
        overlap = held - first_seq
        differs = _first_difference(writer.leaf_hashes(first_seq, held), frames[:overlap])
        limit = self.options.frame_bytes_max
        if differs is None:
            return verify_batch(writer.state, frames[overlap:], note, frame_bytes_max=limit)
        # Their frames differ from ours inside the overlap: verify the batch on its own terms
        # (on our history before it); if their checkpoint signs it, the feed has forked.
        prefix = writer.leaf_hashes(0, first_seq)
        base = FeedState(writer.feed, first_seq, Frontier.from_leaf_hashes(prefix),
                         writer.hlc_before(first_seq))
        theirs = verify_batch(base, frames, note, frame_bytes_max=limit)
        self._fork(writer, writer.state.head_note or b"", note, prefix + list(theirs.leaf_hashes),
                   seq=first_seq + differs)
        raise AssertionError("unreachable: _fork raises")

    def _check_durable_head(self, writer: FeedLog, batch: VerifiedBatch) -> None:
        """A log catching up with its durable head must arrive at that very head."""
        behind = writer.behind
        if behind is None or batch.state.size < behind.size:
            return
        leaves = writer.leaf_hashes(0, writer.state.size) + list(batch.leaf_hashes)
        if root_from_leaf_hashes(leaves[:behind.size]) != behind.checkpoint.root:
            self._fork(writer, behind.note, batch.note, leaves, seq=writer.state.size)

    def accept_head(self, feed: bytes, note: bytes) -> None:
        """Compare a signed head of a feed (no frames) with ours; a disagreement is a fork."""
        self._refuse_stopped(feed)
        with self._feed_lock(feed):
            writer = self.writer(feed, allow_behind=True)
            checkpoint = verify_note(FeedState(feed), note)
            held = writer.state.size
            if checkpoint.size <= held and writer.root_at(checkpoint.size) != checkpoint.root:
                self._fork(writer, writer.state.head_note or b"", note,
                           writer.leaf_hashes(0, held), seq=checkpoint.size)

    def _feed_lock(self, feed: bytes) -> threading.Lock:
        with self._lock:
            return self._feed_locks.setdefault(feed, threading.Lock())

    def _refuse_stopped(self, feed: bytes) -> None:
        reason = FeedLog(self.feed_dir(feed), feed).stopped_reason()
        if reason is not None:
            raise FeedStopped(f"feed {feed.hex()} is stopped and accepts nothing: {reason}")

    # ------------------------------------------------------------ forks
    def _fork(self, writer: FeedLog, note_a: bytes, note_b: bytes,
              leaves_of_larger: Sequence[bytes], *, seq: int) -> None:
        """Keep both signed statements and a consistency proof, stop the feed, raise."""
        proof = make_fork_proof(writer.feed, note_a, note_b, leaves_of_larger)
        path = self._save_fork_proof(proof, held_note=note_a)
        reason = f"fork detected at sequence {seq}; proof in {path}"
        writer.stop(reason)
        log.error("FORK: feed %s presented two histories; feed stopped; proof in %s",
                  writer.feed_hex, path)
        raise ForkDetected(f"feed {writer.feed_hex}: {reason}", feed=writer.feed_hex, seq=seq)

    def _save_fork_proof(self, proof: ForkProof, *, held_note: bytes) -> Path:
        self.forks_dir.mkdir(parents=True, exist_ok=True)
        detected = time.time_ns() // 1_000_000
        path = self.forks_dir / f"{proof.feed.hex()}-{detected}.json"
        record = proof.to_json()
        record["detected_ms"] = detected
        record["held_by_this_site"] = "smaller" if proof.smaller_note == held_note else "larger"
        record["explanation"] = FORK_EXPLANATION
        _write_json_atomically(path, record)
        return path

    def forks(self) -> list[ForkReport]:
        """Every fork proof on disk (the sync agent and metrics read this)."""
        reports = []
        if self.forks_dir.is_dir():
            for path in sorted(self.forks_dir.glob("*.json")):
                try:
                    record = json.loads(path.read_text())
                    reports.append(ForkReport(bytes.fromhex(record["feed"]), path,
                                              int(record["detected_ms"]),
                                              (int(record["smaller"]["size"]),
                                               int(record["larger"]["size"]))))
                except (ValueError, KeyError, TypeError):
                    log.error("fork proof %s is unreadable", path)
        return reports

    def stopped(self) -> dict[bytes, str]:
        """Feeds stopped by an integrity failure or a fork, with the reason."""
        out = {}
        for feed in self.feeds():
            reason = FeedLog(self.feed_dir(feed), feed).stopped_reason()
            if reason is not None:
                out[feed] = reason
        return out

    def iter_feed_states(self) -> Iterator[tuple[bytes, int]]:
        for feed in self.feeds():
            yield feed, self.reader(feed).state.size


def _first_difference(held: Sequence[bytes], frames: Sequence[bytes]) -> int | None:
    """Index of the first frame whose leaf hash is not the one held (None: all equal)."""
    theirs = list(map(leaf_hash, frames))
    if theirs == list(held):
        return None
    return next(i for i, (a, b) in enumerate(zip(held, theirs, strict=False)) if a != b)
