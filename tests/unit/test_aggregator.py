"""0-core's statistics aggregator (core0.fleet.aggregator): parsing, windows, shape, bounds."""

from __future__ import annotations

import pytest

from core0.fleet import aggregator as agg
from core0.fleet.aggregator import Aggregator, StatsLineError, parse_line


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_parse_line() -> None:
    assert parse_line("disk.iops:12.5|A|id=sda,type=phys") == (
        "disk.iops", 12.5, "A", [("id", "sda"), ("type", "phys")])
    assert parse_line("net.rx:100|d") == ("net.rx", 100.0, "D", [])
    for bad in ("novalue", "k:abc|A", "k:1|X", ":1|A", "k:" + "1" * 600):
        with pytest.raises(StatsLineError):
            parse_line(bad)


def test_average_windows_and_history() -> None:
    clock = Clock(3000.0)  # the start of a 300 s window
    a = Aggregator(clock)
    for v in (1, 2, 3):
        a.feed_line(f"load:{v}|A")
        clock.t += 1
    st = a.query()["load"]
    assert st["op"] == "A" and st["last_value"] == 3 and st["last_time"] == 3002
    assert st["current"]["300"] == {"avg": 2.0, "total": 6.0, "max": 3.0, "count": 3,
                                    "start": 3000}
    assert st["history"] == {}
    clock.t = 3300.0  # the next 300 s window closes the first into history
    a.feed_line("load:10|A")
    st = a.query()["load"]
    assert st["history"]["300"] == [{"avg": 2.0, "total": 6.0, "max": 3.0, "count": 3,
                                     "start": 3000}]
    assert st["current"]["300"]["avg"] == 10 and st["current"]["3600"]["count"] == 4
    for i in range(1, 10):  # history keeps the last 5 windows
        clock.t = 3300.0 + 300 * i
        a.feed_line("load:1|A")
    assert len(a.query()["load"]["history"]["300"]) == 5


def test_differential_rate_and_tags() -> None:
    clock = Clock(7200.0)
    a = Aggregator(clock)
    a.feed_line("net.rx:1000|D|id=eth0")
    clock.t += 10
    a.feed_line("net.rx:3000|D|id=eth0")
    a.feed_line("net.rx:5|D|id=eth1")
    out = a.query("net.rx")
    assert set(out) == {"net.rx/eth0", "net.rx/eth1"}
    assert out["net.rx/eth0"]["current"]["300"]["avg"] == 200.0  # (3000-1000)/10 s
    assert out["net.rx/eth0"]["tags"] == [{"Key": "id", "Value": "eth0"}]
    assert set(a.query(tags={"id": "eth1"})) == {"net.rx/eth1"}
    assert a.query("other") == {}


def test_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agg, "MAX_STATES", 3)
    clock = Clock(100.0)
    a = Aggregator(clock)
    for i in range(5):
        a.feed_line(f"m{i}:1|A")
    assert sorted(a.query()) == ["m2", "m3", "m4"]
    clock.t += agg.IDLE + 1
    assert a.query() == {}
    a.feed_line("bad line")
    assert a.rejected == 1
