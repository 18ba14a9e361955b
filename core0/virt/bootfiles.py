"""Kernel and initrd of a direct kernel boot, copied into the VM's own directory.

qemu reads ``-kernel`` and ``-initrd`` by path while it starts and closes them again, so the
open-file check of :mod:`core0.virt.guard` (which compares what qemu holds open with what core0
resolved) cannot tell which file it read: a path swapped for a symlink to a host file between
core0's check and qemu's open would have qemu load that file into the guest's memory, where
the guest reads it. So each is opened once inside the filesystem root (an ``O_PATH``
descriptor: the checked file), its size bounded (``virt.boot_file_max_mib``, 400 beyond),
copied from that descriptor into the VM's directory (``<virt dir>/<uuid>/kernel``,
``initrd``: core0's, not reachable through the filesystem root), and libvirt is given the
copy. The copies go with the VM's directory; ``kvm.get`` still shows the paths given.

Only VMs of roles below admin get copies: the swap lets a queue read a host file it may not
read otherwise, and an admin queue may read any (``core.system``). An admin's VM is given
the canonical paths of the files opened, as before (no copy, no size bound; its migration
needs no VM directory at the destination).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from core0.errors import BadRequest, Conflict
from core0.virt import disks
from core0.virt.guard import ident

if TYPE_CHECKING:
    from core0.context import Context

_CHUNK = 1 << 20


class BootFiles:
    """The checked descriptors of a create's kernel and initrd (closed by :meth:`close`)."""

    def __init__(self, ctx: Context, kernel: str | None, initrd: str | None, copy: bool):
        self.limit = ctx.config.virt.boot_file_max_mib << 20
        self.copy = copy
        self.fds: dict[str, int] = {}
        self.given = {"kernel": kernel or "", "initrd": initrd or ""}
        try:
            for field, path in (("kernel", kernel), ("initrd", initrd)):
                if path:
                    self.fds[field] = fd = disks.open_file(ctx, path, field)
                    if copy and os.fstat(fd).st_size > self.limit:
                        raise BadRequest(f"{field}: larger than virt.boot_file_max_mib "
                                         f"({self.limit >> 20} MiB)", field=field)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def paths(self, vmdir: Path) -> tuple[str, str]:
        """The kernel and initrd libvirt is given ("" for one not given): copies made in
        ``vmdir`` (blocking: run it in a thread), or without ``copy`` the canonical paths
        of the files opened."""
        out = {"kernel": "", "initrd": ""}
        for field, pfd in self.fds.items():
            if not self.copy:
                out[field] = disks.canonical(pfd, self.given[field], field)
                continue
            out[field] = str(vmdir / field)
            self._copy(pfd, vmdir / field, field)
        return out["kernel"], out["initrd"]

    def _copy(self, pfd: int, dst: Path, field: str) -> None:
        src = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if ident(os.fstat(src)) != ident(os.fstat(pfd)):  # cannot happen: the same file
                raise Conflict(f"{field}: the file changed while it was being read",
                               field=field)
            out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o644)
            try:
                total = 0
                while True:  # bounded, whatever the size said: the file may grow meanwhile
                    n = os.sendfile(out, src, None, _CHUNK)
                    if n == 0:
                        break
                    total += n
                    if total > self.limit:
                        raise BadRequest(f"{field}: larger than virt.boot_file_max_mib "
                                         f"({self.limit >> 20} MiB)", field=field)
            finally:
                os.close(out)
        finally:
            os.close(src)
