"""A fresh root per container start, dropped on terminate.

Two backends, chosen by where the image store is:

- **btrfs**: an image's ``rootfs`` is a subvolume (made at import); each start takes a
  writable snapshot of it as ``<container dir>/rootfs`` (one ioctl on fds, copy-on-write);
  dropping it destroys the snapshot.
- **any other file system**: the stored ``rootfs`` is the read-only lower layer of an overlayfs;
  each container gets its own upper and work directories under its container dir, merged at
  ``<container dir>/rootfs``. Creating the clone is one mount, whatever the image's size;
  dropping it is an unmount plus removing the upper dir.

The overlay options are a comma/colon separated string, so the paths in it are core0's own
(state dir + digests + integers), checked to hold no ``,``, ``:`` or ``\\``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import stat
import struct
import time
from pathlib import Path

from core0 import mountinfo
from core0.errors import Internal, PreconditionFailed
from core0.storage.btrfs import SUBVOL_INO, snapshot_ioctl

_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8
MS_NODEV = 4
MS_BIND, MS_REC = 4096, 16384


# struct btrfs_ioctl_vol_args: fd, name[4088]; _IOW(0x94, 14 / 15, that struct)
_VOL_ARGS = struct.Struct("=q4088s")
BTRFS_IOC_SUBVOL_CREATE = 0x5000940E
BTRFS_IOC_SNAP_DESTROY = 0x5000940F


def _vol_ioctl(parent: Path, name: str, request: int) -> None:
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, request, bytearray(_VOL_ARGS.pack(0, name.encode())))
    finally:
        os.close(fd)


def make_root_dir(parent: Path, name: str) -> str:
    """Make ``parent/name`` for an image's root: a btrfs subvolume where the store is on
    btrfs ("btrfs"), a plain directory otherwise ("directory")."""
    try:
        _vol_ioctl(parent, name, BTRFS_IOC_SUBVOL_CREATE)
        os.chmod(parent / name, 0o755)
        return "btrfs"
    except OSError as e:
        if e.errno not in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM):
            raise
    (parent / name).mkdir(mode=0o755)
    return "directory"


def is_subvolume(path: Path) -> bool:
    try:
        return os.lstat(path).st_ino == SUBVOL_INO and not is_mounted(path)
    except OSError:
        return False


def remove_root_dir(path: Path) -> None:
    """Remove an image's or a container's root (subvolume or directory tree)."""
    if is_subvolume(path):
        _vol_ioctl(path.parent, path.name, BTRFS_IOC_SNAP_DESTROY)
    else:
        shutil.rmtree(path, ignore_errors=False)


def _check(p: Path) -> str:
    s = str(p)
    if any(c in s for c in ",:\\\n"):
        raise PreconditionFailed(f"path unusable in overlay options: {s!r:.200}")
    return s


def clone(lower: Path, cdir: Path, owner: int = 0) -> Path:
    """A writable clone of ``lower`` at ``cdir/rootfs`` (a btrfs snapshot when ``lower`` is a
    subvolume, an overlay mount otherwise); returns that path. ``owner``: the uid/gid the
    overlay's upper dir (so the clone's ``/``) belongs to."""
    if is_subvolume(lower):
        src = os.open(lower, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            dst = os.open(cdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                snapshot_ioctl(src, dst, "rootfs", read_only=False)
            finally:
                os.close(dst)
        finally:
            os.close(src)
        return cdir / "rootfs"
    upper, work, merged = cdir / "upper", cdir / "work", cdir / "rootfs"
    for d in (upper, work, merged):
        d.mkdir(mode=0o755, exist_ok=True)
    if owner:
        os.chown(upper, owner, owner)
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
    """Something is mounted at ``path`` (resolved) in this mount namespace."""
    target = os.path.realpath(path)
    return any(m.mountpoint == target for m in mountinfo.read())


def mounts_below(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    return mountinfo.below(os.path.realpath(path))


def _unmount(point: str) -> None:
    """Unmount everything stacked at ``point`` (never a mount it is only below: umount2
    refuses a path that is not a mount's root with EINVAL, which ends the loop, so no
    mountinfo read is needed; symlinks are not followed)."""
    for _ in range(8):
        if _libc.umount2(point.encode(), MNT_DETACH | UMOUNT_NOFOLLOW) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more), gone
                return
            raise Internal(f"unmount {point}: {os.strerror(err)}")
    if is_mounted(Path(point)):
        raise Internal(f"{point} is still mounted")


def drop(cdir: Path) -> None:
    """Unmount the container's root and anything left below its dir (an idmapped lower
    layer, :mod:`.userns`; the volumes' binds, :func:`pin_source`), then remove the dir
    (Internal, and nothing removed, while something is still mounted below it)."""
    merged = cdir / "rootfs"
    _unmount(str(merged))
    if cdir.exists():
        for point in mounts_below(cdir):
            _unmount(point)
        left = mounts_below(cdir)
        if left:  # never remove files through a mount (a volume's source is the user's)
            raise Internal(f"still mounted below {cdir}: {', '.join(left)[:500]}")
    if is_subvolume(merged):
        _vol_ioctl(cdir, "rootfs", BTRFS_IOC_SNAP_DESTROY)
    for attempt in range(10):  # a process of the container may still write a last file
        try:
            shutil.rmtree(cdir)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.ENOTEMPTY or attempt == 9:
                raise
            time.sleep(0.1)


def pin_source(fd: int, cdir: Path, index: int) -> Path:
    """Bind the volume source opened as ``fd`` (an ``O_PATH`` descriptor, resolved and
    checked by the caller) at ``cdir/vol/<index>`` and return that path, which the container's
    spec then names: the kernel takes the mount from the descriptor (``/proc/self/fd/N``
    names the opened object itself, no path is walked again), and nothing below the
    container's dir (mode 0700, core0's) can be swapped by anyone else. :func:`drop` unmounts
    it with everything else below the dir."""
    vol = cdir / "vol"
    vol.mkdir(mode=0o711, exist_ok=True)
    os.chmod(vol, 0o711)  # (search only: the runtime of a userns container is its root)
    point = vol / str(index)
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        point.mkdir(mode=0o755)
    else:
        os.close(os.open(point, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    if _libc.mount(f"/proc/self/fd/{fd}".encode(), str(point).encode(), None,
                   MS_BIND | MS_REC, None) != 0:
        err = ctypes.get_errno()
        raise Internal(f"bind the volume source on {point}: {os.strerror(err)}")
    return point
