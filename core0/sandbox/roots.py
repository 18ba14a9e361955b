"""A fresh root per container start, dropped on terminate.

The stored image root (``images/<id>/rootfs``) is the read-only lower layer of an overlayfs;
each container gets its own upper and work directories under its container dir, merged at
``<container dir>/rootfs``. Creating the clone is one mount, whatever the image's size; dropping
it is an unmount plus removing the upper dir.

The overlay options are a comma/colon separated string, so the paths in it are core0's own
(state dir + digests + integers), checked to hold no ``,``, ``:`` or ``\\``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
from pathlib import Path

from core0.errors import Internal, PreconditionFailed

_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2
MS_NODEV = 4


def _check(p: Path) -> str:
    s = str(p)
    if any(c in s for c in ",:\\\n"):
        raise PreconditionFailed(f"path unusable in overlay options: {s!r:.200}")
    return s


def clone(lower: Path, cdir: Path) -> Path:
    """Mount a writable overlay of ``lower`` at ``cdir/rootfs``; returns that path."""
    upper, work, merged = cdir / "upper", cdir / "work", cdir / "rootfs"
    for d in (upper, work, merged):
        d.mkdir(mode=0o755, exist_ok=True)
    opts = f"lowerdir={_check(lower)},upperdir={_check(upper)},workdir={_check(work)}"
    if _libc.mount(b"overlay", str(merged).encode(), b"overlay", MS_NODEV,
                   opts.encode()) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENODEV, errno.EINVAL):
            raise PreconditionFailed(f"overlay mount refused ({os.strerror(err)}): this "
                                     "kernel or file system has no overlayfs")
        raise Internal(f"overlay mount at {merged}: {os.strerror(err)}")
    return merged


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4].encode().decode("unicode_escape") == target:
                return True
    return False


def drop(cdir: Path) -> None:
    """Unmount the container's root (and anything left below it) and remove its dir."""
    merged = cdir / "rootfs"
    for _ in range(8):
        if not is_mounted(merged):
            break
        if _libc.umount2(str(merged).encode(), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err == errno.EINVAL:  # not a mount point (any more)
                break
            raise Internal(f"unmount {merged}: {os.strerror(err)}")
    if is_mounted(merged):
        raise Internal(f"{merged} is still mounted")
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(cdir)
