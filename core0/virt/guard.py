"""Checking, before a guest runs, that qemu opened exactly the files core0 resolved.

core0 resolves every user path inside the filesystem root on file descriptors
(:mod:`core0.virt.disks`), but libvirt and qemu take *paths*: between the check and qemu's
``open`` a symlink could be swapped in for a checked file or directory (by anyone who can
write under the root, e.g. an operator's container with a bind mount of it), and a qcow2
header could be rewritten to name a backing or data file elsewhere. So a VM starts paused;
its qemu's open regular files and block devices are read from ``/proc/<pid>/fd`` and compared
with the (device, inode) pairs core0 resolved for its disks and backing chains; anything else
(a host file qemu was tricked into opening) destroys the VM before its first instruction.
Hot-plugged disks are checked the same way while the VM is paused. Kernel and initrd are read
by qemu at start and closed again, so they are not covered by this check: lower roles' VMs
get copies made from the checked descriptors instead (:mod:`core0.virt.bootfiles`).
"""

from __future__ import annotations

import os
import stat

from core0 import faults

#: a file's identity: (st_dev, st_ino)
Ident = tuple[int, int]

#: fault tests only (core0/faults.py), ``CORE0_TEST_VM_HOLD=<name>[,<name>…]:<dir>``: a
#: create of a VM named ``<name>`` (or a kvm.convert-image / create-image to an output file
#: named ``<name>``) holds once its disks are resolved (its input pinned), before libvirt
#: starts it (qemu-img runs), so a test can swap a path or rewrite an image exactly between
#: core0's check and qemu's open; ``<vm>/suspend`` and ``<vm>/attach`` hold kvm.attach_disk
#: of VM ``<vm>`` in libvirt's thread right after the guest's pause, right before the plug;
#: ``<vm>/<what>`` holds libvirt's thread right after an acting command's call (destroy,
#: shutdown, pause, limit_disk_io, remove_nic…: core0/virt/access.py, hotplug.py);
#: ``prepare/<uuid>`` a kvm.prepare_migration_target once its record is written
_HOLD = faults.Hold("CORE0_TEST_VM_HOLD")
#: the pause on the event loop, and in a worker thread (inside a libvirt call)
test_hold = _HOLD.wait_async
test_hold_sync = _HOLD.wait


def ident(st: os.stat_result) -> Ident:
    return st.st_dev, st.st_ino


def qemu_pid(uuid: str) -> int | None:
    """The pid of the qemu process running domain ``uuid`` (its ``-uuid`` argument)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if not argv or not os.path.basename(argv[0]).startswith(b"qemu-system"):
            continue
        for i, arg in enumerate(argv[:-1]):
            if arg == b"-uuid" and argv[i + 1].decode(errors="replace").lower() == uuid.lower():
                return int(entry.name)
    return None


def open_files(pid: int) -> dict[Ident, str]:
    """The regular files and block devices process ``pid`` holds open (linked ones only: a
    memfd or a deleted temp file is not a host file): {(dev, ino): path}."""
    out: dict[Ident, str] = {}
    base = f"/proc/{pid}/fd"
    for name in os.listdir(base):
        try:
            st = os.stat(f"{base}/{name}")
            target = os.readlink(f"{base}/{name}")
        except OSError:
            continue  # closed meanwhile
        if (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)) and st.st_nlink > 0:
            if stat.S_ISREG(st.st_mode) and _pid_file(f"{base}/{name}", target, pid, st):
                continue
            out[ident(st)] = target
    return out


def held_now(uuid: str) -> set[Ident]:
    """The files VM ``uuid``'s qemu holds open now (404 when no qemu runs it)."""
    from core0.errors import NotFound

    pid = qemu_pid(uuid)
    if pid is None:
        raise NotFound(f"no qemu process runs VM {uuid}")
    return set(open_files(pid))


def _pid_file(fd_path: str, target: str, pid: int, st: os.stat_result) -> bool:
    """qemu's own pid file (libvirt's ``<run dir>/qemu/<name>.pid``, held open and locked
    by qemu): a ``.pid`` file holding exactly this pid."""
    if not target.endswith(".pid") or st.st_size > 32:
        return False
    try:
        with open(fd_path, "rb") as f:
            return f.read(64).strip() == str(pid).encode()
    except OSError:
        return False


def unexpected(pid: int, expected: set[Ident], before: set[Ident] | None = None) -> list[str]:
    """Paths qemu holds open that are neither ``expected`` nor open ``before`` (sorted)."""
    known = expected | (before or set())
    return sorted(path for key, path in open_files(pid).items() if key not in known)
