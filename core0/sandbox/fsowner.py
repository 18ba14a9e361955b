"""Owners of what ``filesystem.*`` makes inside a container with a user namespace.

The dispatcher runs ``filesystem.*`` for a container as host root, in the container's root
clone (paths resolved fd by fd inside it, :mod:`core0.fspath`). In a userns container every
entry of that clone belongs to the container's uid/gid range (shifted, or idmapped lower
layer), so an entry owned by host uid or gid 0 there can only be one core0 just made: it is
given to the container's root (the range's first host id) through the descriptor it was made
or opened as, never a path resolved again. ``filesystem.chown`` takes the container's ids
(numbers, or names from the container's own ``/etc/passwd`` and ``/etc/group``), shifted
into the range.
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
    """Host-root owner/group of ``fd`` → the range's root (set-id bits put back: chown
    clears them)."""
    st = os.fstat(fd)
    uid = base if st.st_uid == 0 else -1
    gid = base if st.st_gid == 0 else -1
    if uid == gid == -1:
        return
    os.fchown(fd, uid, gid)
    if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        os.fchmod(fd, stat.S_IMODE(st.st_mode))


def created(name: str, args: Any, out: Any, rootfs: Path, base: int) -> None:
    """After ``filesystem.open`` (its token's fd) or ``filesystem.mkdir`` (each directory of
    the path, walked again inside the root): host-root owners → the range's root."""
    if name == "filesystem.open":
        from core0.commands import filesystem

        f = filesystem._FILES.get(out)
        if f is not None:
            _give(f.fd, base)
        return
    parts = [p for p in str(args.path).split("/") if p not in ("", ".")]
    with Root(str(rootfs)) as root:
        for i in range(1, len(parts) + 1):
            try:
                fd = root.opendir("/".join(parts[:i]))
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
