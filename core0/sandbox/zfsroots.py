"""Images and roots on ZFS (OpenZFS or zfs-fuse), when the image store is a dataset.

An admin makes the store a ZFS dataset by mounting one at ``<state_dir>/sandbox/images``
(``zfs create -o mountpoint=<that dir> pool/images``). Then:

- each image is a child dataset ``<store>/<digest>`` (mounted at ``images/<digest>``, the
  image's dir: its ``rootfs/`` and ``image.json``), snapshotted ``@base`` once imported;
- each container start is a clone of that snapshot, ``<store>/c<tag>-<id>``, mounted in the
  container's dir (its ``rootfs/`` is the container's root), destroyed on terminate.

Everything goes through core0's ZFS backend (:mod:`core0.storage.zfs`), so zfs-fuse's quirks
(busy retries, no ``-p``) are handled there.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from core0.storage import blockdev

if TYPE_CHECKING:
    from core0.context import Context

FSTYPES = ("zfs", "fuse.zfs")
SNAP = "base"


def store_dataset(images_dir: Path) -> str:
    """The dataset mounted exactly at ``images_dir``, or "" when the store is not on ZFS."""
    target = str(images_dir.resolve())
    for m in reversed(blockdev.mounts()):
        if m.mountpoint == target:
            return m.source if m.fstype in FSTYPES else ""
    return ""


def image_dataset(store: str, name: str) -> str:
    """(The same digest names the image's dir: see :func:`core0.sandbox.images.image_dir`.)"""
    return f"{store}/{hashlib.sha256(name.encode()).hexdigest()[:32]}"


async def _backend(ctx: Context):  # type: ignore[no-untyped-def]
    from core0.storage import zfs

    return await zfs.backend(ctx)


async def create_image(ctx: Context, store: str, name: str) -> None:
    """The image's dataset (mounted at ``images/<digest>`` by inheritance)."""
    be = await _backend(ctx)
    await be.create(image_dataset(store, name), "filesystem", None, {}, False, False)


async def seal_image(ctx: Context, store: str, name: str) -> None:
    be = await _backend(ctx)
    await be.snapshot(image_dataset(store, name), SNAP, False, {})


async def destroy_image(ctx: Context, store: str, name: str) -> None:
    be = await _backend(ctx)
    await be.destroy(image_dataset(store, name), True, False, False, True)


async def clone(ctx: Context, store: str, image: str, clone_name: str, mountpoint: Path
                ) -> Path:
    """Clone the image's snapshot as ``<store>/<clone_name>`` at ``mountpoint``; returns the
    container's root (``mountpoint/rootfs``)."""
    be = await _backend(ctx)
    await be.clone(f"{image_dataset(store, image)}@{SNAP}", f"{store}/{clone_name}",
                   {"mountpoint": str(mountpoint)}, False)
    return mountpoint / "rootfs"


async def destroy_clone(ctx: Context, dataset: str) -> None:
    from core0.errors import NotFound

    be = await _backend(ctx)
    if await be.exists(dataset):
        try:
            await be.destroy(dataset, False, False, False, True)
        except NotFound:
            pass
