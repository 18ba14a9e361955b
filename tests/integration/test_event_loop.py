"""The dispatcher's event loop: uvloop by default, asyncio's on request, the one reaper in both.

uvloop keeps SIGCHLD for its own subprocesses, so the reaper installs a plain handler there
(core0/proc/process.py); under both loops it blocks SIGCHLD and reads it from a signalfd,
the handler catching what reaches a thread that does not block it. These tests run real
children under each loop (with and without such a thread), read the signal masks from /proc,
and check that a running node's dispatcher really runs on uvloop.
"""

from __future__ import annotations

import json
import signal
import subprocess  # test only: the reaper runs in a process of its own
import sys
from pathlib import Path

import pytest
import uvloop
from conftest import Node, start_node

from core0.bus.dispatcher import loop_factory


def test_loop_factory_default_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORE0_EVENT_LOOP", raising=False)
    assert loop_factory() is uvloop.new_event_loop
    monkeypatch.setenv("CORE0_EVENT_LOOP", "asyncio")
    assert loop_factory() is None


#: run in a process of its own: the suite's process has other children (nodes), which a
#: reaper installed here would reap too, and which would stay after the test
_REAPER_RUN = """
import asyncio, json, os, signal, sys, threading
import uvloop
from core0.proc import process
from core0.proc.spawn import devnull_fd, spawn_program

def sigchld_blocked(status):
    for line in status.splitlines():
        if line.startswith("SigBlk:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGCHLD - 1)))

def my_mask():
    with open("/proc/thread-self/status") as f:
        return sigchld_blocked(f.read())

async def children(n):
    reaper = process.Reaper()
    reaper.install(asyncio.get_running_loop())
    hooks = []
    try:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        fds = (devnull_fd(), devnull_fd(), devnull_fd())
        seen["signalfd"], seen["blocked"] = reaper._sigfd >= 0, my_mask()
        r, w = os.pipe()
        pid = spawn_program("/bin/cat", ["cat", "/proc/self/status"], env,
                            (fds[0], w, fds[2]))
        os.close(w)
        text = b""
        while chunk := await asyncio.get_running_loop().run_in_executor(None, os.read, r, 65536):
            text += chunk
        os.close(r)
        seen["child_blocked"] = sigchld_blocked(text.decode())
        await asyncio.wait_for(reaper.watch(pid), 30)
        waits = []
        for i in range(n):
            pid = spawn_program("/bin/sh", ["sh", "-c", f"exit {i}"], env, fds)
            waits.append(reaper.watch(pid, hooks.append))
        pid = spawn_program("/bin/sh", ["sh", "-c", "kill -TERM $$"], env, fds)
        waits.append(reaper.watch(pid, hooks.append))
        statuses = list(await asyncio.wait_for(asyncio.gather(*waits), 30))
    finally:
        reaper.uninstall()
    return statuses, hooks

seen = {}
if sys.argv[2] == "thread":  # started before the reaper: SIGCHLD is not blocked in it
    threading.Thread(target=threading.Event().wait, daemon=True).start()
factory = uvloop.new_event_loop if sys.argv[1] == "uvloop" else None
with asyncio.Runner(loop_factory=factory) as runner:
    statuses, hooks = runner.run(children(20))
seen["blocked_after"] = my_mask()
try:
    os.waitpid(-1, os.WNOHANG)
    left = True
except ChildProcessError:
    left = False
print(json.dumps({"codes": [process.exit_code(s) for s in statuses],
                  "hooks": sorted(hooks) == sorted(statuses), "left": left,
                  "sigchld_default": signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL,
                  **seen}))
"""


@pytest.mark.parametrize("thread", ["", "thread"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_reaper_under_each_loop(loop: str, thread: str) -> None:
    run = subprocess.run([sys.executable, "-c", _REAPER_RUN, loop, thread or "none"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["codes"][:20] == [[i, 0] for i in range(20)]
    assert out["codes"][20] == [-1, signal.SIGTERM]
    assert out["hooks"]  # the exit hook ran for each child, while it was still a zombie
    assert not out["left"]  # nothing left, zombie or not
    assert out["sigchld_default"]  # uninstall leaves SIGCHLD at its default, under either loop
    # SIGCHLD is read from a signalfd while installed, blocked in the loop's thread only then,
    # and never blocked in a child
    assert out["signalfd"] and out["blocked"] and not out["blocked_after"]
    assert out["child_blocked"] is False


def _check_node(node: Node, on_uvloop: bool) -> None:
    """Which loop the node's dispatcher has mapped (/proc), and that a process job still gets
    its exit status (SIGCHLD through the loop's reaper)."""
    pid = node.dispatcher_pid()
    assert pid
    assert ("uvloop/loop." in Path(f"/proc/{pid}/maps").read_text()) is on_uvloop
    c = node.client()
    res = c.system("sh -c 'exit 7'").get(30)
    assert res.code == 1007, res
    c.close()


def test_node_dispatcher_runs_on_uvloop(node: Node) -> None:
    _check_node(node, on_uvloop=True)


def test_node_on_asyncio_when_asked(tmp_path: Path) -> None:
    n = start_node(tmp_path / "state", env={"CORE0_EVENT_LOOP": "asyncio"})
    try:
        _check_node(n, on_uvloop=False)
    finally:
        n.stop()
