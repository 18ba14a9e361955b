"""Fixtures: real redis-servers and real core0 nodes, cleaned up by PID.

In CI (``CI=true``) a missing component fails the test instead of skipping it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
#: fixtures shared by many test modules (e.g. ``cnode``, a container node per module)
pytest_plugins = ["sandbox_fixtures", "image_fixtures"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

sys.path.insert(0, str(ROOT / "tests"))


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                   items: list[pytest.Item]) -> None:
    """The long fuzz run goes last and starts in the background now (see its module)."""
    import fuzz_background as fuzz

    last = [i for i in items if i.nodeid.endswith("test_fuzz_atheris.py::test_fuzz_wire_atheris")]
    for i in last:
        items.remove(i)
    items.extend(last)
    if not config.option.collectonly:
        fuzz.start_background(items)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import fuzz_background as fuzz

    fuzz.stop_background()


def unavailable(reason: str) -> NoReturn:
    """The test cannot run here: skip locally, fail under CI=true (CI must provide it).
    The only way a test skips: never a bare ``pytest.skip``."""
    if IN_CI:
        pytest.fail(f"{reason} (CI must provide it: see .ci/run)")
    pytest.skip(reason)


def kernel_lacks(reason: str) -> NoReturn:
    """The host's kernel has no driver for this (no loadable modules here): skip, also under
    CI, since no install step can add it. Every such test has a twin that runs inside the node
    image under qemu, whose kernel has the driver (tests/e2e/test_vm_full.py)."""
    pytest.skip(f"{reason} (covered under qemu: tests/e2e/test_vm_full.py)")


def require(*tools: str) -> None:
    """Skip (locally) or fail (in CI) when a tool is missing."""
    missing = [t for t in tools if shutil.which(t) is None and not os.path.exists(t)]
    if missing:
        unavailable(f"missing: {', '.join(missing)}")


def require_root() -> None:
    if os.geteuid() != 0:
        unavailable("needs root")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond, timeout: float = 10.0, step: float = 0.02) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


def code_of(fn, *a, **kw) -> int:  # type: ignore[no-untyped-def]
    """The result code of a client call that must fail (ResultError)."""
    from core0_client import ResultError

    with pytest.raises(ResultError) as ei:
        fn(*a, **kw)
    return ei.value.code


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Kill a process and every descendant (by walking /proc)."""
    import psutil

    try:
        p = psutil.Process(pid)
        kids = p.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for k in [p, *kids]:
        with contextlib.suppress(psutil.Error):
            k.send_signal(sig)


def stop_tree(pid: int, grace: float = 15.0) -> None:
    """Stop a node started by a test: TERM it, reap it (it is the test's child) for up to
    ``grace`` seconds, then KILL whatever is left of its tree."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                break
        except ChildProcessError:
            break
        time.sleep(0.05)
    kill_tree(pid)


@dataclass
class RedisServer:
    port: int
    socket: str
    pid: int
    dir: Path

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=self.socket)


def start_redis(tmp: Path, appendonly: bool = False, bind: str = "127.0.0.1",
                netns: str | None = None) -> RedisServer:
    """A redis-server (``netns``: inside that network namespace, listening on ``bind``; its
    unix socket reaches it from anywhere on this machine)."""
    require("redis-server")
    import subprocess  # test fixture only: core0 itself never uses subprocess

    port = free_port()
    sock = str(tmp / "redis.sock")
    proc = subprocess.Popen(
        [*(["ip", "netns", "exec", netns] if netns else []),
         "redis-server", "--port", str(port), "--bind", bind, "--unixsocket", sock,
         # off the loopback only in a namespace of the test's own (fleet_fixtures.fleet_lan),
         # whose nodes log in as ACL users
         "--protected-mode", "yes" if bind == "127.0.0.1" else "no",
         "--unixsocketperm", "700", "--save", "", "--appendonly",
         "yes" if appendonly else "no", "--dir", str(tmp), "--maxmemory-policy", "noeviction"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    r = redis.Redis(unix_socket_path=sock)
    assert wait_until(lambda: _ping(r), 10), "redis-server did not start"
    return RedisServer(port, sock, proc.pid, tmp)


def _ping(r: redis.Redis) -> bool:
    try:
        return bool(r.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = start_redis(tmp_path)
    yield srv
    kill_tree(srv.pid)


@dataclass
class Node:
    """A running ``core0 dev``: supervisor + embedded redis-server + dispatcher."""

    pid: int
    port: int
    state_dir: Path
    log: Path

    @property
    def socket(self) -> str:
        return str(self.state_dir / "redis.sock")

    def redis(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=self.socket, socket_timeout=120)

    def client(self, **kw):  # type: ignore[no-untyped-def]
        from core0_client import Client

        return Client("127.0.0.1", self.port, **kw)

    def pids(self) -> dict[str, int]:
        """Pids of the supervisor's services, by name."""
        import psutil

        out = {}
        for k in psutil.Process(self.pid).children():
            try:
                if k.status() == psutil.STATUS_ZOMBIE:
                    continue
                cmd = " ".join(k.cmdline())
            except psutil.Error:
                continue
            if "redis-server" in cmd:
                out["redis"] = k.pid
            elif "core0 dispatcher" in cmd or "core0" in cmd and "dispatcher" in cmd:
                out["dispatcher"] = k.pid
        return out

    def dispatcher_pid(self) -> int:
        return self.pids()["dispatcher"]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        import psutil

        with contextlib.suppress(psutil.Error):
            psutil.Process(self.pid).wait(timeout)
        kill_tree(self.pid)


