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

import base64
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from heimdall_core.clock import ZERO, Clock, Hlc
from heimdall_core.errors import (
    FeedStopped,
    ForkDetected,
    HeimdallError,
    IntegrityError,
    KeyMaterialError,
)
from heimdall_core.events import decode_header
from heimdall_core.keys import (
    SigningKey,
    ensure_private_dir,
    load_signing_key,
    save_signing_key,
)
from heimdall_core.log.feed import FeedLog, LogOptions
from heimdall_core.log.merkle import Frontier, consistency_proof, root_from_leaf_hashes
from heimdall_core.log.verify import FeedState, verify_batch, verify_note

log = logging.getLogger("heimdall.log")

SITE_FILE = "site.json"


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
    sizes: tuple[int, int]


def init_site(data_dir: Path, name: str) -> SiteInfo:
    """Create a site: its key (0600) and its main feed. Refuses to overwrite an existing site."""
    data_dir.mkdir(parents=True, exist_ok=True)
    site_path = data_dir / SITE_FILE
    if site_path.exists():
        raise HeimdallError(f"{data_dir} already holds a site ({site_path}); refusing to re-initialise")
    ensure_private_dir(data_dir / "keys")
    key = SigningKey.generate()
    save_signing_key(data_dir / "keys" / "site.key", key)
    info = SiteInfo(name, key.public, time.time_ns() // 1_000_000)
    record = {"name": name, "feed": key.public.hex(), "created_ms": info.created_ms}
    tmp = site_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, site_path)
    return info


def read_site(data_dir: Path) -> SiteInfo:
    path = data_dir / SITE_FILE
    try:
        record = json.loads(path.read_text())
        return SiteInfo(str(record["name"]), bytes.fromhex(record["feed"]), int(record["created_ms"]))
    except FileNotFoundError:
        raise HeimdallError(f"no site in {data_dir}; run 'heimdall init' first") from None
    except (ValueError, KeyError, TypeError):
        raise HeimdallError(f"{path} is damaged; it must hold name, feed and created_ms") from None


