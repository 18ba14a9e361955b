"""The one parser of ``/proc/<pid>/mountinfo`` (used by the PID-1 shim's mounts, storage, the
sandboxes and the job engine's state files).

Pure and light (no asyncio): the shim imports it on PID 1's boot path.

The kernel writes mount points as raw bytes, with space, tab, newline and backslash escaped as
``\\ooo`` (proc(5)). Fields are therefore unescaped on bytes and then decoded with
:func:`os.fsdecode`, so a non-ASCII (or non-UTF-8) name comes back as the path ``os`` functions
take.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_OCTAL = re.compile(rb"\\([0-3][0-7]{2})")


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo (proc(5)): ids, ``major:minor``, the root of the mount within its
    filesystem, the mount point, per-mount options, the filesystem type, the source and the
    superblock options. Paths have their octal escapes (``\\040`` …) decoded."""

    mount_id: int
    parent_id: int
    majmin: str
    root: str
    mountpoint: str
    options: list[str]
    fstype: str
    source: str
    super_options: list[str]

    @property
    def target(self) -> str:
        """The mount point (mount(2)'s name for it)."""
        return self.mountpoint


def unescape(field: str | bytes) -> str:
    """One mountinfo field → its text: ``\\ooo`` escapes decoded on bytes, then
    :func:`os.fsdecode` (a ``str`` is taken back to its bytes with :func:`os.fsencode` first)."""
    raw = field if isinstance(field, bytes) else os.fsencode(field)
    if b"\\" in raw:
        raw = _OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), raw)
    return os.fsdecode(raw)


def parse(text: str | bytes) -> list[Mount]:
    """mountinfo text (or its raw bytes) → mounts in mount order (malformed lines skipped)."""
    data = text if isinstance(text, bytes) else os.fsencode(text)
    out = []
    for line in data.splitlines():
        left, sep, right = line.partition(b" - ")
        a, b = left.split(b" "), right.split(b" ")
        if not sep or len(a) < 6 or len(b) < 2 or not a[0].isdigit() or not a[1].isdigit():
            continue
        out.append(Mount(
            mount_id=int(a[0]),
            parent_id=int(a[1]),
            majmin=os.fsdecode(a[2]),
            root=unescape(a[3]),
            mountpoint=unescape(a[4]),
            options=os.fsdecode(a[5]).split(","),
            fstype=unescape(b[0]),
            source=unescape(b[1]),
            super_options=os.fsdecode(b[2]).split(",") if len(b) > 2 else [],
        ))
    return out


def read(path: str = "/proc/self/mountinfo") -> list[Mount]:
    """The mount table, in mount order (empty if it cannot be read: /proc not mounted, the
    process is gone)."""
    try:
        return parse(Path(path).read_bytes())
    except OSError:
        return []


def of_pid(pid: int) -> list[Mount]:
    """The mount table of process ``pid``'s mount namespace (empty once it is gone)."""
    return read(f"/proc/{pid}/mountinfo")


def is_within(point: str, path: str) -> bool:
    """``point`` is ``path`` or below it (a path-separator boundary: /a/bc is not below /a/b)."""
    base = path.rstrip("/")
    return point == path or point == base or point.startswith(base + "/")


def below(path: str, table: list[Mount] | None = None) -> list[str]:
    """The mount points at or below ``path`` (taken as given: resolve it first), each once,
    deepest first (the order to unmount them in)."""
    points = {m.mountpoint for m in (read() if table is None else table)
              if is_within(m.mountpoint, path)}
    return sorted(points, key=lambda p: (-p.rstrip("/").count("/"), p))


def containing(path: str, table: list[Mount] | None = None) -> Mount | None:
    """The mount ``path`` (resolved) lies on: the deepest mount point at or above it, the one
    mounted last when several are stacked there; None when the table cannot be read."""
    best: Mount | None = None
    for m in read() if table is None else table:
        if is_within(path, m.mountpoint) and (
                best is None or len(m.mountpoint) >= len(best.mountpoint)):
            best = m
    return best
