"""Benchmark of the signed append-only log; prints ONE JSON object on stdout.

    .venv/bin/python bench/log_append.py [--cpu N] [--dir DIR]

What it measures, with fsync on, pinned to one CPU (``--cpu``, default 0):

* ``append_events_per_s``: events appended *and acknowledged* (framed, hashed, signed
  checkpoint, segment write + fdatasync, head write + fdatasync) with 200-byte payloads,
  at batch sizes 1, 100 and 10,000; bodies are encoded beforehand, and
  ``encode_events_per_s`` is the rate of ``encode_body`` for the same payloads;
* ``floor_events_per_s``: the very bytes those appends wrote (segment records and head
  slot), written and fdatasync'd the same way with no encoding, hashing or signing;
  ``floor_events_per_s_by_batch`` per batch size, and each figure's ratio to its floor;
* ``verify_events_per_s``: ``FeedLog.verify()`` (deep: CRCs, headers, canonical bodies,
  leaf hashes, Merkle roots, signatures) over the 200,000 events of the batch-10,000 run
  (payloads with a nested map and a list); ``verify_events_per_s_flat_payload`` the
  same for 200-byte payloads without nesting (the canonical check is per container);
* ``import_events_per_s``: the same events exported to a bundle and imported into a
  fresh site (the verifier of network sync, plus writing them);
* ``ack_ms_p50`` / ``ack_ms_p99``: latency of single appends from 8 concurrent appenders
  through ``GroupCommitWriter``, and the same percentiles of the floor for one event.

Data goes to a temporary directory on the same file system as ``--dir`` (default: the
system temp dir) and is removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from heimdall_core.events import encode_body
from heimdall_core.log.bundle import export_bundle, import_bundle
from heimdall_core.log.feed import LogOptions
from heimdall_core.log.records import RECORD_HEADER_BYTES, T_CHECKPOINT, decode_record
from heimdall_core.log.segments import HEAD_SLOT_BYTES, SEGMENT_HEADER_RECORD_BYTES
from heimdall_core.log.store import LogStore, init_site
from heimdall_core.log.writer import GroupCommitWriter

PAYLOAD_BYTES = 200
BATCH_SIZES = (1, 100, 10_000)
EVENTS_BY_BATCH = {1: 500, 100: 20_000, 10_000: 200_000}
ROUNDS = 2  # best of, per batch size
APPENDERS = 8
APPENDS_EACH = 250
OPTIONS = LogOptions(fsync=True, batch_events_max=10_000)
TARGETS = {"append_events_per_s@10000": 100_000, "verify_events_per_s": 150_000,
           "ack_ms_p99_max": 10.0}


def _payload(n: int, pad: str) -> dict[str, Any]:
    return {
        "provider": "bench", "kind": "ip", "value": f"203.0.{n % 256}.{n // 256 % 256}",
        "facts": {"asn": "64500", "country": "NL", "resolves_to": ["a.example", "b.example"]},
        "observed_ms": 1_700_000_000_000 + n, "pad": pad,
    }


# Pad so the payload map encodes to PAYLOAD_BYTES (for n where the value has this length).
_PAD = "x" * (PAYLOAD_BYTES - len(encode_body("enrichment.received", 1, _payload(0, "")))
              + len(encode_body("enrichment.received", 1, {})) - 1)


def payload(n: int) -> dict[str, Any]:
    """An enrichment-like payload of about PAYLOAD_BYTES encoded (a nested map and a list)."""
    return _payload(n, _PAD)


def flat_payload(n: int) -> dict[str, Any]:
    """A payload of the same size with no nesting: one map of scalars."""
    return {"n": n, "source": "bench", "value": "v" * (PAYLOAD_BYTES - 26)}


def _site(root: Path, name: str) -> LogStore:
    init_site(root / name, name)
    return LogStore(root / name, OPTIONS)


def _bodies(total: int) -> list[bytes]:
    return [encode_body("enrichment.received", 1, payload(n)) for n in range(total)]


def _append_rate(root: Path, batch: int, round_: int = 0) -> tuple[float, list[bytes]]:
    """Events/s appended and acknowledged; also the bytes written per batch (for the floor).

    Bodies are encoded before the clock starts (``encode_events_per_s`` measures that):
    the append API takes encoded bodies, and the floor does no encoding either.
    """
    store = _site(root, f"append-{batch}" + (f"-{round_}" if round_ else ""))
    writer = store.writer()
    total = EVENTS_BY_BATCH[batch]
    bodies = _bodies(total)
    started = time.perf_counter()
    for first in range(0, total, batch):
        writer.append_bodies(bodies[first:first + batch])
    elapsed = time.perf_counter() - started
    blobs = _batch_blobs(writer.segments())
    store.close()
    return total / elapsed, blobs


def _encode_rate() -> float:
    started = time.perf_counter()
    count = len(_bodies(50_000))
    return count / (time.perf_counter() - started)


def _batch_blobs(segments: list[tuple[int, Path]]) -> list[bytes]:
    """The bytes of each batch (frame records and checkpoint record) as written."""
    blobs = []
    for _, path in segments:
        data = path.read_bytes()
        start = offset = SEGMENT_HEADER_RECORD_BYTES
        while offset < len(data):
            record = decode_record(data, offset, len(data))
            offset = record.end
            if record.type == T_CHECKPOINT:
                blobs.append(data[start:offset])
                start = offset
    return blobs


def _floor_rate(root: Path, blobs: list[bytes], events: int, *, head: bool) -> tuple[float, list[float]]:
    """Write and fdatasync the same bytes with nothing else; events/s and per-batch latency."""
    directory = Path(tempfile.mkdtemp(prefix="floor-", dir=root))
    segment = os.open(directory / "segment", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    head_fd = os.open(directory / "head", os.O_RDWR | os.O_CREAT, 0o600)
    slot = b"h" * HEAD_SLOT_BYTES
    latencies = []
    started = time.perf_counter()
    for index, blob in enumerate(blobs):
        began = time.perf_counter()
        os.write(segment, blob)
        os.fdatasync(segment)
        if head:
            os.pwrite(head_fd, slot, (index % 2) * HEAD_SLOT_BYTES)
            os.fdatasync(head_fd)
        latencies.append(time.perf_counter() - began)
    elapsed = time.perf_counter() - started
    os.close(segment)
    os.close(head_fd)
    return events / elapsed, latencies


def _flat_verify_rate(root: Path) -> float:
    """Verify rate for flat payloads (one container per body instead of three)."""
    store = _site(root, "flat")
    writer = store.writer()
    for first in range(0, EVENTS_BY_BATCH[10_000], 10_000):
        writer.append_bodies([encode_body("note", 1, flat_payload(first + k)) for k in range(10_000)])
    store.close()
    return _verify_rate(root, "flat")[0]


def _verify_rate(root: Path, name: str = "append-10000") -> tuple[float, int]:
    """Best of ROUNDS full verifications (a CPU-bound figure: other processes share the core)."""
    store = LogStore(root / name, OPTIONS)
    reader = store.reader(store.site.feed)
    best, size = 0.0, 0
    for _ in range(ROUNDS):
        started = time.perf_counter()
        size = reader.verify().size
        best = max(best, size / (time.perf_counter() - started))
    return best, size


def _import_rate(root: Path) -> float:
    source = LogStore(root / "append-10000", OPTIONS)
    bundle = root / "bench.bundle"
    export_bundle(source, bundle)
    target = _site(root, "import")
    started = time.perf_counter()
    summary = import_bundle(target, bundle, OPTIONS.frame_bytes_max)
    elapsed = time.perf_counter() - started
    target.close()
    return summary.frames_appended / elapsed


def _ack_latencies(root: Path) -> tuple[list[float], int]:
    store = _site(root, "acks")
    latencies: list[float] = []

    async def appender(writer: GroupCommitWriter, number: int) -> None:
        for k in range(APPENDS_EACH):
            body = encode_body("enrichment.received", 1, payload(number * APPENDS_EACH + k))
            began = time.perf_counter()
            await writer.append([body])
            latencies.append(time.perf_counter() - began)

    async def run() -> int:
        async with GroupCommitWriter(store.writer()) as writer:
            await asyncio.gather(*(appender(writer, n) for n in range(APPENDERS)))
            return writer.batches

    batches = asyncio.run(run())
    store.close()
    return latencies, batches


def _percentile_ms(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000, 3)


def _ratio(value: float, floor: float) -> float:
    return round(value / floor, 3) if floor else 0.0


def _rounded(mapping: dict[int, float]) -> dict[str, int]:
    return {str(key): round(value) for key, value in mapping.items()}


def _timed(label: str, timings: dict[str, float], fn: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = fn()
    timings[label] = round(timings.get(label, 0.0) + time.perf_counter() - started, 2)
    return result


def run(root: Path) -> dict[str, Any]:
    timings: dict[str, float] = {}
    append: dict[int, float] = {}
    floor: dict[int, float] = {}
    floor_segment_only: dict[int, float] = {}
    single_blobs: list[bytes] = []
    for batch in BATCH_SIZES:
        # fsync latency on a shared disk drifts: alternate append and floor, keep the best.
        for round_ in range(ROUNDS):
            rate, blobs = _timed(f"append_{batch}", timings,
                                 lambda b=batch, r=round_: _append_rate(root, b, r))
            events = EVENTS_BY_BATCH[batch]
            append[batch] = max(append.get(batch, 0.0), rate)
            floor[batch] = max(floor.get(batch, 0.0), _floor_rate(root, blobs, events, head=True)[0])
            floor_segment_only[batch] = max(floor_segment_only.get(batch, 0.0),
                                            _floor_rate(root, blobs, events, head=False)[0])
            if batch == 1:
                single_blobs = blobs
    encode_rate = _timed("encode", timings, _encode_rate)
    verify_rate, verified = _timed("verify", timings, lambda: _verify_rate(root))
    flat_verify_rate = _timed("verify_flat", timings, lambda: _flat_verify_rate(root))
    import_rate = _timed("import", timings, lambda: _import_rate(root))
    latencies, batches = _timed("acks", timings, lambda: _ack_latencies(root))
    _, floor_latencies = _floor_rate(root, single_blobs, len(single_blobs), head=True)
    ack_p50, ack_p99 = _percentile_ms(latencies, 0.50), _percentile_ms(latencies, 0.99)
    floor_p50, floor_p99 = _percentile_ms(floor_latencies, 0.50), _percentile_ms(floor_latencies, 0.99)
    body = encode_body("enrichment.received", 1, payload(0))
    return {
        "append_events_per_s": _rounded(append),
        "floor_events_per_s": round(floor[10_000]),
        "floor_events_per_s_by_batch": _rounded(floor),
        "append_ratio_to_floor": {str(b): _ratio(append[b], floor[b]) for b in BATCH_SIZES},
        "floor_segment_only_events_per_s_by_batch": _rounded(floor_segment_only),
        "encode_events_per_s": round(encode_rate),
        "verify_events_per_s": round(verify_rate),
        "verify_ratio_to_floor": _ratio(verify_rate, floor[10_000]),
        "verified_events": verified,
        "verify_events_per_s_flat_payload": round(flat_verify_rate),
        "import_events_per_s": round(import_rate),
        "import_ratio_to_floor": _ratio(import_rate, floor[10_000]),
        "ack_ms_p50": ack_p50,
        "ack_ms_p99": ack_p99,
        "floor_ack_ms_p50": floor_p50,
        "floor_ack_ms_p99": floor_p99,
        "ack_p50_ratio_to_floor": _ratio(ack_p50, floor_p50),
        "ack_p99_ratio_to_floor": _ratio(ack_p99, floor_p99),
        "group_commit": {"appenders": APPENDERS, "appends": len(latencies), "batches": batches,
                         "events_per_batch": round(len(latencies) / batches, 2)},
        "payload_bytes": len(body) - len(encode_body("enrichment.received", 1, {})) + 1,
        "body_bytes": len(body),
        "frame_record_bytes": RECORD_HEADER_BYTES + 56 + len(body),
        "targets": TARGETS,
        "meets_targets": {
            "append_events_per_s@10000": append[10_000] >= TARGETS["append_events_per_s@10000"],
            "verify_events_per_s": verify_rate >= TARGETS["verify_events_per_s"],
            "ack_ms_p99": ack_p99 < TARGETS["ack_ms_p99_max"],
        },
        "seconds": timings,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "cpu_affinity": sorted(os.sched_getaffinity(0))},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", type=int, default=0, help="CPU to pin to (-1: do not pin)")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the temporary data")
    args = parser.parse_args()
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    root = Path(tempfile.mkdtemp(prefix="heimdall-bench-", dir=args.dir))
    try:
        result = run(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
