"""Switching a node to an image by kexec against a full reboot of the same image, under qemu.

Builds a signed core image (a fresh minisign key; ``--image DIR`` reuses a build signed with
``--key``), boots it with the key trusted and, ``--rounds`` times each, measures the time from
the command's result to the first answered ``core.ping`` of the new boot (a new boot_id):

* baseline: ``core.reboot``, an ordered reboot through the firmware (qemu resets: SeaBIOS,
  then ``-kernel`` boots the image again);
* ``core.upgrade`` to the same image (served over HTTP from this host) with ``switch: kexec``:
  no firmware; the first one (download + staging) is shown apart, the measured ones find the
  slot staged (carried across each kexec) and only verify, load and switch.

Prints the medians and the ratio. Run under ``flock /tmp/core0-vm.lock`` on a shared machine.

    python bench/upgrade.py [--rounds 2] [--image DIR --key KEY.pub]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "initramfs-builder"))

import sign  # noqa: E402

from qemu.harness import VM, VMConfig, VMError  # noqa: E402


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a: Any) -> None:
        pass


def answer(vm: VM, name: str, args: dict[str, Any] | None = None) -> Any:
    try:
        res = vm.command(name, args, timeout=20)
    except (VMError, OSError):
        if not vm.running():
            raise vm.died() from None
        return None
    if res.get("state") != "SUCCESS":
        return None
    return json.loads(res["data"]) if res.get("level") == 20 else res["streams"][0]


def boot_id(vm: VM) -> str | None:
    out = answer(vm, "core.system", {"name": "cat", "args": ["/proc/sys/kernel/random/boot_id"]})
    return None if out is None else str(out).strip()


def wait_new_boot(vm: VM, old: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if vm.redis_ping(0.5):
            now = boot_id(vm)
            if now not in (None, old):
                return
        time.sleep(0.2)
    raise VMError(f"no new boot within {timeout:.0f}s\n{vm.tail()}")


def timed(vm: VM, name: str, args: dict[str, Any]) -> float:
    old = boot_id(vm)
    assert old, "the node does not answer"
    res = vm.command(name, args, timeout=600)
    assert res["state"] == "SUCCESS", res
    t = time.monotonic()
    wait_new_boot(vm, old)
    return time.monotonic() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--image", help="a core image built with --sign-key (default: build one)")
    ap.add_argument("--key", help="its minisign public key file (with --image)")
    ns = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-upgrade-") as tmp_s:
        tmp = Path(tmp_s)
        if ns.image:
            image, pub = Path(ns.image), Path(ns.key)
        else:
            sec, pub = tmp / "k.sec", tmp / "k.pub"
            subprocess.run(["minisign", "-G", "-W", "-p", str(pub), "-s", str(sec)], check=True,
                           capture_output=True, stdin=subprocess.DEVNULL)
            image = tmp / "image"
            print("building a signed core image …", flush=True)
            subprocess.run(["bash", str(ROOT / "initramfs-builder/build.sh"), "core", "--out",
                            str(image), "--work", str(tmp / "work"), "--sign-key", str(sec)],
                           check=True, stdout=subprocess.DEVNULL)
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                              functools.partial(_Quiet, directory=str(image)))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        url = f"http://10.0.2.2:{srv.server_address[1]}/manifest.json"
        vm = VM(VMConfig(image_dir=image, serial_log=tmp / "serial.log",
                         append=[f"core0.image.trusted_keys={sign.public_key(pub)}"]))
        try:
            vm.start()
            print(f"first boot: core.ping after {vm.wait_ping(600):.1f}s ({vm.accel})")
            # the first upgrade downloads and stages: not counted
            first = timed(vm, "core.upgrade", {"url": url, "switch": "kexec"})
            print(f"first kexec (download + stage + switch): {first:.1f}s")
            # kexecs first: each carries the staged slot into the next boot (a firmware reboot
            # of this diskless node loses it)
            kexecs = [timed(vm, "core.upgrade", {"url": url, "switch": "kexec"})
                      for _ in range(ns.rounds)]
            print("kexec: " + ", ".join(f"{x:.1f}s" for x in kexecs), flush=True)
            reboots = [timed(vm, "core.reboot", {}) for _ in range(ns.rounds)]
            print("reboot: " + ", ".join(f"{x:.1f}s" for x in reboots), flush=True)
        finally:
            vm.close()
            srv.shutdown()
            srv.server_close()
    r, k = statistics.median(reboots), statistics.median(kexecs)
    print(f"result → first core.ping of the new boot, median of {ns.rounds} ({vm.accel}):")
    print(f"  full reboot (firmware)   {r:6.1f}s   baseline")
    print(f"  kexec (core.upgrade)     {k:6.1f}s   ratio {k / r:.2f}")


if __name__ == "__main__":
    main()
