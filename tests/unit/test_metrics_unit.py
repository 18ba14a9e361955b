"""The node's result counters and duration histogram, as a scrape reads them."""

from __future__ import annotations

import threading

from prometheus_client.parser import text_string_to_metric_families

from core0 import registry
from core0.config import Config
from core0.fleet.metrics import BUCKETS, NodeMetrics


def _samples(m: NodeMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(m.text().decode()) for s in f.samples}


def test_results_are_counted_and_bucketed_per_command() -> None:
    registry.load_all()
    m = NodeMetrics(Config(), {}, lambda: 0, {})
    durations = [0.0, 0.0005, 0.001, 0.002, 0.5, 7200.0, -1.0]  # a bound is in its bucket
    for d in durations:
        m.result("core.ping", "SUCCESS", d)
    m.result("no.such.command", "UNKNOWN_CMD", 0.0)
    m.result("core.ping", "ERROR", 0.01)
    s = _samples(m)
    ping = (("command", "core.ping"),)
    assert s[("core0_commands_total", (("command", "core.ping"), ("state", "SUCCESS")))] == 7
    assert s[("core0_commands_total", (("command", "core.ping"), ("state", "ERROR")))] == 1
    assert s[("core0_commands_total", (("command", ""), ("state", "UNKNOWN_CMD")))] == 1
    assert s[("core0_job_duration_seconds_count", ping)] == 8
    assert abs(s[("core0_job_duration_seconds_sum", ping)] - (7200.5035 + 0.01)) < 1e-9
    expect = {b: sum(1 for d in [*durations, 0.01] if max(d, 0.0) <= b) for b in BUCKETS}
    for b, n in expect.items():
        le = ("le", str(float(b)))
        assert s[("core0_job_duration_seconds_bucket", (("command", "core.ping"), le))] == n
    assert s[("core0_job_duration_seconds_bucket", (("command", "core.ping"),
                                                     ("le", "+Inf")))] == 8


def test_a_scrape_from_another_thread_reads_while_results_are_counted() -> None:
    registry.load_all()
    m = NodeMetrics(Config(), {}, lambda: 0, {})
    done = threading.Event()
    seen: list[float] = []

    def scrape() -> None:
        while not done.is_set():
            s = _samples(m)
            seen.append(s.get(("core0_job_duration_seconds_count",
                               (("command", "core.ping"),)), 0.0))

    t = threading.Thread(target=scrape)
    t.start()
    for i in range(20000):
        m.result("core.ping", "SUCCESS", 0.001 * (i % 7))
    done.set()
    t.join()
    assert seen == sorted(seen)  # never goes back
    assert _samples(m)[("core0_job_duration_seconds_count", (("command", "core.ping"),))] == 20000
