"""`heimdall log ...`, `heimdall export`, `heimdall import`."""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from heimdall_core import kinds
from heimdall_core.cli.common import (
    EXIT_INTEGRITY,
    EXIT_OK,
    EXIT_USAGE,
    Context,
    print_json,
    resolve_feed,
    short,
)
from heimdall_core.clock import Hlc, SystemClock
from heimdall_core.errors import (
    EncodingError,
    FeedBusy,
    FeedStopped,
    ForkDetected,
    HeimdallError,
    IntegrityError,
)
from heimdall_core.events import Event, decode_frame, encode_body
from heimdall_core.log.bundle import export_bundle, import_bundle
from heimdall_core.log.store import LogStore

STDIN_LINE_BYTES_MAX = 1 << 20
# The kinds whose payloads JSON can express. The others need binary fields (dump, subject
# and feed ids) that a JSON line cannot carry; appending one would sign into the log an
# event the projector and the dump registry can never read.
APPENDABLE_KINDS: frozenset[tuple[str, int]] = frozenset({kinds.NOTE, kinds.ENRICHMENT_RECEIVED})
_APPENDABLE_NAMES = ", ".join(sorted(kind for kind, _ in APPENDABLE_KINDS))
APPEND_WHILE_BUSY = ("nothing was appended. To append now: stop the service (systemctl stop "
                     "heimdall) or wait for that process to end, run this append again, then "
                     "start the service again (docs/operations.md)")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 or more")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    log_parser = sub.add_parser("log", help="the signed append-only log")
    log_sub = log_parser.add_subparsers(dest="log_command", required=True)

    append = log_sub.add_parser("append", help="append each JSON line of stdin as one event payload")
    append.add_argument("--kind", default="note",
                        help=f"event kind (default note); one of: {_APPENDABLE_NAMES}")
    append.set_defaults(func=cmd_append)

    verify = log_sub.add_parser("verify", help="verify frames, checkpoints and signatures")
    verify.add_argument("--feed", help="only this feed (hex id or prefix)")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=cmd_verify)

    tail = log_sub.add_parser("tail", help="show the last events of a feed")
    tail.add_argument("-n", type=_count, default=10, help="how many events (default 10)")
    tail.add_argument("--feed", help="feed (hex id or prefix); default: this site's feed")
    tail.add_argument("--json", action="store_true", help="one JSON object per event")
    tail.set_defaults(func=cmd_tail)

    stats = log_sub.add_parser("stats", help="feeds, sizes, segments, forks")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_stats)

    reindex = log_sub.add_parser("reindex", help="rebuild a feed's index from its segment files")
    reindex.add_argument("--feed", help="feed (default: this site's feed)")
    reindex.set_defaults(func=cmd_reindex)

    export = sub.add_parser("export", help="write verified frames to a bundle file")
    export.add_argument("file", type=Path)
    export.add_argument("--feed", action="append", help="feed to export (repeatable; default all)")
    export.add_argument("--since", type=_count, default=0,
                        help="only batches that end after this sequence number (default 0)")
    export.add_argument("--json", action="store_true")
    export.set_defaults(func=cmd_export)

    imp = sub.add_parser("import", help="verify a bundle file and append its frames")
    imp.add_argument("file", type=Path)
    imp.add_argument("--json", action="store_true")
    imp.set_defaults(func=cmd_import)


class _BadLine(HeimdallError):
    """A line of standard input that is not one event payload."""


class _UnusableLine(_BadLine):
    """A well-formed payload that asks for what is not allowed (exit 2, a usage error)."""


# The end of a fold error message, which is about a projection and not about this refusal.
_FOLD_STOPS = "; projection of this feed stops here"


class _PayloadCheck:
    """Checks each payload as the projector will fold it, before it is signed into the log:
    an event the projector refuses stops the projection of the site's own feed for good."""

    def __init__(self, ctx: Context, feed: bytes, next_seq: int) -> None:
        # Imported here: the other log commands need none of the graph code.
        from heimdall_core.graph.backends import rules_from
        from heimdall_core.graph.fold import Folder

        self._folder = Folder(rules_from(ctx.settings))
        self._feed = feed
        self._seq = next_seq

    def __call__(self, kind: str, version: int, payload: dict[str, Any]) -> None:
        from heimdall_core.graph.fold import PayloadError

        event = Event(self._feed, self._seq, Hlc(SystemClock().now_ms(), 0), kind, version, payload)
        try:
            self._folder.add(event)
        except PayloadError as exc:
            raise EncodingError(str(exc).removesuffix(_FOLD_STOPS)) from None
        self._folder.take()  # only the check is wanted, not the effects
        self._seq += 1


