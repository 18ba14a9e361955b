"""core0/net/reserve.py: socat.reserve's holds (lowest free ports, held until they expire or
a forward takes them, bounded)."""

from __future__ import annotations

import time

import pytest

from core0.errors import Unavailable
from core0.net import reserve


def test_lowest_free_ports_held_then_released(monkeypatch: pytest.MonkeyPatch) -> None:
    r = reserve.Reservations()
    assert r.take(3, {1024, 1026}) == [1025, 1027, 1028]
    assert r.take(2, {1024, 1026, 1029}) == [1030, 1031]  # the held ones are skipped too
    r.release([1027, 4000])
    assert r.take(1, {1024, 1026, 1029}) == [1027]
    assert r.held() == {1025, 1027, 1028, 1030, 1031}
    monkeypatch.setattr(reserve, "HOLD_SECONDS", 0.05)
    r2 = reserve.Reservations()
    assert r2.take(2, ()) == [1024, 1025]
    time.sleep(0.1)
    assert r2.held() == set() and r2.take(1, ()) == [1024]


def test_bounded() -> None:
    r = reserve.Reservations()
    with pytest.raises(Unavailable):
        r.take(reserve.MAX_HELD + 1, ())
    with pytest.raises(Unavailable, match="only 2 free"):
        r.take(3, set(range(1024, 65534)))
    assert r.held() == set()  # a refused reservation holds nothing
