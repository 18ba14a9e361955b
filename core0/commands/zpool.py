"""zpool.*: ZFS pools (CeranaOS's pool tasks): create, list, status, import, export, destroy.

The backend is chosen per node (``core0.storage.zfs``): OpenZFS through its CLI (and
libzfs_core where present) or zfs-fuse through its CLI, whose daemon core0 starts when it is
not running. A node without ZFS answers 412.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from core0.context import Context
from core0.errors import BadRequest, Conflict, Forbidden, NotFound
from core0.registry import Role, command
from core0.schema import Doc, Len, Pattern, Schema
from core0.storage import blockdev, paths, tools, whole, zfs, zfsconf, zfsfuse
from core0.storage.names import ABS_PATH_RE, DEVICE_RE, POOL_RE, AbsPath, Pool, Props

VDEV_KEYWORDS = ("mirror", "raidz", "raidz1", "raidz2", "raidz3", "spare", "log", "cache",
                 "special", "dedup")
_VDEV = Pattern("|".join([*VDEV_KEYWORDS, DEVICE_RE, ABS_PATH_RE]))


def _pool_name(name: str) -> str:
    if name in VDEV_KEYWORDS or name.startswith(("mirror", "raidz", "draid")) or \
            re.match(r"c[0-9]", name):
        raise BadRequest(f"arguments.name: {name!r} is reserved", field="arguments.name")
    return name


async def _vdevs(ctx: Context, vdevs: list[str], force: bool) -> list[str]:
    out = []
    for v in vdevs:
        if v in VDEV_KEYWORDS:
            out.append(v)
        elif v.startswith("/") and not v.startswith("/dev/") and not zfsconf.is_admin(ctx):
            # ZFS opens a file vdev by its path, in its own process: no descriptor can pin it
            raise Forbidden(f"arguments.vdevs: file vdevs ({v}) are for the admin role only",
                            field="arguments.vdevs")
        elif v.startswith("/dev/") or not v.startswith("/"):
            name, path = blockdev.device(v)
            reasons = await blockdev.in_use(ctx, name)
            if reasons and not force:
                raise Conflict(f"{name} is in use: {'; '.join(reasons)} (use force)")
            out.append(path)
        else:
            out.append(paths.resolve(ctx, v, kind="file"))
    if out and out[-1] in VDEV_KEYWORDS:
        raise BadRequest(f"arguments.vdevs: {out[-1]} must be followed by devices")
    if not force:
        # zfs-fuse's zpool overwrites a filesystem without a word: refuse it here
        members = [v for v in out if v not in VDEV_KEYWORDS]
        found = await blockdev.probe(ctx, members)
        for v in members:
            info = found.get(v, {})
            kind = info.get("TYPE") or info.get("PTTYPE")
            if kind:
                what = f"a vdev of pool {info.get('LABEL')}" if kind == "zfs_member" else kind
                raise Conflict(f"{v} already carries {what} (use force to overwrite)")
    return out


@dataclass(frozen=True)
class CreateArgs(Schema):
    name: Pool
    vdevs: Annotated[list[Annotated[str, _VDEV]],
                     Doc("vdev spec like the CLI's: devices (sdb, /dev/loop0), files (absolute "
                         "paths, for tests) and keywords (mirror, raidz, raidz2, spare, log, "
                         "cache), e.g. [\"mirror\", \"sdb\", \"sdc\"]"), Len(1, 256)]
    mountpoint: Annotated[str | None, Doc("mount point of the root dataset, none or legacy"),
                          Pattern(f"{ABS_PATH_RE}|none|legacy")] = None
    properties: Annotated[Props, Doc("pool properties (-o), e.g. {\"cachefile\": \"none\"}")
                          ] = field(default_factory=dict)
    fs_properties: Annotated[Props, Doc("root dataset properties (-O)")] = field(
        default_factory=dict)
    force: Annotated[bool, Doc("use devices even if in use or carrying a filesystem, "
                               "partition table or old pool label (zpool -f)")] = False


@command("zpool.create", CreateArgs, role=Role.OPERATOR)
async def create(ctx: Context, args: CreateArgs) -> dict[str, Any]:
    """Create a pool over ``vdevs``. 409 if the pool exists, or, unless ``force``, if a
    device is in use or a vdev carries a filesystem, a partition table or another pool's
    label (zfs-fuse would overwrite them silently). ``mountpoint`` (default ``/<name>``) and
    ``fs_properties.mountpoint`` are paths inside the filesystem root; lower roles get
    ``setuid=off,devices=off`` (403 if asked on), may not give file vdevs (403) or a
    ``cachefile`` path. Returns the pool's ``zpool.list`` row."""
    _pool_name(args.name)
    fs_props = zfsconf.policy(ctx, args.fs_properties, "arguments.fs_properties")
    props = _pool_props(ctx, args.properties)
    be = await zfs.backend(ctx)
    vdevs = await _vdevs(ctx, args.vdevs, args.force)
    mnt = args.mountpoint
    if mnt is None and "mountpoint" not in fs_props and \
            ctx.config.main.filesystem_root.rstrip("/"):
        mnt = "/" + args.name  # ZFS's default, inside the root
    if mnt is not None:
        mnt = zfsconf.mountpoint(ctx, mnt, "arguments.mountpoint")
    # remembered first (a dispatcher killed -9 in the create leaves a pool the zfs-fuse
    # supervision brings back), forgotten again if no pool was made
    had = args.name in zfsfuse.known_pools(ctx.config)
    zfsfuse.remember_pool(ctx.config, args.name, vdevs=vdevs)
    try:
        # to its end: a killed zpool CLI has handed the create to the daemon
        await whole.step(be.pool_create(args.name, vdevs, mnt, props, fs_props, args.force))
    except BaseException:
        if not had:
            zfsfuse.forget_pool(ctx.config, args.name)
        raise
    try:
        await whole.deliver()
        await zfsconf.verify(ctx, [args.name])
        # a kill held back by the verify is raised here, undone too (before, KILLED was
        # answered with the pool left)
        return (await be.pool_list(args.name))[0]
    except BaseException:  # failed, or killed: the pool made is destroyed again
        await whole.undo(_unmade(ctx, be, args.name, vdevs), f"pool {args.name}")
        if not had:
            zfsfuse.forget_pool(ctx.config, args.name)
        raise


