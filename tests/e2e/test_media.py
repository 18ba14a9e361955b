"""End to end: the boot media for real machines (initramfs-builder/media.py) boot the node.

* the hybrid ISO through SeaBIOS (El Torito, BIOS) and through OVMF (UEFI), from a CD drive;
* the iPXE script through the network card's iPXE ROM: DHCP hands it the script's URL, the
  script fetches the kernel and the initramfs over HTTP from a server the test starts.

Each boot must end in an answered ``core.ping`` with the settings the medium carries (hostname
and password digest on the kernel command line it holds).

``CORE0_E2E_IMAGE=DIR`` reuses an image already built in DIR (quick local reruns).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, require, stop_tree
from image_fixtures import node_image

sys.path.insert(0, str(ROOT))
from qemu.harness import BASE_CMDLINE, OVMF, VM, GuestStalled, VMConfig, free_port

#: each test boots a VM of its own: run again once if its guest kernel stalled
pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(1200),
              pytest.mark.flaky(reruns=1, only_rerun=[GuestStalled])]

MEDIA = ROOT / "initramfs-builder" / "media.py"


@pytest.fixture(scope="module")
def image_dir() -> Path:
    require("qemu-system-x86_64", "grub-mkrescue", "xorriso", "mformat")
    return node_image("core")


def medium_args(vm: VM, hostname: str) -> list[str]:
    """The kernel arguments a medium must carry for ``vm`` (its password digest) + hostname."""
    args = [a for a in vm.cmdline() if a not in BASE_CMDLINE]
    return [*args, f"core0.main.hostname={hostname}"]


def make_medium(fmt: str, image: Path, out: Path, args: list[str],
                *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(MEDIA), fmt, "--image", str(image), "--out", str(out), *extra]
    for a in args:
        argv += ["--append", a]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def hostname(vm: VM) -> str:
    res = vm.command("info.os")
    assert res["state"] == "SUCCESS", res
    return str(json.loads(res["data"])["hostname"])


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_iso_boots(image_dir: Path, tmp_path: Path, firmware: str) -> None:
    if firmware == "uefi" and not OVMF.is_file():
        require(str(OVMF))
    vm = VM(VMConfig(image_dir=image_dir, firmware=firmware, serial_log=tmp_path / "serial"))
    name = f"iso-{firmware}"
    iso = tmp_path / "core0.iso"
    res = make_medium("iso", image_dir, iso, medium_args(vm, name))
    assert res.returncode == 0, res.stderr
    listing = subprocess.run(["xorriso", "-indev", str(iso), "-report_el_torito", "plain"],
                             capture_output=True, text=True, check=True).stdout
    assert "BIOS" in listing and "UEFI" in listing, listing  # one image, both firmwares
    vm.cfg.boot_iso = iso
    with vm:
        vm.start()
        vm.wait_ping(600)
        assert hostname(vm) == name
        assert "Linux version" in vm.tail(400) or (tmp_path / "serial").read_text(
            errors="replace").count("core0")


def test_medium_refuses_unsafe_arguments(image_dir: Path, tmp_path: Path) -> None:
    for bad in ("a b", "x;reboot", 'q"uote', "$(id)", "a\nb", "{x}"):
        res = make_medium("iso", image_dir, tmp_path / "x.iso", [bad])
        assert res.returncode != 0 and "one word" in res.stderr, (bad, res.stderr)
        assert not (tmp_path / "x.iso").exists()
    res = make_medium("ipxe", image_dir, tmp_path / "x.ipxe", [], "--base-url", "ftp://h/")
    assert res.returncode != 0 and not (tmp_path / "x.ipxe").exists()


def test_ipxe_script_boots(image_dir: Path, tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    for f in image_dir.iterdir():
        if f.name == "vmlinuz" or f.name.startswith("initramfs.cpio."):
            shutil.copy2(f, www / f.name)
    port = free_port()
    vm = VM(VMConfig(image_dir=image_dir, netboot=f"http://10.0.2.2:{port}/core0.ipxe",
                     serial_log=tmp_path / "serial"))
    res = make_medium("ipxe", image_dir, www / "core0.ipxe", medium_args(vm, "netboot"),
                      "--base-url", f"http://10.0.2.2:{port}/")
    assert res.returncode == 0, res.stderr
    script = (www / "core0.ipxe").read_text()
    assert script.startswith("#!ipxe\n") and vm.password not in script
    server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                               "--directory", str(www), str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if subprocess.run(["curl", "-sf", "-o", "/dev/null",
                               f"http://127.0.0.1:{port}/core0.ipxe"]).returncode == 0:
                break
            time.sleep(0.1)
        with vm:
            vm.start()
            vm.wait_ping(600)
            assert hostname(vm) == "netboot"
    finally:
        stop_tree(server.pid)