class LogStore:
    """All feeds of a site. One instance per process; writers are opened lazily and cached."""

    def __init__(self, data_dir: Path, options: LogOptions | None = None,
                 clock: Clock | None = None) -> None:
        self.data_dir = data_dir
        self.options = options or LogOptions()
        self.clock = clock
        self.site = read_site(data_dir)
        self.feeds_dir = data_dir / "log" / "feeds"
        self.forks_dir = data_dir / "log" / "forks"
        self._writers: dict[bytes, FeedLog] = {}

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

    def writer(self, feed: bytes | None = None) -> FeedLog:
        """The open, locked, recovered log of a feed (own: signs; foreign: verified appends)."""
        feed = self.site.feed if feed is None else feed
        existing = self._writers.get(feed)
        if existing is not None:
            return existing
        paths = self._own_key_paths(feed)
        key: SigningKey | None = None
        head_path: Path | None = None
        if paths is not None:
            key_path, head_path = paths
            key = load_signing_key(key_path)
            if key.public != feed:
                raise KeyMaterialError(f"key file {key_path} does not hold the key of feed {feed.hex()}")
        opened = FeedLog.open_for_writing(self.feed_dir(feed), feed, head_path=head_path,
                                          options=self.options, key=key, clock=self.clock)
        self._writers[feed] = opened
        return opened

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
                    found.add(bytes.fromhex(path.name))
                except ValueError:
                    continue
        return sorted(found)

    def close(self) -> None:
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
        that covers exactly up to the last of them. Overlap with what we hold is allowed;
        a batch that disagrees with our history is a fork: the proof is kept, the feed
        stopped, and ``ForkDetected`` raised.
        """
        self._refuse_stopped(feed)
        writer = self.writer(feed)
        held = writer.state.size
        if first_seq > held:
            raise IntegrityError(
                f"batch starts at sequence {first_seq} but this site holds only {held} events of "
                "the feed; the frames in between are missing", feed=feed.hex(), seq=held)
        if first_seq == held:
            base = writer.state
        else:
            base = FeedState(feed, first_seq, Frontier.from_leaf_hashes(
                writer.leaf_hashes(0, first_seq)), self._hlc_before(writer, first_seq))
        batch = verify_batch(base, frames, note, frame_bytes_max=self.options.frame_bytes_max)
        new_size = batch.state.size
        if new_size <= held:
            if writer.root_at(new_size) != batch.checkpoint.root:
                self._fork(writer, note, new_size, batch.leaf_hashes, first_seq)
            return AcceptResult(feed, 0, held)
        if first_seq < held:
            theirs = Frontier.from_leaf_hashes(writer.leaf_hashes(0, first_seq))
            theirs.extend(batch.leaf_hashes[:held - first_seq])
            if theirs.root() != writer.state.frontier.root():
                self._fork(writer, note, new_size, batch.leaf_hashes, first_seq)
            skip = held - first_seq
            base = writer.state
            batch = verify_batch(base, frames[skip:], note, frame_bytes_max=self.options.frame_bytes_max,
                                 deep=False)
        if self.is_own(feed) and writer.state.size:
            log.warning("feed %s: accepting %d events of this site's own feed from elsewhere "
                        "(restoring from a bundle or peer)", feed.hex(), len(batch.frames))
        writer.append_verified(batch)
        return AcceptResult(feed, len(batch.frames), writer.state.size)

    def accept_head(self, feed: bytes, note: bytes) -> None:
        """Compare a signed head of a feed (no frames) with ours; a disagreement is a fork."""
        self._refuse_stopped(feed)
        writer = self.writer(feed)
        checkpoint = verify_note(FeedState(feed), note)
        if checkpoint.size <= writer.state.size and writer.root_at(checkpoint.size) != checkpoint.root:
            self._fork(writer, note, checkpoint.size, (), checkpoint.size)

    @staticmethod
    def _hlc_before(writer: FeedLog, seq: int) -> Hlc:
        if seq == 0:
            return ZERO
        for _, frame in writer.read_frames(seq - 1, seq):
            return decode_header(frame).hlc
        raise IntegrityError("frame missing", feed=writer.feed_hex, seq=seq - 1)

    def _refuse_stopped(self, feed: bytes) -> None:
        reason = FeedLog(self.feed_dir(feed), feed).stopped_reason()
        if reason is not None:
            raise FeedStopped(f"feed {feed.hex()} is stopped and accepts nothing: {reason}")

    # ------------------------------------------------------------ forks
    def _fork(self, writer: FeedLog, their_note: bytes, their_size: int,
              their_leaves: Sequence[bytes], their_first: int) -> None:
        """Keep both signed statements and a consistency proof, stop the feed, raise."""
        ours_note = writer.state.head_note or b""
        ours_size = writer.state.size
        leaves = writer.leaf_hashes(0, ours_size)
        proof: list[bytes] = []
        if their_size <= ours_size:
            # Our head commits to a different root at their size: prove it.
            proof = consistency_proof(leaves, their_size, ours_size) if their_size else []
            our_root_at_theirs = root_from_leaf_hashes(leaves[:their_size])
        else:
            their_full = list(leaves[:their_first]) + list(their_leaves)
            proof = consistency_proof(their_full, ours_size, their_size) if ours_size else []
            our_root_at_theirs = root_from_leaf_hashes(their_full[:ours_size])
        self.forks_dir.mkdir(parents=True, exist_ok=True)
        detected = time.time_ns() // 1_000_000
        path = self.forks_dir / f"{writer.feed_hex}-{detected}.json"
        b64 = base64.b64encode
        record = {
            "feed": writer.feed_hex,
            "detected_ms": detected,
            "explanation": (
                "Two signed heads of one feed that are not consistent. 'consistency_proof' proves "
                "that the larger head commits to 'root_at_smaller_size' at the smaller size, which "
                "differs from the root the smaller head signs."),
            "ours": {"size": ours_size, "note": b64(ours_note).decode()},
            "theirs": {"size": their_size, "note": b64(their_note).decode()},
            "smaller_size": min(ours_size, their_size),
            "larger_size": max(ours_size, their_size),
            "root_at_smaller_size": b64(our_root_at_theirs).decode(),
            "consistency_proof": [b64(h).decode() for h in proof],
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, path)
        reason = f"fork detected at size {min(ours_size, their_size)}; proof in {path}"
        writer.stop(reason)
        log.error("FORK: feed %s presented two histories; feed stopped; proof in %s",
                  writer.feed_hex, path)
        raise ForkDetected(f"feed {writer.feed_hex}: {reason}", feed=writer.feed_hex,
                           seq=min(ours_size, their_size))

    def forks(self) -> list[ForkReport]:
        """Every fork proof on disk (the sync agent and metrics read this)."""
        reports = []
        if self.forks_dir.is_dir():
            for path in sorted(self.forks_dir.glob("*.json")):
                try:
                    record = json.loads(path.read_text())
                    reports.append(ForkReport(bytes.fromhex(record["feed"]), path,
                                              int(record["detected_ms"]),
                                              (int(record["ours"]["size"]), int(record["theirs"]["size"]))))
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
