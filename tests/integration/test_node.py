"""Node-level behaviour: queue roles, key prefix, orphans, supervisor restarts."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from pathlib import Path

import psutil
import pytest
from conftest import start_node, wait_until
from wire import keys_without_ttl


def _cfg(tmp: Path, text: str) -> str:
    p = tmp / "core0.toml"
    p.write_text("[main]\ninclude = []\n" + text)
    return str(p)


def test_queue_roles_and_prefix(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    cfg = _cfg(tmp_path, '[bus]\nprefix = "{n1}:"\n'
                         'queues = {default = "admin", ops = "operator", ro = "read-only"}\n')
    node = start_node(tmp_path / "state", config=cfg, prefix="{n1}:")
    try:
        r = node.redis()

        def run(queue: str, command: str, args: dict) -> dict:
            jid = uuid.uuid4().hex
            r.rpush(f"{{n1}}:core:{queue}", json.dumps(
                {"id": jid, "command": command, "arguments": args}))
            raw = r.brpoplpush(f"{{n1}}:result:{jid}", f"{{n1}}:result:{jid}", 10)
            assert raw is not None, (queue, command)
            return json.loads(raw)

        touch = {"name": "touch", "args": [str(marker)]}
        res = run("ro", "core.system", touch)
        assert res["state"] == "ERROR" and res["code"] == 403
        assert "not permitted for this queue" in res["critical"]
        res = run("ops", "core.system", touch)
        assert res["code"] == 403
        res = run("ro", "job.kill", {"id": "x"})
        assert res["code"] == 403
        assert not marker.exists(), "a forbidden command ran"
        assert run("ro", "core.ping", {})["state"] == "SUCCESS"
        assert run("ro", "info.mem", {})["state"] == "SUCCESS"
        assert run("ops", "job.list", {})["state"] == "SUCCESS"
        assert run("default", "core.system", touch)["state"] == "SUCCESS"
        assert marker.exists()
        # the role comes from the queue, never from the payload
        jid = uuid.uuid4().hex
        r.rpush("{n1}:core:ro", json.dumps({"id": jid, "command": "core.system",
                                            "arguments": touch, "role": "admin"}))
        res = json.loads(r.brpoplpush(f"{{n1}}:result:{jid}", f"{{n1}}:result:{jid}", 10))
        assert res["code"] == 400
        # nothing under 0-core's unprefixed names; everything prefixed has a TTL
        assert not [k for k in r.scan_iter("result:*")]
        assert all(k.startswith(b"{n1}:") for k in r.scan_iter("*"))
        assert wait_until(lambda: not keys_without_ttl(r), 5), keys_without_ttl(r)
        from core0_client import Client

        c = Client("127.0.0.1", node.port, prefix="{n1}:", queue="ro")
        assert c.ping().startswith("PONG")
        c.close()
    finally:
        node.stop()


def _zombies_under(pid: int) -> int:
    n = 0
    for p in psutil.Process(pid).children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                n += 1
        except psutil.Error:
            pass
    return n


def test_orphans_reaped(fresh_node) -> None:  # type: ignore[no-untyped-def]
    c = fresh_node.client()
    res = c.bash("for i in $(seq 1000); do (sleep 0.2 &) ; done; echo forked").get(60)
    assert res.stdout == "forked\n"
    disp = fresh_node.dispatcher_pid()
    assert wait_until(lambda: _zombies_under(fresh_node.pid) == 0, 5)
    assert wait_until(lambda: len(psutil.Process(disp).children()) == 0, 10)
    # a job that exits 7 still reports 1007 with orphans being reaped around it
    assert c.system("sh -c 'exit 7'").get(10).code == 1007
    c.close()


@pytest.mark.slow
def test_supervisor_restarts_dispatcher_with_backoff(fresh_node) -> None:  # type: ignore[no-untyped-def]
    kills: list[float] = []
    seen: list[float] = []
    for _ in range(3):
        pid = fresh_node.dispatcher_pid()
        kills.append(time.monotonic())
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda pid=pid: fresh_node.pids().get("dispatcher", pid) != pid, 30)
        seen.append(time.monotonic())
        c = fresh_node.client(timeout=30)
        assert c.ping().startswith("PONG")
        c.close()
    delays = [float(x) for x in re.findall(r"dispatcher: restart in (\d+)s",
                                            fresh_node.log_text())][:3]
    assert len(delays) == 3 and delays[0] == 1.0, delays
    # each restart waits twice as long as the one before, unless the run it follows lasted
    # `healthy` (10 s) or more, which resets the delay to 1 s. The test's clock bounds a run
    # from above (it began after the kill before it, it had ended when its successor was
    # seen): a slow machine (runs over 10 s) may be allowed a reset, never a wrong delay.
    for i in (1, 2):
        longest = seen[i] - kills[i - 1]
        want = {2 * delays[i - 1]} if longest < 10 else {2 * delays[i - 1], 1.0}
        assert delays[i] in want, (delays, round(longest, 1))


def test_dispatcher_sigterm_leaves_jobs_for_the_next(fresh_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    c = fresh_node.client(timeout=30)
    go = tmp_path / "go"  # the job runs until told to end: no race with a sleep
    resp = c.bash(f"echo begin; while [ ! -e {go} ]; do sleep 0.05; done; echo end")
    assert wait_until(lambda: any(j["id"] == resp.id and j["pid"] for j in c.job.list()), 30)
    pid = [j["pid"] for j in c.job.list() if j["id"] == resp.id][0]
    old = fresh_node.dispatcher_pid()
    os.kill(old, signal.SIGTERM)
    assert wait_until(lambda: fresh_node.pids().get("dispatcher", old) != old, 30)
    assert psutil.pid_exists(pid)
    go.touch()
    res = resp.get(30)
    assert res.state.value == "SUCCESS" and res.stdout == "begin\nend\n"
    c.close()


def test_max_jobs_back_pressure(tmp_path: Path) -> None:
    """At bus.max_jobs running jobs the dispatcher stops taking commands (they wait in the
    queue, not in memory) and takes them again as jobs end."""
    cfg = _cfg(tmp_path, "[bus]\nmax_jobs = 2\n")
    node = start_node(tmp_path / "state", config=cfg)
    marks, go = tmp_path / "marks", tmp_path / "go"
    # each job notes its start, then holds its slot until the test lets it go: nothing here
    # depends on how fast the machine is
    hold = f"echo x >> {marks}; while [ ! -e {go} ]; do sleep 0.05; done"
    try:
        c = node.client(timeout=30)
        resps = [c.system(["sh", "-c", hold]) for _ in range(5)]
        r = node.redis()

        def started() -> int:
            return len(marks.read_text().split()) if marks.exists() else 0

        # the pop loop decides whether to take more when it launches jobs, before they run:
        # two jobs seen running means that decision is made (no sleep needed to see it)
        assert wait_until(lambda: started() == 2, 30), started()
        assert r.llen("core:default") == 3, "commands should wait in the queue"
        assert started() == 2
        go.touch()
        for resp in resps:
            assert resp.get(30).state.value == "SUCCESS"
        assert started() == 5 and r.llen("core:default") == 0
        c.close()
    finally:
        node.stop()


def test_exit_status_of_a_job_spawned_as_the_dispatcher_died(tmp_path: Path) -> None:
    """The dispatcher dies in the instant between spawning a job and writing its pid down; the
    job exits before a new dispatcher is up. Its exit status still comes back: the supervisor
    reaped it and finds it again by name and start time."""
    script = tmp_path / "core0-crashme"
    script.write_text("#!/bin/sh\necho ran >> \"$1\"\nexit 3\n")
    script.chmod(0o755)
    marks = tmp_path / "ran"
    node = start_node(tmp_path / "state", env={"CORE0_TEST_CRASH_AFTER_SPAWN": script.name})
    try:
        c = node.client(timeout=60)
        old = node.dispatcher_pid()
        res = c.system([str(script), str(marks)]).get(60)
        assert node.dispatcher_pid() != old, "the dispatcher should have died and restarted"
        assert res.code == 1003, res
        assert marks.read_text() == "ran\n"  # it ran once
        c.close()
    finally:
        node.stop()
