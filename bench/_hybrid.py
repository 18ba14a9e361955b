"""Opt-in, reverted host change that lets crun run on a hybrid cgroup v1/v2 host.

crun refuses a host whose cgroup v2 hierarchy still holds a controller while the others are
on v1 ("cgroups in hybrid mode not supported, drop all controllers from cgroupv2"). On a
host where hugetlb is the only controller left on v2, mounting it as a v1 hierarchy takes it
off v2 and crun runs. :func:`crun_hybrid` does that for the length of a ``with`` block and
always reverts it (also on Ctrl-C or SIGTERM), restoring the ``cgroup.subtree_control`` it
found. It refuses to touch a host that is not in the state it expects.

A node (the image) is cgroup v2 only and needs none of this: crun runs there as it is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from core0 import mountinfo
from core0.mountinfo import Mount

CG = Path("/sys/fs/cgroup")
UNIFIED = CG / "unified"
HUGETLB = CG / "hugetlb"


class HostStateError(RuntimeError):
    """The host's cgroups are not in the state the change expects: nothing was touched."""


def _mounts() -> list[Mount]:
    return mountinfo.read()


def _hugetlb_v1(m: Mount) -> bool:
    return m.fstype == "cgroup" and "hugetlb" in m.super_options


def _words(path: Path) -> list[str]:
    return path.read_text().split()


def state() -> str:
    """One line describing the cgroup state the change touches."""
    v1 = [m.mountpoint for m in _mounts() if _hugetlb_v1(m)]
    return (f"unified controllers {_words(UNIFIED / 'cgroup.controllers')}, subtree_control "
            f"{_words(UNIFIED / 'cgroup.subtree_control')}, hugetlb v1 mounts {v1}")


def _check() -> bool:
    """Raise unless the host is hybrid with hugetlb alone on v2; returns whether hugetlb is
    enabled in the v2 root's ``cgroup.subtree_control``."""
    mounts = _mounts()
    if not any(m.mountpoint == str(UNIFIED) and m.fstype == "cgroup2" for m in mounts):
        raise HostStateError(f"no cgroup2 hierarchy at {UNIFIED} (not a hybrid host)")
    if not any(m.mountpoint == str(CG) and m.fstype == "tmpfs" for m in mounts):
        raise HostStateError(f"{CG} is not a tmpfs")
    if any(_hugetlb_v1(m) for m in mounts):
        raise HostStateError("hugetlb is already mounted as a v1 hierarchy")
    if HUGETLB.exists():
        raise HostStateError(f"{HUGETLB} already exists")
    if _words(UNIFIED / "cgroup.controllers") != ["hugetlb"]:
        raise HostStateError(f"expected hugetlb alone on cgroup v2: {state()}")
    sub = _words(UNIFIED / "cgroup.subtree_control")
    if sub not in ([], ["hugetlb"]):
        raise HostStateError(f"unexpected cgroup.subtree_control: {state()}")
    return sub == ["hugetlb"]


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def crun_hybrid() -> Iterator[None]:
    """Move hugetlb from cgroup v2 to a v1 hierarchy for the block, then put it back."""
    had_subtree = _check()
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    applied: list[str] = []
    try:
        if had_subtree:
            (UNIFIED / "cgroup.subtree_control").write_text("-hugetlb")
            applied.append("subtree")
        HUGETLB.mkdir()
        applied.append("dir")
        subprocess.run(["mount", "-t", "cgroup", "-o", "hugetlb", "cgroup", str(HUGETLB)],
                       check=True)
        applied.append("mount")
        print(f"crun hybrid change applied: {state()}", flush=True)
        yield
    finally:
        # no Ctrl-C / SIGTERM in the middle of the revert
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            _revert(applied)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            signal.signal(signal.SIGTERM, old_term)


def _rmdir_children(top: Path) -> None:
    """Remove the (empty) cgroups left under a v1 hierarchy's root."""
    for d in sorted((p for p in top.rglob("*") if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()


def _back_on_v2(wait: float) -> bool:
    deadline = time.monotonic() + wait
    while "hugetlb" not in _words(UNIFIED / "cgroup.controllers"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _revert(applied: list[str]) -> None:
    if "mount" in applied:
        _rmdir_children(HUGETLB)
        subprocess.run(["umount", str(HUGETLB)], check=True)
    if "dir" in applied:
        os.rmdir(HUGETLB)
    if "mount" in applied:
        # The kernel destroys the v1 hierarchy (and gives hugetlb back to v2) only when it
        # is unmounted with no child cgroup, dying ones included (a container's, just
        # removed): until then, mount it again aside, let them go and unmount it again.
        tries = 0
        while not _back_on_v2(2.0):
            tries += 1
            if tries > 15:
                raise RuntimeError(f"hugetlb did not come back to cgroup v2: {state()}")
            aside = tempfile.mkdtemp(prefix="core0-bench-hugetlb-")
            try:
                subprocess.run(["mount", "-t", "cgroup", "-o", "hugetlb", "cgroup", aside],
                               check=True)
                _rmdir_children(Path(aside))
                time.sleep(0.5)
                subprocess.run(["umount", aside], check=True)
            finally:
                os.rmdir(aside)
    if "subtree" in applied:
        (UNIFIED / "cgroup.subtree_control").write_text("+hugetlb")
    print(f"crun hybrid change reverted: {state()}", flush=True)
