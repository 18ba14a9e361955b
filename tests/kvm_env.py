"""The kvm integration tests' shared environment: a network namespace holding a core0 node
(``core0 dev``) and a private libvirtd/virtlogd (:mod:`virt_fixtures`), and the guest's files
under the node's filesystem root. Used by tests/integration/test_kvm*.py."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, require, wait_until
from net_fixtures import NetNode, Netns, netns
from virt_fixtures import Libvirtd, guest_files, libvirtd, libvirtd_peer


class _Legacy(__import__("redis").Redis):  # type: ignore[misc]
    """PyPI's 0-core-client (1.1.0a8, the ledis era) asks ``LKEYEXISTS``/``LTTL``; 0-core's
    redis proxy renamed them to ``EXISTS``/``TTL``, and so does this connection (nothing
    else is changed)."""

    RENAMED = {"LKEYEXISTS": "EXISTS", "LTTL": "TTL"}

    def execute_command(self, *args: Any, **options: Any) -> Any:
        if args and args[0] in self.RENAMED:
            args = (self.RENAMED[args[0]], *args[1:])
        return super().execute_command(*args, **options)


@dataclass
class Env:
    ns: Netns
    lv: Libvirtd
    node: NetNode
    root: Path  #: the node's filesystem root
    vdir: Path  #: virt.dir
    config: Path

    def client(self) -> Any:
        """0-core's own Python client, over the node's unix socket."""
        try:
            from zeroos.core0.client import Client as ZeroClient
        except ImportError:
            require("zeroos.core0.client (pip install 0-core-client)")

        c = ZeroClient("localhost", timeout=120, testConnectionAttempts=0)
        c._redis = _Legacy(unix_socket_path=self.node.socket, socket_timeout=120)
        return c

    def core0(self) -> Any:
        """core0's own client (timeout 120 s: the first create runs the KVM probe)."""
        from core0_client import Client

        return Client(unix_socket_path=self.node.socket, timeout=120)

    def guest_args(self, name: str, **kw: Any) -> dict[str, Any]:
        args: dict[str, Any] = {
            "name": name, "cpu": 1, "memory": 256,
            "media": [{"url": "/images/base.qcow2", "overlay": True}],
            "kernel": "/images/vmlinuz", "initrd": "/images/initrd.cpio",
            "cmdline": "console=ttyS0 panic=-1", "nics": [{"type": "default"}],
        }
        args.update(kw)
        return args


def start_node(ns: Netns, base: Path, config: Path,
               env: dict[str, str] | None = None) -> NetNode:
    require("redis-server", "nft", "dnsmasq")
    state = base / "state"
    state.mkdir(parents=True)
    return spawn_node(ns, base, config, env)


def spawn_node(ns: Netns, base: Path, config: Path,
               env: dict[str, str] | None = None) -> NetNode:
    """``core0 dev`` in ``ns`` (``env``: more environment, e.g. a fault test's hook)."""
    log = open(base / "node.log", "ab")  # the child keeps it
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns.name, sys.executable, "-m", "core0", "dev",
         "--state-dir", str(base / "state"), "--redis-port", "0", "--config", str(config)],
        stdout=log, stderr=subprocess.STDOUT, cwd=str(root), start_new_session=True,
        env={**os.environ, **(env or {})})
    log.close()
    node = NetNode(ns, proc.pid, base)
    ok = wait_until(lambda: _pings(node), 30)
    if not ok:
        node.stop()
        raise RuntimeError("core0 dev did not come up:\n" + node.log_text()[-4000:])
    return node


def _pings(node: NetNode) -> bool:
    try:
        c = node.client()
        try:
            c.ping()
        finally:
            c.close()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def migration_peer(env: Env, base: Path) -> Iterator[Env]:
    """A second node (netns ``dest``, its own libvirtd listening on 10.250.0.2, reached from
    ``env``'s namespace over a veth) sharing ``env``'s filesystem root: a migration's
    destination. Its files under ``base``."""
    with libvirtd_peer(env.ns, "dest", "mv", "10.250.0") as (ns_b, lv_b):
        cfg = base / "core0.toml"
        cfg.write_text(f'[main]\nfilesystem_root = "{env.root}"\n'
                       f'[virt]\nuri = "{lv_b.uri}"\ndir = "{base / "virt"}"\n'
                       'domain_type = "qemu"\n')
        node_b = start_node(ns_b, base / "node", cfg)
        try:
            yield Env(ns_b, lv_b, node_b, env.root, base / "virt", cfg)
        finally:
            node_b.stop()


#: the node's Prometheus endpoint (inside its namespace): per-VM monitors
METRICS_PORT = free_port()


