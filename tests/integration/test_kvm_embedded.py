"""``[virt] libvirtd = "embedded"``: ``core0 dev`` starts its own virtlogd + libvirtd (private mount
namespaces, files under its state dir), the dispatcher talks to it without any ``virt.uri``,
a VM runs, and stopping the node destroys the VM and stops both daemons. No libvirtd fixture
here: the node's own daemons are under test. Run under ``flock /tmp/core0-vm.lock``."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import require, require_root, wait_until
from kvm_env import start_node
from net_fixtures import NetNode, netns
from virt_fixtures import MARKER, guest_files, wait_text

pytestmark = [pytest.mark.root, pytest.mark.vm, pytest.mark.slow]


def _json(node: NetNode, command: str, args: dict[str, Any]) -> Any:
    c = node.client(timeout=120)
    try:
        r = c.raw(command, args).get(120)
    finally:
        c.close()
    assert r.state.value == "SUCCESS", (command, r.data, node.log_text()[-3000:])
    return json.loads(r.data) if r.data else None


def _procs(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if any(marker in a for a in p.info["cmdline"] or []):
            out.append(p)
    return out


def test_core0_dev_runs_its_own_libvirtd() -> None:
    require_root()
    require("libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img", "unshare")
    try:
        import libvirt  # noqa: F401
    except ImportError:
        require("python3-libvirt (pip install libvirt-python)")
    kernel, initrd = guest_files()
    base = Path(tempfile.mkdtemp(prefix="core0-kvme-", dir="/tmp"))
    root = base / "root"
    (root / "images").mkdir(parents=True)
    shutil.copy2(kernel, root / "images" / "vmlinuz")
    shutil.copy2(initrd, root / "images" / "initrd.cpio")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2",
                    str(root / "images/base.qcow2"), "64M"], check=True)
    try:
        with netns("kve") as ns:
            cfg = base / "core0.toml"
            cfg.write_text(
                f'[main]\nfilesystem_root = "{root}"\n'
                f'[virt]\nlibvirtd = "embedded"\ndir = "{base / "virt"}"\n'
                f'probe_kernel = "{root / "images/vmlinuz"}"\n'
                'domain_type = "qemu"\n')  # the KVM probe is test_kvm.py's (15-25 s here)
            node = start_node(ns, base / "node", cfg)
            lvbase = str(node.state_dir / "libvirt")
            try:
                daemons = _procs(lvbase)
                # (each runs "<daemon> -p <base>/<daemon>.pid")
                names = {Path(p.info["cmdline"][-3]).name for p in daemons}
                assert {"virtlogd", "libvirtd"} <= names, [p.info["cmdline"] for p in daemons]
                assert (node.state_dir / "libvirt" / "run" / "libvirt-sock").exists()
                assert _json(node, "kvm.list", {}) == []
                uuid = _json(node, "kvm.create", {
                    "name": "emb", "cpu": 1, "memory": 256,
                    "media": [{"url": "/images/base.qcow2", "overlay": True}],
                    "kernel": "/images/vmlinuz", "initrd": "/images/initrd.cpio",
                    "cmdline": "console=ttyS0 panic=-1"})
                vm = _json(node, "kvm.get", {"uuid": uuid})
                assert wait_text(Path(vm["console"]), MARKER, 120)
                # the domain state is the embedded daemon's, not the host's
                assert (node.state_dir / "libvirt" / "run" / "qemu" / "emb.pid").exists()
                assert _procs(uuid), "no qemu for the VM"
            finally:
                node.stop()
            assert "embedded libvirtd: destroyed 1 VM(s)" in node.log_text()
            assert wait_until(lambda: not _procs(lvbase), 30), [
                p.info["cmdline"] for p in _procs(lvbase)]
            assert wait_until(lambda: not _procs(uuid), 30)
    finally:
        shutil.rmtree(base, ignore_errors=True)
