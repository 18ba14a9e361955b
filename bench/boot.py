"""Image sizes and boot time of the core0 node image.

Prints, for the core and full images (built first when missing): vmlinuz + compressed
initramfs sizes against the targets (core ≤ 30 MB, full ≤ 90 MB); then, under TCG, the time
from qemu's start to the first answered ``core.ping`` (median of --runs), with the time to the
node's Redis answering and the guest's uptime at ``/init``; the baseline is the same kernel
booting a busybox ``/init`` that prints a marker (the floor of any initramfs), and the ratio.
Where a real probe shows KVM works, the same under KVM (target ≤ 2.5 s).

    python bench/boot.py [--runs 3] [--flavour core --flavour full] [--no-build]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "initramfs-builder"))

from qemu.harness import (  # noqa: E402
    BASE_CMDLINE,
    DEFAULT_IMAGE_DIR,
    QEMU,
    VM,
    VMConfig,
    image_files,
    probe_kvm,
    pvh_kernel,
)

MB = 1_000_000
TARGETS = {"core": 30 * MB, "full": 90 * MB}


def ensure_image(flavour: str, image_dir: Path, build: bool) -> dict | None:  # type: ignore[type-arg]
    suffix = "" if flavour == "core" else f"-{flavour}"
    manifest = image_dir / f"manifest{suffix}.json"
    if not manifest.exists() and build:
        print(f"building the {flavour} image …", flush=True)
        subprocess.run(["bash", str(ROOT / "initramfs-builder/build.sh"), flavour, "--out",
                        str(image_dir)], check=True, stdout=subprocess.DEVNULL)
    if not manifest.exists():
        return None
    return dict(json.loads(manifest.read_text()))


def baseline_initrd(tmp: Path) -> Path | None:
    """A busybox-only initramfs whose /init prints a marker and powers off."""
    import stat

    import imagelib

    bb = ROOT / "build/work/core/root/usr/bin/busybox"
    if not bb.exists():
        return None
    out = tmp / "baseline.cpio"
    with out.open("wb") as f:
        w = imagelib.CpioWriter(f)
        w.add(imagelib.Entry("bin", stat.S_IFDIR | 0o755))
        w.add(imagelib.Entry("bin/busybox", stat.S_IFREG | 0o755, bb))
        w.add(imagelib.Entry("dev", stat.S_IFDIR | 0o755))
        w.add(imagelib.Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
        w.add(imagelib.Entry("init", stat.S_IFREG | 0o755,
                             b"#!/bin/busybox sh\n/bin/busybox echo BASELINE-MARKER\n"
                             b"/bin/busybox poweroff -f\n"))
        w.finish()
    return out


def boot_baseline(kernel: Path, initrd: Path, accel: str) -> float:
    cpu = "host" if accel == "kvm" else "max"
    argv = [QEMU, "-machine", f"pc,accel={accel}", "-cpu", cpu, "-m", "1024", "-smp", "2",
            "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
            "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", " ".join(BASE_CMDLINE)]
    t = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert p.stdout is not None
    found = None
    for line in p.stdout:
        if b"BASELINE-MARKER" in line and found is None:
            found = time.monotonic() - t
    p.wait(60)
    if found is None:
        raise RuntimeError("baseline guest printed no marker")
    return found


def boot_core0(image_dir: Path, accel: str) -> dict[str, float]:
    with VM(VMConfig(image_dir=image_dir, accel=accel)) as vm:
        vm.start()
        t_redis = None
        while t_redis is None and time.monotonic() - vm.started < 240:
            if vm.redis_ping(0.5):
                t_redis = time.monotonic() - vm.started
            else:
                time.sleep(0.05)
        secs = vm.wait_ping(240)
        m = re.search(r"\[\s*([\d.]+)\] Run /init", vm.tail(10_000))
        res = vm.command("core.poweroff", timeout=30)
        assert res["state"] == "SUCCESS"
        vm.wait_exit(60)
        return {"ping": secs, "redis": t_redis or float("nan"),
                "init_uptime": float(m.group(1)) if m else float("nan")}


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--flavour", action="append", choices=["core", "full"])
    ap.add_argument("--image-dir", type=Path, default=DEFAULT_IMAGE_DIR)
    ap.add_argument("--no-build", action="store_true", help="do not build missing images")
    ns = ap.parse_args()
    flavours = ns.flavour or ["core", "full"]
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in
                   Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except StopIteration:
        cpu = "?"
    print(f"machine: {cpu}, {os.cpu_count()} cpus, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    print("\nimage sizes (vmlinuz + compressed initramfs):")
    for fl in flavours:
        man = ensure_image(fl, ns.image_dir, not ns.no_build)
        if man is None:
            print(f"  {fl:5} not built")
            continue
        s = man["sizes"]
        ok = "ok" if s["total"] <= TARGETS[fl] else "OVER"
        print(f"  {fl:5} vmlinuz {s['vmlinuz'] / MB:5.1f} MB + {man['initramfs']} "
              f"{s['initramfs'] / MB:5.1f} MB = {s['total'] / MB:5.1f} MB "
              f"(target ≤ {TARGETS[fl] / MB:.0f} MB: {ok}); unpacked "
              f"{s['initramfs_uncompressed'] / MB:.1f} MB, kernel {man['kernel']}")

    if not (ns.image_dir / "manifest.json").exists():
        print("\nno core image: boot not measured")
        return
    vmlinuz, _ = image_files(ns.image_dir)
    kernel = pvh_kernel(vmlinuz) or vmlinuz
    accels = ["tcg"] + (["kvm"] if probe_kvm(kernel) else [])
    if "kvm" not in accels:
        print("\nKVM: not usable here (a guest kernel does not boot under /dev/kvm); TCG only")
    tmp = Path(tempfile.mkdtemp(prefix="core0-bench-boot-"))
    try:
        base_initrd = baseline_initrd(tmp)
        for accel in accels:
            target = 20.0 if accel == "tcg" else 2.5
            runs = [boot_core0(ns.image_dir, accel) for _ in range(ns.runs)]
            pings = [r["ping"] for r in runs]
            print(f"\nboot → first answered core.ping, {accel.upper()}, {ns.runs} run(s):")
            print(f"  core0   median {median(pings):6.2f} s  (min {min(pings):.2f}, max "
                  f"{max(pings):.2f}; target ≤ {target:g} s: "
                  f"{'ok' if median(pings) <= target else 'OVER'})")
            print(f"          redis answering at {median([r['redis'] for r in runs]):.2f} s, "
                  f"guest uptime at /init {median([r['init_uptime'] for r in runs]):.2f} s")
            if base_initrd is not None:
                base = [boot_baseline(kernel, base_initrd, accel) for _ in range(ns.runs)]
                print(f"  baseline (same kernel, busybox /init prints a marker) median "
                      f"{median(base):6.2f} s")
                print(f"  ratio core0/baseline {median(pings) / median(base):.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