def guest_root(prefix: str) -> tuple[Path, Path]:
    """A temp dir (``base``) and the node's filesystem root in it, holding the guest's
    kernel and initramfs and a blank 64M ``base.qcow2`` under ``images/``."""
    kernel, initrd = guest_files()
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    root = base / "root"
    (root / "images").mkdir(parents=True)
    shutil.copy2(kernel, root / "images" / "vmlinuz")
    shutil.copy2(initrd, root / "images" / "initrd.cpio")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(root / "images/base.qcow2"),
                    "64M"], check=True)
    return base, root


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    """A node with its own libvirtd in netns ``host``. Its domain type is ``qemu`` (TCG)
    unless the test module sets ``KVM_PROBE = True``: the probe (``auto``, core0/virt/
    probe.py) boots a guest where /dev/kvm exists but cannot run one (15-25 s here), and
    test_kvm.py checks it once."""
    probe = getattr(request.module, "KVM_PROBE", False)
    base, root = guest_root("core0-kvm-")
    try:
        with netns("host") as ns, libvirtd(ns.name) as lv:
            # an underlay for vlan/vxlan segments (core0/net/segments.py)
            ns.run("ip", "link", "add", "under0", "type", "veth", "peer", "name", "under1")
            ns.run("ip", "addr", "add", "10.231.8.1/24", "dev", "under0")
            for link in ("under0", "under1"):
                ns.run("ip", "link", "set", link, "up")
            cfg = base / "core0.toml"
            cfg.write_text(
                f'[main]\nfilesystem_root = "{root}"\n'
                f'[virt]\nuri = "{lv.uri}"\ndir = "{base / "virt"}"\n'
                f'probe_kernel = "{root / "images/vmlinuz"}"\n'
                'cache_max_mib = 1\n'  # (test_http_media…: an unused image is evicted)
                + ('' if probe else 'domain_type = "qemu"\n') +
                '[segments]\nparent = "under0"\nvxlan_remotes = ["10.231.8.2"]\n'
                f'[metrics]\nport = {METRICS_PORT}\n')
            node = start_node(ns, base, cfg)
            try:
                yield Env(ns, lv, node, root, base / "virt", cfg)
            finally:
                node.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def events_of(env: Env, job: str) -> list[dict[str, Any]]:
    import redis
    from core0_client.protocol import LogRecord

    r = redis.Redis(unix_socket_path=env.node.socket)
    out = []
    for _, f in r.xrange(f"log:{job}"):
        rec = LogRecord.from_json(f[b"record"])
        if rec.level == 20:
            out.append(json.loads(rec.message))
    return out


def seen(env: Env, job: str, uuid: str, event: str) -> bool:
    return any(e["uuid"] == uuid and e["event"] == event for e in events_of(env, job))


def live_rules(env: Env) -> list[dict[str, Any]]:
    """Every rule of the kernel's live ruleset in the node's namespace (``nft -j``)."""
    out = env.ns.run("nft", "-j", "list", "ruleset").stdout
    return [o["rule"] for o in json.loads(out)["nftables"] if "rule" in o]


def dnat_ports(rule: dict[str, Any]) -> list[int]:
    """The destination ports a live DNAT rule matches (``[]`` for any other rule)."""
    exprs = rule.get("expr", [])
    if not any("dnat" in e for e in exprs):
        return []
    return [m["right"] for e in exprs if (m := e.get("match"))
            and m.get("left", {}).get("payload", {}).get("field") == "dport"
            and isinstance(m.get("right"), int)]


def vm_rules(env: Env, uuid: str) -> list[dict[str, Any]]:
    """The live rules tagged with VM ``uuid``'s owner."""
    return [r for r in live_rules(env) if r.get("comment") == f"owner=vm:{uuid}"]


def assert_clean(env: Env, uuid: str, ports: tuple[int, ...] = ()) -> None:
    """Nothing of VM ``uuid`` is left: no forward in core0's state, no rule tagged with its
    owner (or DNATing one of ``ports``) in the kernel's live ruleset, no nic/host/lease on
    kvm0, no directory."""
    c = env.core0()
    assert all(f["owner"] != f"vm:{uuid}" for f in c.nft.forward_list())
    for rule in live_rules(env):
        assert uuid not in rule.get("comment", ""), rule
        assert not set(ports) & set(dnat_ports(rule)), rule
    info = c.bridge.info("kvm0")
    assert info["nics"] == [], info
    assert all(not m.startswith("00:28:06:82") for m in info["hosts"]), info["hosts"]
    assert all(not lease["mac"].startswith("00:28:06:82") for lease in info["leases"]), info
    assert not (env.vdir / uuid).exists()
