"""End to end: the raw disk image with an A/B layout (initramfs-builder/disk.py) under qemu.

Images A, B (versions ``+a``, ``+b``) and a broken C (B whose dispatcher exits at once) are
built and signed once per session (tests/image_fixtures.py). A disk made from A boots through the
firmware to an answered ``core.ping``, under OVMF (UEFI) and under SeaBIOS; on the SeaBIOS
machine ``core.upgrade`` writes B into slot b, sets GRUB's environment and reboots: GRUB counts
the trial down and boots slot b, B answers and its boot assessment makes b the known-good slot.
``image.rollback`` then goes back to A the same way (slot a on trial, A commits it). Then C is
written into slot b and started by kexec: C never answers, so its assessment ends the trial and
reboots through the firmware, GRUB boots slot a again, and ``image.history`` holds C's failure;
the grubenv on the disk says so too. The images' state lives on the disk's persistent
partition, so the history survives every reboot.

Run under ``flock /tmp/core0-vm.lock`` on a shared machine.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, require
from image_fixtures import SignedBuilds
from test_upgrade import _Quiet, answer, boot_id, broken, ok, wait_boot, wait_history

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "initramfs-builder"))
import disk  # the disk image builder
import sign

from core0.image import slots
from qemu.harness import BASE_CMDLINE, OVMF, VM, GuestStalled, VMConfig

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(2400)]
#: seconds a newly booted slot has to become healthy (~20-30 s to a ping under TCG)
DEADLINE = 60


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory,
           signed_builds: SignedBuilds) -> dict[str, Any]:
    require("qemu-system-x86_64", "parted", "mkfs.vfat", "mke2fs", "mcopy", "grub-mkimage")
    d = tmp_path_factory.mktemp("images")
    out: dict[str, Any] = {"key": sign.public_key(signed_builds.pub)}
    for tag in ("a", "b"):
        signed_builds.image(tag, d / tag)
    broken(d / "b", d / "c", signed_builds.sec)
    for tag in ("a", "b", "c"):
        raw = (d / tag / "manifest.json").read_bytes()
        out[tag] = {"dir": d / tag, "digest": hashlib.sha256(raw).hexdigest(),
                    "version": json.loads(raw)["version"]}
    return out


@pytest.fixture(scope="module")
def server(images: dict[str, Any]) -> Iterator[int]:
    """An HTTP server on the host's loopback serving the images (10.0.2.2 for the guest)."""
    root = images["b"]["dir"].parent
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                          functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield int(srv.server_address[1])
    srv.shutdown()
    srv.server_close()


def disk_vm(images: dict[str, Any], tmp: Path, firmware: str) -> VM:
    """A VM booting a fresh A/B disk made from A; the disk's kernel command line carries the
    VM's password digest and the test's signing key."""
    vm = VM(VMConfig(image_dir=images["a"]["dir"], firmware=firmware,
                     boot_disk=tmp / "core0.disk.raw", serial_log=tmp / "serial.log",
                     append=[f"core0.image.trusted_keys={images['key']}",
                             f"core0.image.boot_deadline={DEADLINE}"]))
    args = [a for a in vm.cmdline() if a not in BASE_CMDLINE]
    disk.make_disk(images["a"]["dir"], "core", tmp / "core0.disk.raw", args, data_mib=256)
    return vm