async def _unmade(ctx: Context, be: Any, name: str, vdevs: list[str]) -> None:
    """Destroy the pool a command cut short made, and wipe its labels from the vdevs (a
    retry without force found "already carries a vdev of pool ...": 409)."""
    await be.pool_destroy(name, True)
    members = [v for v in vdevs if v not in VDEV_KEYWORDS]
    await tools.run(ctx, ["wipefs", "-a", "-q", "--", *members], check=False)


def _pool_props(ctx: Context, props: dict[str, str]) -> dict[str, str]:
    """Pool properties: ``altroot`` inside the root; ``cachefile`` a path for admin only."""
    out = dict(props)
    if "altroot" in out:
        out["altroot"] = zfsconf.mountpoint(ctx, out["altroot"], "arguments.properties.altroot")
    cache = out.get("cachefile")
    if cache not in (None, "", "none") and not zfsconf.is_admin(ctx):
        raise Forbidden("arguments.properties.cachefile: a cache file path is for the admin "
                        "role only (none is allowed)", field="arguments.properties.cachefile")
    return out


@dataclass(frozen=True)
class NameArgs(Schema):
    name: Annotated[Pool | None, Doc("one pool (default: all)")] = None


@command("zpool.list", NameArgs, role=Role.READ_ONLY)
async def list_(ctx: Context, args: NameArgs) -> list[dict[str, Any]]:
    """Pools: ``name``, ``size``, ``allocated``, ``free``, ``capacity`` (%), ``health``,
    ``guid``, ``version`` (null with feature flags), ``altroot``, and the root dataset's exact
    ``used``/``available``. On zfs-fuse size/allocated/free are the tool's rounded figures
    (``sizes_exact`` false): it has no ``-p``. 404 for an unknown pool."""
    be = await zfs.backend(ctx)
    return await be.pool_list(args.name)


@command("zpool.status", NameArgs, role=Role.READ_ONLY)
async def status(ctx: Context, args: NameArgs) -> list[dict[str, Any]]:
    """Health of pools: ``name``, ``state``, ``status``/``action`` when degraded, ``scan``,
    ``errors`` and the ``vdevs`` tree ({name, state, read, write, cksum, children})."""
    be = await zfs.backend(ctx)
    return await be.pool_status(args.name)


@dataclass(frozen=True)
class ImportArgs(Schema):
    name: Annotated[str | None, Doc("pool to import (name or numeric id); none: list the "
                                    "importable pools"),
                    Pattern(f"{POOL_RE}|[0-9]{{1,20}}")] = None
    dirs: Annotated[list[AbsPath], Doc("directories to search for devices or files (-d)"),
                    Len(0, 16)] = field(default_factory=list)
    new_name: Annotated[Pool | None, Doc("import under this name")] = None
    properties: Annotated[Props, Doc("pool properties for the import (-o)")] = field(
        default_factory=dict)
    force: Annotated[bool, Doc("import a pool that looks in use by another system")] = False


