"""The one parser of ``/proc/<pid>/mountinfo`` (used by the PID-1 shim's mounts and by storage).

Pure and light (no asyncio): the shim imports it on PID 1's boot path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_OCTAL = re.compile(r"\\([0-7]{3})")


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


def unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo``."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field) if "\\" in field else field


def parse(text: str) -> list[Mount]:
    """mountinfo text → mounts in mount order (malformed lines skipped)."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        a, b = left.split(" "), right.split(" ")
        if not sep or len(a) < 6 or len(b) < 2 or not a[0].isdigit() or not a[1].isdigit():
            continue
        out.append(Mount(
            mount_id=int(a[0]),
            parent_id=int(a[1]),
            majmin=a[2],
            root=unescape(a[3]),
            mountpoint=unescape(a[4]),
            options=a[5].split(","),
            fstype=b[0],
            source=unescape(b[1]),
            super_options=b[2].split(",") if len(b) > 2 else [],
        ))
    return out


def read(path: str = "/proc/self/mountinfo") -> list[Mount]:
    """The mount table, in mount order (empty if it cannot be read: /proc not mounted)."""
    try:
        return parse(Path(path).read_text())
    except OSError:
        return []
