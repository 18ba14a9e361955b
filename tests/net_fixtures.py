"""Network test fixtures: named network namespaces and a core0 node running inside one.

The node under test runs in its own "host" namespace (``ip netns exec <host> core0 dev``), the
way a real node owns the network namespace it runs in: its bridges, NAT, nft table, dnsmasq
and ip_forward all live there, and the real host's network is never touched. Peer namespaces
("remote hosts", "containers") are made by the fixtures and reached by the node by name
(``netns`` arguments) or through veths. Everything is removed by PID (every process in a
namespace is killed) and by name (the namespaces are deleted, which deletes their links and
nft tables), also when a test fails.

Test fixtures may use subprocess and the ``ip`` CLI; core0 itself never does.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

_seq = itertools.count()
TAG = f"c0n{os.getpid() % 100000}"


def unique(role: str) -> str:
    """A netns name unique to this test process (prefix shows whose it is)."""
    return f"{TAG}-{role}{next(_seq)}"


def sh(*argv: str, check: bool = True, timeout: float = 30, ns: str | None = None
       ) -> subprocess.CompletedProcess[str]:
    """Run a tool (inside ``ns`` when given); never a shell."""
    full = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    return subprocess.run(full, check=check, capture_output=True, text=True, timeout=timeout)


def ns_pids(name: str) -> list[int]:
    r = sh("ip", "netns", "pids", name, check=False)
    return [int(p) for p in r.stdout.split()] if r.returncode == 0 else []


def kill_ns(name: str) -> None:
    """Kill every process of netns ``name`` (by PID), then delete the namespace (by name)."""
    for _ in range(3):
        pids = ns_pids(name)
        if not pids:
            break
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        time.sleep(0.1)
    sh("ip", "netns", "del", name, check=False)


@dataclass
class Netns:
    name: str
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def run(self, *argv: str, check: bool = True, timeout: float = 30
            ) -> subprocess.CompletedProcess[str]:
        return sh(*argv, check=check, timeout=timeout, ns=self.name)

    def spawn(self, *argv: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(["ip", "netns", "exec", self.name, *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                p.wait(5)
        kill_ns(self.name)


@contextlib.contextmanager
def netns(role: str) -> Iterator[Netns]:
    name = unique(role)
    sh("ip", "netns", "add", name)
    ns = Netns(name)
    try:
        ns.run("ip", "link", "set", "lo", "up")
        yield ns
    finally:
        ns.close()


# ---------------------------------------------------------------- a node in a netns


@dataclass
class NetNode:
    """``core0 dev`` running inside netns ``ns`` (unix socket only: no TCP port)."""

    ns: Netns
    pid: int
    dir: Path

    @property
    def socket(self) -> str:
        return str(self.dir / "state" / "redis.sock")

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    def client(self, queue: str | None = None, timeout: float = 10):  # type: ignore[no-untyped-def]
        from core0_client import Client

        kw = {"queue": queue} if queue is not None else {}
        return Client(unix_socket_path=self.socket, timeout=timeout, **kw)

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "node.log").read_text(errors="replace")
        return ""

    def stop(self) -> None:
        from conftest import stop_tree

        stop_tree(self.pid)


def start_node_in(ns: Netns, base: Path, config: str | None = None) -> NetNode:
    from conftest import require

    require("redis-server", "nft", "dnsmasq")
    state = base / "state"
    state.mkdir(parents=True)
    log = open(base / "node.log", "wb")  # the child keeps it open
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns.name, sys.executable, "-m", "core0", "dev",
         "--state-dir", str(state), "--redis-port", "0",
         *(["--config", config] if config else [])],
        stdout=log, stderr=subprocess.STDOUT, cwd=str(root), start_new_session=True)
    log.close()
    node = NetNode(ns, proc.pid, base)
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


@contextlib.contextmanager
def node_in_netns(config: str | None = None) -> Iterator[NetNode]:
    """A fresh "host" netns with a core0 node inside (``config``: the text of its TOML
    config); everything removed afterwards."""
    from conftest import require_root

    require_root()
    base = Path(tempfile.mkdtemp(prefix="core0-net-"))
    with netns("host") as ns:
        cfg = None
        if config is not None:
            (base / "core0.toml").write_text(config)
            cfg = str(base / "core0.toml")
        node = start_node_in(ns, base, cfg)
        try:
            yield node
        finally:
            node.stop()
            shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- helpers for tests

#: a udhcpc script (Python, no shell): configures the leased address and default route
_DHCP_SCRIPT = """\
#!{python}
import ipaddress, os, subprocess, sys
event, env = sys.argv[1], os.environ
dev = env["interface"]
def ip(*a): subprocess.run(["ip", *a], check=False)
if event == "deconfig":
    ip("link", "set", dev, "up"); ip("-4", "addr", "flush", "dev", dev)
