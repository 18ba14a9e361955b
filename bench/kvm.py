"""VM start time and per-VM disk cost through core0's kvm.* (libvirt + qemu, TCG here).

1. create → first console output, and create → the guest's marker (its /init running):
   core0's ``kvm.create`` (sent with core0's client, measured from the submit) against the
   baseline ``qemu-img create`` of the overlay + ``virsh create`` of the same domain XML (the
   XML core0 generated, renamed and pointed at the new overlay), same
   libvirtd, same guest. Median of --runs each; prints baseline, core0 and the ratio
   (target ≤ 1.2×).
2. disk cost per VM with ``overlay: true``: the bytes a VM's qcow2 overlay takes after the
   guest booted, for two base images of different sizes (flat in the base size).

Everything runs against a private libvirtd (tests/virt_fixtures.py) and a ``core0 dev`` node
started for the run; VMs have no nic (the host network is not touched). Needs root, libvirt,
qemu. Run under ``flock /tmp/core0-vm.lock``:

    flock /tmp/core0-vm.lock python bench/kvm.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT  # noqa: F401  (puts tests/ on sys.path)
from virt_fixtures import MARKER, guest_files, libvirtd

MB = 1 << 20


def first_output(path: Path, t0: float, timeout: float = 180) -> tuple[float, float]:
    """(seconds to the first byte in the console log, seconds to the marker)."""
    first = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = path.read_bytes()
        except OSError:
            data = b""
        if data and first is None:
            first = time.monotonic() - t0
        if MARKER.encode() in data:
            return first or 0.0, time.monotonic() - t0
        time.sleep(0.01)
    raise RuntimeError(f"no marker in {path}")


def run_core0(c: Any, root: Path, name: str) -> tuple[float, float, str]:
    args = {"name": name, "cpu": 1, "memory": 256, "media": [{"url": "/images/base.qcow2",
                                                                "overlay": True}],
            "kernel": "/images/vmlinuz", "initrd": "/images/initrd.cpio",
            "cmdline": "console=ttyS0 panic=-1"}
    t0 = time.monotonic()
    uuid = c.json("kvm.create", args, timeout=120)
    console = Path(c.json("kvm.get", {"uuid": uuid})["console"])
    first, marker = first_output(console, t0)
    return first, marker, uuid


def run_virsh(uri: str, xml: str, work: Path, name: str, base_img: Path
              ) -> tuple[float, float]:
    """The baseline: what core0 does, by hand: qemu-img create the overlay, virsh create."""
    log = work / f"{name}.log"
    ov = work / f"{name}.qcow2"
    x = re.sub(r"<name>[^<]*</name>", f"<name>{name}</name>", xml)
    x = re.sub(r"<source file=['\"][^'\"]*disk0.qcow2['\"]", f"<source file='{ov}'", x)
    x = re.sub(r"<uuid>[^<]*</uuid>", "", x)
    x = re.sub(r"<log file='[^']*'", f"<log file='{log}'", x)
    x = re.sub(r'<log file="[^"]*"', f'<log file="{log}"', x)
    f = work / f"{name}.xml"
    f.write_text(x)
    t0 = time.monotonic()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(base_img), "--", str(ov)], check=True)
    subprocess.run(["virsh", "-q", "-c", uri, "create", str(f)], check=True,
                   stdout=subprocess.DEVNULL)
    first, marker = first_output(log, t0)
    subprocess.run(["virsh", "-q", "-c", uri, "destroy", name], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return first, marker


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ns = ap.parse_args()
    import libvirt
    from conftest import start_node

    kernel, initrd = guest_files()
    base = Path(tempfile.mkdtemp(prefix="core0-bench-kvm-", dir="/tmp"))
    root = base / "root"
    (root / "images").mkdir(parents=True)
    shutil.copy2(kernel, root / "images/vmlinuz")
    shutil.copy2(initrd, root / "images/initrd.cpio")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(root / "images/base.qcow2"),
                    "64M"], check=True)
    print(f"machine: {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}; guest: busybox "
          f"initramfs, TCG unless the KVM probe passes")
    try:
        with libvirtd() as lv:
            cfg = base / "core0.toml"
            cfg.write_text(f'[main]\nfilesystem_root = "{root}"\n[virt]\nuri = "{lv.uri}"\n'
                           f'dir = "{base / "virt"}"\nprobe_kernel = "{root / "images/vmlinuz"}"\n')
            node = start_node(base / "state", config=str(cfg))
            try:
                c = node.client(timeout=120)
                # warm-up: the KVM probe and the first connection happen here
                _, _, uuid = run_core0(c, root, "warm")
                conn = libvirt.open(lv.uri)
                xml = conn.lookupByUUIDString(uuid).XMLDesc(0)
                conn.close()
                dtype = "kvm" if "type='kvm'" in xml.split(">", 1)[0] else "qemu"
                c.sync("kvm.destroy", {"uuid": uuid})
                core0_first, core0_mark, base_first, base_mark = [], [], [], []
                for i in range(ns.runs):
                    for which in (("virsh", "core0") if i % 2 == 0 else ("core0", "virsh")):
                        if which == "virsh":
                            f, m = run_virsh(lv.uri, xml, base, f"virsh{i}",
                                             root / "images/base.qcow2")
                            base_first.append(f)
                            base_mark.append(m)
                        else:
                            f, m, uuid = run_core0(c, root, f"c{i}")
                            core0_first.append(f)
                            core0_mark.append(m)
                            c.sync("kvm.destroy", {"uuid": uuid})
                med = statistics.median
                print(f"\ncreate → console (domain type {dtype}, median of {ns.runs}):")
                print(f"  {'':22} {'virsh create':>13} {'core0':>9} {'ratio':>7}")
                for label, b, k in (("first console byte", base_first, core0_first),
                                    ("guest marker", base_mark, core0_mark)):
                    print(f"  {label:22} {med(b):12.3f}s {med(k):8.3f}s "
                          f"{med(k) / med(b):6.2f}x")
                print("  target: ≤ 1.2x")

                print("\ndisk per VM with overlay (allocated bytes after the guest booted):")
                for size in (64, 512):
                    img = root / "images" / f"base{size}.raw"
                    with img.open("wb") as fh:
                        chunk = os.urandom(MB)
                        for _ in range(size):
                            fh.write(chunk)
                    args = {"name": f"ov{size}", "cpu": 1, "memory": 256,
                            "media": [{"url": f"/images/{img.name}", "format": "raw",
                                       "overlay": True}],
                            "kernel": "/images/vmlinuz", "initrd": "/images/initrd.cpio",
                            "cmdline": "console=ttyS0 panic=-1"}
                    t0 = time.monotonic()
                    uuid = c.json("kvm.create", args, timeout=120)
                    console = Path(c.json("kvm.get", {"uuid": uuid})["console"])
                    first_output(console, t0)
                    ov = base / "virt" / uuid / "disk0.qcow2"
                    print(f"  base {size:4d} MiB (allocated {allocated(img) / MB:6.1f} MiB): "
                          f"overlay {allocated(ov) / 1024:7.1f} KiB")
                    c.sync("kvm.destroy", {"uuid": uuid})
                    img.unlink()
                c.close()
            finally:
                node.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
