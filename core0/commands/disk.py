"""disk.*: block devices, partition tables, filesystems, mounts (0-core's disk commands).

Devices are named by kernel name (``sda``, ``loop0p1``) or ``/dev/<name>``; anything else is
refused (400) before a tool runs. Destructive commands (mktable, rmpart, mkfs) refuse a device
that is mounted, held (dm/md), an active swap, claimed by the kernel or a vdev of an imported
pool (409) unless ``force``. The machinery is in ``core0.storage.blockdev``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from core0.context import Context
from core0.errors import BadRequest, CommandError, Conflict, Forbidden, NotFound
from core0.fspath import Root, oserror
from core0.registry import Role, command
from core0.schema import Doc, Len, NoArgs, Pattern, Range, Schema
from core0.storage import blockdev, btrfs, mountfd, parse, tools, whole
from core0.storage.names import ABS_PATH_RE, DEVICE_RE, AbsPath, Device, Label, Size

_PARTED_RULES: list[tools.Rule] = [
    (r"closest location we can manage|overlap", Conflict),
    (r"[Pp]artition\(s\) .* (are|is) being used|in use", Conflict),
    *tools.RULES,
]


async def _parted(ctx: Context, argv: list[str]) -> None:
    """A parted run (callers make it one step: killed between writing the table and telling
    the kernel, parted left the two disagreeing)."""
    await tools.run(ctx, argv, rules=_PARTED_RULES)
    await whole.hold_async(argv)


async def _refuse_in_use(ctx: Context, name: str, force: bool) -> None:
    reasons = await blockdev.in_use(ctx, name)
    if reasons and not force:
        raise Conflict(f"{name} is in use: {'; '.join(reasons)} (use force to override)")


def _sectors(name: str, attr: str) -> int | None:
    """A sysfs size/start of a block device, in bytes (sysfs counts 512-byte sectors)."""
    try:
        with open(f"{blockdev.SYS_BLOCK}/{name}/{attr}") as f:
            return int(f.read().strip()) * 512
    except (OSError, ValueError):
        return None


def _blocksize(disk: str) -> int | None:
    try:
        with open(f"{blockdev.SYS_BLOCK}/{disk}/queue/logical_block_size") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _compat_part(row: dict[str, Any], blocksize: int | None) -> None:
    """0-core's fields of a partition row, beside core0's (start/end in bytes)."""
    start = _sectors(row["kname"], "start")
    size = row.get("size")
    row.update({"start": start, "end": (start + size - 1) if start is not None and size else None,
                "blocksize": blocksize, "table": "", "free": [],
                "mountpoint": (row.get("mountpoints") or [None])[0],
                "children": row.get("partitions", [])})


async def _compat_disk(ctx: Context, row: dict[str, Any]) -> None:
    """0-core's fields of a disk row (``disk.list``): ``children`` (its partitions),
    ``table`` ("" when none), ``free`` ranges, ``blocksize``, ``start``, ``end``."""
    bs = _blocksize(row["kname"])
    table, free = "", []
    if row.get("size"):
        try:
            info = await blockdev.parted(ctx, row["path"])
            table, free = info.get("table") or "", info["free"]
        except CommandError:  # no medium, not partitionable: no table, no free ranges
            pass
    size = row.get("size")
    row.update({"start": 0, "end": (size - 1) if size else 0, "blocksize": bs, "table": table,
                "free": free, "mountpoint": (row.get("mountpoints") or [None])[0],
                "children": row["partitions"]})
    for p in row["partitions"]:
        _compat_part(p, bs)


@command("disk.list", NoArgs, role=Role.READ_ONLY)
async def list_(ctx: Context, args: NoArgs) -> list[dict[str, Any]]:
    """The block-device tree: for each disk ``name``, ``kname``, ``path``, ``type``, ``size``
    (bytes), ``model``, ``serial``, ``rotational``, ``read_only``, ``removable``, ``fstype``,
    ``label``, ``uuid``, ``partuuid``, ``partlabel``, ``pttype``, ``mountpoints`` and
    ``partitions`` (the same fields, recursively). Filesystem fields are probed with blkid
    (a core0 node has no udev database). Unattached loop devices are left out.
    0-core's fields are there too: ``children`` (= ``partitions``), ``mountpoint``,
    ``blocksize``, ``start``, ``end`` (bytes), ``table`` (the partition table, "" when none) and
    ``free`` ([{start, end, size}] unpartitioned ranges; [] on a partition)."""
    rows = await blockdev.tree(ctx)
    for row in rows:
        await _compat_disk(ctx, row)
    return rows


@dataclass(frozen=True)
class GetInfoArgs(Schema):
    disk: Device
    part: Annotated[str | None, Doc("a partition of the disk (e.g. sda1); \"\" or absent: "
                                    "the whole disk (0-core's client sends \"\")"),
                    Pattern(f"({DEVICE_RE})?")] = None


@command("disk.getinfo", GetInfoArgs, role=Role.READ_ONLY)
async def getinfo(ctx: Context, args: GetInfoArgs) -> dict[str, Any]:
    """One disk (or one of its partitions): its ``disk.list`` row plus ``start``, ``end``,
    ``size`` (bytes), ``blocksize`` (logical sector), ``table`` (gpt, msdos... or "") and
    ``free`` ranges ([] for a partition), and for a disk ``partition_table``: [{number, kname,
    start, end, size, fstype, name, flags}] (from parted). For a partition: ``number``,
    ``start``, ``end``, ``flags``."""
    disk, path = blockdev.device(args.disk)
    if blockdev.is_partition(disk):
        raise BadRequest(f"{disk} is a partition; give its disk and part={disk}")
    info = await blockdev.parted(ctx, path)
    (row,) = await blockdev.tree(ctx, [disk])
    numbered = {p["number"]: p for p in info["partitions"]}
    if args.part:
        part, _ = blockdev.device(args.part)
        if blockdev.parent_disk(part) != disk:
            raise NotFound(f"{part} is not a partition of {disk}")
        num = blockdev.partition_number(part)
        p = numbered.get(num or -1, {})
        prow = next((c for c in row["partitions"] if c["kname"] == part), {"kname": part})
        return {**prow, "number": num, "start": p.get("start"), "end": p.get("end"),
                "size": p.get("size", prow.get("size")), "blocksize": info.get("logical_sector"),
                "table": info.get("table") or "", "free": [], "flags": p.get("flags", [])}
    by_num = {blockdev.partition_number(k): k for k in blockdev.partitions(disk)}
    for p in info["partitions"]:
        p["kname"] = by_num.get(p["number"])
    size = info.get("size") or row.get("size")
    return {**row, "start": 0, "end": (size - 1) if size else None, "size": size,
            "blocksize": info.get("logical_sector"), "table": info.get("table") or "",
            "free": info["free"], "partition_table": info["partitions"]}


@dataclass(frozen=True)
class MktableArgs(Schema):
    disk: Device
    table_type: Annotated[Literal["gpt", "msdos", "aix", "amiga", "bsd", "dvh", "mac", "pc98",
                                  "sun", "loop"],
                          Doc("partition table type (parted's labels; 0-core's client allows "
                              "them all)")] = "gpt"
    force: Annotated[bool, Doc("even if the disk or a partition is in use")] = False


@command("disk.mktable", MktableArgs, role=Role.OPERATOR)
async def mktable(ctx: Context, args: MktableArgs) -> dict[str, Any]:
    """Write a new, empty partition table (``parted mktable``): every partition is lost.
    409 if the disk or one of its partitions is in use, unless ``force``."""
    disk, path = blockdev.device(args.disk)
    if blockdev.is_partition(disk):
        raise BadRequest(f"{disk} is a partition, not a disk")
    await _refuse_in_use(ctx, disk, args.force)
    old = blockdev.partitions(disk)
    await whole.step(_parted(ctx, ["parted", "-s", "--", path, "mktable", args.table_type]))
    for p in old:
        await blockdev.wait_gone(p, 2.0)
    return {"disk": disk, "table": args.table_type}


@dataclass(frozen=True)
class MkpartArgs(Schema):
    disk: Device
    start: Annotated[Size | int, Doc("start, as parted reads it: with a unit (1MiB, 10%, "
                                     "2048s) or a number (parted's default unit, MB; 0-core's "
                                     "client may send an integer)")]
    end: Annotated[Size | int, Doc("end, as parted reads it (512MiB, 100%, or a number: MB)")]
    part_type: Annotated[Literal["primary", "logical", "extended"],
                         Doc("msdos partition type (the partition name on gpt)")] = "primary"


def _pos(v: str | int) -> str:
    """A parted position; an integer is passed as it is (parted's unit: MB), as 0-core did."""
    if isinstance(v, int):
        if v < 0:
            raise BadRequest("arguments.start/end: must be >= 0", field="arguments.start")
        return str(v)
    return v


async def _new_partition(ctx: Context, disk: str, path: str, number: int) -> str | None:
    """The kernel name of partition ``number`` once its node exists (parted registers new
    partitions with the kernel; if that did not happen, partprobe is asked once)."""
    loop = asyncio.get_running_loop()
    for attempt in range(2):
        deadline = loop.time() + (1.0 if attempt == 0 else 3.0)
        while loop.time() < deadline:
            for k in blockdev.partitions(disk):
                if blockdev.partition_number(k) == number:
                    return k if await blockdev.wait_node(k, 2.0) else None
            await asyncio.sleep(0.02)
        if attempt == 0:
            await tools.run(ctx, ["partprobe", "--", path], check=False)
    return None


@command("disk.mkpart", MkpartArgs, role=Role.OPERATOR)
async def mkpart(ctx: Context, args: MkpartArgs) -> dict[str, Any]:
    """Add a partition (``parted -a optimal mkpart``) and wait for its device node. Returns
    the new partition: ``name`` (kernel name), ``number``, ``start``, ``end``, ``size``.
    409 if the range overlaps a partition."""
    disk, path = blockdev.device(args.disk)
    if blockdev.is_partition(disk):
        raise BadRequest(f"{disk} is a partition, not a disk")
    before = {p["number"] for p in (await blockdev.parted(ctx, path))["partitions"]}

    async def make() -> list[dict[str, Any]]:
        await _parted(ctx, ["parted", "-s", "-a", "optimal", "--", path, "mkpart",
                            args.part_type, _pos(args.start), _pos(args.end)])
        return list((await blockdev.parted(ctx, path))["partitions"])
    # to its end: parted killed between its write and telling the kernel left a partition
    # the kernel did not know; a kill meanwhile removes the new partition again
    after = await whole.step(make())
    new = [p for p in after if p["number"] not in before]
    try:
        await whole.deliver()
        if not new:
            raise Conflict(f"parted made no new partition on {disk}")
        p = new[0]
        name = await _new_partition(ctx, disk, path, p["number"])
    except asyncio.CancelledError:
        for p in new:
            await whole.undo(_parted(ctx, ["parted", "-s", "--", path, "rm",
                                           str(p["number"])]), f"partition {p['number']}")
        raise
    return {"disk": disk, "name": name, "number": p["number"], "start": p["start"],
            "end": p["end"], "size": p["size"]}


@dataclass(frozen=True)
class RmpartArgs(Schema):
    disk: Device
    number: Annotated[int, Doc("partition number"), Range(1, 256)]
    force: Annotated[bool, Doc("even if the partition is in use")] = False


@command("disk.rmpart", RmpartArgs, role=Role.OPERATOR)
async def rmpart(ctx: Context, args: RmpartArgs) -> dict[str, Any]:
    """Remove partition ``number`` (``parted rm``). 404 if there is no such partition, 409 if
    it is in use (mounted, held, swap...) unless ``force``."""
    disk, path = blockdev.device(args.disk)
    info = await blockdev.parted(ctx, path)
    if args.number not in {p["number"] for p in info["partitions"]}:
        raise NotFound(f"{disk} has no partition {args.number}")
    part = next((k for k in blockdev.partitions(disk)
                 if blockdev.partition_number(k) == args.number), None)
    if part is not None:
        await _refuse_in_use(ctx, part, args.force)
    await whole.step(_parted(ctx, ["parted", "-s", "--", path, "rm", str(args.number)]))
    if part is not None:
        await blockdev.wait_gone(part, 2.0)
    return {"disk": disk, "number": args.number, "name": part}


_LABEL_MAX = {"ext4": 16, "xfs": 12, "vfat": 11, "btrfs": 255}


@dataclass(frozen=True)
class MkfsArgs(Schema):
    device: Device
    fstype: Annotated[Literal["ext4", "xfs", "btrfs", "vfat"], Doc("filesystem type")] = "ext4"
    label: Annotated[Label | None, Doc("filesystem label")] = None
    force: Annotated[bool, Doc("overwrite an existing filesystem or partition table, even on "
                               "a device in use")] = False


def _mkfs_argv(fstype: str, path: str, label: str | None, whole_disk: bool) -> list[str]:
    if fstype == "ext4":
        argv = ["mkfs.ext4", "-q", "-F"] + (["-L", label] if label else [])
    elif fstype == "xfs":
        argv = ["mkfs.xfs", "-q", "-f"] + (["-L", label] if label else [])
    elif fstype == "btrfs":
        argv = ["mkfs.btrfs", "-q", "-f"] + (["-L", label] if label else [])
    else:
        argv = ["mkfs.vfat"] + (["-I"] if whole_disk else []) + (
            ["-n", label.upper()] if label else [])
    return [*argv, "--", path]


@command("disk.mkfs", MkfsArgs, role=Role.OPERATOR)
async def mkfs(ctx: Context, args: MkfsArgs) -> dict[str, Any]:
    """Make a filesystem (ext4, xfs, btrfs or vfat) on a disk or partition. Returns
    ``device``, ``fstype``, ``label``, ``uuid``. Without ``force`` it refuses (409) a device in
    use, one that already carries a filesystem, and a disk that has partitions. xfs needs at
    least 300 MB and btrfs about 115 MB (400 from the tool otherwise)."""
    name, path = blockdev.device(args.device)
    if args.label and len(args.label) > _LABEL_MAX[args.fstype]:
        raise BadRequest(f"arguments.label: at most {_LABEL_MAX[args.fstype]} characters for "
                         f"{args.fstype}", field="arguments.label")
    await _refuse_in_use(ctx, name, args.force)
    found = (await blockdev.probe(ctx, [path])).get(path, {})
    if not args.force:
        if blockdev.partitions(name):
            raise Conflict(f"{name} has partitions (use force to overwrite the table)")
        kind = found.get("TYPE") or found.get("PTTYPE")
        if kind:
            raise Conflict(f"{name} already carries {kind}"
                           f"{' (' + found['LABEL'] + ')' if found.get('LABEL') else ''}"
                           " (use force to overwrite)")
    disk = not blockdev.is_partition(name)
    argv = _mkfs_argv(args.fstype, path, args.label, disk)
    try:
        await whole.killed_and_gone(ctx, argv)
        info = (await blockdev.probe(ctx, [path])).get(path, {})
    except asyncio.CancelledError:
        # killed: the (half-)made filesystem's signatures are wiped, or a retry without force
        # found "already carries ext4" (409); the device as it was when nothing was written
        await whole.undo(whole.wipe_if_changed(ctx, {path: found}), f"the mkfs of {name}")
        raise
    return {"device": name, "fstype": info.get("TYPE", args.fstype),
            "label": info.get("LABEL"), "uuid": info.get("UUID")}


_OPTION = r"[a-z0-9_][a-z0-9_-]{0,63}(=[A-Za-z0-9_.:/@+=-]{0,255})?"
_FSTYPE = Literal["auto", "ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "iso9660", "squashfs"]


@dataclass(frozen=True)
class MountArgs(Schema):
    source: Device
    target: Annotated[AbsPath, Doc("mount point (created if missing)")]
    fstype: Annotated[_FSTYPE, Doc("filesystem type")] = "auto"
    options: Annotated[
        list[Annotated[str, Pattern(f"{_OPTION}(,{_OPTION})*")]]
        | Annotated[str, Pattern(f"({_OPTION}(,{_OPTION})*)?"), Len(0, 4096)],
        Doc("mount options: a list (ro, noatime, subvol=/x...) or 0-core's comma-joined "
            "string")] = ""


def _mounts_of(path: str) -> list[parse.Mount]:
    return [m for m in blockdev.mounts() if m.mountpoint == path]


def _is_admin(ctx: Context) -> bool:
    return ctx.job.role >= Role.ADMIN


def _mount_at(ctx: Context, target: str, create: bool, do: Any) -> tuple[str, Any]:
    """Resolve ``target`` inside the filesystem root to an O_PATH descriptor of a directory
    (created if ``create``) and call ``do(fd)`` on it → (canonical target, do's result)."""
    try:
        with Root(ctx.config.main.filesystem_root) as root:
            if create:
                root.mkdir(target)
            fd = root.open(target, os.O_PATH | os.O_DIRECTORY)
    except OSError as e:
        raise oserror(e, target) from None
    try:  # OSErrors of do() are the caller's to map
        return os.readlink(f"/proc/self/fd/{fd}"), do(fd)
    finally:
        os.close(fd)


@command("disk.mount", MountArgs, role=Role.OPERATOR)
async def mount(ctx: Context, args: MountArgs) -> dict[str, Any]:
    """Mount a block device on ``target`` (created if missing; resolved inside the filesystem
    root, and mounted on the very directory resolved: no path is looked up again). 409 if
    that device is already mounted there. Options are allow-listed (flags ro, rw, noexec,
    nosuid, nodev, noatime, relatime, sync...; per-filesystem data options such as subvol=,
    compress=, errors=; 400 otherwise, also for exec/suid/dev); lower roles always get
    nosuid,nodev. ``remount`` changes the flags of a mount core0 made (403 for any other
    mount). Returns ``source``, ``target`` (canonical) and ``fstype``."""
    name, path = blockdev.device(args.source)
    opts = mountfd.split_options(args.options)
    admin = _is_admin(ctx)
    made = mountfd.Made(ctx.config.state_dir)
    if "remount" in opts:
        flags, _ = mountfd.parse_options([o for o in opts if o != "remount"], "", admin,
                                         remount=True)

        def remount(fd: int) -> str:
            mid = mountfd.mnt_id(fd)
            if mid not in made:
                raise Forbidden(f"{args.target} is not a mount made by core0: not remounted")
            mountfd.remount_fd(fd, flags)
            return ""
        try:
            target, _ = await ctx.to_thread(_mount_at, ctx, args.target, False, remount)
        except OSError as e:
            raise mountfd.error(e, f"remount of {args.target}") from None
        here = _mounts_of(target)
        return {"source": path, "target": target, "fstype": here[-1].fstype if here else None}
    kind: str = args.fstype
    if kind == "auto":
        kind = (await blockdev.probe(ctx, [path])).get(path, {}).get("TYPE", "")
        if not kind:
            raise BadRequest(f"{name}: no filesystem found (give fstype)")
        if kind not in mountfd.DATA:
            raise BadRequest(f"{name} carries {kind}: not a filesystem disk.mount mounts")
    flags, data = mountfd.parse_options(opts, kind, admin)
    if kind == "btrfs" and shutil.which("btrfs"):
        await btrfs.scan(ctx)  # register every member of a multi-device btrfs (no udev here)
    mm = blockdev.majmin(name)

    def do(fd: int) -> int:
        real = os.readlink(f"/proc/self/fd/{fd}")
        if any(m.majmin == mm or m.source == path for m in _mounts_of(real)):
            raise Conflict(f"{name} is already mounted on {real}")
        before = mountfd.mount_ids()
        note = made.note(real, mm, path)  # a dispatcher killed -9 meanwhile: adopted later
        try:
            mountfd.mount_fd(path, fd, kind, flags, data)
            whole.hold("mount")
            # the new mount's id (our descriptor is of the directory under it, not on it)
            mid = max(mountfd.mount_ids() - before, default=-1)
            if mid >= 0:
                made.add(mid)
        finally:
            made.unnote(note)
        return mid
    try:
        # the mount(2) and its record run to their end; a kill meanwhile takes it away again
        target, mid = await whole.step(ctx.to_thread(_mount_at, ctx, args.target, True, do))
    except OSError as e:
        raise mountfd.error(e, f"mount of {name}") from None
    try:
        await whole.deliver()
    except asyncio.CancelledError:
        if mid >= 0:
            await whole.undo(ctx.to_thread(mountfd.unmount_id, mid, ctx.config.state_dir),
                             f"the mount of {name} on {target}")
        raise
    here = _mounts_of(target)
    return {"source": path, "target": target, "fstype": here[-1].fstype if here else kind}


@dataclass(frozen=True)
class UmountArgs(Schema):
    target: Annotated[str | None, Doc("mount point, or a device (all its mounts)"),
                      Pattern(f"{ABS_PATH_RE}|{DEVICE_RE}")] = None
    source: Annotated[str | None, Doc("0-core's form: a device or a mount point"),
                      Pattern(f"{ABS_PATH_RE}|{DEVICE_RE}")] = None
    force: Annotated[bool, Doc("detach even if busy (lazy unmount)")] = False


@command("disk.umount", UmountArgs, role=Role.OPERATOR)
async def umount(ctx: Context, args: UmountArgs) -> dict[str, Any]:
    """Unmount a mount point, or every mount of a device (inside the filesystem root); give
    ``target`` or 0-core's ``source`` (either may be a device or a mount point). 404 if
    nothing is mounted there, 409 if busy unless ``force`` (then a lazy unmount detaches it).
    System mounts (/, /proc, /sys, /dev, /run...) are refused (400). Returns ``unmounted``:
    the mount points."""
    what = args.target or args.source
    if what is None or (args.target and args.source and args.target != args.source):
        raise BadRequest("give target (or source): a mount point or a device")
    # ids of mounts that are gone leave the record first (a dispatcher killed -9 between a
    # umount(2) and its record left one)
    await ctx.to_thread(mountfd.Made(ctx.config.state_dir).prune)
    if what.startswith("/") and not what.startswith("/dev/"):
        rels = [what]
    else:
        name, dev = blockdev.device(what)
        mm = blockdev.majmin(name)
        # btrfs mounts carry an anonymous device number: match the source path too
        points = [m.mountpoint for m in blockdev.mounts() if m.majmin == mm or m.source == dev]
        if not points:
            raise NotFound(f"{name} is not mounted")
        for p in points:
            if p in mountfd.SYSTEM_MOUNTS:
                raise BadRequest(f"refusing to unmount the system mount {p}")
        inside = [mountfd.inside(ctx.config.main.filesystem_root, p) for p in reversed(points)]
        rels = [r for r in inside if r is not None]
        if not rels:
            raise NotFound(f"{name} is not mounted inside the filesystem root")
    done = []
    fsroot, state = ctx.config.main.filesystem_root, ctx.config.state_dir
    for rel in rels:
        try:
            # each umount(2) to its end: its thread went on after a kill (a umount that
            # writes back dirty data takes seconds) and unmounted after the answer KILLED
            try:
                done.append(await whole.step(ctx.to_thread(_umount, fsroot, state, rel,
                                                           False)))
            except OSError as e:
                if e.errno != errno.EBUSY or not args.force:
                    raise
                done.append(await whole.step(ctx.to_thread(_umount, fsroot, state, rel,
                                                           True)))
        except OSError as e:
            if e.errno == errno.EBUSY:
                raise Conflict(f"{rel} is busy (use force for a lazy unmount)") from None
            if e.errno == errno.EINVAL:
                raise NotFound(f"nothing is mounted on {rel}") from None
            raise oserror(e, rel) from None
    return {"unmounted": done}


def _umount(fsroot: str, state: Any, rel: str, lazy: bool) -> str:
    """:func:`core0.storage.mountfd.umount_in_root` (in a worker thread), held by the fault
    tests (step ``umount``) between the umount(2) and its record."""
    return mountfd.umount_in_root(fsroot, state, rel, lazy, lambda: whole.hold("umount"))


def _option_map(options: list[str]) -> dict[str, str]:
    """0-core's options dict: ``{"rw": "1", "subvol": "/x"}``."""
    out = {}
    for o in options:
        k, eq, val = o.partition("=")
        out[k] = val if eq else "1"
    return out


@command("disk.mounts", NoArgs, role=Role.READ_ONLY)
async def mounts(ctx: Context, args: NoArgs) -> dict[str, list[dict[str, Any]]]:
    """Every mount of the node, by source (0-core's shape, from /proc/self/mountinfo):
    ``{source: [{mountpoint, filesystem, options, fstype, option_list, root}]}``.
    ``filesystem`` = ``fstype``; ``options`` is 0-core's dict (``{"rw": "1", "subvol": "/x"}``:
    "1" for a flag), ``option_list`` the same options as a sorted list."""
    out: dict[str, list[dict[str, Any]]] = {}
    for m in blockdev.mounts():
        opts = sorted(set(m.options) | set(m.super_options))
        out.setdefault(m.source, []).append({
            "mountpoint": m.mountpoint, "filesystem": m.fstype, "fstype": m.fstype,
            "root": m.root, "options": _option_map(opts), "option_list": opts,
        })
    return out


@dataclass(frozen=True)
class ProtectArgs(Schema):
    partuuid: Annotated[str | None, Doc("the partition's PARTUUID"),
                        Pattern(r"[0-9A-Fa-f][0-9A-Fa-f-]{0,63}")] = None
    disk: Annotated[str | None, Doc("or a device name"), Pattern(DEVICE_RE)] = None
    protect: Annotated[bool, Doc("false makes them writable again")] = True


@command("disk.protect", ProtectArgs, role=Role.OPERATOR)
async def protect(ctx: Context, args: ProtectArgs) -> dict[str, Any]:
    """Make a partition and its disk read-only (``blockdev --setro``; ``protect: false``:
    ``--setrw``), e.g. the boot USB at startup. Give ``partuuid`` or ``disk``. Returns
    ``devices`` and ``read_only``."""
    if (args.partuuid is None) == (args.disk is None):
        raise BadRequest("give exactly one of partuuid and disk")
    if args.partuuid is not None:
        found = await blockdev.probe(ctx)
        want = args.partuuid.lower()
        hits = [d for d, i in found.items() if i.get("PARTUUID", "").lower() == want]
        if not hits:
            raise NotFound(f"no partition with PARTUUID {args.partuuid}")
        name, _ = blockdev.device(hits[0])
    else:
        assert args.disk is not None
        name, _ = blockdev.device(args.disk)
    names = [name]
    disk = blockdev.parent_disk(name)
    if disk != name:
        names.append(disk)
    flag = "--setro" if args.protect else "--setrw"

    async def each() -> None:
        for n in (names if args.protect else list(reversed(names))):
            # blockdev has no "--"; the path is built here from a checked kernel name
            argv = ["blockdev", flag, blockdev.dev_path(n)]
            await tools.run(ctx, argv)
            await whole.hold_async(argv)
    # the partition and its disk together: a kill between the two left the partition
    # read-only on a writable disk
    await whole.step(each())
    return {"devices": names, "read_only": all(blockdev.read_only(n) for n in names)}
