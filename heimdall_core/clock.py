"""Time: a ``Clock`` protocol (so tests can fake it) and the hybrid logical clock.

An HLC timestamp is (physical milliseconds, logical counter). It never goes backwards
for one feed, stays close to wall time, and is merged with timestamps seen on foreign
events, so "happened after" survives skewed clocks between sites. The total order used
by last-writer-wins is (hlc, feed id, sequence).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Protocol

HLC_LOGICAL_MAX = (1 << 32) - 1
HLC_PHYSICAL_MAX_MS = (1 << 63) - 1
# A foreign timestamp further ahead of our wall clock than this is not merged: one peer
# with a broken clock must not drag every site's clock into the future.
HLC_DRIFT_MAX_MS = 24 * 3600 * 1000


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock time in integer milliseconds since the Unix epoch."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True, order=True)
class Hlc:
    physical_ms: int
    logical: int

    def __post_init__(self) -> None:
        if not 0 <= self.physical_ms <= HLC_PHYSICAL_MAX_MS:
            raise ValueError(f"HLC physical time out of range: {self.physical_ms}")
        if not 0 <= self.logical <= HLC_LOGICAL_MAX:
            raise ValueError(f"HLC logical counter out of range: {self.logical}")

    def __str__(self) -> str:
        return f"{self.physical_ms}.{self.logical}"


ZERO = Hlc(0, 0)


class HybridClock:
    """Issues monotonic HLC timestamps. Thread-safe; one per writer."""

    def __init__(self, clock: Clock | None = None, last: Hlc = ZERO) -> None:
        self._clock = clock or SystemClock()
        self._last = last
        self._lock = threading.Lock()

    @property
    def last(self) -> Hlc:
        return self._last

    def tick(self) -> Hlc:
        """A new timestamp, strictly greater than every one issued or observed."""
        with self._lock:
            self._last = _advance(self._last, self._clock.now_ms())
            return self._last

    def tick_many(self, count: int) -> list[Hlc]:
        """``count`` increasing timestamps at once (one lock, one clock read)."""
        with self._lock:
            now = self._clock.now_ms()
            out = []
            last = self._last
            for _ in range(count):
                last = _advance(last, now)
                out.append(last)
            self._last = last
            return out

    def observe(self, remote: Hlc) -> bool:
        """Merge a timestamp seen on a foreign event. False if it was too far ahead to merge."""
        with self._lock:
            if remote.physical_ms > self._clock.now_ms() + HLC_DRIFT_MAX_MS:
                return False
            if remote > self._last:
                self._last = remote
            return True

    def ensure_after(self, floor: Hlc) -> None:
        """Never issue a timestamp at or below ``floor`` (the last one stored in a feed).

        Unlike :meth:`observe` there is no drift bound: a feed's own timestamps must
        increase even if an earlier run of this site had a clock far in the future.
        """
        with self._lock:
            if floor > self._last:
                self._last = floor


def _advance(last: Hlc, now_ms: int) -> Hlc:
    if now_ms > last.physical_ms:
        return Hlc(now_ms, 0)
    if last.logical >= HLC_LOGICAL_MAX:
        # 4 billion events in one millisecond: move physical time forward instead of wrapping.
        return Hlc(last.physical_ms + 1, 0)
    return Hlc(last.physical_ms, last.logical + 1)
