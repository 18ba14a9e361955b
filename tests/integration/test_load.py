"""Load and faults: 8 client processes × 2,500 commands, with and without crashes.

Every id must end with exactly one result: none lost, none duplicated, nothing left in the
processing list, every key core0 wrote with a TTL — also when redis-server or the dispatcher
is killed with SIGKILL in the middle (the supervisor restarts them). Throughput is a
benchmark's figure (bench/ping.py), not these tests'.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import threading
import time
import uuid

import pytest
from conftest import start_node, wait_until
from loadgen import worker
from wire import keys_without_ttl

pytestmark = pytest.mark.slow

CLIENTS, PER_CLIENT = 8, 2500
TOTAL = CLIENTS * PER_CLIENT


def _run_load(node, during=None):  # type: ignore[no-untyped-def]
    ctx = mp.get_context("spawn")
    mgr = ctx.Manager()
    out = mgr.dict()
    procs = [ctx.Process(target=worker, args=(node.port, i, PER_CLIENT, 250, out))
             for i in range(CLIENTS)]
    for p in procs:
        p.start()
    if during is not None:
        during()
    for p in procs:
        p.join(600)
        assert p.exitcode == 0, "a client process failed"
    res = dict(out)
    mgr.shutdown()
    return res


def _count_results(r) -> int:  # type: ignore[no-untyped-def]
    n = 0
    for k in r.scan_iter("result:load-*", count=5000):
        key = k.decode()
        if key.endswith(":flag"):
            continue
        n += 1
        assert r.llen(k) == 1, f"{key} has {r.llen(k)} results"
    return n


def _check(node, out) -> None:  # type: ignore[no-untyped-def]
    states: dict[str, str] = {}
    for w in out.values():
        states.update(w["states"])
    assert len(states) == TOTAL, f"{TOTAL - len(states)} results missing on the client side"
    bad = {k: v for k, v in states.items() if v != "SUCCESS"}
    assert not bad, list(bad.items())[:5]
    r = node.redis()
    assert _count_results(r) == TOTAL
    assert wait_until(lambda: r.llen("core:default:processing") == 0, 20)
    assert r.llen("core:default") == 0
    assert wait_until(lambda: not keys_without_ttl(r), 20), keys_without_ttl(r)[:10]


def test_load_20000_exactly_once(tmp_path) -> None:
    node = start_node(tmp_path / "state")
    try:
        _check(node, _run_load(node))
    finally:
        node.stop()


def _progress(r) -> int:  # type: ignore[no-untyped-def]
    return sum(1 for _ in r.scan_iter("result:load-*:flag", count=5000))


def test_redis_kill9_twice_during_load(tmp_path) -> None:
    node = start_node(tmp_path / "state")
    kills: list[float] = []

    def chaos() -> None:
        r = node.redis()
        for frac in (0.3, 0.6):
            assert wait_until(lambda frac=frac: _safe(lambda: _progress(r)) >= frac * TOTAL, 300)
            pid = node.pids()["redis"]
            os.kill(pid, signal.SIGKILL)
            kills.append(time.monotonic())
            wait_until(lambda pid=pid: node.pids().get("redis", pid) != pid, 30)
            wait_until(lambda: _safe(lambda: r.ping()), 30)

    try:
        out = _run_load(node, lambda: threading.Thread(target=chaos, daemon=True).start())
        assert len(kills) == 2, "the load finished before both kills"
        _check(node, out)
    finally:
        node.stop()


def _safe(fn):  # type: ignore[no-untyped-def]
    try:
        return fn()
    except Exception:
        return 0


def test_dispatcher_kill9_adopts_running_jobs(tmp_path) -> None:
    node = start_node(tmp_path / "state")
    marks = tmp_path / "marks"
    try:
        c = node.client()
        sleepers = [c.bash(f"echo $$ >> {marks}; exec sleep 4") for _ in range(10)]
        assert wait_until(lambda: marks.exists() and len(marks.read_text().split()) == 10, 10)
        before = {j["id"]: j["pid"] for j in c.job.list() if j["id"] in
                  {s.id for s in sleepers}}
        assert len(before) == 10
        old = node.dispatcher_pid()

        def chaos() -> None:
            r = node.redis()
            wait_until(lambda: _safe(lambda: _progress(r)) >= 0.3 * TOTAL, 300)
            os.kill(old, signal.SIGKILL)

        out = _run_load(node, lambda: threading.Thread(target=chaos, daemon=True).start())
        new = node.dispatcher_pid()
        assert new != old
        bad = [k for w in out.values() for k, v in w["states"].items() if v != "SUCCESS"]
        for k in bad[:5]:  # what the node logged about them, shown with the failure below
            print("\n".join(line for line in node.log_text().splitlines() if k in line))
        # the load itself: every id exactly one successful result across the kill
        _check(node, out)
        for s in sleepers:
            res = s.get(30)
            assert res.state.value == "SUCCESS", res
        # same pids, none started twice
        pids = [int(x) for x in marks.read_text().split()]
        assert sorted(pids) == sorted(before.values())
        assert "adopted" in node.log_text()
        c.close()
    finally:
        node.stop()


def test_poison_pill_dead_lettered(tmp_path) -> None:
    """A command that crashes the dispatcher each time it runs is delivered at most 3 times,
    then answered with an error and dead-lettered; commands behind it still complete."""
    node = start_node(tmp_path / "state", env={"CORE0_TEST_POISON": "1"})
    try:
        r = node.redis()
        jid = "poison-" + uuid.uuid4().hex[:8]
        r.rpush("core:default", json.dumps({"id": jid, "command": "test.crash",
                                            "arguments": {}}))
        after = [f"after-{i}-{uuid.uuid4().hex[:6]}" for i in range(5)]
        for a in after:
            r.rpush("core:default", json.dumps({"id": a, "command": "core.ping"}))
        raw = r.brpoplpush(f"result:{jid}", f"result:{jid}", 60)
        assert raw is not None
        res = json.loads(raw)
        assert res["state"] == "ERROR" and "poison" in res["critical"]
        for a in after:
            assert r.brpoplpush(f"result:{a}", f"result:{a}", 30) is not None
        dead = [json.loads(x) for x in r.lrange("core:default:dead", 0, -1)]
        assert any(d.get("id") == jid for d in dead)
        assert node.log_text().count("test.crash: crashing the dispatcher on purpose") <= 3
    finally:
        node.stop()