@pytest.fixture(scope="module")
def vm(images: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[VM]:
    """The SeaBIOS machine the upgrade and the rollback run on."""
    machine = disk_vm(images, tmp_path_factory.mktemp("bios"), "bios")
    machine.start()
    machine.wait_ping(600)
    yield machine
    machine.close()


@pytest.mark.flaky(reruns=1, only_rerun=[GuestStalled])  # a VM of its own
def test_disk_boots_under_ovmf(images: dict[str, Any], tmp_path: Path) -> None:
    if not OVMF.is_file():
        require(str(OVMF))
    with disk_vm(images, tmp_path, "uefi") as machine:
        machine.start()
        machine.wait_ping(600)
        cur = ok(machine.command("image.current"))
        assert (cur["slot"], cur["digest"]) == ("a", images["a"]["digest"]), cur
    assert "core0: slot a" in (tmp_path / "serial.log").read_text(errors="replace")


def test_disk_boots_under_seabios(vm: VM, images: dict[str, Any]) -> None:
    cur = ok(vm.command("image.current"))
    assert (cur["slot"], cur["digest"], cur["version"]) == (
        "a", images["a"]["digest"], images["a"]["version"]), cur
    mounted = json.loads(vm.system("cat", "/run/core0/persistent.json")["streams"][0])
    assert mounted["mounted"] is True and mounted["dir"] == disk.PERSIST_DIR, mounted
    # the first boot of the disk is assessed and makes slot a the known-good one
    history = wait_history(vm, "booted")
    assert [(h["event"], h["digest"], h.get("slot")) for h in history] == [
        ("booted", images["a"]["digest"], "a")], history
    # slot b is empty: nothing to roll back to (refused before anything changes)
    res = vm.command("image.rollback", timeout=60)
    assert res["state"] == "ERROR" and res["code"] == 404 and "slot b" in str(res["data"]), res


def test_upgrade_a_to_b_in_place(vm: VM, images: dict[str, Any], server: int) -> None:
    a, b = images["a"], images["b"]
    old_boot = boot_id(vm)
    assert old_boot
    url = f"http://10.0.2.2:{server}/b/manifest.json"
    out = ok(vm.command("core.upgrade", {"url": url, "sha256": b["digest"]}, timeout=600))
    assert (out["digest"], out["switch"], out["slot"]) == (b["digest"], "reboot", "b"), out
    assert out["grubenv"]["core0_try"] == "b" and out["grubenv"]["core0_slot"] == "a", out
    ver = wait_boot(vm, b["version"], old_boot, 600)
    assert ver["image"]["digest"] == b["digest"]
    cur = ok(vm.command("image.current"))
    assert cur["slot"] == "b", cur
    history = wait_history(vm, "booted")
    assert [(h["event"], h["digest"]) for h in history[-2:]] == [
        ("upgrade", b["digest"]), ("booted", b["digest"])], history
    assert history[-2]["from"] == a["digest"] and history[-2]["slot"] == "b"
    # GRUB counted the trial down (3 boots → 2 left) before booting b; B then committed it
    assert history[-1]["grubenv"] == {"core0_slot": "a", "core0_try": "b",
                                      "core0_tries": "2"}, history[-1]
    assert ok(vm.command("image.history"))["previous"] == a["digest"]
    env = answer(vm, "core.system", {"name": "cat", "args": ["/proc/cmdline"]})
    assert "core0.slot=b" in env and "BOOT_IMAGE=(hd0,gpt4)/vmlinuz" in env, env


def test_rollback_to_a(vm: VM, images: dict[str, Any]) -> None:
    a, b = images["a"], images["b"]
    old_boot = boot_id(vm)
    assert old_boot
    out = ok(vm.command("image.rollback", timeout=120))
    assert (out["digest"], out["version"], out["slot"], out["switch"]) == (
        a["digest"], a["version"], "a", "reboot"), out
    # slot a is written already: nothing is copied, only the trial is set
    assert out["grubenv"]["core0_try"] == "a" and out["grubenv"]["core0_slot"] == "b", out
    ver = wait_boot(vm, a["version"], old_boot, 600)
    assert ver["image"]["digest"] == a["digest"]
    history = wait_history(vm, "booted")
    assert [(h["event"], h["digest"]) for h in history[-2:]] == [
        ("rollback", a["digest"]), ("booted", a["digest"])], history
    assert (history[-2]["from"], history[-2]["slot"], history[-2]["how"]) == (
        b["digest"], "a", "reboot"), history[-2]
    assert history[-1]["grubenv"] == {"core0_slot": "b", "core0_try": "a",
                                      "core0_tries": "2"}, history[-1]
    cur = ok(vm.command("image.current"))
    assert (cur["slot"], cur["digest"]) == ("a", a["digest"]), cur
    # A's assessment committed slot a: a second rollback would go to B in slot b
    assert ok(vm.command("image.history"))["previous"] == b["digest"]


def test_broken_image_rolls_back_to_a(vm: VM, images: dict[str, Any], server: int) -> None:
    a, c = images["a"], images["c"]
    old_boot = boot_id(vm)
    assert old_boot
    url = f"http://10.0.2.2:{server}/c/manifest.json"
    out = ok(vm.command("core.upgrade", {"url": url, "sha256": c["digest"], "switch": "kexec"},
                        timeout=600))
    assert (out["digest"], out["slot"], out["kexec"][0]) == (c["digest"], "b", "kexec"), out
    # C (slot b, by kexec) never answers: its dispatcher dies at each start; at the third
    # end (image.crash_limit, before DEADLINE) it reboots, GRUB boots slot a
    ver = wait_boot(vm, a["version"], old_boot, DEADLINE + 900)
    assert ver["image"]["digest"] == a["digest"]
    history = wait_history(vm, "booted")
    events = [(h["event"], h.get("digest")) for h in history]
    tail = events[events.index(("upgrade", c["digest"])):]
    assert tail == [("upgrade", c["digest"]), ("failed", c["digest"]),
                    ("rollback", c["digest"]), ("booted", a["digest"])], history
    failed = next(h for h in history if h["event"] == "failed")
    assert "not healthy" in failed["reason"] and "core.ping" in failed["reason"], failed
    assert "the dispatcher ended 3 times" in failed["reason"], failed
    assert failed["seconds"] < DEADLINE, failed
    back = history[events.index(("rollback", c["digest"]))]
    assert (back["to"], back["slot"], back["how"]) == (a["digest"], "a", "reboot"), back
    cur = ok(vm.command("image.current"))
    assert (cur["slot"], cur["digest"]) == ("a", a["digest"]), cur
    vm.stop()  # the grubenv as GRUB reads it from the disk: a known-good, no trial
    esp = vm.cfg.boot_disk, 2 * disk.MiB
    env = subprocess.run(["mtype", "-i", f"{esp[0]}@@{esp[1]}", "::/boot/grub/grubenv"],
                         capture_output=True, check=True, env={"MTOOLS_SKIP_CHECK": "1"}).stdout
    assert slots.parse_env(env) == {"core0_slot": "a", "core0_try": "", "core0_tries": "0"}