def _read_bodies(stream: Any, kind: str, version: int,
                 check: Callable[[str, int, dict[str, Any]], None]) -> Iterator[tuple[int, bytes]]:
    """(line number, canonical body) for each non-blank line; ``_BadLine`` names the line."""
    for number, line in enumerate(stream, start=1):
        if len(line) > STDIN_LINE_BYTES_MAX:
            raise _BadLine(f"stdin line {number}: longer than {STDIN_LINE_BYTES_MAX} bytes")
        if not line.strip():
            continue
        try:
            payload = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise _BadLine(f"stdin line {number}: not valid JSON ({exc.msg} at column "
                           f"{exc.colno})") from None
        if not isinstance(payload, dict):
            raise _BadLine(f"stdin line {number}: must be a JSON object, got "
                           f"{type(payload).__name__}")
        try:
            if (kind, version) == kinds.ENRICHMENT_RECEIVED:
                payload = _canonical_enrichment(payload)
            body = encode_body(kind, version, payload)
            check(kind, version, payload)
        except _Unusable as exc:
            raise _UnusableLine(f"stdin line {number}: {exc}") from None
        except EncodingError as exc:
            raise _BadLine(f"stdin line {number}: {exc}") from None
        yield number, body


class _Unusable(HeimdallError):
    """Why one payload cannot be appended (never quotes a value)."""


