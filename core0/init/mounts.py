"""The API filesystems PID 1 mounts at boot, and the unmount at shutdown.

Everything goes through ``mount(2)``/``umount2(2)`` via ctypes (no ``mount`` binary). A mount
that fails is logged and skipped: a node with a missing ``/dev/mqueue`` still boots.

cgroups: ``auto`` mounts the unified (v2) hierarchy at ``/sys/fs/cgroup`` when the kernel has
it, and otherwise a tmpfs there with one v1 hierarchy per enabled controller of
``/proc/cgroups`` (hosts that have only v1).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from core0.mountinfo import Mount as MountInfo
from core0.mountinfo import read as read_mountinfo

log = logging.getLogger("core0.init.mounts")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

MS_RDONLY = 0x1
MS_BIND = 0x1000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MNT_DETACH = 0x2

#: filesystems that hold no data to flush: never unmounted at shutdown
VIRTUAL_FS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "ramfs", "rootfs", "cgroup", "cgroup2",
    "mqueue", "securityfs", "debugfs", "tracefs", "bpf", "fusectl", "configfs", "pstore",
    "efivarfs", "hugetlbfs", "autofs", "binfmt_misc", "nsfs",
})


class MountError(OSError):
    """A mount(2) or umount2(2) call failed."""


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str
    flags: int = 0
    data: str = ""
    #: mode of the mount point when it has to be created
    mode: int = 0o755


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    """mount(2); raises MountError."""
    rc = _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                     flags, data.encode() if data else None)
    if rc != 0:
        err = ctypes.get_errno()
        raise MountError(err, f"mount {fstype or source} on {target}: {os.strerror(err)}")


def umount(target: str, flags: int = 0) -> None:
    """umount2(2); raises MountError."""
    if _libc.umount2(target.encode(), flags) != 0:
        err = ctypes.get_errno()
        raise MountError(err, f"umount {target}: {os.strerror(err)}")


def mountinfo(path: str = "/proc/self/mountinfo") -> list[MountInfo]:
    """The mount table, in mount order (empty if /proc is not mounted)."""
    return read_mountinfo(path)


def is_mounted(target: str, table: list[MountInfo] | None = None) -> bool:
    return any(m.target == target for m in (mountinfo() if table is None else table))


def root_is_rootfs() -> bool:
    """True when / is the initramfs itself (pivot_root cannot leave it)."""
    for m in mountinfo():
        if m.target == "/":
            return m.fstype in ("rootfs", "ramfs") or (m.fstype == "tmpfs" and m.source == "rootfs")
    return False


def _filesystems() -> set[str]:
    try:
        text = Path("/proc/filesystems").read_text()
    except OSError:
        return set()
    return {line.split()[-1] for line in text.splitlines() if line.strip()}


API_MOUNTS = [
    Mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC),
    Mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC),
    Mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755"),
    Mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=666"),
    Mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", 0o1777),
    Mount("mqueue", "/dev/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC),
    Mount("run", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"),
    Mount("tmp", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", 0o1777),
]


def _mount_one(m: Mount) -> bool:
    try:
        os.makedirs(m.target, mode=m.mode, exist_ok=True)
    except OSError as e:
        log.warning("cannot create %s: %s", m.target, e)
        return False
    try:
        mount(m.source, m.target, m.fstype, m.flags, m.data)
    except MountError as e:
        if e.errno == errno.EBUSY:
            return False
        log.warning("%s", e)
        return False
    log.debug("mounted %s on %s", m.fstype, m.target)
    return True


def mount_api(cgroups: str = "auto") -> list[str]:
    """Mount what is not mounted yet; return the targets mounted now."""
    done: list[str] = []
    for m in API_MOUNTS:
        table = mountinfo()
        if table and is_mounted(m.target, table):
            continue
        if _mount_one(m):
            done.append(m.target)
    with contextlib.suppress(OSError):  # /var/lock points here (zfs-fuse, lvm… lock there)
        os.makedirs("/run/lock", exist_ok=True)
        os.chmod("/run/lock", 0o1777)
    # the console and /dev/fd links that devtmpfs does not make
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        with contextlib.suppress(OSError):
            os.symlink(target, f"/dev/{name}")
    done += mount_cgroups(cgroups)
    return done


def mount_cgroups(mode: str = "auto") -> list[str]:
    """cgroup2 at /sys/fs/cgroup, or the v1 hierarchies where the kernel has only v1."""
    base = "/sys/fs/cgroup"
    if mode == "none" or is_mounted(base):
        return []
    fs = _filesystems()
    if mode in ("auto", "v2") and "cgroup2" in fs:
        if _mount_one(Mount("cgroup2", base, "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                            "nsdelegate")):
            _enable_controllers(base)
            return [base]
        if mode == "v2":
            return []
    if "cgroup" not in fs:
        return []
    done = []
    if _mount_one(Mount("cgroup_root", base, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                        "mode=0755")):
        done.append(base)
    for ctrl in v1_controllers():
        target = f"{base}/{ctrl}"
        if _mount_one(Mount("cgroup", target, "cgroup", MS_NOSUID | MS_NODEV | MS_NOEXEC, ctrl)):
            done.append(target)
    return done


def v1_controllers() -> list[str]:
    """Enabled controllers of /proc/cgroups."""
    try:
        lines = Path("/proc/cgroups").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        if line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) >= 4 and parts[3] == "1":
            out.append(parts[0])
    return out


#: an empty memory cgroup kept for the node's life (:func:`pin_memcg`)
MEMCG_PIN = "core0-memcg"


def _enable_controllers(base: str) -> None:
    """Delegate every available controller to child cgroups (best effort)."""
    try:
        ctrls = Path(base, "cgroup.controllers").read_text().split()
        Path(base, "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in ctrls))
    except OSError as e:
        log.debug("cgroup controllers not enabled: %s", e)
        return
    if "memory" in ctrls:
        pin_memcg(base)


def pin_memcg(base: str) -> None:
    """Make the first memory cgroup now, while PID 1 is alone, and keep it.

    The kernel switches memory-cgroup accounting on with *static keys* — it rewrites its own
    code on every CPU — when the first memory cgroup comes to life (kmem accounting, one way)
    and whenever the count of memory cgroups goes from 0 to 1 or back (socket accounting).
    Left to the first container, that happens in the middle of the node's work (crun's mkdir,
    allocations on the other CPUs). On hardware that is only a cost; under TCG (qemu without
    KVM: CI, ``qemu/boot`` on a machine without it) rewriting code that another vCPU runs can
    livelock the guest: seen with both vCPUs stuck at ``kmem_cache_alloc``'s patched branch,
    one in crun's ``mkdir`` of a container's cgroup (docs/developing.md, "Tests under qemu").
    With this cgroup the keys flip once at boot and the count never falls back to zero."""
    path = Path(base, MEMCG_PIN)
    try:
        path.mkdir(exist_ok=True)
    except OSError as e:
        log.debug("memory cgroup %s not made: %s", path, e)


def unmount_all() -> list[str]:
    """Unmount data filesystems, last mounted first; a busy one is remounted read-only
    and then detached. API and memory filesystems stay (nothing to flush)."""
    done = []
    for m in reversed(mountinfo()):
        if m.target == "/" or m.fstype in VIRTUAL_FS:
            continue
        try:
            umount(m.target)
            done.append(m.target)
            continue
        except MountError as e:
            log.warning("%s; remounting read-only", e)
        with contextlib.suppress(MountError):
            mount("", m.target, "", MS_REMOUNT | MS_RDONLY)
        with contextlib.suppress(MountError):
            umount(m.target, MNT_DETACH)
            done.append(m.target)
    return done


def rebind_root(where: str = "/.core0-root") -> None:
    """Make / a bind mount of the initramfs instead of the initramfs mount itself.

    ``pivot_root(2)`` refuses to leave the initial rootfs (it has no parent mount), which
    container runtimes need. A recursive bind of / moved onto / and entered with chroot gives
    the same tree, with its submounts, on a mount that has a parent: pivot_root works, nothing
    is copied (switch_root would copy the whole initramfs into a tmpfs).
    """
    os.makedirs(where, exist_ok=True)
    mount("/", where, "", MS_BIND | MS_REC)
    os.chdir(where)
    mount(".", "/", "", MS_MOVE)
    os.chroot(".")
    os.chdir("/")
    with contextlib.suppress(OSError):
        os.rmdir(where)
