"""The pop loop survives Redis error replies (OOM, NOPERM) on a shared Redis: it backs off,
logs, and serves again once Redis recovers (a real redis-server, a real core0 node)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from conftest import RedisServer, wait_until
from fleet_fixtures import start_fleet_node


def _errors(srv: RedisServer, kind: str) -> int:
    stats = srv.client().info("errorstats")
    return int(stats.get(f"errorstat_{kind}", {}).get("count", 0))


# The backoff checks below bound how often the node tries while Redis refuses or is frozen, per
# second of the window actually measured: a loaded machine makes the node try less often, and a
# window stretched by a slow test process is counted as such, so they fail only when the node
# really retries too fast (docs/developing.md, "Testing": not too soon, not too often).


def test_pop_loop_survives_oom_and_noperm(redis_server: RedisServer, tmp_path: Path) -> None:
    srv = redis_server
    fn = start_fleet_node(srv, tmp_path, "n1", user=True)
    admin = srv.client()
    try:
        with fn.node.client(timeout=20, prefix=fn.prefix) as c:
            assert c.ping().startswith("PONG")
            # OOM: every write (the pop loop's BLMOVE, its scripts) is refused
            admin.config_set("maxmemory", "1")
            assert wait_until(lambda: "OOM" in fn.node.log_text(), 20), fn.node.log_text()[-2000:]
            before, t0 = _errors(srv, "OOM"), time.monotonic()
            wait_until(lambda: False, 2)  # a window to count attempts in, not a sync point
            attempts, window = _errors(srv, "OOM") - before, time.monotonic() - t0
            # backed off, no busy loop: a handful of attempts a second, not thousands
            assert attempts < 25 * window, (attempts, window)
            admin.config_set("maxmemory", "0")
            assert c.ping().startswith("PONG")
            # NOPERM: the node's ACL user loses its keys, live
            admin.execute_command("ACL", "SETUSER", "n1", "resetkeys")
            assert wait_until(lambda: "NOPERM" in fn.node.log_text(), 20), \
                fn.node.log_text()[-2000:]
            admin.execute_command("ACL", "SETUSER", "n1", "~{n1}:*", "~nodes:*")
            assert c.ping().startswith("PONG")
            assert "Traceback" not in fn.node.log_text()
    finally:
        fn.node.stop()


def test_result_written_during_oom_arrives_after(redis_server: RedisServer,
                                                 tmp_path: Path) -> None:
    """A job that ends while Redis refuses writes (OOM) keeps its result and writes it once
    Redis takes writes again: exactly one result, the job not run twice."""
    srv = redis_server
    fn = start_fleet_node(srv, tmp_path, "n2")
    admin = srv.client()
    marker = tmp_path / "runs"
    try:
        with fn.node.client(timeout=30, prefix=fn.prefix) as c:
            ended = tmp_path / "ended"
            resp = c.system(["sh", "-c", f"echo x >> {marker}; sleep 1; echo done; "
                                         f"touch {ended}"])
            assert wait_until(lambda: marker.exists(), 10)
            admin.config_set("maxmemory", "1")
            # the job ends while its output and result cannot be written: kept and retried
            assert wait_until(lambda: ended.exists(), 10)
            assert wait_until(lambda: "redis refused" in fn.node.log_text(), 20), \
                fn.node.log_text()[-2000:]
            admin.config_set("maxmemory", "0")
            res = resp.get()
            assert res.state.value == "SUCCESS" and res.stdout == "done\n"
            assert c.ping().startswith("PONG")
            assert srv.client().llen(f"{fn.prefix}result:{resp.id}") == 1
            assert marker.read_text() == "x\n"  # ran once
            assert "result not written" not in fn.node.log_text()
    finally:
        admin.config_set("maxmemory", "0")
        fn.node.stop()


@pytest.mark.slow
def test_redis_stopped_then_resumed(redis_server: RedisServer, tmp_path: Path) -> None:
    """Redis frozen (SIGSTOP) for 15 s, then resumed: the node does not hammer it with
    reconnects meanwhile, and serves new commands after."""
    srv = redis_server
    fn = start_fleet_node(srv, tmp_path, "n3")
    admin = srv.client()
    try:
        with fn.node.client(timeout=30, prefix=fn.prefix) as c:
            assert c.ping().startswith("PONG")
            before = int(admin.info("stats")["total_connections_received"])
            t0 = time.monotonic()
            os.kill(srv.pid, signal.SIGSTOP)
            try:
                wait_until(lambda: False, 15)  # the frozen window, not a sync point
            finally:
                os.kill(srv.pid, signal.SIGCONT)
            assert c.ping().startswith("PONG")
            attempts = int(admin.info("stats")["total_connections_received"]) - before
            window = time.monotonic() - t0
            # backoff, not a busy loop: well under 50 connection attempts a minute (2 a second
            # over the 15 s window, counting the reconnect after SIGCONT)
            assert attempts < 2 * window, (attempts, window)
            assert c.system("echo after").get().stdout == "after\n"
    finally:
        os.kill(srv.pid, signal.SIGCONT)
        fn.node.stop()
