"""The dispatcher's event loop: uvloop by default, asyncio's on request, the one reaper in both.

uvloop keeps SIGCHLD for its own subprocesses, so the reaper installs a plain handler there
(core0/proc/process.py); these tests run real children under each loop, and check from
/proc that a running node's dispatcher really runs on uvloop.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import uvloop
from conftest import Node, start_node

from core0.bus.dispatcher import loop_factory
from core0.proc import process
from core0.proc.spawn import devnull_fd, spawn_program


def test_loop_factory_default_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORE0_EVENT_LOOP", raising=False)
    assert loop_factory() is uvloop.new_event_loop
    monkeypatch.setenv("CORE0_EVENT_LOOP", "asyncio")
    assert loop_factory() is None


async def _children(n: int) -> list[int]:
    """Start ``n`` children that exit with 0..n-1 (and one that dies of SIGTERM), await each
    through the reaper; returns their raw wait statuses."""
    loop = asyncio.get_running_loop()
    reaper = process.Reaper()
    reaper.install(loop)
    seen_hook: list[int] = []
    try:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        fds = (devnull_fd(), devnull_fd(), devnull_fd())
        waits = []
        for i in range(n):
            pid = spawn_program("/bin/sh", ["sh", "-c", f"exit {i}"], env, fds)
            waits.append(reaper.watch(pid, seen_hook.append))
        pid = spawn_program("/bin/sh", ["sh", "-c", "kill -TERM $$"], env, fds)
        waits.append(reaper.watch(pid, seen_hook.append))
        statuses = list(await asyncio.wait_for(asyncio.gather(*waits), 30))
    finally:
        reaper.uninstall()
    # the exit hook ran for each child, while it was still a zombie
    assert sorted(seen_hook) == sorted(statuses)
    return statuses


@pytest.mark.parametrize("factory", [None, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_reaper_under_each_loop(factory: Callable[[], asyncio.AbstractEventLoop] | None) -> None:
    before = signal.getsignal(signal.SIGCHLD)
    with asyncio.Runner(loop_factory=factory) as runner:
        statuses = runner.run(_children(20))
    codes = [process.exit_code(s) for s in statuses]
    assert codes[:20] == [(i, 0) for i in range(20)]
    assert codes[20] == (-1, signal.SIGTERM)
    # uninstall leaves SIGCHLD as it found it (default), under either loop
    assert signal.getsignal(signal.SIGCHLD) in (before, signal.SIG_DFL)
    # and no child of ours is left, zombie or not
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _dispatcher(node: Node) -> int:
    pid = node.dispatcher_pid()
    assert pid
    return pid


def test_node_dispatcher_runs_on_uvloop(node: Node, tmp_path: Path) -> None:
    assert "uvloop/loop." in _maps(_dispatcher(node))
    # a process job completes with its exit status on it (SIGCHLD through the plain handler)
    c = node.client()
    res = c.system("sh -c 'exit 7'").get(30)
    assert res.code == 1007, res
    c.close()


def test_node_on_asyncio_when_asked(tmp_path: Path) -> None:
    n = start_node(tmp_path / "state", env={"CORE0_EVENT_LOOP": "asyncio"})
    try:
        assert "uvloop/loop." not in _maps(_dispatcher(n))
        c = n.client()
        res = c.system("sh -c 'exit 7'").get(30)
        assert res.code == 1007, res
        c.close()
    finally:
        n.stop()
