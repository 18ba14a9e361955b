"""Declared VMs (``main.persistent_dir``): a VM created with ``persistent: true`` comes back after
a reboot of the node — simulated as the containers' test does: the node stopped, libvirtd and
every qemu killed (transient domains die with them), kvm0 and the nft table gone, the state
dir and the VM directory wiped — with the same name and uuid, its default nic's address and
its forwards; an undeclared VM does not. The same spec declared again is the running VM; a
changed spec recreates it (same uuid); kvm.destroy forgets it. Run under
``flock /tmp/core0-vm.lock``."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from kvm_env import spawn_node, start_node
from net_fixtures import NetNode, Netns, netns
from virt_fixtures import MARKER, guest_files, libvirtd, wait_text

pytestmark = [pytest.mark.root, pytest.mark.vm, pytest.mark.slow]


def _args(name: str, **kw: Any) -> dict[str, Any]:
    a: dict[str, Any] = {
        "name": name, "cpu": 1, "memory": 256,
        "media": [{"url": "/images/base.qcow2", "overlay": True}],
        "kernel": "/images/vmlinuz", "initrd": "/images/initrd.cpio",
        "cmdline": "console=ttyS0 panic=-1", "nics": [{"type": "default"}],
    }
    a.update(kw)
    return a


def _json(node: NetNode, command: str, args: dict[str, Any]) -> Any:
    c = node.client(timeout=120)
    try:
        r = c.raw(command, args).get(120)
    finally:
        c.close()
    assert r.state.value == "SUCCESS", (command, r.data, node.log_text()[-3000:])
    return json.loads(r.data) if r.data else None


def test_declared_vm_comes_back_after_reboot() -> None:
    kernel, initrd = guest_files()
    base = Path(tempfile.mkdtemp(prefix="core0-kvmp-", dir="/tmp"))
    root = base / "root"
    (root / "images").mkdir(parents=True)
    shutil.copy2(kernel, root / "images" / "vmlinuz")
    shutil.copy2(initrd, root / "images" / "initrd.cpio")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2",
                    str(root / "images/base.qcow2"), "64M"], check=True)
    try:
        with netns("kvp") as ns, libvirtd(ns.name) as lv:
            cfg = base / "core0.toml"
            cfg.write_text(
                f'[main]\nfilesystem_root = "{root}"\npersistent_dir = "{base / "persist"}"\n'
                f'[virt]\nuri = "{lv.uri}"\ndir = "{base / "virt"}"\n'
                f'probe_kernel = "{root / "images/vmlinuz"}"\n'
                # TCG directly: the KVM probe (15-25 s here, once per boot) is test_kvm.py's
                'domain_type = "qemu"\n')
            node = start_node(ns, base / "node", cfg)
            try:
                node = _scenario(ns, lv, node, base, cfg)
            finally:
                node.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _scenario(ns: Netns, lv: Any, node: NetNode, base: Path, cfg: Path) -> NetNode:
    vdir = base / "virt"
    spec = _args("pvm", persistent=True, port={"9393": 8080}, tags=["keep"])
    uuid = _json(node, "kvm.create", spec)
    tmp = _json(node, "kvm.create", _args("tmp", nics=[]))
    vm = _json(node, "kvm.get", {"uuid": uuid})
    assert vm["persistent"] and vm["state"] == "running"
    assert not _json(node, "kvm.get", {"uuid": tmp})["persistent"]
    ip, dom_id = vm["default_ip"], vm["id"]
    decls = list((base / "persist" / "vms").iterdir())
    assert len(decls) == 1 and decls[0].stat().st_mode & 0o777 == 0o600
    decl = json.loads(decls[0].read_text())
    assert decl["uuid"] == uuid and decl["name"] == "pvm" and "persistent" not in decl[
        "arguments"]
    # the same spec again: the running VM, untouched
    assert _json(node, "kvm.create", spec) == uuid
    assert _json(node, "kvm.get", {"uuid": uuid})["id"] == dom_id
    # a name taken by an undeclared VM: 409
    c = node.client(timeout=60)
    try:
        r = c.raw("kvm.create", _args("tmp", persistent=True)).get(60)
    finally:
        c.close()
    assert r.code == 409, r.data
    # one spec declared by three creates at once (an orchestrator's retries, a restore racing
    # a user): one VM, every create answered with its uuid, one declaration
    pcon = _args("pcon", persistent=True, nics=[])
    c = node.client(timeout=120)
    try:
        jobs = [c.raw("kvm.create", pcon) for _ in range(3)]
        res = [j.get(120) for j in jobs]
    finally:
        c.close()
    assert [r.state.value for r in res] == ["SUCCESS"] * 3, [r.data for r in res]
    assert len({r.data for r in res}) == 1
    assert [v["name"] for v in _json(node, "kvm.list", {})].count("pcon") == 1
    assert len(list((base / "persist" / "vms").iterdir())) == 2
    _json(node, "kvm.destroy", {"uuid": json.loads(res[0].data)})
    assert list((base / "persist" / "vms").iterdir()) == decls

    # reboot: nothing of the running system survives but the disks (persistent dir, images)
    node.stop()
    lv.stop()
    ns.run("ip", "link", "del", "kvm0", check=False)
    ns.run("nft", "flush", "ruleset")
    shutil.rmtree(node.state_dir)
    shutil.rmtree(vdir)
    lv.start()
    node = start_node(ns, base / "node", cfg)

    def back() -> bool:
        try:
            return [v["name"] for v in _json(node, "kvm.list", {})] == ["pvm"]
        except AssertionError:
            return False

    assert wait_until(back, 120), node.log_text()[-3000:]
    # (libvirt shows a domain it is starting as paused)
    assert wait_until(lambda: _json(node, "kvm.get", {"name": "pvm"})["state"] == "running",
                      60)
    vm = _json(node, "kvm.get", {"name": "pvm"})
    assert vm["uuid"] == uuid and vm["tags"] == ["keep"] and vm["default_ip"] == ip
    assert vm["persistent"]
    assert wait_text(Path(vm["console"]), MARKER, 120)
    fwd = _json(node, "nft.forward_list", {})
    assert [(f["owner"], f["src"], f["ip"]) for f in fwd] == [(f"vm:{uuid}", "9393|tcp", ip)]

    # a dispatcher restart changes nothing (the restore finds the same spec running)
    dom_id = vm["id"]
    node.stop()
    node = spawn_node(ns, base / "node", cfg)  # on its state dir: a restart, not a reboot
    assert wait_until(lambda: _json(node, "kvm.get", {"name": "pvm"})["id"] == dom_id, 30)

    # a changed spec: recreated, same uuid
    changed = {**spec, "memory": 320}
    assert _json(node, "kvm.create", changed) == uuid
    vm = _json(node, "kvm.get", {"uuid": uuid})
    assert vm["id"] != dom_id and vm["params"]["memory"] == 320
    assert json.loads(decls[0].read_text())["arguments"]["memory"] == 320

    # destroy forgets the declaration
    other = _json(node, "kvm.create", _args("pvm2", persistent=True, nics=[]))
    _json(node, "kvm.destroy", {"uuid": uuid})
    left = list((base / "persist" / "vms").iterdir())
    assert len(left) == 1 and json.loads(left[0].read_text())["name"] == "pvm2"
    assert [v["name"] for v in _json(node, "kvm.list", {})] == ["pvm2"]
    assert wait_until(lambda: not (vdir / uuid).exists(), 30)

    # a declaration removed while the node is down: its VM, still running, is destroyed at
    # the next start (as a declared container is terminated)
    node.stop()
    left[0].unlink()
    node = spawn_node(ns, base / "node", cfg)
    assert wait_until(lambda: _json(node, "kvm.list", {}) == [], 60), node.log_text()[-3000:]
    assert wait_until(lambda: not (vdir / other).exists(), 30)
    assert "no declaration any more, destroyed" in node.log_text()
    return node