def start_configured_node(base: Path, config: str) -> Node:
    """A node with its config file ``base/core0.toml`` (the text ``config``) and its state
    dir ``base/state``."""
    cfg = base / "core0.toml"
    cfg.write_text(config)
    return start_node(base / "state", config=str(cfg))


def start_rooted_node(base: Path) -> tuple[Node, Path]:
    """A node whose ``main.filesystem_root`` is ``base/root`` (made here), with no include
    dir and two queues, ``default`` (admin) and ``op`` (operator): (node, root)."""
    root = base / "root"
    root.mkdir()
    return start_configured_node(base, f'[main]\nfilesystem_root = "{root}"\ninclude = []\n'
                                       '[bus]\nqueues = {default = "admin", op = "operator"}\n'
                                 ), root


#: the supervisor's delay before it starts a dispatcher that ended, in the nodes
#: :func:`start_node` starts. The real rule (1 s doubling to 60 s, reset by a run of 10 s:
#: core0/backoff.py) is ``fresh_node``'s (tests/integration/test_node.py checks it) and the
#: container nodes' (tests/sandbox_fixtures.py); a module's nodes, whose tests kill the
#: dispatcher one after another, waited up to 16 s for each restart.
RESTART_DELAY = "0.3"


def start_node(state_dir: Path, config: str | None = None, extra: list[str] | None = None,
               env: dict[str, str] | None = None, port: int | None = None,
               prefix: str = "", password: str | None = None, netns: str | None = None,
               socket_path: str | None = None, restart_delay: str | None = RESTART_DELAY
               ) -> Node:
    """Start ``core0 dev`` and wait until core.ping answers (``netns``: inside that network
    namespace; ``socket_path``: its Redis's unix socket, to ask from here; ``restart_delay``:
    the supervisor's fixed delay before it starts an ended dispatcher again, None for the
    real backoff)."""
    require("redis-server")
    import subprocess  # test fixture only

    port = port or free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir.parent / f"{state_dir.name}.log"
    argv = [*(["ip", "netns", "exec", netns] if netns else []),
            sys.executable, "-m", "core0", "dev", "--state-dir", str(state_dir),
            "--redis-port", str(port)]
    if config:
        argv += ["--config", config]
    argv += extra or []
    e = dict(os.environ)
    if restart_delay is not None:
        e["CORE0_TEST_RESTART_DELAY"] = restart_delay
    e.update(env or {})
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=str(ROOT),
                                start_new_session=True, env=e)
    node = Node(proc.pid, port, state_dir, log)
    from core0_client import Client

    c = Client("127.0.0.1", port, timeout=5, retries=2, prefix=prefix, password=password,
               unix_socket_path=socket_path)
    deadline = time.monotonic() + 30
    while True:
        try:
            c.ping()
            break
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                node.stop()
                raise RuntimeError(
                    "core0 dev did not come up:\n" + node.log_text()[-4000:]) from None
            time.sleep(0.1)
    c.close()
    return node


@contextlib.contextmanager
def configured_node(config: str, prefix: str = "core0-test-") -> Iterator[Node]:
    """A node started with the config file ``config`` (its text) in a temp dir of its own,
    stopped and removed after."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    n = start_configured_node(d, config)
    try:
        yield n
    finally:
        n.stop()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    """One core0 node per test module (fast); tests must not break it."""
    d = Path(tempfile.mkdtemp(prefix="core0-test-"))
    n = start_node(d / "state")
    yield n
    n.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fresh_node(tmp_path: Path) -> Iterator[Node]:
    """A node of the test's own (for tests that kill or reconfigure things), with the
    supervisor's real restart backoff."""
    n = start_node(tmp_path / "state", restart_delay=None)
    yield n
    n.stop()


@pytest.fixture
def client(node: Node):  # type: ignore[no-untyped-def]
    c = node.client()
    yield c
    c.close()
