"""Choosing the ZFS backend of this node.

- ``/dev/zfs`` exists: the kernel's OpenZFS. The CLI backend runs ``zpool``/``zfs`` with
  ``-H -p`` (exact numbers); where the ``libzfs_core`` Python module (pyzfs) imports, the
  :class:`~core0.storage.zfs_lzc.LzcBackend` does the calls libzfs_core has (exists, snapshot,
  clone, create, snapshot destroy, rollback, holds) through it and the rest through the CLI.
- no ``/dev/zfs`` but ``zfs-fuse`` is installed: the CLI backend in zfs-fuse mode (pool
  version 23, no ``-p`` on list, no zvols, no ``zfs holds``; busy destroys/renames retried).
  The daemon is started when it is not running (``core0.storage.zfsfuse``).
- neither: every zpool/zfs command answers 412.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Any

from core0.context import Context
from core0.errors import PreconditionFailed
from core0.storage import zfsfuse

if TYPE_CHECKING:
    from core0.storage.zfs_cli import CliBackend

OPENZFS = "openzfs"
ZFS_FUSE = "zfs-fuse"

_lzc: Any = None
_lzc_tried = False


def flavor() -> str:
    """``openzfs`` or ``zfs-fuse``; 412 when the node has no usable ZFS."""
    if os.path.exists("/dev/zfs"):
        if shutil.which("zfs") is None:
            raise PreconditionFailed("/dev/zfs exists but the zfs tools are not installed")
        return OPENZFS
    if shutil.which("zfs-fuse") and shutil.which("zfs"):
        return ZFS_FUSE
    if shutil.which("zfs"):
        raise PreconditionFailed("the zfs kernel module is not loaded (no /dev/zfs) and "
                                 "zfs-fuse is not installed")
    raise PreconditionFailed("ZFS is not available on this node (no /dev/zfs, no zfs-fuse)")


def libzfs_core() -> Any:
    """The pyzfs ``libzfs_core`` module, or None (imported once, on first use)."""
    global _lzc, _lzc_tried
    if not _lzc_tried:
        _lzc_tried = True
        try:
            import libzfs_core  # type: ignore[import-not-found]

            _lzc = libzfs_core
        except Exception:  # absent, or its C library is missing
            _lzc = None
    return _lzc


async def backend(ctx: Context) -> CliBackend:
    """The backend for this call (starts zfs-fuse when that is the node's ZFS)."""
    from core0.storage.zfs_cli import CliBackend

    fl = flavor()
    if fl == ZFS_FUSE:
        await zfsfuse.ensure(ctx)
    cli = CliBackend(ctx, fl)
    if fl == OPENZFS:
        mod = libzfs_core()
        if mod is not None:
            from core0.storage.zfs_lzc import LzcBackend

            return LzcBackend(ctx, fl, mod)
    return cli
