"""`heimdall ingest FILE... --source NAME` and `heimdall dumps`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from heimdall_core.cli.common import EXIT_ERROR, EXIT_OK, EXIT_USAGE, Context, print_json
from heimdall_core.errors import HeimdallError, IngestError
from heimdall_core.ingest.mapping import MappingError, load_mapping_file, parse_map_args
from heimdall_core.ingest.pipeline import Progress
from heimdall_core.ingest.registry import DumpRegistry
from heimdall_core.ingest.run import IngestSite, IngestSummary, ingest_file, record_metrics
from heimdall_core.units import format_size

FORMATS = ("csv", "json", "ndjson", "combo")
PROGRESS_INTERVAL_S = 0.5


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ingest = sub.add_parser("ingest", help="ingest dump files into the signed log")
    ingest.add_argument("files", nargs="+", type=Path, metavar="FILE")
    ingest.add_argument("--source", required=True, help="name of the source (e.g. 'acme-breach-2024')")
    ingest.add_argument("--format", choices=FORMATS, help="force the format (default: detected)")
    ingest.add_argument("--map", action="append", default=[], metavar="COL=KIND",
                        help="map a column to a field kind (repeatable)")
    ingest.add_argument("--mapping-file", type=Path, help="TOML or JSON file of column = kind")
    ingest.add_argument("--delimiter", help="force the delimiter of delimited text")
    header = ingest.add_mutually_exclusive_group()
    header.add_argument("--header", dest="header", action="store_true", default=None,
                        help="the first line is a header")
    header.add_argument("--no-header", dest="header", action="store_false",
                        help="the first line is data")
    ingest.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                        help="declared metadata stored with the dump (repeatable)")
    ingest.add_argument("--workers", type=int, help="worker processes (default: ingest.workers)")
    ingest.add_argument("--force", action="store_true", help="ingest even if already ingested")
    ingest.add_argument("--restart", action="store_true",
                        help="start an interrupted dump over instead of resuming it (the "
                             "interrupted one is closed as superseded)")
    ingest.add_argument("--json", action="store_true", help="print a JSON summary per file")
    ingest.add_argument("--no-progress", action="store_true", help="no progress bar")
    ingest.set_defaults(func=cmd_ingest)

    dumps = sub.add_parser("dumps", help="list ingested dumps (complete and incomplete)")
    dumps.add_argument("--json", action="store_true")
    dumps.set_defaults(func=cmd_dumps)


def _meta(items: list[str]) -> dict[str, str]:
    meta = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HeimdallError(f"--meta {item!r}: use KEY=VALUE")
        meta[key] = value
    return meta


class ProgressBar:
    """One line on stderr, redrawn at most twice a second: bytes, records/s, quarantined, ETA."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.began = time.monotonic()
        self.last = 0.0

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_INTERVAL_S:
            return
        self.last = now
        elapsed = max(now - self.began, 1e-6)
        rate = progress.records / elapsed
        done = progress.bytes_in / self.size if self.size else 0.0
        eta = (elapsed / done - elapsed) if done > 0 else 0.0
        sys.stderr.write(
            f"\r{self.name[:30]:<30} {done * 100:5.1f}% {format_size(progress.bytes_in):>10} "
            f"{progress.records:>10} rec {rate:>9.0f} rec/s {progress.quarantined:>7} quarantined "
            f"ETA {eta:5.0f}s ")
        sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\n")


def _print_summary(summary: IngestSummary) -> None:
    if summary.duplicate and summary.records_per_s == 0.0:
        print(f"{summary.name}: already ingested as dump {summary.dump_id} from source "
              f"{summary.source!r} (same SHA-256); nothing done (use --force to ingest again)")
        return
    what = "resumed and finished" if summary.resumed else "ingested"
    print(f"{summary.name}: {what} dump {summary.dump_id}")
    print(f"  source {summary.source!r}, format {summary.format}, compression {summary.compression}, "
          f"{summary.parts} part(s)")
    print(f"  {summary.records} records, {summary.quarantined} quarantined, "
          f"{summary.rejected_fields} rejected field values, {format_size(summary.bytes)} in "
          f"{summary.elapsed_s:.1f}s ({summary.records_per_s:.0f} records/s)")
    print(f"  sha256 {summary.sha256}")
    if summary.undetected_values:
        print(f"  {summary.undetected_values} values of an auto column of no detectable kind, "
              "kept as kind other (pii.policy.other)")
    if summary.mapping:
        print("  mapping: " + ", ".join(f"{c}={k}" for c, k in summary.mapping.items()))
    if summary.quarantine_file:
        print(f"  quarantine: {summary.quarantine_file}")


