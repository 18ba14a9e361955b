"""Hostile use of the job engine from operator and read-only queues (issue 8, section 3).

One node with three queues (default = admin, ops = operator, ro = read-only) and small caps, so
the limits are reached with few commands. Every test ends with the admin queue still answering
a ping (its latency is a benchmark's business, not a test's: bench/ping.py).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import redis
from conftest import Node, configured_node, wait_until

CONFIG = """[main]
include = []
[bus]
queues = {default = "admin", ops = "operator", ro = "read-only"}
max_jobs = 64
admin_reserve = 16
role_max_jobs = {read-only = 4, operator = 5}
role_max_recurring = {read-only = 2, operator = 100}
max_recurring_period = 86400
result_cache_bytes = 2000000
output_pending_bytes = 1000000
output_backlog_bytes = 8000000
"""


@pytest.fixture(scope="module")
def hnode() -> Iterator[Node]:
    with configured_node(CONFIG, "core0-hostile-") as n:
        yield n


@pytest.fixture
def r(hnode: Node) -> Iterator[redis.Redis]:
    c = hnode.redis()
    yield c
    # leave nothing running for the next test
    for q in ("core:ops", "core:ro", "core:default"):
        c.delete(q)
    run(c, "default", "job.killall", {})
    wait_until(lambda: not [j for j in run(c, "default", "job.list", {})["data_json"]
                            if j["command"] != "job.list"], 20)
    assert_admin_alive(c)
    c.close()


def push(r: redis.Redis, bus_queue: str, command: str, args: dict[str, Any] | None = None,
         **kw: Any) -> str:
    jid = kw.pop("id", None) or uuid.uuid4().hex
    r.rpush(f"core:{bus_queue}", json.dumps({"id": jid, "command": command,
                                             "arguments": args or {}, **kw}))
    return jid


def result(r: redis.Redis, jid: str, timeout: float = 10) -> dict[str, Any]:
    raw = r.brpoplpush(f"result:{jid}", f"result:{jid}", timeout)
    assert raw is not None, f"no result for {jid} within {timeout}s"
    res = json.loads(raw)
    if res.get("level") == 20 and res.get("data"):
        res["data_json"] = json.loads(res["data"])
    return res


def run(r: redis.Redis, bus_queue: str, command: str, args: dict[str, Any] | None = None,
        timeout: float = 10, **kw: Any) -> dict[str, Any]:
    return result(r, push(r, bus_queue, command, args, **kw), timeout)


def assert_admin_alive(r: redis.Redis) -> None:
    """The admin queue is served (a starved queue never answers: the timeout is generous)."""
    res = run(r, "default", "core.ping", {}, timeout=30)
    assert res["state"] == "SUCCESS"


def test_recurring_flood_from_read_only_is_capped(r: redis.Redis) -> None:
    ids = [push(r, "ro", "info.version", {}, recurring_period=3600) for _ in range(60)]
    assert_admin_alive(r)
    refused = 0
    for jid in ids[2:]:
        res = result(r, jid)
        assert res["code"] == 503 and "recurring" in res["critical"], res
        refused += 1
    assert refused == 58
    # the first two run (and publish per run): they are in the job table
    listed = {j["id"] for j in run(r, "default", "job.list", {})["data_json"]}
    assert set(ids[:2]) <= listed


def test_in_flight_cap_of_a_role_leaves_admin_served(r: redis.Redis) -> None:
    ids = [push(r, "ops", "info.version", {}, recurring_period=3600) for _ in range(40)]
    assert wait_until(lambda: r.llen("core:ops") == 35, 10), r.llen("core:ops")
    assert_admin_alive(r)
    # no sleep to see that nothing more is popped: each admin job that ends wakes the operator
    # queue's loop (a slot freed), which checks its room again and would pop now. The second
    # job's result comes after the first one's end was fully handled, so a pop past the cap
    # would have reached Redis before it.
    for _ in range(2):
        assert run(r, "default", "core.system", {"name": "true"})["state"] == "SUCCESS"
    assert r.llen("core:ops") == 35, "the operator queue kept popping past its cap"
    ops = [j for j in run(r, "default", "job.list", {})["data_json"] if j["id"] in ids]
    assert len(ops) == 5, [j["id"] for j in ops]
    r.delete("core:ops")


def test_recurring_period_is_bounded(r: redis.Redis) -> None:
    res = run(r, "ro", "info.version", {}, recurring_period=10**8)
    assert res["code"] == 400 and "recurring_period" in res["critical"]


def test_colliding_ids_are_refused(r: redis.Redis) -> None:
    """An id whose result key is another job's flag or run result is dead-lettered (an
    answer would hijack that job), and the other job runs and answers."""
    victim, rc = uuid.uuid4().hex, uuid.uuid4().hex
    dead = r.llen("core:ro:dead")
    push(r, "ro", "core.ping", {}, id=f"{victim}:flag")
    push(r, "ro", "core.ping", {}, id=f"{rc}:1")
    assert wait_until(lambda: r.llen("core:ro:dead") == dead + 2, 30)
    assert r.llen(f"result:{victim}:flag") == 0 and r.llen(f"result:{rc}:1") == 0
    res = run(r, "default", "core.system", {"name": "true"}, id=victim)
    assert res["state"] == "SUCCESS"
    push(r, "default", "info.version", {}, id=rc, recurring_period=1)
    run1 = r.brpoplpush(f"result:{rc}:1", f"result:{rc}:1", 30)
    assert run1 is not None and json.loads(run1)["id"] == rc
    run(r, "default", "job.unschedule", {"id": rc})
    assert result(r, rc)["state"] == "SUCCESS"


def test_no_self_subscription_and_named_queues_per_role(r: redis.Redis) -> None:
    me = uuid.uuid4().hex
    res = run(r, "ro", "core.subscribe", {"id": me}, id=me)
    assert res["code"] == 400 and "itself" in res["critical"]
    # a read-only job holding named queue "backup" does not hold up admin's "backup"
    push(r, "ro", "info.version", {}, recurring_period=3600, queue="backup")
    res = run(r, "default", "core.system", {"name": "true"}, queue="backup", timeout=30)
    assert res["state"] == "SUCCESS"


def test_read_only_sees_no_secrets(r: redis.Redis) -> None:
    secret = "s3cr3t-" + uuid.uuid4().hex
    sleeper = push(r, "default", "core.system",
                   {"name": "sh", "args": ["-c", f"echo {secret}; sleep 30"],
                    "env": {"PASSWORD": secret}, "stdin": secret})
    assert wait_until(lambda: any(j["id"] == sleeper for j in
                                  run(r, "default", "job.list", {})["data_json"]), 30)
    ro_view = run(r, "ro", "job.list", {})
    assert secret not in json.dumps(ro_view)
    mine = [j for j in ro_view["data_json"] if j["id"] == sleeper]
    assert mine and mine[0]["redacted"] is True
    admin_view = run(r, "default", "job.list", {})
    assert secret in json.dumps(admin_view)
    # read-only cannot relay an admin job's output, operator cannot kill it
    res = run(r, "ro", "core.subscribe", {"id": sleeper})
    assert res["code"] == 403
    res = run(r, "ops", "job.kill", {"id": sleeper})
    assert res["code"] == 403
    res = run(r, "ops", "job.killall", {})
    assert res["state"] == "SUCCESS"
    assert any(j["id"] == sleeper for j in run(r, "default", "job.list", {})["data_json"])
    assert run(r, "default", "job.kill", {"id": sleeper})["state"] == "SUCCESS"


def test_forged_or_moved_result_is_replaced_by_the_real_one(r: redis.Redis) -> None:
    """A result key written before the job (a forged value, or another job's result moved
    there with BRPOPLPUSH) never wins over the real result, and nothing stays without TTL."""
    jid = uuid.uuid4().hex
    r.rpush(f"result:{jid}", "forged")
    push(r, "default", "core.system", {"name": "true"}, id=jid)
    assert wait_until(lambda: r.llen("core:default:processing") == 0, 10)
    assert wait_until(lambda: r.lindex(f"result:{jid}", 0) not in (None, b"forged"), 10)
    res = json.loads(r.lindex(f"result:{jid}", 0))
    assert res["id"] == jid and res["state"] == "SUCCESS" and r.llen(f"result:{jid}") == 1
    assert r.ttl(f"result:{jid}") > 0
    other = run(r, "default", "core.ping", {})
    moved = uuid.uuid4().hex
    r.brpoplpush(f"result:{other['id']}", f"result:{moved}", 1)
    push(r, "default", "core.system", {"name": "true"}, id=moved)
    assert wait_until(lambda: json.loads(r.lindex(f"result:{moved}", 0))["id"] == moved, 10)
    assert r.ttl(f"result:{moved}") > 0


def test_id_after_a_huge_field_still_gets_its_result(r: redis.Redis) -> None:
    big = "a" * (3 << 20)
    jid = uuid.uuid4().hex
    r.rpush("core:default", json.dumps({"command": "core.ping", "arguments": {"x": big},
                                        "id": jid}))
    res = result(r, jid)
    assert res["state"] == "ERROR" and res["code"] == 413
    jid = uuid.uuid4().hex
    r.rpush("core:default", '{"command": "core.ping", "arguments": {"x": "' + big[:100000]
            + '"}, "id": "' + jid + '", "broken": ')
    res = result(r, jid)
    assert res["state"] == "ERROR" and res["code"] == 400


def test_result_cache_and_output_are_bounded_by_bytes(hnode: Node, r: redis.Redis) -> None:
    """The dispatcher's RSS and open fds stay bounded under a flood of big results and a job
    printing as fast as it can.

    These bounds cannot fail because the machine is slow or loaded: they bound the *growth* of
    memory, and everything the dispatcher holds is bounded in bytes by the config, never by
    time (recent results: ``result_cache_bytes``; a job's output waiting for Redis:
    ``output_pending_bytes``, beyond which its output files stop being read; a backlog beyond
    ``output_backlog_bytes`` stays on disk and is skipped). A slower machine or Redis only
    makes the job wait longer for room, it does not make the dispatcher hold more. The
    bounds sit far above those caps (Python's allocator keeps freed arenas: RSS shows the
    high-water mark) and far below what an unbounded holder would reach."""
    proc = psutil.Process(hnode.dispatcher_pid())
    base, fds = proc.memory_info().rss, proc.num_fds()
    ids = [push(r, "ro", "core.commands", {}) for _ in range(1500)]
    for jid in ids:
        assert result(r, jid, 30)["state"] == "SUCCESS"
    grown = proc.memory_info().rss - base
    # 1,500 results of ~90 KB each would be ~135 MB if the cache were bounded by count only
    # (result_cache_bytes is 2 MB here)
    assert grown < 80 << 20, f"dispatcher grew by {grown >> 20} MiB"
    # a job printing 64 KiB lines as fast as it can, with stream: true: 384 MiB of output
    # (output_pending_bytes is 1 MB, output_backlog_bytes 8 MB here)
    script = "import sys\nline = 'x' * 65535 + '\\n'\nfor _ in range(6000): sys.stdout.write(line)"
    res = run(r, "default", "core.system", {"name": "python3", "args": ["-c", script]},
              timeout=120, stream=True)
    assert res["state"] == "SUCCESS"
    grown = proc.memory_info().rss - base
    assert grown < 200 << 20, f"dispatcher grew by {grown >> 20} MiB"
    # every job is over: their pipes, output files and pidfds are closed again (the wait only
    # lets the last job's files be closed after its result). The slack allows for more Redis
    # connections in the pools; one fd leaked per command would be 1,500.
    assert wait_until(lambda: proc.num_fds() <= fds + 64, 30), (fds, proc.num_fds())
    assert_admin_alive(r)