@command("zpool.import", ImportArgs, role=Role.OPERATOR)
async def import_(ctx: Context, args: ImportArgs) -> Any:
    """Import a pool (its datasets are mounted), or, without ``name``, list importable pools
    ([{name, id, state, vdevs}]). 404 if the pool is not found, 409 if a pool of that name is
    imported already."""
    be = await zfs.backend(ctx)
    dirs = [paths.resolve(ctx, d, kind="dir") for d in args.dirs]
    if args.name is None:
        return await be.pool_importable(dirs)
    if args.new_name is not None:
        _pool_name(args.new_name)
    props = _pool_props(ctx, args.properties)
    want = args.new_name or await _import_name(be, args.name, dirs)
    # remembered first (a dispatcher killed -9 in the import leaves a pool the zfs-fuse
    # supervision brings back), as it was again if no pool was imported
    had = zfsfuse.known_pools(ctx.config).get(want)
    zfsfuse.remember_pool(ctx.config, want, dirs=dirs)
    try:
        # to its end: the daemon imports the pool and mounts its datasets anyway
        await whole.step(be.pool_import(args.name, dirs, args.force, args.new_name, props))
    except BaseException:
        zfsfuse.restore_pool(ctx.config, want, had)
        raise
    try:
        await whole.deliver()
        await zfsconf.verify(ctx, [want])
        rows = await be.pool_list()  # (a kill held back by the verify is raised here)
    except asyncio.CancelledError:
        # killed: exported again (before, the pool stayed, its mounts never checked: a lower
        # role's without nosuid,nodev, and a retry answered 409)
        await whole.undo(_unimported(ctx, be, want, had), f"the import of {want}")
        raise
    return next((p for p in rows if want in (p["name"], p["guid"])), {"name": want})


async def _import_name(be: Any, name: str, dirs: list[str]) -> str:
    """The name of the pool an import by numeric id brings (what is remembered: the
    record of an id was never forgotten by an export of the name)."""
    if not name.isdigit():
        return name
    found = [p["name"] for p in await be.pool_importable(dirs) if p.get("id") == name]
    return found[0] if found else name


async def _unimported(ctx: Context, be: Any, name: str, had: list[str] | None) -> None:
    """Export again the pool a command cut short imported; its record as it was."""
    await be.pool_export(name, False)
    zfsfuse.restore_pool(ctx.config, name, had)


async def _forgotten_while(ctx: Context, name: str,
                           gone: Callable[[Callable[[], None]], Awaitable[None]]) -> None:
    """Export or destroy pool ``name`` (``gone(first)``) with the pool forgotten right
    before the export or destroy itself (``first``): a dispatcher killed -9 in it left the
    pool remembered while it was gone, and the zfs-fuse supervision imported an exported
    pool back. Not done (failed, or killed before it): remembered as it was."""
    had = zfsfuse.known_pools(ctx.config).get(name)
    try:
        await gone(lambda: zfsfuse.forget_pool(ctx.config, name))
    except BaseException:
        zfsfuse.restore_pool(ctx.config, name, had)
        raise


@dataclass(frozen=True)
class PoolArgs(Schema):
    name: Pool
    force: Annotated[bool, Doc("unmount busy datasets forcibly")] = False


async def _known(be: Any, name: str) -> None:
    if not any(p["name"] == name for p in await be.pool_list()):
        raise NotFound(f"no such pool: {name}")


@command("zpool.export", PoolArgs, role=Role.OPERATOR)
async def export(ctx: Context, args: PoolArgs) -> dict[str, Any]:
    """Export a pool (unmount its datasets, release its devices; ``zpool.import`` brings it
    back). 404 for an unknown pool, 409 if a dataset is busy, unless ``force``."""
    be = await zfs.backend(ctx)
    await _known(be, args.name)
    await _forgotten_while(ctx, args.name,
                           lambda first: be.pool_export(args.name, args.force, first))
    return {"name": args.name, "exported": True}


@command("zpool.destroy", PoolArgs, role=Role.OPERATOR)
async def destroy(ctx: Context, args: PoolArgs) -> dict[str, Any]:
    """Destroy a pool and everything in it. 404 for an unknown pool, 409 if a dataset is
    busy (open files, a process inside), unless ``force``. zfs-fuse's spurious "busy" on
    freshly mounted datasets is retried first."""
    be = await zfs.backend(ctx)
    await _known(be, args.name)
    await _forgotten_while(ctx, args.name,
                           lambda first: be.pool_destroy(args.name, args.force, first))
    return {"name": args.name, "destroyed": True}
