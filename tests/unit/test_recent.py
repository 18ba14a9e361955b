"""The dispatcher's recent results: bounded by count, by bytes and by the result TTL."""

from __future__ import annotations

import time

from core0.jobs.recent import RecentResults
from core0.registry import Role


def test_a_result_is_known_for_the_ttl_only() -> None:
    rec = RecentResults(1 << 20, ttl=0.2)
    rec.add("a", '{"id": "a"}', Role.ADMIN)
    assert rec.get("a") == '{"id": "a"}' and "a" in rec
    time.sleep(0.3)
    assert rec.get("a") is None and "a" not in rec
    rec.add("b", '{"id": "b"}')  # the next add drops what aged out
    assert list(rec.results) == ["b"] and rec.bytes == len('{"id": "b"}')
    assert rec.role("a") == Role.ADMIN  # who owned it stays (job visibility), bounded by count


def test_count_and_bytes_bounds() -> None:
    rec = RecentResults(25, max_count=3)
    for i in range(5):
        rec.add(str(i), "x" * 10)
    assert list(rec.results) == ["3", "4"] and rec.bytes == 20
    rec.add("4", "y" * 5)  # replacing one keeps the byte count right
    assert rec.get("4") == "yyyyy" and rec.bytes == 15
    no_ttl = RecentResults(1 << 20)
    no_ttl.add("k", "v")
    assert no_ttl.get("k") == "v"
