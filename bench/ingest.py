#!/usr/bin/env python3
"""Ingest benchmark: records/s end to end into the fsync'd signed log, against a floor.

Prints ONE JSON object:
  records_per_s           one process, default PII policy, 1,000,000 rows (email, username,
                          ip, domain, sha256, password), fsync'd signed log, wall clock
  floor_records_per_s     the same file through csv.reader and msgpack.packb only
  ratio_time_to_floor     end-to-end time / floor time (target <= 4)
  workers2_records_per_s  the same with --workers 2, and its ratio to one worker (target >= 1.7)
  peak_rss_mb             peak RSS of the ingest process(es) while ingesting a ~1 GB file
                          (target < 300 MB whatever the size)
Usage: bench/ingest.py [--rows N] [--rss-bytes N] [--skip-rss]
Runs each ingest as a real `heimdall ingest` child process (os.wait4 gives its rusage).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".bench"
HEADER = "email,username,ip,domain,sha256,password\n"


def make_dump(path: Path, rows: int, pad_bytes: int = 0) -> Path:
    if path.exists() and path.stat().st_size > 0:
        return path
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as out:
        out.write(HEADER if not pad_bytes else HEADER.rstrip("\n") + ",note\n")
        pad = "n" * pad_bytes
        buf = []
        for i in range(rows):
            digest = hashlib.sha256(i.to_bytes(8, "big")).hexdigest()
            line = (f"user{i}@example{i % 1000}.com,user_{i},10.{(i >> 16) & 255}.{(i >> 8) & 255}."
                    f"{i & 255},host{i % 5000}.example.org,{digest},pw{i}x")
            buf.append(line + ("," + pad if pad_bytes else "") + "\n")
            if len(buf) >= 10_000:
                out.write("".join(buf))
                buf.clear()
        out.write("".join(buf))
    tmp.rename(path)
    return path


def floor(path: Path) -> float:
    began = time.perf_counter()
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        packb = msgpack.packb
        count = 0
        for row in reader:
            packb(row)
            count += 1
    return count / (time.perf_counter() - began)


def run_ingest(path: Path, *extra: str) -> tuple[dict[str, object], float, float]:
    """(summary, wall seconds, peak RSS MB of the child tree) for one fresh site."""
    data = Path(tempfile.mkdtemp(prefix="hmd-bench-", dir=WORK))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HMD_")}
    env["HMD_DATA_DIR"] = str(data)
    heimdall = [sys.executable, "-m", "heimdall_core.cli.main"]
    subprocess.run([*heimdall, "init"], env=env, check=True, capture_output=True)
    began = time.perf_counter()
    proc = subprocess.Popen([*heimdall, "ingest", str(path), "--source", "bench", "--json",
                             "--no-progress", *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    peak = _peak_rss_mb(proc)
    out, err = proc.communicate()
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"ingest failed: {err.decode()}")
    shutil.rmtree(data, ignore_errors=True)
    return json.loads(out.decode().strip().splitlines()[-1]), wall, peak


def _peak_rss_mb(proc: subprocess.Popen[bytes]) -> float:
    """Poll the RSS of the process and its children (worker processes) until it exits."""
    import psutil

    peak = 0
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            total = max([parent.memory_info().rss] +
                        [c.memory_info().rss for c in parent.children(recursive=True)])
        except psutil.Error:
            total = 0
        peak = max(peak, total)
        time.sleep(0.05)
    return round(peak / 2**20, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rss-bytes", type=int, default=1 << 30)
    parser.add_argument("--skip-rss", action="store_true")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    dump = make_dump(WORK / f"dump-{args.rows}.csv", args.rows)
    floor_rate = floor(dump)
    summary, wall, rss_small = run_ingest(dump)
    rate = summary["records"] / wall  # type: ignore[operator]
    summary2, wall2, rss_workers = run_ingest(dump, "--workers", "2")
    rate2 = summary2["records"] / wall2  # type: ignore[operator]
    result: dict[str, object] = {
        "rows": args.rows,
        "records_per_s": round(rate),
        "floor_records_per_s": round(floor_rate),
        "ratio_time_to_floor": round(floor_rate / rate, 2),
        "workers2_records_per_s": round(rate2),
        "workers2_ratio_to_one": round(rate2 / rate, 2),
        "peak_rss_mb_1m_rows": rss_small,
        "peak_rss_mb_1m_rows_workers2": rss_workers,
        "targets": {"records_per_s": 50_000, "ratio_time_to_floor_max": 4,
                    "workers2_ratio_min": 1.7, "peak_rss_mb_max": 300},
    }
    if not args.skip_rss:
        pad = 1000
        rows_1g = max(1, args.rss_bytes // (140 + pad))
        big = make_dump(WORK / f"dump-rss-{args.rss_bytes}.csv", rows_1g, pad_bytes=pad)
        summary3, wall3, rss_big = run_ingest(big, "--map", "note=password")
        result.update(peak_rss_mb=rss_big, rss_file_bytes=big.stat().st_size,
                      rss_file_records_per_s=round(summary3["records"] / wall3))  # type: ignore[operator]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
