"""The hybrid logical clock, driven by a fake wall clock."""

from __future__ import annotations

import itertools
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from logutil import FakeClock

from heimdall_core.clock import (
    HLC_DRIFT_MAX_MS,
    HLC_LOGICAL_MAX,
    ZERO,
    Hlc,
    HybridClock,
    SystemClock,
)


def test_tick_follows_wall_clock_and_counts_within_a_millisecond() -> None:
    wall = FakeClock(1000)
    clock = HybridClock(wall)
    assert clock.tick() == Hlc(1000, 0)
    assert clock.tick() == Hlc(1000, 1)
    wall.now = 1005
    assert clock.tick() == Hlc(1005, 0)


def test_monotonic_when_the_wall_clock_goes_back() -> None:
    wall = FakeClock(5000)
    clock = HybridClock(wall)
    first = clock.tick()
    wall.now = 10
    second = clock.tick()
    assert second > first
    assert second == Hlc(5000, 1)


def test_tick_many_is_increasing_and_advances_last() -> None:
    wall = FakeClock(7)
    clock = HybridClock(wall, last=Hlc(7, 3))
    many = clock.tick_many(5)
    assert many == [Hlc(7, 4 + i) for i in range(5)]
    assert clock.last == many[-1]
    assert clock.tick_many(0) == []


def test_observe_merges_a_foreign_time_within_the_drift_bound() -> None:
    wall = FakeClock(1000)
    clock = HybridClock(wall)
    clock.tick()
    remote = Hlc(1000 + HLC_DRIFT_MAX_MS, 42)
    assert clock.observe(remote) is True
    assert clock.tick() == Hlc(1000 + HLC_DRIFT_MAX_MS, 43)


def test_observe_refuses_a_time_beyond_the_drift_bound() -> None:
    wall = FakeClock(1000)
    clock = HybridClock(wall)
    before = clock.tick()
    assert clock.observe(Hlc(1000 + HLC_DRIFT_MAX_MS + 1, 0)) is False
    assert clock.last == before
    assert clock.tick() == Hlc(1000, 1)


def test_observe_of_an_older_time_changes_nothing() -> None:
    wall = FakeClock(1000)
    clock = HybridClock(wall)
    clock.tick()
    assert clock.observe(Hlc(3, 3)) is True
    assert clock.last == Hlc(1000, 0)


def test_logical_overflow_moves_physical_time_forward() -> None:
    wall = FakeClock(50)
    clock = HybridClock(wall, last=Hlc(50, HLC_LOGICAL_MAX - 1))
    assert clock.tick() == Hlc(50, HLC_LOGICAL_MAX)
    assert clock.tick() == Hlc(51, 0)


def test_ensure_after_has_no_drift_bound() -> None:
    wall = FakeClock(1000)
    clock = HybridClock(wall)
    far = Hlc(10**12, 9)
    clock.ensure_after(far)
    assert clock.tick() == Hlc(10**12, 10)
    clock.ensure_after(ZERO)
    assert clock.last == Hlc(10**12, 10)


@pytest.mark.parametrize(("physical", "logical"), [(-1, 0), (0, -1), (2**63, 0), (0, 2**32)])
def test_hlc_range(physical: int, logical: int) -> None:
    with pytest.raises(ValueError):
        Hlc(physical, logical)


def test_hlc_order_and_text() -> None:
    assert Hlc(1, 9) < Hlc(2, 0) < Hlc(2, 1)
    assert str(Hlc(12, 3)) == "12.3"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["tick", "many", "observe", "jump"]),
                          st.integers(-10_000, 10_000)), max_size=60))
def test_property_timestamps_strictly_increase(ops: list[tuple[str, int]]) -> None:
    wall = FakeClock(10**9)
    clock = HybridClock(wall)
    issued: list[Hlc] = []
    for op, amount in ops:
        if op == "jump":
            wall.now = max(0, wall.now + amount)
        elif op == "observe":
            clock.observe(Hlc(max(0, wall.now + amount * 1000), abs(amount)))
        elif op == "many":
            issued += clock.tick_many(abs(amount) % 7)
        else:
            stamp = clock.tick()
            assert stamp.physical_ms >= wall.now
            issued.append(stamp)
    assert all(a < b for a, b in itertools.pairwise(issued))


def test_threads_never_get_the_same_timestamp() -> None:
    clock = HybridClock(FakeClock(1))
    seen: list[Hlc] = []
    lock = threading.Lock()

    def work() -> None:
        mine = [clock.tick() for _ in range(500)]
        with lock:
            seen.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 2000


def test_system_clock_is_milliseconds() -> None:
    now = SystemClock().now_ms()
    assert 1_600_000_000_000 < now < 10_000_000_000_000
