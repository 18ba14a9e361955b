"""The A/B disk image's pieces without a VM: GRUB environment blocks read and written like
grub-editenv does, GRUB's config accepted by grub-script-check, and the disk layout
(initramfs-builder/disk.py) with the labels the node looks its partitions up by."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, require

sys.path.insert(0, str(ROOT / "initramfs-builder"))
import disk

from core0.image import slots
from core0.init.persistent import read_label


def test_grubenv_matches_grub_editenv(tmp_path: Path) -> None:
    require("grub-editenv")
    env = tmp_path / "grubenv"
    subprocess.run(["grub-editenv", str(env), "create"], check=True)
    subprocess.run(["grub-editenv", str(env), "set", "core0_slot=b", "core0_try=",
                    "core0_tries=3"], check=True)
    raw = env.read_bytes()
    assert slots.parse_env(raw) == {"core0_slot": "b", "core0_try": "", "core0_tries": "3"}
    ours = slots.format_env(slots.parse_env(raw))
    assert len(ours) == len(raw) == 1024 and ours == disk.grubenv(slots.parse_env(raw))
    env.write_bytes(slots.format_env({"core0_slot": "a", "core0_try": "b", "core0_tries": "2"}))
    listed = subprocess.run(["grub-editenv", str(env), "list"], check=True,
                            capture_output=True, text=True).stdout.split()
    assert listed == ["core0_slot=a", "core0_try=b", "core0_tries=2"]


def test_grubenv_refuses_what_grub_would_misread() -> None:
    for k, v in (("core0_slot", "a\nb"), ("x y", "1"), ("core0_try", "a\\b")):
        with pytest.raises(ValueError):
            slots.format_env({k: v})
    with pytest.raises(ValueError):
        slots.format_env({"v": "x" * 1024})
    with pytest.raises(ValueError):
        slots.parse_env(b"not an environment block")


def test_with_slot_replaces_the_slot_word() -> None:
    line = "console=ttyS0 core0.slot=a core0.slot.x=1 core0.image=abc"
    assert slots.with_slot(line, "b") == "console=ttyS0 core0.slot.x=1 core0.image=abc " \
                                         "core0.slot=b"
    assert slots.other("a") == "b" and slots.other("b") == "a"


def test_grub_cfg_is_valid_grub_script() -> None:
    require("grub-script-check")
    cfg = disk.grub_cfg(disk._check_args(["core0.main.hostname=n1"]),
                        {"a": "0f0e0d0c-0000-4000-8000-000000000001",
                         "b": "0f0e0d0c-0000-4000-8000-000000000002"})
    res = subprocess.run(["grub-script-check"], input=cfg, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "save_env core0_tries" in cfg and "core0.slot=$1" in cfg
    assert 'elif [ "$core0_tries" = 1 ]; then set core0_tries=0' in cfg


def _label_at(image: Path, offset: int, tmp: Path) -> str | None:
    part = tmp / f"part-{offset}"
    with image.open("rb") as f:
        f.seek(offset)
        part.write_bytes(f.read(0x11000))
    return read_label(str(part))


def test_disk_layout(tmp_path: Path) -> None:
    require("parted", "mkfs.vfat", "mke2fs", "mcopy", "grub-mkimage")
    image = tmp_path / "image"
    image.mkdir()
    (image / "vmlinuz").write_bytes(b"k" * 4096)
    (image / "initramfs.cpio.zst").write_bytes(b"i" * 4096)
    out = disk.make_disk(image, "core", tmp_path / "d.raw", [], slot_mib=64, data_mib=32)
    table = subprocess.run(["parted", "-s", "-m", str(out), "unit", "MiB", "print"],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    rows = [ln.rstrip(";").split(":") for ln in table[2:]]
    assert [(r[1], r[5], r[6]) for r in rows] == [
        ("1.00MiB", "bios", "bios_grub"), ("2.00MiB", "esp", "boot, esp"),
        ("66.0MiB", "core0-a", ""), ("130MiB", "core0-b", ""), ("194MiB", "core0-data", "")]
    mib = disk.MiB
    assert _label_at(out, 2 * mib, tmp_path) == slots.ESP_LABEL
    assert [_label_at(out, o * mib, tmp_path) for o in (66, 130, 194)] == [
        "core0-a", "core0-b", disk.DATA_LABEL]
    env = subprocess.run(["mtype", "-i", f"{out}@@{2 * mib}", "::/boot/grub/grubenv"],
                         capture_output=True, check=True, env={"MTOOLS_SKIP_CHECK": "1"}).stdout
    assert slots.parse_env(env) == {"core0_slot": "a", "core0_try": "", "core0_tries": "0"}
    with out.open("rb") as f:
        mbr = f.read(512)
    assert mbr[510:] == b"\x55\xaa" and int.from_bytes(mbr[0x5C:0x64], "little") == 2048