elif event in ("bound", "renew"):
    plen = ipaddress.ip_network("0.0.0.0/" + env["subnet"]).prefixlen
    ip("addr", "replace", env["ip"] + "/" + str(plen), "dev", dev)
    if env.get("router"):
        ip("route", "replace", "default", "via", env["router"].split()[0], "dev", dev)
    with open({out!r}, "w") as f:
        f.write(env["ip"] + " " + env.get("router", "") + " " + env.get("dns", "") + "\\n")
"""


def dhcp(ns: Netns, dev: str, tmp: Path, timeout: float = 30) -> tuple[str, str, str]:
    """Get a DHCP lease on ``dev`` inside ``ns`` with busybox udhcpc; (ip, router, dns)."""
    from conftest import require

    require("udhcpc")
    out = tmp / f"lease-{ns.name}-{dev}"
    script = tmp / f"udhcpc-{ns.name}.py"
    script.write_text(_DHCP_SCRIPT.format(python=sys.executable, out=str(out)))
    script.chmod(0o755)
    r = ns.run("udhcpc", "-f", "-q", "-n", "-t", "10", "-T", "2", "-i", dev, "-s", str(script),
               check=False, timeout=timeout)
    if r.returncode != 0 or not out.exists():
        raise AssertionError(f"no DHCP lease on {ns.name}/{dev}: {r.stdout}{r.stderr}")
    ip_, router, dns = (out.read_text().split() + ["", "", ""])[:3]
    return ip_, router, dns


#: a tiny HTTP server answering "<tag> <client address>" (so tests see NAT at work)
_SERVER = textwrap.dedent("""\
    import http.server, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = (sys.argv[2] + " " + self.client_address[0]).encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body)))
            self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    s = http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H)
    print("ready", flush=True)
    s.serve_forever()
    """)


def serve(ns: Netns, port: int, tag: str) -> subprocess.Popen[str]:
    p = ns.spawn(sys.executable, "-c", _SERVER, str(port), tag)
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line.strip() == "ready", line
    return p


def fetch(ns: Netns, url: str, timeout: float = 5) -> str | None:
    """GET ``url`` from inside ``ns``; the body, or None when unreachable."""
    r = ns.run("curl", "-s", "--max-time", str(timeout), url, check=False, timeout=timeout + 10)
    return r.stdout if r.returncode == 0 else None


def mac_of(ns: Netns, dev: str) -> str:
    return ns.run("cat", f"/sys/class/net/{dev}/address").stdout.strip()


def in_net(addr: str, net: str) -> bool:
    return ipaddress.ip_address(addr) in ipaddress.ip_network(net)


@pytest.fixture(scope="module")
def net_node() -> Iterator[NetNode]:
    """One node in its own host netns per test module."""
    with node_in_netns() as n:
        yield n


@pytest.fixture
def nc(net_node: NetNode):  # type: ignore[no-untyped-def]
    c = net_node.client()
    yield c
    c.close()


_DNS_PROBE = textwrap.dedent("""\
    import socket, struct, sys
    q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in sys.argv[2].split(".")) + b"\\0"
    q += struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(q, (sys.argv[1], 53))
    data = s.recv(512)
    print("rcode", data[3] & 0xF, "id-ok", data[:2] == b"\\x12\\x34")
    """)


def dns_answers(ns: Netns, server: str, name: str = "core0-test.invalid") -> str | None:
    """Ask ``server`` for ``name`` from inside ``ns``; the reply summary, None if no reply."""
    r = ns.run(sys.executable, "-c", _DNS_PROBE, server, name, check=False)
    return r.stdout.strip() if r.returncode == 0 else None


_LIBC = ctypes.CDLL(None, use_errno=True)
_T = TypeVar("_T")


def in_netns(path: str, fn: Callable[[], _T]) -> _T:
    """``fn()`` run by a thread that entered the netns ``path`` (the sockets it makes belong
    to that netns; this process's other threads stay where they are)."""
    out: dict[str, Any] = {}

    def run() -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _LIBC.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
                raise OSError(ctypes.get_errno(), "setns")
            out["v"] = fn()
        except BaseException as e:  # (handed to the caller)
            out["e"] = e
        finally:
            os.close(fd)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "e" in out:
        raise out["e"]
    return out["v"]  # type: ignore[no-any-return]
