"""The child of the crash test: appends events until it is killed, reporting each ack.

    python log_child.py DATA_DIR RUN

Prints ``ready <size>`` once the log is open (recovery done), then one line
``ack <first seq> <count> <run> <n>`` per acknowledged append, flushed at once: the
events of that append are ``event_body(run, n)``, ``event_body(run, n + 1)``, ...
It mixes direct batches of several sizes with rounds of 8 concurrent single appends
through the group-commit writer, with fsync on, as a site daemon would.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

from heimdall_core.events import encode_body
from heimdall_core.log.feed import FeedLog, LogOptions
from heimdall_core.log.store import LogStore
from heimdall_core.log.writer import GroupCommitWriter

BATCH_SIZES = (1, 2, 7, 40)
GROUP_APPENDERS = 8


def event_body(run: int, n: int) -> bytes:
    """The one body event ``n`` of run ``run`` must have (the parent recomputes it)."""
    return encode_body("note", 1, {"run": run, "n": n, "pad": "x" * (n % 50)})


def report(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def one(group: GroupCommitWriter, run: int, n: int) -> None:
    ack = await group.append([event_body(run, n)])
    report(f"ack {ack.first_seq} 1 {run} {n}")


async def append_forever(writer: FeedLog, run: int) -> None:
    rng = random.Random(run)
    group = GroupCommitWriter(writer)
    n = 0
    while True:
        if rng.random() < 0.5:
            size = rng.choice(BATCH_SIZES)
            result = writer.append_bodies([event_body(run, n + k) for k in range(size)])
            report(f"ack {result.first_seq} {size} {run} {n}")
            n += size
        else:
            await asyncio.gather(*(one(group, run, n + k) for k in range(GROUP_APPENDERS)))
            n += GROUP_APPENDERS


def main() -> None:
    data_dir, run = Path(sys.argv[1]), int(sys.argv[2])
    store = LogStore(data_dir, LogOptions(fsync=True))
    writer = store.writer()
    report(f"ready {writer.state.size}")
    asyncio.run(append_forever(writer, run))


if __name__ == "__main__":
    main()
