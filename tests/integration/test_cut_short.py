"""A command cut short by its dispatcher (killed -9, or stopped) is run again only if it may
run twice: one that changes the node (``CommandSpec.rerun`` false) is answered 503
"interrupted" and never run a second time (a second ``filesystem.move`` answered 404 for what
the first had done). A stopping dispatcher first gives such commands ``bus.stop_grace``
seconds to end and answer. Uses the test-only ``test.hold`` (CORE0_TEST_POISON=1): a command
that changes something, logs each run and waits for a file."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import Node, start_node, wait_until

pytestmark = pytest.mark.slow


def _node(tmp: Path, grace: float) -> Node:
    cfg = tmp / "core0.toml"
    cfg.write_text(f"[main]\ninclude = []\n[bus]\nstop_grace = {grace}\n")
    return start_node(tmp / "state", config=str(cfg), env={"CORE0_TEST_POISON": "1"})


def _restarted(node: Node, old: int) -> bool:
    def back() -> bool:
        try:
            return node.dispatcher_pid() != old and node.redis().ping()
        except Exception:
            return False

    return wait_until(back, 60, 0.2)


def _hold(node: Node, path: Path) -> str:
    jid = "hold-" + uuid.uuid4().hex[:8]
    node.redis().rpush("core:default", json.dumps(
        {"id": jid, "command": "test.hold", "arguments": {"path": str(path)}}))
    assert wait_until(lambda: Path(f"{path}.runs").exists(), 30)
    return jid


def _result(node: Node, jid: str) -> dict:  # type: ignore[type-arg]
    raw = node.redis().brpoplpush(f"result:{jid}", f"result:{jid}", 60)
    assert raw is not None, node.log_text()[-3000:]
    return json.loads(raw)


def test_killed_while_a_command_that_changes_the_node_runs(tmp_path: Path) -> None:
    """kill -9 mid-run: the next dispatcher answers 503 interrupted and runs nothing again
    (a command that changes nothing is run again: test_load.py's poison pill)."""
    node = _node(tmp_path, 5)
    try:
        go = tmp_path / "go"
        jid = _hold(node, go)
        r = node.redis()
        old = node.dispatcher_pid()
        os.kill(old, signal.SIGKILL)
        assert _restarted(node, old), node.log_text()[-3000:]
        res = _result(node, jid)
        assert res["state"] == "ERROR" and res["code"] == 503, res
        assert "interrupted" in res["critical"] and "test.hold" in res["critical"], res
        assert r.llen(f"result:{jid}") == 1
        assert r.ttl(f"result:{jid}") > 0
        go.touch()
        time.sleep(1)
        assert Path(f"{go}.runs").read_text().split() == [jid]  # never a second run
        assert not [x for x in r.lrange("core:default:processing", 0, -1) if jid.encode() in x]
        assert "answered as interrupted" in node.log_text()
    finally:
        node.stop()


def test_stopped_dispatcher_lets_a_running_command_end(tmp_path: Path) -> None:
    """SIGTERM mid-run: the command ending within ``bus.stop_grace`` answers SUCCESS from the
    stopping dispatcher (once); one that does not is answered 503 interrupted, not run again
    by the next dispatcher."""
    node = _node(tmp_path, 4)
    try:
        go = tmp_path / "go"
        jid = _hold(node, go)
        old = node.dispatcher_pid()
        t0 = time.monotonic()
        os.kill(old, signal.SIGTERM)
        timer = threading.Timer(1.0, go.touch)
        timer.start()
        res = _result(node, jid)
        assert res["state"] == "SUCCESS" and json.loads(res["data"]) == "held", res
        assert time.monotonic() - t0 < 4
        assert _restarted(node, old), node.log_text()[-3000:]
        assert Path(f"{go}.runs").read_text().split() == [jid]

        late = tmp_path / "late"
        jid2 = _hold(node, late)
        old = node.dispatcher_pid()
        t0 = time.monotonic()
        os.kill(old, signal.SIGTERM)
        res = _result(node, jid2)
        waited = time.monotonic() - t0
        assert res["state"] == "ERROR" and res["code"] == 503, res
        assert "interrupted" in res["critical"], res
        assert 3.5 < waited < 30, waited  # the grace, then the answer
        assert _restarted(node, old), node.log_text()[-3000:]
        late.touch()
        time.sleep(1)
        assert Path(f"{late}.runs").read_text().split() == [jid2]
        assert node.redis().llen(f"result:{jid2}") == 1
    finally:
        node.stop()
