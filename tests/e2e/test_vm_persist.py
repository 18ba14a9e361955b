"""End to end, full image with a persistent disk: ``core0 init`` mounts the disk found by its
label on ``main.persistent_dir`` (core0/init/persistent.py); a container declared there
(``persistent: true``) runs under the image's runtime (crun on the image's cgroup v2, catatonit
as its init), and after a reboot of the node it is running again, by itself.

``CORE0_E2E_IMAGE=DIR`` reuses an image already built in DIR.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, require
from image_fixtures import node_image
from sandbox_fixtures import busybox_rootfs

sys.path.insert(0, str(ROOT))
from qemu.harness import VM, GuestStalled, VMConfig, VMError

#: the test boots a VM of its own: run again once if (and only if) the guest's kernel stalled
#: under the emulator (qemu.harness.GuestStalled)
pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(1500),
              pytest.mark.flaky(reruns=1, only_rerun=[GuestStalled])]

PERSIST = "/var/lib/core0/persist"


@pytest.fixture(scope="module")
def image_dir() -> Path:
    require("qemu-system-x86_64", "mkfs.ext4")
    return node_image("full")


def data_disk(tmp: Path) -> Path:
    """An ext4 disk labelled core0-data, seeded with a busybox root to import."""
    seed = tmp / "seed"
    busybox_rootfs(seed / "seed" / "rootfs")
    disk = tmp / "data.img"
    subprocess.run(["truncate", "-s", "256M", str(disk)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-L", "core0-data", "-d", str(seed), str(disk)],
                   check=True, capture_output=True)
    return disk


def ok(vm: VM, command: str, args: dict[str, Any], timeout: float = 120) -> Any:
    res = vm.command(command, args, timeout)
    assert res["state"] == "SUCCESS", (command, res)
    return json.loads(res["data"]) if res.get("data") else None


def text(vm: VM, *argv: str) -> str:
    res = vm.system(*argv)
    assert res["state"] == "SUCCESS", (argv, res)
    return str(res["streams"][0])


def containers(vm: VM) -> dict[str, Any]:
    return {str(c["container"]["arguments"].get("name")): c
            for c in (ok(vm, "corex.list", {}) or {}).values()}


def test_declared_container_comes_back_after_reboot(image_dir: Path, tmp_path: Path) -> None:
    disk = data_disk(tmp_path)
    vm = VM(VMConfig(image_dir=image_dir, flavour="full", memory=1536, disks=[disk],
                     serial_log=tmp_path / "serial.log",
                     append=[f"core0.main.persistent_dir={PERSIST}",
                             "core0.main.persistent_device=LABEL=core0-data"]))
    with vm:
        vm.start()
        vm.wait_ping(300)
        deadline = time.monotonic() + 120
        state: dict[str, Any] = {}
        while time.monotonic() < deadline and not state:
            res = vm.system("cat", "/run/core0/persistent.json")
            if res["state"] == "SUCCESS":
                state = json.loads(res["streams"][0])
            else:
                time.sleep(1)
        assert state.get("mounted") and state.get("fstype") == "ext4", state
        ok(vm, "container.image.import", {"name": "bb", "source": f"{PERSIST}/seed/rootfs"},
           300)
        cid = ok(vm, "corex.create", {"root": "bb", "name": "web", "persistent": True,
                                      "nics": []}, 300)
        assert containers(vm)["web"]["container"]["pid"] > 0
        # the image's runtime: crun (cgroup v2), with catatonit as the container's init
        assert "crun" in text(vm, "ls", "/run/core0/sandbox")
        assert "cgroup2" in text(vm, "cat", "/proc/mounts")
        boot_id = text(vm, "cat", "/proc/sys/kernel/random/boot_id")
        res = vm.command("core.reboot", {}, 60)
        assert res["state"] == "SUCCESS", res
        deadline = time.monotonic() + 300
        while True:
            if time.monotonic() >= deadline:
                raise vm.timed_out("the node did not come back within 300 s of core.reboot")
            try:
                if vm.redis_ping() and text(vm, "cat", "/proc/sys/kernel/random/boot_id") \
                        != boot_id:
                    break
            except (VMError, OSError, AssertionError):
                pass
            time.sleep(1)
        # declared: created again after the disk is mounted, under the same id
        deadline = time.monotonic() + 240
        back: dict[str, Any] = {}
        while time.monotonic() < deadline:
            with_name = containers(vm).get("web")
            if with_name and with_name["container"]["pid"]:
                back = with_name
                break
            time.sleep(2)
        if not back:
            raise vm.timed_out(f"container web not running again: {containers(vm)}")
        ids = {str(k) for k, v in (ok(vm, "corex.list", {}) or {}).items()
               if v["container"]["arguments"].get("name") == "web"}
        assert ids == {str(cid)}, ids
        ok(vm, "corex.terminate", {"container": cid})
        res = vm.command("core.poweroff", {}, 60)
        assert vm.wait_exit(120) == 0
