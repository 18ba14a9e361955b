"""The one restart backoff (core0.backoff), on a fake clock: no sleeping."""

from __future__ import annotations

from core0.backoff import PERMANENT_EXIT, Backoff


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_doubles_from_one_second_to_sixty() -> None:
    b = Backoff()
    assert [b.next(0.0) for _ in range(9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_a_healthy_run_resets_it() -> None:
    b = Backoff()
    assert [b.next(0.5) for _ in range(4)] == [1, 2, 4, 8]
    assert b.next(9.9) == 16  # not quite healthy
    assert b.next(10.0) == 1  # ran 10 s: back to the start
    assert b.next(0.1) == 2
    b.reset()
    assert b.next(0.1) == 1


def test_crash_loop_on_a_fake_clock() -> None:
    """A process that exits at once: starts at 0, 1, 3, 7, 15, 31 s — six in the first minute
    (the 60-second real-time test this replaces allowed 5 to 8), gaps ≥ 1 s and doubling."""
    clock = FakeClock()
    b = Backoff(clock=clock)
    t0 = clock()
    starts: list[float] = []
    while clock() - t0 <= 120:
        b.started()
        starts.append(clock() - t0)
        clock.advance(0.05)  # it dies at once
        clock.advance(b.next())  # ran_for measured on the clock
    in_60 = [t for t in starts if t <= 60]
    assert len(in_60) == 6 and in_60[0] == 0
    gaps = [b2 - a for a, b2 in zip(starts, starts[1:], strict=False)]
    assert all(g >= 1 for g in gaps)
    assert all(later >= earlier * 1.5 for earlier, later in zip(gaps, gaps[1:], strict=False)
               if later < 60)
    assert max(gaps) <= 60.05


def test_measures_the_run_on_its_clock() -> None:
    clock = FakeClock()
    b = Backoff(clock=clock)
    for _ in range(3):
        b.started()
        clock.advance(2)
        b.next()
    assert b.delay == 8
    b.started()
    clock.advance(30)  # a long healthy run
    assert b.next() == 1


def test_custom_limits_and_permanent_exit() -> None:
    b = Backoff(first=0.5, cap=3, healthy=5)
    assert [b.next(0) for _ in range(5)] == [0.5, 1, 2, 3, 3]
    assert PERMANENT_EXIT == 125


def test_retrying_doubles_to_its_cap_and_never_resets_by_itself() -> None:
    """A retry loop's delays (the pop loop's reconnects, retry_forever): 0.1 s doubling to
    5 s; however long the clock runs between failures, only reset() starts over."""
    clock = FakeClock()
    b = Backoff.retrying(0.1, 5.0, clock=clock)
    waits = []
    for _ in range(9):
        b.started()  # harmless here
        clock.advance(3600)  # an hour between two failures is not a healthy run
        waits.append(b.next())
        clock.advance(waits[-1])
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert b.next(1e9) == 5.0
    b.reset()  # a success
    assert [b.next() for _ in range(3)] == [0.1, 0.2, 0.4]


def test_retrying_a_busy_tool_within_a_budget() -> None:
    """storage.tools.retry_busy's shape: waits from 0.05 s doubling to 1 s, on a fake clock,
    until a 30 s budget is spent: the waits add up to the budget (one last may overrun it)."""
    clock = FakeClock()
    b = Backoff.retrying(0.05, 1.0, clock=clock)
    deadline = clock() + 30
    waits = []
    while clock() < deadline:
        waits.append(b.next())
        clock.advance(waits[-1])
    assert waits[:6] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert set(waits[5:]) == {1.0}
    assert 30 <= sum(waits) < 31
