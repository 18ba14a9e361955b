"""The node's persistent disk: ``[main] persistent_device`` mounted on ``persistent_dir`` by
``core0 init`` at boot (CeranaOS's and cOS's persistent partition).

A node boots from a RAM image; what must survive a reboot (container images, declared
containers and VMs, staged node images) lives under ``main.persistent_dir``. On a node that
directory is a disk: ``persistent_device`` names it, ``/dev/<name>`` or ``LABEL=<label>``.
There is no udev in the image, so a label is read from the devices' superblocks here (ext2/3/4,
btrfs, xfs and FAT, the file systems such a disk carries). init mounts it (nodev, nosuid) once
the drivers are loaded, waiting up to ``persistent_wait`` seconds for the device to show up,
and writes the outcome to ``<state_dir>/persistent.json``. The dispatcher (started earlier, in
parallel) waits for that file before it brings declared containers and VMs back, and nothing
is written to ``persistent_dir`` unless the disk is mounted there (``declared.base``): a missing
disk never fills the RAM file system with records that would vanish at the next boot.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core0.declared import PERSISTENT_STATE

if TYPE_CHECKING:
    from core0.config import Config

log = logging.getLogger(__name__)

STATE = PERSISTENT_STATE
MS_NOSUID, MS_NODEV = 2, 4

#: (superblock offset of the label, its length, magic offset, magic) per file system
_LABELS = (
    ("ext4", 1024 + 0x78, 16, 1024 + 0x38, b"\x53\xef"),
    ("btrfs", 0x10000 + 0x12B, 256, 0x10000 + 0x40, b"_BHRfS_M"),
    ("xfs", 0x6C, 12, 0, b"XFSB"),
    ("vfat", 0x47, 11, 0x52, b"FAT32   "),
    ("vfat", 0x2B, 11, 0x36, b"FAT16   "),
    ("vfat", 0x2B, 11, 0x36, b"FAT12   "),
)


def read_label(dev: str) -> str | None:
    """The file system label of block device ``dev`` (None: none of the known kinds)."""
    try:
        with open(dev, "rb") as f:
            head = f.read(0x10000 + 0x1000)
    except OSError:
        return None
    for _kind, off, size, moff, magic in _LABELS:
        if head[moff:moff + len(magic)] == magic:
            return head[off:off + size].split(b"\0", 1)[0].decode(errors="replace").strip()
    return None


def find_device(spec: str) -> str | None:
    """The device node ``spec`` names now (``/dev/…`` or ``LABEL=…``), or None."""
    if spec.startswith("LABEL="):
        want = spec[len("LABEL="):]
        try:
            names = sorted(os.listdir("/sys/class/block"))
        except OSError:
            return None
        for name in names:
            dev = f"/dev/{name}"
            if os.path.exists(dev) and read_label(dev) == want:
                return dev
        return None
    return spec if os.path.exists(spec) else None


def mount_persistent(cfg: Config, wait: float = 30.0) -> dict[str, Any]:
    """Mount ``persistent_device`` on ``persistent_dir`` (init, at boot); the outcome is
    written to ``<state_dir>/persistent.json`` and returned."""
    from core0.init import mounts

    spec, target = cfg.main.persistent_device, cfg.main.persistent_dir
    out: dict[str, Any] = {"device": spec, "dir": target, "mounted": False}
    try:
        if not target:
            raise ValueError("persistent_device needs main.persistent_dir")
        deadline = time.monotonic() + wait
        dev = find_device(spec)
        while dev is None and time.monotonic() < deadline:
            time.sleep(0.2)
            dev = find_device(spec)
        if dev is None:
            raise ValueError(f"{spec}: no such device after {wait:.0f}s")
        os.makedirs(target, mode=0o700, exist_ok=True)
        if mounts.is_mounted(target):
            raise ValueError(f"{target} is mounted already")
        errors = []
        for fstype in _kinds(dev):
            try:
                mounts.mount(dev, target, fstype, MS_NODEV | MS_NOSUID)
                out.update(mounted=True, source=dev, fstype=fstype)
                break
            except mounts.MountError as e:
                errors.append(f"{fstype}: {e}")
        else:
            raise ValueError(f"{dev}: cannot mount ({'; '.join(errors)})")
        log.info("persistent: %s (%s) mounted on %s", dev, out["fstype"], target)
    except Exception as e:
        out["error"] = str(e)
        log.error("persistent: %s not mounted: %s (declared containers and VMs stay down)",
                  spec, e)
    _write(cfg, out)
    return out


def _kinds(dev: str) -> list[str]:
    """The file system types to try: the superblock's kind first, then every block file
    system the kernel has."""
    known = []
    try:
        with open(dev, "rb") as f:
            head = f.read(0x10000 + 0x1000)
        known = [k for k, _o, _s, moff, magic in _LABELS
                 if head[moff:moff + len(magic)] == magic]
    except OSError:
        pass
    try:
        with open("/proc/filesystems") as f:
            kernel = [ln.split()[-1] for ln in f if ln.strip() and not ln.startswith("nodev")]
    except OSError:
        kernel = []
    return list(dict.fromkeys(known + [k for k in kernel if k not in ("fuseblk",)]))


def _write(cfg: Config, out: dict[str, Any]) -> None:
    path = Path(cfg.state_dir) / STATE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, path)