def _canonical_enrichment(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with its indicator value in canonical form, as a query would write it
    (the operator may type any form, defanged included); ``_Unusable`` if it is about a
    person or is no valid value of its kind. Another shape error is left to the fold."""
    from heimdall_core.graph.fold import ENRICHABLE_KINDS, enrichment_refusal
    from heimdall_core.normalize import Canonical, canonicalize

    kind, value = payload.get("kind"), payload.get("value")
    if type(kind) is not str or type(value) is not str:
        return payload
    if kind in ENRICHABLE_KINDS:
        result = canonicalize(kind, value)
        if isinstance(result, Canonical) and result.kind == kind:
            return {**payload, "value": result.value}
    refusal = enrichment_refusal(kind, value)
    assert refusal is not None  # only a canonical value of an enrichable kind passes
    raise _Unusable(refusal)


def _appendable(kind: str) -> int | None:
    """The version to write ``kind`` at; None (after saying why) if it cannot be appended."""
    version = kinds.latest_version(kind)
    if version is None:
        print(f"heimdall: --kind {kind!r} is not a known event kind; use one of: "
              f"{_APPENDABLE_NAMES}", file=sys.stderr)
        return None
    if (kind, version) not in APPENDABLE_KINDS:
        print(f"heimdall: --kind {kind!r}: its payload needs binary fields that a JSON line "
              f"cannot carry, so 'log append' does not write it (Heimdall writes it itself); "
              f"use one of: {_APPENDABLE_NAMES}", file=sys.stderr)
        return None
    return version


def cmd_append(ctx: Context) -> int:
    """Append stdin's JSON lines in batches. On a bad line, the lines before it are appended
    (and said so) and nothing from it on."""
    kind = ctx.args.kind
    version = _appendable(kind)
    if version is None:
        return EXIT_USAGE
    batch_max = ctx.settings.log.batch_events_max
    total = 0
    with ctx.store() as store:
        try:
            writer = store.writer()
        except FeedBusy as exc:
            raise exc.advise(APPEND_WHILE_BUSY) from None
        check = _PayloadCheck(ctx, store.site.feed, writer.state.size)
        batch: list[bytes] = []
        try:
            for _, body in _read_bodies(sys.stdin.buffer, kind, version, check):
                batch.append(body)
                if len(batch) >= batch_max:
                    total += writer.append_bodies(batch).count
                    batch = []
        except _BadLine as exc:
            if batch:
                total += writer.append_bodies(batch).count
            message = f"{exc}; the {total} events before it were appended, nothing from this line on"
            if not isinstance(exc, _UnusableLine):
                raise HeimdallError(message) from None
            print(f"heimdall: {message}", file=sys.stderr)
            return EXIT_USAGE
        if batch:
            total += writer.append_bodies(batch).count
        size = writer.state.size
    print(f"appended {total} events to feed {short(store.site.feed)}… (size now {size})")
    return EXIT_OK


def cmd_verify(ctx: Context) -> int:
    store = ctx.store()
    feeds = [resolve_feed(store, ctx.args.feed)] if ctx.args.feed else store.feeds()
    results: list[dict[str, Any]] = []
    failed = False
    stopped = store.stopped()
    for feed in feeds:
        entry: dict[str, Any] = {"feed": feed.hex(), "own": store.is_own(feed)}
        if feed in stopped:
            entry.update(ok=False, error=f"stopped: {stopped[feed]}")
            failed = True
        else:
            try:
                state = store.reader(feed).verify()
                entry.update(ok=True, size=state.size)
            except HeimdallError as exc:
                entry.update(ok=False, error=str(exc))
                failed = True
        results.append(entry)
    forks = [f for f in store.forks() if not ctx.args.feed or f.feed in feeds]
    failed = failed or bool(forks)
    if ctx.args.json:
        print_json({"ok": not failed, "feeds": results,
                    "forks": [{"feed": f.feed.hex(), "proof": str(f.path)} for f in forks]})
    else:
        for entry in results:
            if entry["ok"]:
                print(f"OK    {entry['feed'][:16]}…  {entry['size']} events verified")
            else:
                print(f"FAIL  {entry['feed'][:16]}…  {entry['error']}")
        for fork in forks:
            print(f"FORK  {short(fork.feed)}…  two inconsistent signed heads (sizes "
                  f"{fork.sizes[0]} and {fork.sizes[1]}); proof: {fork.path}")
    return EXIT_INTEGRITY if failed else EXIT_OK


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def event_json(event: Event) -> dict[str, Any]:
    return {"feed": event.feed.hex(), "seq": event.seq,
            "hlc": {"physical_ms": event.hlc.physical_ms, "logical": event.hlc.logical},
            "kind": event.kind, "version": event.version, "payload": _jsonable(event.payload)}


def cmd_tail(ctx: Context) -> int:
    store = ctx.store()
    feed = resolve_feed(store, ctx.args.feed)
    reader = store.reader(feed)
    size = reader.state.size
    start = max(0, size - max(0, ctx.args.n))
    for _, frame in reader.read_frames(start, size):
        event = decode_frame(frame, ctx.settings.log.frame_bytes_max)
        if ctx.args.json:
            print_json(event_json(event))
        else:
            when = dt.datetime.fromtimestamp(event.hlc.physical_ms / 1000, dt.UTC)
            payload = json.dumps(_jsonable(event.payload), sort_keys=True)
            if len(payload) > 120:
                payload = payload[:117] + "..."
            print(f"{event.seq:>8}  {when:%Y-%m-%d %H:%M:%S.%f}"[:-3] +
                  f"Z  {event.kind}/v{event.version}  {payload}")
    return EXIT_OK


def feed_stats(store: LogStore) -> list[dict[str, Any]]:
    stopped = store.stopped()
    out = []
    for feed in store.feeds():
        reader = store.reader(feed)
        segments = reader.segments()
        out.append({
            "feed": feed.hex(), "own": store.is_own(feed), "site": feed == store.site.feed,
            "events": reader.state.size, "segments": len(segments),
            "bytes": sum(path.stat().st_size for _, path in segments),
            "stopped": stopped.get(feed),
        })
    return out


def cmd_stats(ctx: Context) -> int:
    store = ctx.store()
    stats = feed_stats(store)
    forks = store.forks()
    if ctx.args.json:
        print_json({"site": store.site.name, "feeds": stats,
                    "forks": [{"feed": f.feed.hex(), "proof": str(f.path)} for f in forks]})
        return EXIT_OK
    print(f"site {store.site.name}  ({len(stats)} feeds, {len(forks)} forks)")
    print(f"{'feed':<18} {'role':<8} {'events':>10} {'segments':>8} {'bytes':>12}  state")
    for entry in stats:
        role = "site" if entry["site"] else ("own" if entry["own"] else "foreign")
        state = f"STOPPED: {entry['stopped']}" if entry["stopped"] else "ok"
        print(f"{entry['feed'][:16]}… {role:<8} {entry['events']:>10} {entry['segments']:>8} "
              f"{entry['bytes']:>12}  {state}")
    return EXIT_OK


def cmd_reindex(ctx: Context) -> int:
    with ctx.store() as store:
        feed = resolve_feed(store, ctx.args.feed)
        writer = store.writer(feed)
        count = writer.rebuild_indexes()
    print(f"index of feed {short(feed)}… rebuilt from segments: {count} events")
    return EXIT_OK


def cmd_export(ctx: Context) -> int:
    store = ctx.store()
    feeds = [resolve_feed(store, f) for f in ctx.args.feed] if ctx.args.feed else None
    summary = export_bundle(store, ctx.args.file, feeds=feeds, since=ctx.args.since)
    if ctx.args.json:
        print_json({"file": str(summary.path), "feeds": summary.feeds, "frames": summary.frames,
                    "checkpoints": summary.checkpoints, "bytes": summary.bytes})
    else:
        print(f"exported {summary.frames} events of {summary.feeds} feeds "
              f"({summary.checkpoints} signed checkpoints, {summary.bytes} bytes) to {summary.path}")
    return EXIT_OK


def cmd_import(ctx: Context) -> int:
    with ctx.store() as store:
        try:
            summary = import_bundle(store, ctx.args.file, ctx.settings.log.frame_bytes_max)
        except ForkDetected as exc:
            print(f"FORK  import stopped: {exc}; the feed is stopped, nothing after that position "
                  "was applied", file=sys.stderr)
            return EXIT_INTEGRITY
        except (IntegrityError, FeedStopped) as exc:
            print(f"import rejected: {exc}; nothing from that position on was applied",
                  file=sys.stderr)
            return EXIT_INTEGRITY
    if ctx.args.json:
        print_json({"feeds": len(summary.feeds), "frames": summary.frames_seen,
                    "appended": summary.frames_appended, "batches": summary.batches})
    else:
        print(f"verified {summary.frames_seen} events of {len(summary.feeds)} feeds; "
              f"appended {summary.frames_appended} new")
    return EXIT_OK
