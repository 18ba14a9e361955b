"""0-core's drive-hardware commands: disk.spindown, disk.isstandby, disk.seektime,
disk.smartctl-info and disk.smartctl-health.

0-core ran ``hdparm -S``/``-C`` and its own ``seektime -j``; core0 does the same work
directly: the ATA "set standby timer" and "check power mode" commands through the kernel's
``HDIO_DRIVE_CMD`` ioctl, and a seek latency measurement with direct reads far apart on the
device. SMART goes through the tool made for it, ``smartctl`` (smartmontools), read as JSON
(``-j``) rather than by scraping its text as 0-core did, and answered in 0-core's shape.
"""

from __future__ import annotations

import errno
import fcntl
import json
import mmap
import os
import random
import struct
import time
from dataclasses import dataclass
from typing import Annotated, Any

from core0.context import Context
from core0.errors import BadRequest, CommandError, PreconditionFailed, ToolError
from core0.registry import Role, command
from core0.schema import Doc, Range, Schema
from core0.storage import blockdev
from core0.storage.names import Device

HDIO_DRIVE_CMD = 0x031F
ATA_OP_SETIDLE1 = 0xE3  #: set the standby (spindown) timer
ATA_OP_CHECKPOWERMODE1 = 0xE5  #: check power mode (the state in the sector count register)
ATA_OP_CHECKPOWERMODE2 = 0x98  #: its older opcode, for drives that refuse the first
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


def _ata(path: str, what: str, *opcodes: tuple[int, int]) -> bytearray:
    """An ATA command (``(opcode, sector count)``; the next is tried if the drive refuses
    one) through HDIO_DRIVE_CMD; its four result registers. 412 for a device that takes no
    ATA commands."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        for i, (op, count) in enumerate(opcodes):
            buf = bytearray(struct.pack("4B", op, count, 0, 0))
            try:
                fcntl.ioctl(fd, HDIO_DRIVE_CMD, buf)
                return buf
            except OSError as e:
                if e.errno == errno.EIO and i + 1 < len(opcodes):
                    continue
                if e.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP, errno.EIO):
                    raise PreconditionFailed(f"{path} does not take ATA commands ({what}): "
                                             f"{os.strerror(e.errno)}") from None
                raise CommandError(f"{path}: {e.strerror}") from None
        raise AssertionError("unreachable")
    finally:
        os.close(fd)


def _spindown(path: str, value: int) -> None:
    _ata(path, "standby timer", (ATA_OP_SETIDLE1, value))


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
class DiskArgs(Schema):
    disk: Device


@command("disk.isstandby", DiskArgs, role=Role.READ_ONLY)
async def isstandby(ctx: Context, args: DiskArgs) -> bool:
    """Whether a drive is in standby (spun down), as ``hdparm -C``: the ATA "check power
    mode" command, which does not wake it. 412 for a device that takes no ATA commands."""
    name, path = blockdev.device(args.disk)
    regs = await ctx.to_thread(_ata, path, "power mode", (ATA_OP_CHECKPOWERMODE1, 0),
                               (ATA_OP_CHECKPOWERMODE2, 0))
    return regs[2] == 0x00  # 0x00 standby; 0x40/0x41 NV cache, 0x80 idle, 0xFF active/idle


@dataclass(frozen=True)
class SmartArgs(Schema):
    device: Device


async def _smartctl(ctx: Context, device: str, flag: str) -> dict[str, Any]:
    """``smartctl <flag> -j`` of a device: its JSON. 412 when the device has no SMART (or
    is none smartctl knows), 404 when the tool is missing."""
    name, path = blockdev.device(device)
    res = await ctx.run(["smartctl", flag, "-j", "--", path], check=False, timeout=120)
    try:
        out: dict[str, Any] = json.loads(res.stdout)
    except ValueError:
        raise ToolError(list(res.argv), res.status, res.stderr, res.stdout) from None
    status = int(out.get("smartctl", {}).get("exit_status", res.status))
    if status & 0b11:  # the command line, or the device (open, IDENTIFY): no SMART here
        why = "; ".join(m.get("string", "") for m in out.get("smartctl", {}).get("messages", []))
        raise PreconditionFailed(f"{path}: no SMART data (smartctl: {why or status})")
    return out


def smart_info(out: dict[str, Any]) -> dict[str, Any]:
    """``smartctl -i -j`` in 0-core's shape (its parse of ``smartctl -i``)."""
    wwn = out.get("wwn")
    rate = out.get("rotation_rate")
    support = out.get("smart_support", {})
    return {
        "model": out.get("model_name") or out.get("scsi_model_name", ""),
        "serial_number": out.get("serial_number", ""),
        "device_id": (f"{wwn['naa']:x} {wwn['oui']:06x} {wwn['id']:09x}"
                      if isinstance(wwn, dict) and {"naa", "oui", "id"} <= wwn.keys() else ""),
        "firmware_version": out.get("firmware_version", ""),
        "user_capacity": int(out.get("user_capacity", {}).get("bytes")
                             or out.get("nvme_total_capacity") or 0),
        "sector_size": int(out.get("logical_block_size") or 0),
        "rotation_rate": ("" if rate is None else
                          "Solid State Device" if rate == 0 else f"{rate} rpm"),
        "device": ("" if "in_smartctl_database" not in out else
                   "In smartctl database" if out["in_smartctl_database"]
                   else "Not in smartctl database"),
        "ata_version": out.get("ata_version", {}).get("string", ""),
        "sata_version": out.get("sata_version", {}).get("string", ""),
        "smart_support_available": bool(support.get("available", "smart_status" in out)),
        "smart_support_enabled": bool(support.get("enabled", "smart_status" in out)),
    }


@command("disk.smartctl-info", SmartArgs, role=Role.READ_ONLY)
async def smartctl_info(ctx: Context, args: SmartArgs) -> dict[str, Any]:
    """A drive's identity from SMART (``smartctl -i``), in 0-core's shape: ``{model,
    serial_number, device_id (LU WWN), firmware_version, user_capacity (bytes),
    sector_size, rotation_rate ("7200 rpm", "Solid State Device"), device (in smartctl's
    database or not), ata_version, sata_version, smart_support_available,
    smart_support_enabled}``. 412 for a device without SMART (loop, most virtual disks)."""
    return smart_info(await _smartctl(ctx, args.device, "-i"))


@command("disk.smartctl-health", SmartArgs, role=Role.READ_ONLY)
async def smartctl_health(ctx: Context, args: SmartArgs) -> dict[str, bool]:
    """A drive's SMART overall health self-assessment (``smartctl -H``): ``{passed}``. 412
    for a device without SMART, or whose SMART is disabled (no assessment to read)."""
    out = await _smartctl(ctx, args.device, "-H")
    status = out.get("smart_status")
    if not isinstance(status, dict) or "passed" not in status:
        raise PreconditionFailed(f"{args.device}: SMART gives no health assessment "
                                 "(disabled, or not supported)")
    return {"passed": bool(status["passed"])}


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


@command("disk.seektime", DiskArgs, role=Role.READ_ONLY)
async def seektime(ctx: Context, args: DiskArgs) -> dict[str, Any]:
    """Seek latency of a disk, which tells an SSD from a spinning disk (0-core's ``seektime
    -j``): ``{device, elapsed (µs per read), type ("SSD" or "HDD")}``. Measured with 128
    direct 4 KiB reads alternating between the first and the last tenth of the device."""
    name, path = blockdev.device(args.disk)
    elapsed = await ctx.to_thread(_seektime, path)
    return {"device": path, "elapsed": elapsed, "type": "SSD" if elapsed < SSD_LIMIT_US else "HDD"}
