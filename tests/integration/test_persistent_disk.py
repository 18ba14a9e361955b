"""The persistent disk (``[main] persistent_device``, core0/init/persistent.py) on real loop
devices: found by label (ext4, btrfs, FAT) or path, mounted nodev/nosuid on persistent_dir,
its state written for the dispatcher; a missing disk is reported and nothing may be written
below persistent_dir (412) until it is mounted."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
from pathlib import Path

import pytest
from conftest import require
from storage_fixtures import Loops

from core0 import declared
from core0.config import Config, MainConfig
from core0.errors import PreconditionFailed
from core0.init import mounts, persistent

pytest_plugins = ["storage_fixtures"]
pytestmark = pytest.mark.root


def config(tmp: Path, device: str) -> Config:
    state = tmp / "state"
    state.mkdir(parents=True, exist_ok=True)
    main = dataclasses.replace(MainConfig(), state_dir=str(state), persistent_dir=str(tmp / "p"),
                               persistent_device=device)
    return dataclasses.replace(Config(), main=main)


@pytest.mark.parametrize("mkfs", [["mkfs.ext4", "-q", "-L"], ["mkfs.btrfs", "-q", "-L"],
                                  ["mkfs.vfat", "-n"]])
def test_mounted_by_label(loops: Loops, tmp_path: Path, mkfs: list[str]) -> None:
    require(mkfs[0])
    dev = loops("300M")
    label = "C0DATA" if mkfs[0] == "mkfs.vfat" else "core0-data"
    subprocess.run([*mkfs, label, dev], check=True, capture_output=True)
    assert persistent.read_label(dev) == label
    if mkfs[0] == "mkfs.vfat" and "vfat" not in Path("/proc/filesystems").read_text():
        return  # the label is read; this kernel mounts no FAT (the node image's does)
    cfg = config(tmp_path, f"LABEL={label}")
    with pytest.raises(PreconditionFailed):  # not mounted yet: nothing goes there
        declared.base(cfg)
    out = persistent.mount_persistent(cfg, wait=5)
    try:
        assert out["mounted"] and out["source"] == dev, out
        assert mounts.is_mounted(cfg.main.persistent_dir)
        opts = next(m for m in mounts.mountinfo()
                    if m.target == cfg.main.persistent_dir).options
        assert "nodev" in opts and "nosuid" in opts, opts
        assert declared.persistent_ready(cfg)
        assert declared.base(cfg) == Path(cfg.main.persistent_dir)
        assert declared.persistent_state(cfg) == out
    finally:
        with contextlib.suppress(Exception):
            mounts.umount(cfg.main.persistent_dir)


def test_by_path_and_missing(loops: Loops, tmp_path: Path) -> None:
    dev = loops("64M")
    subprocess.run(["mkfs.ext4", "-q", dev], check=True, capture_output=True)
    cfg = config(tmp_path, dev)
    out = persistent.mount_persistent(cfg, wait=1)
    try:
        assert out["mounted"] and out["fstype"] == "ext4", out
    finally:
        mounts.umount(cfg.main.persistent_dir)
    missing = config(tmp_path / "m", "LABEL=no-such-disk")
    out = persistent.mount_persistent(missing, wait=0.5)
    assert not out["mounted"] and "no such device" in out["error"], out
    assert not declared.persistent_ready(missing)
    with pytest.raises(PreconditionFailed):
        declared.base(missing)
    # without persistent_device the directory is the operator's: always usable
    plain = dataclasses.replace(missing, main=dataclasses.replace(missing.main,
                                                                  persistent_device=""))
    assert declared.base(plain) == Path(plain.main.persistent_dir)


def test_unformatted_disk_is_reported(loops: Loops, tmp_path: Path) -> None:
    dev = loops("64M")
    out = persistent.mount_persistent(config(tmp_path, dev), wait=1)
    assert not out["mounted"] and "cannot mount" in out["error"], out
