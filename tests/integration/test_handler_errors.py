"""The job engine is the one place where exceptions become results: a handler's bug is a 500
that does not end a recurring or restarting job; a handler's own TimeoutError is a 504 ERROR,
not max_time's TIMEOUT (408). Uses the test-only ``test.raise`` (CORE0_TEST_POISON=1)."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import require_root, start_node
from wire import cmd, push, result, run, wait_for


@pytest.fixture(scope="module")
def r(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    node = start_node(tmp_path_factory.mktemp("errors") / "state",
                      env={"CORE0_TEST_POISON": "1"})
    c = node.redis()
    try:
        yield c
    finally:
        c.close()
        node.stop()


def test_a_handler_bug_is_a_500(r: redis.Redis) -> None:
    res = run(r, "test.raise", {"kind": "bug"})
    assert res["state"] == "ERROR" and res["code"] == 500
    assert "RuntimeError" in res["critical"] and "a bug in a handler" in res["critical"]


def test_a_handlers_own_timeout_is_504_not_timeout(r: redis.Redis) -> None:
    res = run(r, "test.raise", {"kind": "timeout"})
    assert res["state"] == "ERROR" and res["code"] == 504
    assert "the tool did not answer" in res["critical"]
    # with a max_time that is not reached it is still the handler's own timeout
    res = run(r, "test.raise", {"kind": "timeout"}, max_time=30)
    assert res["state"] == "ERROR" and res["code"] == 504


def test_max_time_of_a_builtin_is_timeout(r: redis.Redis) -> None:
    res = run(r, "test.raise", {"kind": "sleep"}, max_time=1, timeout=15)
    assert res["state"] == "TIMEOUT" and res["code"] == 408
    assert "max_time" in res["critical"]


def test_a_kill_held_back_by_a_last_step_still_gets_its_result(r: redis.Redis) -> None:
    """A handler whose last step runs to its end under a kill (cancel.atomic, as nft's
    commit, a namespace made, a file opened) and returns right after it: the kill comes after
    the step and the job answers KILLED. Before, the kill held back by the step was delivered
    while the engine wrote the result, which it cut: no result, ever, and the job stayed
    listed (as done)."""
    jid = push(r, cmd("test.raise", {"kind": "atomic"}))
    assert wait_for(lambda: run(r, "job.list", {"id": jid})["data"] not in ("[]", None), 5)
    assert run(r, "job.kill", {"id": jid})["state"] == "SUCCESS"
    res = result(r, jid, 10)
    assert res["state"] == "KILLED", res
    assert run(r, "job.list", {"id": jid})["code"] == 404  # over, not listed as running


def test_a_bug_does_not_end_a_recurring_job(r: redis.Redis) -> None:
    jid = push(r, cmd("test.raise", {"kind": "bug"}, recurring_period=1))
    assert wait_for(lambda: r.exists(f"result:{jid}:2"), 15)
    runs = [json.loads(r.lindex(f"result:{jid}:{n}", 0)) for n in (1, 2)]
    assert [x["code"] for x in runs] == [500, 500] and [x["run"] for x in runs] == [1, 2]
    assert not r.exists(f"result:{jid}")  # still scheduled
    assert run(r, "job.unschedule", {"id": jid})["state"] == "SUCCESS"
    final = result(r, jid, 10)
    assert final["code"] == 500 and final["run"] >= 2


def test_a_bug_is_restarted_by_max_restart(r: redis.Redis) -> None:
    res = run(r, "test.raise", {"kind": "bug"}, max_restart=2, timeout=20)
    assert res["state"] == "ERROR" and res["code"] == 500 and res["run"] == 3


def test_killed_while_running_is_killed(r: redis.Redis) -> None:
    jid = push(r, cmd("test.raise", {"kind": "sleep"}))
    assert r.brpoplpush(f"result:{jid}:flag", f"result:{jid}:flag", 5) is not None
    assert run(r, "job.kill", {"id": jid})["state"] == "SUCCESS"
    res = result(r, jid, 10)
    assert res["state"] == "KILLED" and res["code"] == 499


def test_a_full_state_dir_is_a_503_and_passes(tmp_path: Path) -> None:
    """A job that cannot write its log because the node's state dir is full is refused with a
    503 saying so (a condition of the node, not a handler's bug: no traceback), pings still
    answer, and the same command runs once space is freed. Redis keeps no file in this state
    dir here (no AOF), so only core0's own writes meet the full filesystem."""
    require_root()
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(state)], check=True)
    conf = tmp_path / "core0.toml"
    conf.write_text("[redis]\nappendonly = false\n")
    node = None
    try:
        node = start_node(state, config=str(conf))
        r = node.redis()
        with open(state / "fill", "wb") as f:
            with contextlib.suppress(OSError):  # ENOSPC: the filesystem is full
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
        res = run(r, "core.system", {"name": "echo", "args": ["full"]})
        assert (res["state"], res["code"]) == ("ERROR", 503), res
        assert "No space left on device" in res["critical"]
        assert run(r, "core.ping")["state"] == "SUCCESS"
        (state / "fill").unlink()
        res = run(r, "core.system", {"name": "echo", "args": ["room again"]})
        assert (res["state"], res["streams"][0]) == ("SUCCESS", "room again\n"), res
        assert "Traceback" not in node.log_text()
        r.close()
    finally:
        if node is not None:
            node.stop()
        subprocess.run(["umount", "-l", str(state)], check=False)
