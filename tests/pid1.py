"""Run ``core0 init`` as PID 1 of its own namespaces (for the PID-1 tests).

``unshare --pid --fork --mount-proc --uts --ipc --net`` gives init a PID namespace (it is PID 1
there), a private mount table and /proc, its own hostname and an empty network namespace; the
config turns off what would touch the host (mounts, module loading, DHCP). The node is reached
through its redis unix socket in the state dir (the TCP port lives in the new network
namespace). Everything is killed by PID at the end: SIGKILL to the namespace's init ends every
process in it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent

BASE_CONFIG = """
[main]
include = []
hostname = "core0-pid1"
[init]
mounts = false
modules = false
shutdown_grace = 3.0
{init}
[net]
{net}
[redis]
port = 0
appendonly = false
"""


@dataclass
class Pid1Node:
    """A ``core0 init`` in its own namespaces."""

    proc: subprocess.Popen[bytes]  #: the unshare process (host side)
    state_dir: Path
    log: Path

    @property
    def socket(self) -> str:
        return str(self.state_dir / "redis.sock")

    @property
    def init_pid(self) -> int:
        """Host pid of the namespace's PID 1."""
        kids = psutil.Process(self.proc.pid).children()
        assert kids, "unshare has no child"
        return kids[0].pid

    def client(self, **kw: Any):  # type: ignore[no-untyped-def]
        from core0_client import Client

        kw.setdefault("timeout", 30)
        return Client(unix_socket_path=self.socket, **kw)

    def service_pid(self, name: str) -> int | None:
        """Host pid of a supervised service ("redis-server", "dispatcher")."""
        with contextlib.suppress(psutil.Error):
            for k in psutil.Process(self.init_pid).children():
                cmd = " ".join(k.cmdline())
                if name == "dispatcher" and "core0" in cmd and "dispatcher" in cmd:
                    return k.pid
                if name == "redis-server" and "redis-server" in cmd:
                    return k.pid
        return None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_exit(self, timeout: float) -> int:
        """The unshare process's return code (-signal: how the namespace's init ended)."""
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(psutil.Error, AssertionError, ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def nspid(host_pid: int) -> list[int]:
    """NSpid of a process: its pid in each namespace level, innermost last."""
    for line in Path(f"/proc/{host_pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    return []


def start_pid1(tmp: Path, init: str = "", net: str = "enabled = false", wait: bool = True,
               netns: str | None = None) -> Pid1Node:
    """Start init in new namespaces (or in the named network namespace) and wait for ping."""
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = tmp / "core0.toml"
    cfg.write_text(BASE_CONFIG.format(init=init, net=net))
    state = tmp / "state"
    log = tmp / "init.log"
    unshare = ["unshare", "--pid", "--fork", "--mount-proc", "--uts", "--ipc"]
    if netns is None:
        unshare.append("--net")
        prefix: list[str] = []
    else:
        prefix = ["ip", "netns", "exec", netns]
    argv = [*prefix, *unshare, sys.executable, "-m", "core0", "init", "--config", str(cfg),
            "--state-dir", str(state)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORE0_")}
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=str(ROOT),
                                start_new_session=True, env=env)
    node = Pid1Node(proc, state, log)
    if wait:
        wait_ping(node, 30)
    return node


def wait_ping(node: Pid1Node, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if node.proc.poll() is not None:
            raise RuntimeError(f"init ended ({node.proc.returncode}):\n{node.log_text()[-4000:]}")
        if os.path.exists(node.socket):
            try:
                c = node.client(timeout=5, retries=1)
                try:
                    if c.ping().startswith("PONG"):
                        return
                finally:
                    c.close()
            except Exception:
                pass
        if time.monotonic() > deadline:
            node.kill()
            raise RuntimeError("core0 init did not answer:\n" + node.log_text()[-4000:])
        time.sleep(0.1)
