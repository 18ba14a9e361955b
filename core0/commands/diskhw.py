"""disk.spindown and disk.seektime: 0-core's drive-hardware commands, without its tools.

0-core ran ``hdparm -S`` and its own ``seektime -j``; core0 does the same work directly: the
ATA "set standby timer" command through the kernel's ``HDIO_DRIVE_CMD`` ioctl, and a seek
latency measurement with direct reads far apart on the device.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import random
import struct
import time
from dataclasses import dataclass
from typing import Annotated, Any

from core0.context import Context
from core0.errors import BadRequest, CommandError, PreconditionFailed
from core0.registry import Role, command
from core0.schema import Doc, Range, Schema
from core0.storage import blockdev
from core0.storage.names import Device

HDIO_DRIVE_CMD = 0x031F
ATA_OP_SETIDLE1 = 0xE3  #: set the standby (spindown) timer
#: reads of one seektime measurement, and its block size
SEEK_READS = 128
SEEK_BLOCK = 4096
#: average latency under which a device counts as an SSD (µs), as 0-core's seektime
SSD_LIMIT_US = 500


@dataclass(frozen=True)
class SpindownArgs(Schema):
    disk: Device
    spindown: Annotated[int, Doc("standby timer, hdparm -S units: 1-240 = n×5 s (0 = off)"),
                        Range(0, 240)] = 1


def _spindown(path: str, value: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        buf = bytearray(struct.pack("4B", ATA_OP_SETIDLE1, value, 0, 0))
        fcntl.ioctl(fd, HDIO_DRIVE_CMD, buf)
    except OSError as e:
        if e.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP, errno.EIO):
            raise PreconditionFailed(
                f"{path} does not take ATA commands (standby timer): {os.strerror(e.errno)}"
            ) from None
        raise CommandError(f"{path}: {e.strerror}") from None
    finally:
        os.close(fd)


@command("disk.spindown", SpindownArgs, role=Role.OPERATOR)
async def spindown(ctx: Context, args: SpindownArgs) -> None:
    """Set a drive's standby (spindown) timer, as ``hdparm -S`` (the ATA command through the
    kernel's HDIO_DRIVE_CMD ioctl). 412 for a device that takes no ATA commands (loop, virtio,
    NVMe)."""
    name, path = blockdev.device(args.disk)
    if blockdev.is_partition(name):
        raise BadRequest(f"{name} is a partition, not a disk")
    await ctx.to_thread(_spindown, path, args.spindown)


@dataclass(frozen=True)
class SeektimeArgs(Schema):
    disk: Device


def _seektime(path: str) -> int:
    """Average µs of SEEK_READS direct reads alternating between the start and the end."""
    flags = os.O_RDONLY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_DIRECT)
        direct = True
    except OSError:
        fd = os.open(path, flags)
        direct = False
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        blocks = size // SEEK_BLOCK
        if blocks < 2:
            raise BadRequest(f"{path} is too small to measure")
        buf = mmap.mmap(-1, SEEK_BLOCK)  # page aligned, as O_DIRECT needs
        rnd = random.Random()
        span = max(1, blocks // 10)
        total = 0.0
        for i in range(SEEK_READS):
            block = rnd.randrange(span) if i % 2 == 0 else blocks - 1 - rnd.randrange(span)
            if not direct:
                os.posix_fadvise(fd, block * SEEK_BLOCK, SEEK_BLOCK, os.POSIX_FADV_DONTNEED)
            t0 = time.perf_counter()
            os.preadv(fd, [buf], block * SEEK_BLOCK)
            total += time.perf_counter() - t0
        buf.close()
        return int(total / SEEK_READS * 1e6)
    finally:
        os.close(fd)


@command("disk.seektime", SeektimeArgs, role=Role.READ_ONLY)
async def seektime(ctx: Context, args: SeektimeArgs) -> dict[str, Any]:
    """Seek latency of a disk, which tells an SSD from a spinning disk (0-core's ``seektime
    -j``): ``{device, elapsed (µs per read), type ("SSD" or "HDD")}``. Measured with 128
    direct 4 KiB reads alternating between the first and the last tenth of the device."""
    name, path = blockdev.device(args.disk)
    elapsed = await ctx.to_thread(_seektime, path)
    return {"device": path, "elapsed": elapsed, "type": "SSD" if elapsed < SSD_LIMIT_US else "HDD"}
