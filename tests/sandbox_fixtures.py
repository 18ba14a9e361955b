"""Container test fixtures: a busybox rootfs, an OCI layout, a local registry, a node.

- :func:`busybox_rootfs`: a tiny root filesystem from Debian's ``busybox-static`` (one static
  binary plus a symlink per applet);
- :func:`oci_layout`: that root as a one-layer OCI image layout made with ``umoci``;
- :func:`registry`: Debian's ``docker-registry`` on 127.0.0.1 (plain http), for pulls;
- :func:`container_node`: a ``core0 dev`` whose network namespace is a fresh test netns
  (entered with ``nsenter --net`` only, so the node keeps the host's cgroup and sysfs mounts
  that the OCI runtime needs, while its bridges, nft table and veths stay in the test netns).

Test fixtures may use subprocess; core0 itself never does.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, require, require_root, stop_tree, wait_until
from net_fixtures import Netns, netns

BUSYBOX = "/bin/busybox"


def _static(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    return b"/lib64/ld-linux" not in head and b"ld-linux" not in head


def busybox_rootfs(dest: Path) -> Path:
    """A root filesystem with a static busybox and its applets under /bin."""
    require(BUSYBOX)
    if not _static(BUSYBOX):
        require("busybox-static (a static /bin/busybox)")
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "root", "var", "data"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for a in applets:
        if a != "busybox" and not (dest / "bin" / a).exists():
            os.symlink("busybox", dest / "bin" / a)
    (dest / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (dest / "etc" / "group").write_text("root:x:0:\n")
    return dest


def oci_layout(tmp: Path, rootfs: Path, tag: str = "base") -> Path:
    """A one-layer OCI image layout of ``rootfs`` (umoci), image ``<layout>:<tag>``."""
    require("umoci")
    layout = tmp / "layout"
    bundle = tmp / "umoci-bundle"
    run = lambda *a: subprocess.run(list(a), check=True, capture_output=True)  # noqa: E731
    run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", f"{layout}:{tag}")
    run("umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle))
    subprocess.run(["cp", "-a", f"{rootfs}/.", str(bundle / "rootfs")], check=True)
    run("umoci", "repack", "--image", f"{layout}:{tag}", str(bundle))
    run("umoci", "config", "--image", f"{layout}:{tag}", "--config.env", "FROM_IMAGE=yes",
        "--config.workingdir", "/root")
    shutil.rmtree(bundle)
    return layout


@dataclass
class Registry:
    port: int
    proc: subprocess.Popen[bytes]
    #: the netns it listens in ("" = the host's)
    ns: str = ""

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def push(self, layout: Path, tag: str, repo: str) -> str:
        require("skopeo")
        ref = f"{self.host}/{repo}"
        pre = ["nsenter", f"--net=/run/netns/{self.ns}", "--"] if self.ns else []
        subprocess.run([*pre, "skopeo", "copy", "--dest-tls-verify=false",
                        f"oci:{layout}:{tag}", f"docker://{ref}"], check=True,
                       capture_output=True)
        return ref


@contextlib.contextmanager
def registry(tmp: Path, ns: str = "") -> Iterator[Registry]:
    """docker-registry (distribution) on 127.0.0.1 (of netns ``ns``), plain http, storage in
    ``tmp``."""
    require("docker-registry")
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = tmp / "registry.yml"
    cfg.write_text(f"""version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: {tmp / 'registry'}
http:
  addr: 127.0.0.1:{port}
