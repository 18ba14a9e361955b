"""End to end: build the core image from scratch (Debian packages, cached), boot it under
qemu (TCG here; KVM only where a real probe works), drive it from the host with core0ctl,
reboot it, power it off.

``CORE0_E2E_IMAGE=DIR`` reuses an image already built in DIR (quick local reruns).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, require
from image_fixtures import node_image

sys.path.insert(0, str(ROOT))
from core0.init.mounts import MEMCG_PIN
from qemu.harness import VM, VMConfig, VMError

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(1200)]

HOSTNAME = "e2e-node"  # from the kernel command line at boot…
CC_HOSTNAME = "e2e-cloud"  # …then from the config drive's cloud-config
USER_DATA = f"""#cloud-config
hostname: {CC_HOSTNAME}
write_files:
  - path: /run/e2e/hello.txt
    content: hello from cloud-config
    permissions: "0640"
"""


@pytest.fixture(scope="module")
def image_dir() -> Path:
    require("qemu-system-x86_64", "genisoimage")
    return node_image("core")


@pytest.fixture(scope="module")
def vm(image_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("vm")
    drive = {"meta-data": "instance-id: e2e-1\n", "user-data": USER_DATA}
    machine = VM(VMConfig(image_dir=image_dir, append=[f"core0.main.hostname={HOSTNAME}"],
                          config_drive=drive, serial_log=tmp / "serial.log"))
    machine.start()
    yield machine
    machine.close()


def core0ctl(vm: VM, *words: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "core0_client.cli", "--port", str(vm.port),
                           "--timeout", str(timeout), *words], capture_output=True, text=True,
                          timeout=timeout + 30, env={**os.environ, "CORE0_PASSWORD": vm.password})


def out(vm: VM, *argv: str) -> str:
    res = vm.system(*argv)
    assert res["state"] == "SUCCESS", (argv, res)
    return str(res["streams"][0])


def test_boots_and_answers_ping(vm: VM) -> None:
    secs = vm.wait_ping(240)
    print(f"\nboot → first core.ping answered: {secs:.1f}s ({vm.accel})")
    res = core0ctl(vm, "ping")
    assert res.returncode == 0 and res.stdout.startswith("PONG"), res.stderr


def test_info_os_shows_guest_kernel(vm: VM, image_dir: Path) -> None:
    manifest = json.loads((image_dir / "manifest.json").read_text())
    res = core0ctl(vm, "info", "os")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["kernelVersion"] == manifest["kernel"] != os.uname().release
    # a kernel command line argument reached the config
    cfg = json.loads(core0ctl(vm, "config", "get").stdout)
    assert cfg["main"]["hostname"] == HOSTNAME
    res = core0ctl(vm, "system", "uname", "-r")
    assert res.returncode == 0 and res.stdout.strip() == manifest["kernel"]


def test_node_is_core0_init_with_network(vm: VM) -> None:
    cmdline = out(vm, "cat", "/proc/1/cmdline").split("\0")
    assert cmdline[1:2] == ["/init"]
    net = json.loads(out(vm, "cat", "/run/core0/net.json"))
    assert net["state"] == "up" and net["addresses"][0]["address"].startswith("10.0.2.15/")
    assert "virtio_net" in out(vm, "cat", "/proc/modules")
    # / is a bind of the initramfs, so container runtimes can pivot_root out of it
    probe = ("mkdir -p /tmp/nr && mount -t tmpfs x /tmp/nr && mkdir /tmp/nr/old && "
             "pivot_root /tmp/nr /tmp/nr/old && echo PIVOT-OK")
    assert out(vm, "unshare", "-m", "sh", "-c", probe).strip() == "PIVOT-OK"
    mounts = out(vm, "cat", "/proc/mounts")
    for target in (" /proc ", " /sys ", " /dev ", " /dev/pts ", " /run ", " /tmp ",
                   " /sys/fs/cgroup "):
        assert target in mounts, target


def test_memory_cgroup_made_at_boot(vm: VM) -> None:
    """init makes the first memory cgroup while it is alone and keeps it (mounts.pin_memcg:
    the kernel's memcg static keys flip at boot, not under crun's first mkdir)."""
    base = "/sys/fs/cgroup"
    assert "memory" in out(vm, "cat", f"{base}/cgroup.subtree_control").split()
    assert out(vm, "cat", f"{base}/{MEMCG_PIN}/memory.max").strip() == "max"
    assert out(vm, "cat", f"{base}/{MEMCG_PIN}/cgroup.procs").strip() == ""


def test_dispatcher_runs_on_uvloop(vm: VM) -> None:
    # a job's parent is the dispatcher: the image's has uvloop's loop mapped, not a fallback
    maps = out(vm, "sh", "-c", 'cat "/proc/$PPID/maps"')
    assert "/uvloop/loop." in maps


def test_config_drive_is_attached(vm: VM) -> None:
    # a NoCloud drive: virtio-blk (loaded at boot by modalias), iso9660 labelled cidata
    assert out(vm, "findfs", "LABEL=cidata").strip() == "/dev/vda"


def _service(vm: VM, sid: str, timeout: float = 120) -> dict:
    """service.get, waiting until the service is up (boot services start after the bus)."""
    deadline = time.monotonic() + timeout
    while True:
        res = vm.command("service.get", {"id": sid})
        assert res["state"] == "SUCCESS", res
        svc = json.loads(res["data"])
        if svc["status"] in ("running", "done") or time.monotonic() > deadline:
            return svc
        time.sleep(1)


def test_declared_boot_services_run(vm: VM) -> None:
    svc = _service(vm, "syslogd")
    assert svc["status"] == "running", svc
    assert svc["pid"] > 0
    assert "syslogd" in out(vm, "cat", f"/proc/{svc['pid']}/cmdline")
    assert _service(vm, "klogd")["status"] == "running"
    names = {s["id"] for s in json.loads(core0ctl(vm, "service", "list").stdout)}
    assert {"syslogd", "klogd", "cloudconfig"} <= names


def test_cloud_config_from_config_drive(vm: VM) -> None:
    cc = _service(vm, "cloudconfig")
    assert cc["status"] in ("running", "done"), cc
    assert out(vm, "cat", "/run/e2e/hello.txt") == "hello from cloud-config"
    assert out(vm, "stat", "-c", "%a", "/run/e2e/hello.txt").strip() == "640"
    assert out(vm, "hostname").strip() == CC_HOSTNAME
    res = core0ctl(vm, "info", "os")
    assert json.loads(res.stdout)["hostname"] == CC_HOSTNAME


def test_netlink_commands_work_in_the_image(vm: VM) -> None:
    """pyroute2 (and what it imports) is in the core image: ip.* answers."""
    res = vm.command("ip.link.list")
    assert res["state"] == "SUCCESS", res
    assert any(link["name"] == "lo" for link in json.loads(res["data"]))


def test_core_reboot_comes_back(vm: VM) -> None:
    boot_id = out(vm, "cat", "/proc/sys/kernel/random/boot_id")
    res = core0ctl(vm, "core.reboot")
    assert res.returncode == 0, res.stderr
    deadline = time.monotonic() + 240
    while True:
        assert time.monotonic() < deadline, vm.tail()
        try:
            if vm.redis_ping() and out(vm, "cat", "/proc/sys/kernel/random/boot_id") != boot_id:
                break
        except (VMError, OSError, AssertionError):
            pass
        time.sleep(0.5)
    assert core0ctl(vm, "ping").returncode == 0


def test_core_poweroff_exits_qemu_with_0(vm: VM) -> None:
    res = core0ctl(vm, "core.poweroff")
    assert res.returncode == 0, res.stderr
    assert vm.wait_exit(120) == 0

