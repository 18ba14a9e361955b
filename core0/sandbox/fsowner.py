"""Owners of what ``filesystem.*`` makes inside a container with a user namespace.

The dispatcher runs ``filesystem.*`` for a container as host root, in the container's root
clone (paths resolved fd by fd inside it, :mod:`core0.fspath`). In a userns container every
entry of that clone belongs to the container's uid/gid range (shifted, or idmapped lower
layer), so an entry owned by host uid or gid 0 there can only be one core0 just made: it is
given to the container's root (the range's first host id), through an ``O_PATH`` descriptor
of it opened inside the root like every ``filesystem.*`` path (a container swapping the entry
meanwhile can only have one of its own changed to its own root). ``filesystem.chown`` takes
the container's ids (numbers, or names from the container's own ``/etc/passwd`` and
``/etc/group``), shifted into the range.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
from pathlib import Path
from typing import Any

from core0.errors import BadRequest, NotFound
from core0.fspath import Root
from core0.sandbox.userns import SIZE


def _give(fd: int, base: int) -> None:
    """Host-root owner/group of the entry ``fd`` (an ``O_PATH`` fd is fine: changed through
    its ``/proc/self/fd`` link, that exact inode) → the range's root; set-id bits put back
    (chown clears them). Symlinks are left alone."""
    st = os.fstat(fd)
    uid = base if st.st_uid == 0 else -1
    gid = base if st.st_gid == 0 else -1
    if uid == gid == -1 or stat.S_ISLNK(st.st_mode):
        return
    os.chown(f"/proc/self/fd/{fd}", uid, gid)
    if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(st.st_mode))


def created(name: str, args: Any, rootfs: Path, base: int) -> None:
    """After ``filesystem.open`` (its file) or ``filesystem.mkdir`` (each directory of the
    path), walked again inside the root: host-root owners → the range's root."""
    path = args.file if name == "filesystem.open" else args.path
    parts = [p for p in str(path).split("/") if p not in ("", ".")]
    if name == "filesystem.open":
        parts_list = [parts]
    else:
        parts_list = [parts[:i] for i in range(1, len(parts) + 1)]
    with Root(str(rootfs)) as root:
        for comps in parts_list:
            try:
                fd = root.open("/".join(comps), os.O_PATH)
            except (OSError, NotFound, BadRequest):
                return  # gone or swapped meanwhile: nothing of ours further down
            try:
                _give(fd, base)
            finally:
                os.close(fd)


def _lookup(rootfs: Path, file: str, name: str) -> int:
    """The id of ``name`` in the container's ``/etc/passwd`` or ``/etc/group``."""
    with contextlib.suppress(OSError, NotFound, BadRequest), Root(str(rootfs)) as root:
        fd = root.open(file, os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            for line in f.read(1 << 20).decode("utf-8", "replace").splitlines():
                fields = line.split(":")
                if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
                    return int(fields[2])
    raise NotFound(f"no {'user' if 'passwd' in file else 'group'} {name} in the container")


def _inside(rootfs: Path, file: str, value: str, base: int) -> str:
    if not value:
        return value
    n = int(value) if value.isdigit() else _lookup(rootfs, file, value)
    if n >= SIZE:
        raise BadRequest(f"id {n} is outside the container's range (0..{SIZE - 1})")
    return str(base + n)


def chown_args(rootfs: Path, args: Any, base: int) -> Any:
    """``filesystem.chown``'s arguments with the container's ids as host ids of its range."""
    return dataclasses.replace(args, user=_inside(rootfs, "/etc/passwd", args.user, base),
                               group=_inside(rootfs, "/etc/group", args.group, base))