""")
    pre = ["nsenter", f"--net=/run/netns/{ns}", "--"] if ns else []
    proc = subprocess.Popen([*pre, "docker-registry", "serve", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        def up() -> bool:
            probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 0.5)"
            return subprocess.run([*pre, sys.executable, "-c", probe],
                                  capture_output=True).returncode == 0

        assert wait_until(up, 15), "docker-registry did not start"
        yield Registry(port, proc, ns)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


# ---------------------------------------------------------------- the node


@dataclass
class ContainerNode:
    ns: Netns
    pid: int
    dir: Path
    #: the embedded Redis's TCP port on 127.0.0.1 *inside* ``ns``
    port: int

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def socket(self) -> str:
        return str(self.state_dir / "redis.sock")

    def client(self):  # type: ignore[no-untyped-def]
        from core0_client import Client

        return Client(unix_socket_path=self.socket, timeout=60)

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "node.log").read_text(errors="replace")
        return ""

    def dispatcher_pid(self) -> int:
        import psutil

        # not a child of the dispatcher: between its vfork and its exec, a job's process
        # still shows the dispatcher's command line
        for k in psutil.Process(self.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if ("dispatcher" in " ".join(k.cmdline()) and k.status() != "zombie"
                        and "dispatcher" not in " ".join(k.parent().cmdline())):
                    return int(k.pid)
        raise AssertionError("no dispatcher")

    def restart_dispatcher(self, sig: int = signal.SIGKILL,
                           meanwhile: Callable[[], object] | None = None) -> None:
        """Send the dispatcher ``sig`` (then do ``meanwhile``, while no dispatcher runs) and
        wait until the next one answers a ping."""
        old = self.dispatcher_pid()
        os.kill(old, sig)
        if meanwhile is not None:
            meanwhile()

        def back() -> bool:
            try:
                if self.dispatcher_pid() == old:
                    return False
                c = self.client()
                try:
                    return bool(c.ping())
                finally:
                    c.close()
            except Exception:
                return False

        assert wait_until(back, 60, 0.1), self.log_text()[-3000:]

    def stop(self) -> None:
        stop_tree(self.pid)


def start_container_node(ns: Netns, base: Path, config: str | None = None) -> ContainerNode:
    require("redis-server", "nft", "dnsmasq", "nsenter", "runc")
    state = base / "state"
    state.mkdir(parents=True)
    log = open(base / "node.log", "wb")
    root = Path(__file__).resolve().parent.parent
    port = free_port()
    proc = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{ns.name}", "--", sys.executable, "-m", "core0", "dev",
         "--state-dir", str(state), "--redis-port", str(port),
         *(["--config", config] if config else [])],
        stdout=log, stderr=subprocess.STDOUT, cwd=str(root), start_new_session=True)
    log.close()
    node = ContainerNode(ns, proc.pid, base, port)
    deadline = time.monotonic() + 30
    while True:
        try:
            c = node.client()
            try:
                c.ping()
            finally:
                c.close()
            return node
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                node.stop()
                raise RuntimeError("core0 dev did not come up:\n" + node.log_text()[-4000:]
                                   ) from None
            time.sleep(0.1)


def in_netns(node: ContainerNode, script: str, *args: str, timeout: float = 300
             ) -> subprocess.CompletedProcess[str]:
    """Run a Python script in the node's netns (where its Redis TCP port is reachable)."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=f"{root}:{root / 'client'}")
    return subprocess.run(["nsenter", f"--net=/run/netns/{node.ns.name}", "--", sys.executable,
                           "-c", script, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def cleanup_containers(node: ContainerNode) -> None:
    """Last resort after a failed test: stop what the node's runtime still runs, unmount
    the root clones (by the node's own paths)."""
    for rt in ("runc", "crun"):
        root = node.state_dir / "sandbox" / rt
        if not root.exists():
            continue
        out = subprocess.run([rt, "--root", str(root), "list", "-q"], capture_output=True,
                             text=True).stdout.split()
        for cid in out:
            subprocess.run([rt, "--root", str(root), "delete", "--force", "--", cid],
                           capture_output=True)
    base = str(node.state_dir / "sandbox" / "containers")
    with open("/proc/self/mountinfo") as f:
        points = [ln.split()[4] for ln in f if ln.split()[4].startswith(base)]
    for p in sorted(points, reverse=True):
        subprocess.run(["umount", "-l", p], capture_output=True)
    for name in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
        if name.startswith(f"core0-{node_tag(node)}-"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    import glob

    for d in glob.glob(f"/sys/fs/cgroup/*/core0-{node_tag(node)}-*"):
        with contextlib.suppress(OSError):
            os.rmdir(d)


def node_tag(node: ContainerNode) -> str:
    """The node's tag in host-wide names (netns, cgroups, veths)."""
    import hashlib

    return hashlib.sha256(str(node.state_dir.resolve()).encode()).hexdigest()[:6]


@contextlib.contextmanager
def container_node(config: str = "", under: str | None = None) -> Iterator[ContainerNode]:
    """A node in its own netns; ``config`` is the text of a config file for it, ``under`` the
    directory its state dir is made in (a temp dir by default)."""
    require_root()
    base = Path(tempfile.mkdtemp(prefix="core0-ctr-", dir=under))
    cfg = None
    if config:
        (base / "core0.toml").write_text(config)
        cfg = str(base / "core0.toml")
    with netns("ctr") as ns:
        node = start_container_node(ns, base, cfg)
        try:
            yield node
        finally:
            node.stop()
            cleanup_containers(node)
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def cnode() -> Iterator[ContainerNode]:
    """A container node per test module (a module that needs another config defines its own
    ``cnode``); conftest.py makes this a fixture of every test module."""
    with container_node() as n:
        yield n


def build_probe(dest: Path) -> Path:
    """The security probe (tests/sandbox_probe.c), linked statically, at ``dest``."""
    require("gcc", "/usr/lib/x86_64-linux-gnu/libc.a")
    src = Path(__file__).resolve().parent / "sandbox_probe.c"
    subprocess.run(["gcc", "-static", "-O1", "-o", str(dest), str(src)], check=True,
                   capture_output=True)
    return dest


# ---------------------------------------------------------------- commands on a node


def call(node: ContainerNode, command: str, args: dict[str, Any], timeout: float = 300) -> Any:
    """The result of one command on ``node`` (whatever its state)."""
    c = node.client()
    try:
        return c.raw(command, args).get(timeout)
    finally:
        c.close()


def ok(node: ContainerNode, command: str, args: dict[str, Any], timeout: float = 300) -> Any:
    """The JSON data of one command that must succeed."""
    r = call(node, command, args, timeout)
    assert r.state.value == "SUCCESS", (command, r.data)
    return json.loads(r.data)


def inside(node: ContainerNode, cid: int, script: str, timeout: float = 60) -> Any:
    """The result of ``sh -c script`` dispatched into container ``cid``."""
    inner = ok(node, "corex.dispatch", {"container": cid, "command": {
        "command": "bash", "arguments": {"script": script}}})
    c = node.client()
    try:
        return c.response_for(inner).get(timeout)
    finally:
        c.close()


def dispatcher_or_zero(node: ContainerNode) -> int:
    """The node's dispatcher pid, 0 while none runs (e.g. between a kill and its restart)."""
    try:
        return node.dispatcher_pid()
    except AssertionError:
        return 0


def pingable(node: ContainerNode) -> bool:
    """The node answers core.ping."""
    try:
        return ok(node, "core.ping", {}) is not None
    except Exception:
        return False


def import_busybox(node: ContainerNode, name: str = "bb") -> str:
    """A busybox root made in the node's dir and imported as image ``name``; returns it."""
    root = busybox_rootfs(Path(tempfile.mkdtemp(prefix="bb-", dir=node.dir)) / "rootfs")
    ok(node, "container.image.import", {"name": name, "source": str(root)})
    return name


def warm_busybox(node: ContainerNode, name: str = "bb") -> str:
    """:func:`import_busybox`, then one container made and terminated: the first default nic
    makes the node's NAT bridge, which stays (so a test that counts links does not see it
    as a leak). Returns the image's name."""
    import_busybox(node, name)
    cid = ok(node, "corex.create", {"root": name})
    ok(node, "corex.terminate", {"container": cid})
    return name
