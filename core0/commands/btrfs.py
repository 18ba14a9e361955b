"""btrfs.*: 0-core's btrfs commands (filesystems, devices, subvolumes, snapshots, quotas).

Paths are absolute and resolved inside the filesystem root without following symlinks out of
it; they must be on a mounted btrfs (400 otherwise). Devices are kernel names or /dev paths.
The machinery is in ``core0.storage.btrfs``.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from core0.context import Context
from core0.errors import BadRequest, Conflict, NotFound
from core0.registry import Role, command
from core0.schema import Doc, Len, NoArgs, Pattern, Schema
from core0.storage import blockdev, mountfd, parse, paths, tools, whole
from core0.storage import btrfs as bt
from core0.storage.names import SIZE_RE, AbsPath, Device

Profile = Literal["raid0", "raid1", "raid1c3", "raid1c4", "raid5", "raid6", "raid10", "dup",
                  "single"]
Devices = Annotated[list[Device], Doc("block devices"), Len(1, 64)]


async def _check_devices(ctx: Context, devices: list[str], overwrite: bool) -> list[str]:
    """Device paths, after refusing (409) any in use, or carrying data without ``overwrite``."""
    out = []
    for d in devices:
        name, path = blockdev.device(d)
        reasons = await blockdev.in_use(ctx, name)
        if reasons:
            raise Conflict(f"{name} is in use: {'; '.join(reasons)}")
        out.append(path)
    if len(set(out)) != len(out):
        raise BadRequest("a device is listed twice")
    if not overwrite:
        found = await blockdev.probe(ctx, out)
        for p in out:
            kind = found.get(p, {}).get("TYPE") or found.get(p, {}).get("PTTYPE")
            if kind:
                raise Conflict(f"{p} already carries {kind} (use overwrite)")
    return out


@dataclass(frozen=True)
class CreateArgs(Schema):
    devices: Devices
    label: Annotated[str, Doc("filesystem label"),
                     Pattern(r"([A-Za-z0-9_][A-Za-z0-9_.-]{0,254})?")] = ""
    metadata: Annotated[Profile | Literal[""] | None,
                        Doc("metadata profile (default, or \"\": mkfs's)")] = None
    data: Annotated[Profile | Literal[""] | None,
                    Doc("data profile (default, or \"\": mkfs's)")] = None
    overwrite: Annotated[bool, Doc("overwrite devices that carry a filesystem")] = False


@command("btrfs.create", CreateArgs, role=Role.OPERATOR)
async def create(ctx: Context, args: CreateArgs) -> dict[str, Any]:
    """Make a btrfs filesystem over ``devices`` with the ``data`` and ``metadata`` profiles
    (raid0/1/1c3/1c4/5/6/10, dup, single). 409 if a device is in use (mounted, member of a
    mounted filesystem...), or carries a filesystem and ``overwrite`` is false. Returns
    ``label``, ``uuid`` and ``devices``."""
    devs = await _check_devices(ctx, args.devices, args.overwrite)
    argv = ["mkfs.btrfs", "-q", "-f" if args.overwrite else None,
            *(["-L", args.label] if args.label else []),
            *(["-d", args.data] if args.data else []),
            *(["-m", args.metadata] if args.metadata else []), "--", *devs]
    found = await blockdev.probe(ctx, devs)
    try:
        await whole.killed_and_gone(ctx, [a for a in argv if a is not None], bt.RULES)
        info = (await blockdev.probe(ctx, devs[:1])).get(devs[0], {})
    except asyncio.CancelledError:
        # killed: the (half-)made filesystem's signatures are wiped (a retry without
        # overwrite found "already carries btrfs": 409)
        await whole.undo(whole.wipe_if_changed(ctx, {d: found.get(d, {}) for d in devs}),
                         "the mkfs.btrfs")
        raise
    return {"label": info.get("LABEL", args.label or None), "uuid": info.get("UUID"),
            "devices": devs}


def _compat_fs(fs: dict[str, Any]) -> dict[str, Any]:
    """0-core's field names beside core0's: ``dev_id`` per device, ``warnings``."""
    for d in fs["devices"]:
        d["dev_id"] = d["devid"]
    fs["warnings"] = "Some devices missing" if fs.get("missing") else ""
    return fs


@command("btrfs.list", NoArgs, role=Role.READ_ONLY)
async def list_(ctx: Context, args: NoArgs) -> list[dict[str, Any]]:
    """Every btrfs filesystem the node sees: ``label``, ``uuid``, ``total_devices``, ``used``
    (bytes), ``devices`` [{devid, dev_id, size, used, path}], ``warnings`` ("" or "Some
    devices missing") and ``mountpoints``."""
    out = [_compat_fs(fs) for fs in await bt.show(ctx)]
    mounts = blockdev.mounts()
    for fs in out:
        devpaths = {d["path"] for d in fs["devices"]}
        fs["mountpoints"] = [m.mountpoint for m in mounts
                             if m.fstype == "btrfs" and m.source in devpaths]
    return out


@dataclass(frozen=True)
class MountpointArgs(Schema):
    mountpoint: Annotated[AbsPath, Doc("where the filesystem is mounted")]


@command("btrfs.info", MountpointArgs, role=Role.READ_ONLY)
async def info(ctx: Context, args: MountpointArgs) -> dict[str, Any]:
    """One mounted filesystem: its ``btrfs.list`` entry plus the space breakdown ``data``,
    ``metadata``, ``system``, ``globalreserve`` ({profile, total, used} in bytes)."""
    mnt = paths.resolve(ctx, args.mountpoint, kind="dir")
    bt.on_btrfs(mnt)
    shown = await bt.show(ctx, mnt)
    if not shown:
        raise NotFound(f"no btrfs filesystem at {mnt}")
    return {**_compat_fs(shown[0]), **await bt.df(ctx, mnt), "mountpoint": mnt}


@dataclass(frozen=True)
class DevicesArgs(Schema):
    mountpoint: Annotated[AbsPath, Doc("where the filesystem is mounted")]
    devices: Devices
    overwrite: Annotated[bool, Doc("device_add: overwrite devices carrying a filesystem")] = False


@command("btrfs.device_add", DevicesArgs, role=Role.OPERATOR)
async def device_add(ctx: Context, args: DevicesArgs) -> dict[str, Any]:
    """Add devices to a mounted filesystem (409 if one is in use, or carries a filesystem
    and ``overwrite`` is false). Returns the filesystem's devices."""
    mnt = paths.resolve(ctx, args.mountpoint, kind="dir")
    bt.on_btrfs(mnt)
    devs = await _check_devices(ctx, args.devices, args.overwrite)
    argv = ["btrfs", "device", "add", *(["-f"] if args.overwrite else []), "--", *devs, mnt]

    async def add() -> None:
        await tools.run(ctx, argv, rules=bt.RULES)
        await whole.hold_async(argv)
    try:
        # to its end: the kernel's add of a device is not cut by a kill of the tool, and
        # with several devices a kill between two left some added
        await whole.step(add())
        await whole.deliver()
        shown = await bt.show(ctx, mnt)  # (a kill meanwhile: undone as well)
    except BaseException:
        # killed, or failed after some were added: those are removed again (before, a retry
        # answered 409 "in use": a member of the mounted filesystem)
        await whole.undo(_removed_again(ctx, mnt, devs), f"the devices added to {mnt}")
        raise
    return {"mountpoint": mnt, "devices": shown[0]["devices"] if shown else []}


def _rdev(path: str) -> int | None:
    """The device number of a block device path (None: gone)."""
    try:
        return os.stat(path).st_rdev
    except OSError:
        return None


async def _members(ctx: Context, mnt: str) -> set[int | None]:
    """Device numbers of the devices of the filesystem on ``mnt`` (by number: btrfs names
    a device-mapper device /dev/mapper/x where the caller may say /dev/dm-0)."""
    shown = await bt.show(ctx, mnt)
    return {_rdev(d["path"]) for d in shown[0]["devices"]} - {None} if shown else set()


async def _removed_again(ctx: Context, mnt: str, devs: list[str]) -> None:
    """Remove from the filesystem on ``mnt`` those of ``devs`` that are its members (the
    kernel wipes their superblock: a retry without overwrite is not refused)."""
    members = await _members(ctx, mnt)
    added = [d for d in devs if _rdev(d) in members]
    if added:
        await tools.run(ctx, ["btrfs", "device", "remove", "--", *added, mnt],
                        rules=bt.RULES)


@command("btrfs.device_remove", DevicesArgs, role=Role.OPERATOR)
async def device_remove(ctx: Context, args: DevicesArgs) -> dict[str, Any]:
    """Remove devices from a mounted filesystem (their data moves to the others first). 409
    when the profile cannot lose them (e.g. below two devices on raid1), 404 for a device
    that is not one of the filesystem's."""
    mnt = paths.resolve(ctx, args.mountpoint, kind="dir")
    bt.on_btrfs(mnt)
    devs = [blockdev.device(d)[1] for d in args.devices]
    members = await _members(ctx, mnt)
    strangers = [d for d in devs if _rdev(d) not in members]
    if strangers:  # (btrfs says "Invalid argument": e.g. a retry of a removal that was done)
        raise NotFound(f"not a device of the filesystem on {mnt}: {', '.join(strangers)}")
    await tools.run(ctx, ["btrfs", "device", "remove", "--", *devs, mnt], rules=bt.RULES)
    shown = await bt.show(ctx, mnt)
    return {"mountpoint": mnt, "devices": shown[0]["devices"] if shown else []}


@dataclass(frozen=True)
class PathArgs(Schema):
    path: Annotated[AbsPath, Doc("subvolume path")]


@command("btrfs.subvol_create", PathArgs, role=Role.OPERATOR)
async def subvol_create(ctx: Context, args: PathArgs) -> dict[str, Any]:
    """Create a subvolume at ``path`` (its parent must exist on a mounted btrfs; 409 if the
    path exists)."""
    path = await bt.subvol_create(ctx, args.path)
    return {"path": path}


@dataclass(frozen=True)
class DeleteArgs(Schema):
    path: Annotated[AbsPath, Doc("subvolume path")]
    force: Annotated[bool, Doc("unmount what is mounted on, under or from it first")] = False


@command("btrfs.subvol_delete", DeleteArgs, role=Role.OPERATOR)
async def subvol_delete(ctx: Context, args: DeleteArgs) -> dict[str, Any]:
    """Delete a subvolume. 409 if it is mounted (here or elsewhere with ``subvol=``) or has
    mounts under it, unless ``force`` (they are lazily unmounted first); 409 as well if it
    holds nested subvolumes."""
    dfd, sfd, name, path = bt.open_subvolume(ctx, args.path)
    try:
        w = bt.on_btrfs(path)
        if w.mount.mountpoint == path and w.mount.root.rstrip("/") in ("", "/"):
            raise BadRequest(f"{path} is the top level of the filesystem")
        busy = bt.mounts_using(w)
        if busy and not args.force:
            raise Conflict(f"{path} is in use: mounted on {', '.join(busy)} (use force)")
        fsroot = ctx.config.main.filesystem_root
        rels = [mountfd.inside(fsroot, mp) for mp in sorted(busy, key=len, reverse=True)]
        outside = [mp for mp, rel in zip(busy, rels, strict=True) if rel is None]
        if outside:
            raise Conflict(f"{path} is mounted outside the filesystem root: "
                           f"{', '.join(outside)}")
        os.close(sfd)  # our own descriptor would keep the subvolume busy
        sfd = -1
        for rel in rels:
            assert rel is not None
            try:
                await ctx.to_thread(mountfd.umount_in_root, fsroot, ctx.config.state_dir, rel,
                                    True)
            except OSError as e:
                raise mountfd.error(e, f"umount of {rel}") from None
        await bt.subvol_delete(ctx, dfd, name, path)
    finally:
        os.close(dfd)
        if sfd >= 0:
            os.close(sfd)
    return {"path": path}


@dataclass(frozen=True)
class ListArgs(Schema):
    path: Annotated[AbsPath, Doc("a path on the filesystem (its mount point)")]


@command("btrfs.subvol_list", ListArgs, role=Role.READ_ONLY)
async def subvol_list(ctx: Context, args: ListArgs) -> list[dict[str, Any]]:
    """Subvolumes of the filesystem ``path`` is on: ``id``, ``gen``, ``parent``,
    ``top_level``, ``uuid``, ``parent_uuid`` (set for snapshots), ``path`` (from the top
    level) and ``read_only``; with 0-core's names beside them: ``ID``, ``Gen``,
    ``TopLevel``, ``Path`` and ``Quota`` (the qgroup's referenced-space limit in bytes, 0 for
    none)."""
    path = paths.resolve(ctx, args.path, kind="dir")
    bt.on_btrfs(path)
    res = await tools.run(ctx, ["btrfs", "subvolume", "list", "-p", "-u", "-q", "--", path],
                          rules=bt.RULES)
    ro = await tools.run(ctx, ["btrfs", "subvolume", "list", "-r", "--", path], rules=bt.RULES)
    ro_ids = {s["id"] for s in parse.parse_subvol_list(ro.stdout)}
    out = parse.parse_subvol_list(res.stdout)
    quota = await _limits(ctx, path)
    for s in out:
        s["read_only"] = s["id"] in ro_ids
        s.update({"ID": s["id"], "Gen": s["gen"], "TopLevel": s["top_level"],
                  "Path": s["path"], "Quota": quota.get(f"0/{s['id']}", 0)})
    return out


async def _limits(ctx: Context, path: str) -> dict[str, int]:
    """qgroup id → referenced-space limit (bytes); {} when quotas are off."""
    res = await tools.run(ctx, ["btrfs", "qgroup", "show", "-re", "--raw", "--", path],
                          check=False)
    if res.status != 0:
        return {}
    return {r["qgroupid"]: r["max_referenced"] or 0 for r in parse.parse_qgroup_show(res.stdout)}


@dataclass(frozen=True)
class SnapshotArgs(Schema):
    source: Annotated[AbsPath, Doc("subvolume to snapshot")]
    destination: Annotated[AbsPath, Doc("new snapshot path (must not exist)")]
    read_only: Annotated[bool, Doc("make a read-only snapshot")] = False


@command("btrfs.subvol_snapshot", SnapshotArgs, role=Role.OPERATOR)
async def subvol_snapshot(ctx: Context, args: SnapshotArgs) -> dict[str, Any]:
    """Snapshot subvolume ``source`` at ``destination`` (copy-on-write, constant time: a
    container root in milliseconds). Done with the kernel's snapshot ioctl on file descriptors
    resolved inside the filesystem root (no tool spawned, no path race). 409 if
    ``destination`` exists, 400 if ``source`` is not a subvolume or the two are on different
    filesystems."""
    src, dst = await bt.snapshot(ctx, args.source, args.destination, args.read_only)
    return {"source": src, "destination": dst, "read_only": args.read_only}


@dataclass(frozen=True)
class QuotaArgs(Schema):
    path: Annotated[AbsPath, Doc("subvolume path")]
    limit: Annotated[int | str, Doc("referenced-space limit: bytes, a size (50M, 1G) or "
                                    "\"none\" to lift it")]


@command("btrfs.subvol_quota", QuotaArgs, role=Role.OPERATOR)
async def subvol_quota(ctx: Context, args: QuotaArgs) -> dict[str, Any]:
    """Limit the space a subvolume may reference (its qgroup limit; quotas are enabled on
    the filesystem first). Writes beyond it fail with EDQUOT. Returns the subvolume's qgroup
    row: ``qgroupid``, ``referenced``, ``exclusive``, ``max_referenced``..."""
    if isinstance(args.limit, int):
        if args.limit < 1:
            raise BadRequest("arguments.limit: must be >= 1", field="arguments.limit")
        limit = str(args.limit)
    elif args.limit == "none" or re.fullmatch(SIZE_RE, args.limit) and "%" not in args.limit \
            and not args.limit.endswith("s"):
        limit = args.limit
    else:
        raise BadRequest("arguments.limit: a size like 50M, or none", field="arguments.limit")
    dfd, sfd, _name, path = bt.open_subvolume(ctx, args.path)
    os.close(dfd)
    try:
        bt.on_btrfs(path)
        # the tool gets the subvolume we resolved as its stdin and acts on /proc/self/fd/0:
        # no path is looked up again ("quota enable" takes no options and no "--")
        here = "/proc/self/fd/0"
        await tools.run(ctx, ["btrfs", "quota", "enable", here], stdin=sfd, rules=bt.RULES)
        await tools.run(ctx, ["btrfs", "qgroup", "limit", "--", limit, here], stdin=sfd,
                        rules=bt.RULES)
        res = await tools.run(ctx, ["btrfs", "qgroup", "show", "-reF", "--raw", "--", here],
                              stdin=sfd, rules=bt.RULES)
    finally:
        os.close(sfd)
    rows = parse.parse_qgroup_show(res.stdout)
    row = rows[0] if rows else {"max_referenced": None}
    return {**row, "subvolume": row.get("path"), "path": path}