def _say_what_is_incomplete(site: IngestSite, source: str, path: Path) -> None:
    """On Ctrl-C or a failure (a full disk, the key store away): the dump this file's
    ingest started or resumed, so the operator knows that running again resumes it. Best
    effort: the failure itself is what gets reported if even the log cannot be read now."""
    sha256, site.input_sha256 = site.input_sha256, None
    if sha256 is None:  # failed before the input was hashed: no dump was started
        return
    try:
        registry = DumpRegistry(site.store)
        registry.refresh()
        unfinished = [d for d in registry.dumps()
                      if not d.finished and d.source == source and d.sha256 == sha256]
    except (OSError, HeimdallError):
        return
    for state in unfinished:
        print(f"heimdall: {path}: dump {state.dump} is incomplete ({state.records} records logged); "
              "run the same command again to resume it (or add --restart to start over)",
              file=sys.stderr)


def cmd_ingest(ctx: Context) -> int:
    args = ctx.args
    overrides: dict[str, str] = {}
    if args.mapping_file:
        overrides.update(load_mapping_file(args.mapping_file))
    overrides.update(parse_map_args(args.map))
    workers = ctx.settings.ingest.workers if args.workers is None else args.workers
    if workers < 1:
        raise HeimdallError("--workers must be at least 1")
    site = IngestSite(ctx.settings)
    status = EXIT_OK
    try:
        options = site.options(args.source, fmt=args.format, mapping=overrides,
                               delimiter=args.delimiter, header=args.header, meta=_meta(args.meta))
        for path in args.files:
            show = sys.stderr.isatty() and not args.no_progress and not args.json
            bar = ProgressBar(path.name, path.stat().st_size if path.exists() else 0) if show else None
            try:
                summary = ingest_file(site, path, options, force=args.force, workers=workers,
                                      restart=args.restart, on_progress=bar)
            except (IngestError, MappingError) as exc:
                if bar:
                    bar.done()
                print(f"heimdall: {path}: {exc}", file=sys.stderr)
                _say_what_is_incomplete(site, args.source, path)
                status = max(status, EXIT_USAGE if isinstance(exc, MappingError) else EXIT_ERROR)
                continue
            except (KeyboardInterrupt, OSError, HeimdallError):
                if bar:
                    bar.done()
                _say_what_is_incomplete(site, args.source, path)
                raise
            if bar:
                bar.done()
            record_metrics(summary)
            if args.json:
                print_json(summary.as_json())
            else:
                _print_summary(summary)
    finally:
        site.close()
    return status


def _state(row: dict[str, Any]) -> str:
    if not row["finished"]:
        return "INCOMPLETE"
    if row["superseded"]:
        return "superseded"
    return "duplicate" if row["duplicate_of"] else "complete"


def _replaced_by(row: dict[str, Any]) -> str:
    """For a dump abandoned by --restart: the dump that read its input again."""
    return f"  (replaced by {row['duplicate_of']})" if row["superseded"] else ""


def cmd_dumps(ctx: Context) -> int:
    registry = DumpRegistry(ctx.store())
    registry.refresh()
    rows: list[dict[str, Any]] = registry.as_json()
    if ctx.args.json:
        print_json(rows)
        return EXIT_OK
    print(f"{'dump':<32} {'state':<10} {'records':>10} {'quar.':>6}  source / name")
    for row in rows:
        print(f"{row['dump']:<32} {_state(row):<10} {row['records']:>10} {row['quarantined']:>6}  "
              f"{row['source']} / {row['name']}" + _replaced_by(row))
    incomplete = [r for r in rows if not r["finished"]]
    streamed = [r for r in incomplete if not r["sha256"]]
    if len(incomplete) > len(streamed):
        print(f"\n{len(incomplete) - len(streamed)} incomplete dump(s) from files: run the same "
              "'heimdall ingest' again to resume (or add --restart to start over)")
    if streamed:
        print(f"{len(streamed)} incomplete HTTP upload(s): a stream cannot be resumed; upload it again")
    return EXIT_OK
