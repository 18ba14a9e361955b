"""kvm.* end to end: a real libvirtd + qemu (TCG here), 0-core's own client, a busybox guest.

Topology: a "host" network namespace holds the core0 node under test and a private
libvirtd/virtlogd (tests/virt_fixtures.py), so kvm0, its dnsmasq, the nft table and the VMs'
taps all live there. Media, kernel and initramfs are files under the node's filesystem root
(a temp dir). Run under ``flock /tmp/core0-vm.lock`` (the VM tests share the machine's cores).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import code_of, wait_until
from net_fixtures import NetNode, Netns, netns
from virt_fixtures import MARKER, PAGE, Libvirtd, guest_files, libvirtd, wait_text

pytestmark = [pytest.mark.root, pytest.mark.vm, pytest.mark.slow]


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
        from zeroos.core0.client import Client as ZeroClient

        c = ZeroClient("localhost", timeout=120, testConnectionAttempts=0)
        c._redis = _Legacy(unix_socket_path=self.node.socket, socket_timeout=120)
        return c

    def core0(self) -> Any:
        return self.node.client()

    def guest_args(self, name: str, **kw: Any) -> dict[str, Any]:
        args: dict[str, Any] = {
            "name": name, "cpu": 1, "memory": 256,
            "media": [{"url": "/images/base.qcow2", "overlay": True}],
            "kernel": "/images/vmlinuz", "initrd": "/images/initrd.cpio",
            "cmdline": "console=ttyS0 panic=-1", "nics": [{"type": "default"}],
        }
        args.update(kw)
        return args


def start_node(ns: Netns, base: Path, config: Path) -> NetNode:
    from conftest import require

    require("redis-server", "nft", "dnsmasq")
    state = base / "state"
    state.mkdir(parents=True)
    return _spawn_node(ns, base, config)


def _spawn_node(ns: Netns, base: Path, config: Path) -> NetNode:
    log = open(base / "node.log", "ab")  # the child keeps it
    root = Path(__file__).resolve().parent.parent.parent
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns.name, sys.executable, "-m", "core0", "dev",
         "--state-dir", str(base / "state"), "--redis-port", "0", "--config", str(config)],
        stdout=log, stderr=subprocess.STDOUT, cwd=str(root), start_new_session=True)
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


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    kernel, initrd = guest_files()
    base = Path(tempfile.mkdtemp(prefix="core0-kvm-", dir="/tmp"))
    root = base / "root"
    (root / "images").mkdir(parents=True)
    shutil.copy2(kernel, root / "images" / "vmlinuz")
    shutil.copy2(initrd, root / "images" / "initrd.cpio")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(root / "images/base.qcow2"),
                    "64M"], check=True)
    try:
        with netns("host") as ns, libvirtd(ns.name) as lv:
            cfg = base / "core0.toml"
            cfg.write_text(
                f'[main]\nfilesystem_root = "{root}"\n'
                f'[virt]\nuri = "{lv.uri}"\ndir = "{base / "virt"}"\n'
                f'probe_kernel = "{root / "images/vmlinuz"}"\n')
            node = start_node(ns, base, cfg)
            try:
                yield Env(ns, lv, node, root, base / "virt", cfg)
            finally:
                node.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _events(env: Env, job: str) -> list[dict[str, Any]]:
    from core0_client.protocol import LogRecord

    import redis

    r = redis.Redis(unix_socket_path=env.node.socket)
    out = []
    for _, f in r.xrange(f"log:{job}"):
        rec = LogRecord.from_json(f[b"record"])
        if rec.level == 20:
            out.append(json.loads(rec.message))
    return out


def _seen(env: Env, job: str, uuid: str, event: str) -> bool:
    return any(e["uuid"] == uuid and e["event"] == event for e in _events(env, job))


def _assert_clean(env: Env, uuid: str) -> None:
    c = env.core0()
    assert c.nft.forward_list() == [] or all(
        f["owner"] != f"vm:{uuid}" for f in c.nft.forward_list())
    info = c.bridge.info("kvm0")
    assert info["nics"] == [], info
    assert all(not m.startswith("00:28:06:82") for m in info["hosts"]), info["hosts"]
    assert not (env.vdir / uuid).exists()


def test_lifecycle_with_0core_client(env: Env) -> None:
    c0 = env.client()
    c = env.core0()
    ev = c.raw("kvm.events", {})
    assert wait_until(lambda: any(e["event"] == "subscribed" for e in _events(env, ev.id)), 30)

    # create (0-core's create has no kernel/initrd arguments: the raw call carries them)
    uuid = c0.json("kvm.create", env.guest_args("vm1", port={"8080": 8080}, tags=["t1"]))
    assert isinstance(uuid, str) and uuidlib.UUID(uuid)
    item = c0.kvm.list()
    assert [i["uuid"] for i in item] == [uuid]
    vm = item[0]
    assert vm["name"] == "vm1" and vm["state"] == "running" and vm["tags"] == ["t1"]
    console = Path(vm["console"])
    assert wait_text(console, MARKER, 120), console.read_text(errors="replace")[-2000:]
    assert wait_text(console, "GUEST-DISK vda", 30)
    overlay = env.vdir / uuid / "disk0.qcow2"
    assert overlay.exists()
    assert wait_until(lambda: _seen(env, ev.id, uuid, "started"), 10)

    got = c.json("kvm.get", {"name": "vm1"})
    assert got["uuid"] == uuid and got["default_ip"].startswith("172.19.")
    info = c0.kvm.info(uuid)
    assert len(info["vcpu"]) == 1 and info["block"][0]["name"] == "vda"
    assert info["net"] and info["net"][0]["name"] == got["ifctargets"][0]

    # pause / resume
    c0.kvm.pause(uuid)
    assert c.json("kvm.get", {"uuid": uuid})["state"] == "paused"
    c0.kvm.resume(uuid)
    assert c.json("kvm.get", {"uuid": uuid})["state"] == "running"
    assert code_of(c.sync, "kvm.resume", {"uuid": uuid}) == 409
    assert wait_until(lambda: _seen(env, ev.id, uuid, "suspended")
                      and _seen(env, ev.id, uuid, "resumed"), 10)

    # a disk, hot-plugged, seen from inside
    c.sync("kvm.create-image", {"file_name": "/images/extra.raw", "format": "raw",
                                "size": "8M"})
    c0.kvm.attach_disk(uuid, {"url": "/images/extra.raw"})
    assert wait_text(console, "GUEST-DISK vdb", 60), console.read_text()[-1500:]

    # the port forward answers (host-originated traffic to the node's own address)
    assert wait_text(console, "GUEST-IP " + got["default_ip"], 90), console.read_text()[-1500:]
    fwd = c.nft.forward_list()
    assert fwd == [{"owner": f"vm:{uuid}", "src": "8080|tcp", "ip": got["default_ip"],
                    "port": 8080}]

    def answers() -> bool:
        r = env.ns.run("curl", "-s", "-m", "3", "http://172.19.0.1:8080/", check=False)
        return PAGE in r.stdout

    assert wait_until(answers, 60)

    # ACPI shutdown: the guest powers off by itself; cleanup follows the stopped event
    c0.kvm.shutdown(uuid)
    assert wait_text(console, "GUEST-POWEROFF", 60) or not console.exists()
    assert wait_until(lambda: c0.kvm.list() == [], 60)
    assert wait_until(lambda: _seen(env, ev.id, uuid, "stopped"), 10)
    assert wait_until(lambda: not (env.vdir / uuid).exists(), 30)
    _assert_clean(env, uuid)

    # destroy of a second VM
    uuid2 = c0.json("kvm.create", env.guest_args("vm2"))
    assert wait_until(lambda: _seen(env, ev.id, uuid2, "started"), 30)
    c0.kvm.destroy(uuid2)
    assert c0.kvm.list() == []
    _assert_clean(env, uuid2)
    assert wait_until(lambda: _seen(env, ev.id, uuid2, "stopped"), 10)
    assert code_of(c.sync, "kvm.destroy", {"uuid": uuid2}) == 404
    c.job.kill(ev.id)


def test_dispatcher_kill9_keeps_vms(env: Env) -> None:
    import os
    import signal

    import psutil

    c = env.core0()
    uuids = [c.json("kvm.create", env.guest_args(f"k{i}")) for i in range(3)]
    before = {i["uuid"]: i["name"] for i in c.json("kvm.list")}
    assert set(before) == set(uuids)
    disp = [p for p in psutil.Process(env.node.pid).children(recursive=True)
            if "dispatcher" in " ".join(p.cmdline())]
    assert disp
    os.kill(disp[0].pid, signal.SIGKILL)

    def relisted() -> bool:
        try:
            c2 = env.core0()
            try:
                return {i["uuid"]: i["name"] for i in c2.json("kvm.list")} == before
            finally:
                c2.close()
        except Exception:
            return False

    assert wait_until(relisted, 60)
    c = env.core0()
    assert all(i["state"] == "running" for i in c.json("kvm.list"))
    for u in uuids:
        c.sync("kvm.destroy", {"uuid": u})
    assert c.json("kvm.list") == []
    for u in uuids:
        _assert_clean(env, u)


def test_libvirtd_restart_reconnects(env: Env) -> None:
    c = env.core0()
    ev = c.raw("kvm.events", {})
    assert wait_until(lambda: any(e["event"] == "subscribed" for e in _events(env, ev.id)), 30)
    uuid = c.json("kvm.create", env.guest_args("rv"))
    env.lv.kill_libvirtd()
    assert wait_until(lambda: any(e["event"] == "connection" and e["detail"] == "lost"
                                  for e in _events(env, ev.id)), 30)
    env.lv.start_libvirtd()
    assert wait_until(lambda: any(e["event"] == "connection" and e["detail"] == "reconnected"
                                  for e in _events(env, ev.id)), 60)
    assert [i["uuid"] for i in c.json("kvm.list")] == [uuid]
    c.sync("kvm.destroy", {"uuid": uuid})
    assert wait_until(lambda: _seen(env, ev.id, uuid, "stopped"), 10)
    _assert_clean(env, uuid)
    with contextlib.suppress(Exception):
        c.job.kill(ev.id)
