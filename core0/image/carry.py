"""Carrying the images directory across a kexec on a node without a disk.

Without ``main.persistent_dir`` the node image keeps its images in its own initramfs's RAM
filesystem (``image.dir = "/var/lib/core0/images"`` in the image's config), which a kexec
replaces. So the new kernel gets the new initramfs **followed by a second, uncompressed cpio
archive** holding ``state.json`` (the pending switch, the boot counter, the history) and the
slots a rollback may need: the kernel unpacks concatenated archives into the same root, so the
new boot finds the directory where the old one left it. Memory cost: the carried slots' size
(about 27 MB per core image), once in the loaded initrd and once unpacked.

The archive is newc (the kernel's format): owned by root, files 0400, the images directories
0700 and their parents 0755 (the unpacker sets the mode of a directory that exists already), with
a fixed mtime. The compressed first archive is padded with zeros to a 4-byte boundary,
where the kernel's unpacker looks for the next header.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from core0.image.store import STATE, Slot, Store

CHUNK = 1 << 20


def carried(store: Store) -> bool:
    """Does a kexec replace the filesystem the images live in? True when they are on the same
    filesystem as ``/`` and that is an initramfs (rootfs, ramfs or tmpfs)."""
    from core0 import mountinfo

    try:
        if os.stat(store.root).st_dev != os.stat("/").st_dev:
            return False
        roots = [m for m in mountinfo.read() if m.target == "/"]
    except OSError:
        return False
    return bool(roots) and roots[-1].fstype in ("rootfs", "ramfs", "tmpfs")


class _Newc:
    def __init__(self, out: BinaryIO):
        self.out = out
        self.ino = 1

    def _header(self, name: str, mode: int, size: int) -> None:
        raw = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, size, 0, 0, 0, 0,
                  len(raw), 0)
        self.ino += 1
        hdr = b"070701" + "".join(f"{v:08X}" for v in fields).encode()
        self.out.write(hdr + raw + b"\0" * ((-(110 + len(raw))) % 4))

    def directory(self, name: str, mode: int = 0o700) -> None:
        self._header(name, stat.S_IFDIR | mode, 0)

    def file(self, name: str, src: Path) -> None:
        size = src.stat().st_size
        self._header(name, stat.S_IFREG | 0o400, size)
        with src.open("rb") as f:
            shutil.copyfileobj(f, self.out, CHUNK)
        self.out.write(b"\0" * ((-size) % 4))

    def finish(self) -> None:
        self._header("TRAILER!!!", 0, 0)


def _parents(rel: Path) -> Iterable[str]:
    parts = rel.parts
    for i in range(1, len(parts) + 1):
        yield "/".join(parts[:i])


def initrd_with(base: Path, out: Path, store: Store, slots: Iterable[Slot]) -> Path:
    """``out`` = the initramfs ``base`` + a cpio of ``store``'s state and ``slots`` (placed at
    the store's own path)."""
    rel = store.root.relative_to("/")
    with out.open("xb") as f:
        with base.open("rb") as b:
            shutil.copyfileobj(b, f, CHUNK)
        f.write(b"\0" * ((-f.tell()) % 4))
        w = _Newc(f)
        parents = list(_parents(rel))
        for d in parents[:-1]:  # as the image has them: the kernel chmods existing ones
            w.directory(d, 0o755)
        w.directory(parents[-1])
        if (store.root / STATE).exists():
            w.file(f"{rel}/{STATE}", store.root / STATE)
        w.directory(f"{rel}/slots")
        for slot in sorted({s.digest: s for s in slots}.values(), key=lambda s: s.digest):
            w.directory(f"{rel}/slots/{slot.digest}")
            for p in sorted(slot.path.iterdir()):
                w.file(f"{rel}/slots/{slot.digest}/{p.name}", p)
        w.finish()
        f.flush()
        os.fsync(f.fileno())
    return out
