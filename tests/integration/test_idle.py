"""An idle node costs little: dispatcher RSS and no polling."""

from __future__ import annotations

import time

import psutil


def test_idle_dispatcher(fresh_node) -> None:  # type: ignore[no-untyped-def]
    c = fresh_node.client()
    c.ping()
    c.info.cpu()
    c.close()
    time.sleep(1)
    p = psutil.Process(fresh_node.dispatcher_pid())
    rss = p.memory_info().rss
    print(f"\nidle dispatcher RSS: {rss / 2**20:.1f} MiB")
    assert rss <= 45 * 2**20, f"idle dispatcher RSS {rss / 2**20:.1f} MiB > 45 MiB"
    # no polling: over 6 s idle, the dispatcher wakes only for its blocking pops' timeouts
    cpu0 = sum(p.cpu_times()[:2])
    ctx0 = p.num_ctx_switches().voluntary
    time.sleep(6)
    cpu1 = sum(p.cpu_times()[:2])
    ctx1 = p.num_ctx_switches().voluntary
    print(f"idle 6 s: {cpu1 - cpu0:.3f} s CPU, {ctx1 - ctx0} voluntary context switches")
    assert cpu1 - cpu0 < 0.1
    assert ctx1 - ctx0 < 30
    # the supervisor sleeps in select() with no timeout when nothing is scheduled
    sup = psutil.Process(fresh_node.pid)
    s0 = sup.num_ctx_switches().voluntary
    time.sleep(3)
    assert sup.num_ctx_switches().voluntary - s0 < 5
