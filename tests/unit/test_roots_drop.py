"""Dropping a container's root (core0.sandbox.roots.drop) on real mounts: an overlay clone
with another mount stacked on it, a mount below the container dir, a clone that is not
mounted any more; and that unmounting a path only below a mount leaves that mount alone."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_root

from core0 import mountinfo
from core0.sandbox import roots


def _mount_tmpfs(at: Path) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(at)], check=True)


@pytest.fixture
def base(tmp_path: Path) -> Iterator[Path]:
    require_root()
    yield tmp_path
    for _ in range(5):  # whatever a failed test left, stacked mounts included
        for point in mountinfo.below(str(tmp_path.resolve())):
            subprocess.run(["umount", "-l", point], check=False)


def _clone(base: Path) -> Path:
    lower = base / "lower"
    lower.mkdir()
    (lower / "f").write_text("x")
    cdir = base / "c1"
    cdir.mkdir()
    roots.clone(lower, cdir)
    return cdir


def test_drop_unmounts_stacked_and_nested_mounts(base: Path) -> None:
    cdir = _clone(base)
    _mount_tmpfs(cdir / "rootfs")  # stacked on the overlay
    (cdir / "extra").mkdir()
    _mount_tmpfs(cdir / "extra")  # below the container dir
    merged = str((cdir / "rootfs").resolve())
    assert sum(m.mountpoint == merged for m in mountinfo.read()) == 2
    assert len(mountinfo.below(str(cdir.resolve()))) == 2
    roots.drop(cdir)
    assert not cdir.exists()
    assert mountinfo.below(str(base.resolve())) == []
    assert (base / "lower" / "f").read_text() == "x"


def test_drop_of_an_unmounted_clone_and_of_a_gone_dir(base: Path) -> None:
    cdir = _clone(base)
    subprocess.run(["umount", str(cdir / "rootfs")], check=True)
    roots.drop(cdir)
    assert not cdir.exists()
    roots.drop(cdir)  # nothing left: a no-op


def test_unmount_below_a_mount_leaves_it(base: Path) -> None:
    outer = base / "outer"
    outer.mkdir()
    _mount_tmpfs(outer)
    (outer / "inner").mkdir()
    roots._unmount(str(outer / "inner"))
    assert roots.is_mounted(outer)
    link = base / "link"
    link.symlink_to(outer)
    roots._unmount(str(link))  # a symlink to a mount point is not followed
    assert roots.is_mounted(outer)
    roots._unmount(str(outer))
    assert not roots.is_mounted(outer)
