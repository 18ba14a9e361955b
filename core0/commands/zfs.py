"""zfs.*: datasets, snapshots, clones, holds and streams (CeranaOS's ZFS task set).

Datasets are filesystems, or volumes where the ZFS has zvols (zfs-fuse has none: 412). Names
are checked against strict patterns (``pool/fs@snap``; no ``-`` first, no spaces, no ``..``).
The backend is chosen per node (``core0.storage.zfs``); a result says plainly when this ZFS
lacks a feature (e.g. ``zfs.holds`` on zfs-fuse).

``zfs.send``/``zfs.receive`` stream through a **file on the node** (a path given in the
arguments): they run as jobs that report progress as output lines (use ``stream: true`` to
follow them), and ``job.kill``/``max_time`` stop the zfs process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from core0.context import Context
from core0.errors import BadRequest, Conflict, NotFound
from core0.registry import Role, command
from core0.schema import Doc, Len, Pattern, Schema
from core0.storage import paths, tools, whole, zfs, zfsconf
from core0.storage.names import (
    DATASET_RE,
    PROP_RE,
    SNAPNAME_RE,
    AbsPath,
    Dataset,
    DatasetOrSnapshot,
    Props,
    Size,
    Snapshot,
    Tag,
)


@dataclass(frozen=True)
class CreateArgs(Schema):
    name: Dataset
    type: Annotated[Literal["filesystem", "volume"], Doc("dataset type")] = "filesystem"
    volsize: Annotated[Size | None, Doc("size of a volume")] = None
    sparse: Annotated[bool, Doc("thin volume (no reservation)")] = False
    properties: Annotated[Props, Doc("properties (-o), e.g. {\"quota\": \"1G\"}")] = field(
        default_factory=dict)
    parents: Annotated[bool, Doc("create missing parents (-p)")] = False


@command("zfs.create", CreateArgs, role=Role.OPERATOR)
async def create(ctx: Context, args: CreateArgs) -> dict[str, Any]:
    """Create a filesystem (mounted at once) or a volume (``volsize``; 412 on zfs-fuse,
    which has no zvols). 409 if it exists, 404 if the parent is missing (unless ``parents``),
    400 for an invalid property or size (``1.5G``: sizes are integers with a unit). A
    ``mountpoint`` is a path inside the filesystem root (400 if the dataset would inherit one
    outside it); lower roles get ``setuid=off,devices=off`` and nosuid,nodev mounts (403 for
    ``setuid=on``/``devices=on``), an admin's ``setuid=off``/``devices=off`` mount is nosuid/
    nodev as well (zfs-fuse does not apply them itself). A dataset whose mount fails is not
    left behind."""
    props = zfsconf.policy(ctx, args.properties)
    be = await zfs.backend(ctx)
    await zfsconf.check_inherited(ctx, be, args.name, props)
    # to its end: a killed zfs CLI has handed the create to the daemon, which finishes it
    await whole.step(be.create(args.name, args.type, args.volsize, props, args.parents,
                               args.sparse))
    await _or_destroyed(be, args.name, lambda: zfsconf.verify(ctx, [args.name]))
    return {"name": args.name, "type": args.type}


async def _or_destroyed(be: Any, name: str,
                        rest: Callable[[], Awaitable[object]] | None = None,
                        recursive: bool = False) -> None:
    """The steps after ``name`` was made; when one fails or the job is killed (also during
    the making, held back until here), ``name`` is destroyed again: a command cut short
    leaves no dataset or snapshot that a retry would find in its way (409)."""
    try:
        await whole.deliver()
        if rest is not None:
            await rest()
            await whole.deliver()  # a kill held back by the last step (zfsconf.verify):
            # raised here, where it is undone (before, KILLED was answered with it left)
    except BaseException:
        if "@" in name:
            gone = tools.run(be.ctx, ["zfs", "destroy", *(["-r"] if recursive else []),
                                      "--", name], check=False)
        else:
            gone = be.destroy(name, True, False, False, True)
        await whole.undo(gone, f"{name}")
        raise


DsType = Literal["filesystem", "volume", "snapshot", "all"]


@dataclass(frozen=True)
class ListArgs(Schema):
    name: Annotated[DatasetOrSnapshot | None, Doc("list this dataset (and with recursive, "
                                                  "what is below it)")] = None
    types: Annotated[list[DsType], Doc("types to list"), Len(1, 4)] = field(
        default_factory=lambda: ["filesystem", "volume"])
    recursive: bool = True
    depth: Annotated[int | None, Doc("limit recursion depth")] = None


@command("zfs.list", ListArgs, role=Role.READ_ONLY)
async def list_(ctx: Context, args: ListArgs) -> list[dict[str, Any]]:
    """Datasets: ``name``, ``type``, ``used``, ``available``, ``referenced`` (bytes, exact),
    ``mountpoint``, ``origin`` (of a clone), ``mounted``, ``creation`` (epoch seconds).
    404 if ``name`` does not exist."""
    be = await zfs.backend(ctx)
    if args.depth is not None and args.depth < 0:
        raise BadRequest("arguments.depth: must be >= 0", field="arguments.depth")
    return await be.list_datasets(args.name, list(args.types), args.recursive, args.depth)


@dataclass(frozen=True)
class GetArgs(Schema):
    name: DatasetOrSnapshot
    properties: Annotated[list[Annotated[str, Pattern(f"all|{PROP_RE}")]],
                          Doc("properties to read (default all)"), Len(1, 128)] = field(
        default_factory=lambda: ["all"])


@command("zfs.get", GetArgs, role=Role.READ_ONLY)
async def get(ctx: Context, args: GetArgs) -> dict[str, Any]:
    """Properties of a dataset or snapshot: ``{name, properties: {prop: {value, source}}}``
    (values as the tool prints them with ``-p``: numbers in bytes/seconds). 404 if absent."""
    be = await zfs.backend(ctx)
    return {"name": args.name, "properties": await be.get_props(args.name, args.properties)}


@dataclass(frozen=True)
class SetArgs(Schema):
    name: DatasetOrSnapshot
    properties: Annotated[Props, Doc("properties to set"), Len(1, 64)]


@command("zfs.set", SetArgs, role=Role.OPERATOR)
async def set_(ctx: Context, args: SetArgs) -> dict[str, Any]:
    """Set properties (``quota``, ``compression``, ``mountpoint``, user ``a:b`` ...). 400 for
    an invalid name or value, 412 for a value this ZFS lacks (compression=lz4 on zfs-fuse),
    404 if the dataset is absent, 403 for ``setuid=on``/``devices=on`` from a lower role.
    ``mountpoint`` is a path inside the filesystem root. Returns the properties as read
    back."""
    props = zfsconf.policy(ctx, args.properties, creating=False)
    be = await zfs.backend(ctx)
    # to its end: a killed `zfs set mountpoint` left the dataset unmounted
    await whole.step(_set(ctx, be, args.name, props))
    got = await be.get_props(args.name, list(args.properties))
    return {"name": args.name, "properties": got}


async def _set(ctx: Context, be: Any, name: str, props: dict[str, str]) -> None:
    await be.set_props(name, props)
    if "mountpoint" in props and "@" not in name:
        await zfsconf.verify(ctx, [name])


@dataclass(frozen=True)
class NameArgs(Schema):
    name: DatasetOrSnapshot


@command("zfs.exists", NameArgs, role=Role.READ_ONLY)
async def exists(ctx: Context, args: NameArgs) -> bool:
    """Whether a dataset or snapshot exists."""
    be = await zfs.backend(ctx)
    return await be.exists(args.name)


@dataclass(frozen=True)
class RenameArgs(Schema):
    name: DatasetOrSnapshot
    new_name: DatasetOrSnapshot
    recursive: Annotated[bool, Doc("snapshots: rename it in every descendant (-r)")] = False
    parents: Annotated[bool, Doc("create missing parents of the new name (-p)")] = False


@command("zfs.rename", RenameArgs, role=Role.OPERATOR)
async def rename(ctx: Context, args: RenameArgs) -> dict[str, Any]:
    """Rename a dataset (within its pool) or a snapshot (``pool/fs@a`` → ``pool/fs@b``).
    409 if the new name exists or a dataset is busy; mounted datasets are remounted at their
    new place."""
    if args.name.split("/")[0].split("@")[0] != args.new_name.split("/")[0].split("@")[0]:
        raise BadRequest("a dataset cannot move to another pool")
    be = await zfs.backend(ctx)
    if not await be.exists(args.name):
        raise NotFound(f"dataset does not exist: {args.name}")
    await be.rename(args.name, args.new_name, args.recursive, args.parents)
    if "@" not in args.new_name:
        await zfsconf.verify(ctx, [args.new_name])
    return {"name": args.new_name, "old_name": args.name}


@dataclass(frozen=True)
class MountArgs(Schema):
    name: Dataset
    overlay: Annotated[bool, Doc("mount over a non-empty directory (-O)")] = False


@command("zfs.mount", MountArgs, role=Role.OPERATOR)
async def mount(ctx: Context, args: MountArgs) -> dict[str, Any]:
    """Mount a filesystem at its ``mountpoint`` property. 409 if it is mounted already, or
    if its mount point is outside the filesystem root (the mount is detached at once); 412
    for ``overlay`` on zfs-fuse (it cannot). Lower roles get a nosuid,nodev mount."""
    be = await zfs.backend(ctx)
    await whole.step(be.mount(args.name, args.overlay))  # the daemon mounts it anyway
    try:
        await whole.deliver()
        await zfsconf.verify(ctx, [args.name])
        # a kill held back by the verify is raised in here, where it is undone
        got = await be.get_props(args.name, ["mountpoint"])
    except asyncio.CancelledError:  # killed: unmounted again (a retry answered 409)
        await whole.undo(be.unmount(args.name, True), f"the mount of {args.name}")
        raise
    return {"name": args.name, "mountpoint": got.get("mountpoint", {}).get("value")}


@dataclass(frozen=True)
class UnmountArgs(Schema):
    name: Dataset
    force: Annotated[bool, Doc("unmount even if busy")] = False


@command("zfs.unmount", UnmountArgs, role=Role.OPERATOR)
async def unmount(ctx: Context, args: UnmountArgs) -> dict[str, Any]:
    """Unmount a filesystem. 404 if it is not mounted, 409 if busy (open files, a process
    inside) unless ``force``."""
    be = await zfs.backend(ctx)
    await be.refuse_busy([args.name], args.force)
    # to its end: a killed zfs CLI has handed the unmount to the daemon, which finished it
    # after the job had answered KILLED
    await whole.step(be.unmount(args.name, args.force, checked=True))
    return {"name": args.name, "mounted": False}


@dataclass(frozen=True)
class DestroyArgs(Schema):
    name: DatasetOrSnapshot
    recursive: Annotated[bool, Doc("with children and snapshots (-r)")] = False
    recursive_clones: Annotated[bool, Doc("also clones of its snapshots, wherever they are "
                                          "(-R)")] = False
    defer: Annotated[bool, Doc("snapshots: destroy once the last hold or clone is gone "
                               "(-d)")] = False
    force: Annotated[bool, Doc("unmount busy filesystems forcibly")] = False


@command("zfs.destroy", DestroyArgs, role=Role.OPERATOR)
async def destroy(ctx: Context, args: DestroyArgs) -> dict[str, Any]:
    """Destroy a dataset or snapshot. 404 if absent; 409 if it has children or snapshots
    (use ``recursive``), dependent clones (``recursive_clones``), holds (or ``defer``), or a
    busy mount (``force``)."""
    be = await zfs.backend(ctx)
    await be.destroy(args.name, args.recursive, args.recursive_clones, args.defer, args.force)
    return {"name": args.name, "destroyed": True}


@dataclass(frozen=True)
class SnapshotArgs(Schema):
    name: Dataset
    snapname: Annotated[str, Doc("snapshot name (after the @)"), Pattern(SNAPNAME_RE)]
    recursive: Annotated[bool, Doc("snapshot every descendant too (-r)")] = False
    properties: Annotated[Props, Doc("user properties of the snapshot (-o)")] = field(
        default_factory=dict)


@command("zfs.snapshot", SnapshotArgs, role=Role.OPERATOR)
async def snapshot(ctx: Context, args: SnapshotArgs) -> dict[str, Any]:
    """Snapshot a dataset as ``name@snapname``. 409 if it exists, 404 if the dataset is
    absent."""
    be = await zfs.backend(ctx)
    full = await whole.step(be.snapshot(args.name, args.snapname, args.recursive,
                                        args.properties))
    await _or_destroyed(be, full, recursive=args.recursive)
    return {"name": full}


@dataclass(frozen=True)
class CloneArgs(Schema):
    origin: Snapshot
    name: Dataset
    properties: Annotated[Props, Doc("properties of the clone (-o)")] = field(
        default_factory=dict)
    parents: Annotated[bool, Doc("create missing parents (-p)")] = False


@command("zfs.clone", CloneArgs, role=Role.OPERATOR)
async def clone(ctx: Context, args: CloneArgs) -> dict[str, Any]:
    """Clone snapshot ``origin`` as dataset ``name`` (copy-on-write, mounted at once: a
    pristine container root per start, as CeranaOS did). 409 if it exists, 404 if the
    snapshot is absent."""
    if args.origin.split("/")[0] != args.name.split("/")[0]:
        raise BadRequest("a clone lives in the pool of its origin")
    props = zfsconf.policy(ctx, args.properties)
    be = await zfs.backend(ctx)
    await zfsconf.check_inherited(ctx, be, args.name, props)
    await whole.step(be.clone(args.origin, args.name, props, args.parents))
    await _or_destroyed(be, args.name, lambda: zfsconf.verify(ctx, [args.name]))
    return {"name": args.name, "origin": args.origin}


@dataclass(frozen=True)
class RollbackArgs(Schema):
    name: Snapshot
    destroy_recent: Annotated[bool, Doc("destroy later snapshots (-r)")] = False
    destroy_clones: Annotated[bool, Doc("also their clones (-R)")] = False
    force: Annotated[bool, Doc("unmount busy clones forcibly (-f, with -R)")] = False


@command("zfs.rollback", RollbackArgs, role=Role.OPERATOR)
async def rollback(ctx: Context, args: RollbackArgs) -> dict[str, Any]:
    """Roll a dataset back to snapshot ``name``. 409 if later snapshots exist (use
    ``destroy_recent``)."""
    be = await zfs.backend(ctx)
    # to its end: a killed CLI's rollback (or, with destroy_recent, its destroys of the later
    # snapshots, one request each) went on in the daemon after the job had answered KILLED
    await whole.step(be.rollback(args.name, args.destroy_recent, args.destroy_clones,
                                 args.force))
    return {"name": args.name}


@dataclass(frozen=True)
class HoldsArgs(Schema):
    name: Snapshot
    recursive: bool = False


@command("zfs.holds", HoldsArgs, role=Role.READ_ONLY)
async def holds(ctx: Context, args: HoldsArgs) -> dict[str, Any]:
    """Holds of a snapshot: ``{name, userrefs, holds: [{name, tag, timestamp}]}``. zfs-fuse
    cannot list hold tags: there ``holds`` is null, ``userrefs`` gives their number and
    ``unsupported`` says why."""
    be = await zfs.backend(ctx)
    return await be.holds(args.name, args.recursive)


@dataclass(frozen=True)
class HoldArgs(Schema):
    name: Snapshot
    tag: Tag
    recursive: bool = False


@command("zfs.hold", HoldArgs, role=Role.OPERATOR)
async def hold(ctx: Context, args: HoldArgs) -> dict[str, Any]:
    """Put hold ``tag`` on a snapshot (a held snapshot cannot be destroyed). 409 if the tag is
    there already."""
    be = await zfs.backend(ctx)
    # to its end (the daemon makes the hold anyway); a kill meanwhile releases it again (a
    # retry answered 409 "tag already exists")
    await whole.step(be.hold(args.name, args.tag, args.recursive))
    try:
        await whole.deliver()
    except asyncio.CancelledError:
        await whole.undo(be.release(args.name, args.tag, args.recursive),
                         f"hold {args.tag} on {args.name}")
        raise
    return {"name": args.name, "tag": args.tag}


@command("zfs.release", HoldArgs, role=Role.OPERATOR)
async def release(ctx: Context, args: HoldArgs) -> dict[str, Any]:
    """Release hold ``tag`` from a snapshot. 404 if there is no such hold."""
    be = await zfs.backend(ctx)
    await whole.step(be.release(args.name, args.tag, args.recursive))  # the daemon's anyway
    return {"name": args.name, "tag": args.tag}


@dataclass(frozen=True)
class SendArgs(Schema):
    name: Snapshot
    file: Annotated[AbsPath, Doc("stream file on the node (created; must not exist unless "
                                 "overwrite)")]
    base: Annotated[str | None, Doc("incremental from this snapshot (pool/fs@a or @a)"),
                    Pattern(rf"({DATASET_RE})?@{SNAPNAME_RE}")] = None
    intermediary: Annotated[bool, Doc("with base: include the snapshots between (-I)")] = False
    replicate: Annotated[bool, Doc("the dataset's whole tree and snapshots (-R)")] = False
    properties: Annotated[bool, Doc("include properties (-p)")] = False
    overwrite: bool = False


def _progress(ctx: Context, verb: str, measure: Any) -> Any:
    def tick() -> None:
        with contextlib.suppress(OSError):
            ctx.emit(1, f"{verb} {measure()} bytes")
    return tick


@command("zfs.send", SendArgs, role=Role.ADMIN)
async def send(ctx: Context, args: SendArgs) -> dict[str, Any]:
    """Write a send stream of snapshot ``name`` (full, or incremental from ``base``) to
    ``file`` on the node: the stream goes through a **file path on the node**, not through
    Redis. Progress lines ("sent N bytes") are emitted every second; the result is ``{name,
    file, bytes}``. A failed send removes the partial file. Admin: it writes node files."""
    be = await zfs.backend(ctx)
    if not await be.exists(args.name):
        raise NotFound(f"snapshot does not exist: {args.name}")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if args.overwrite else os.O_EXCL)
    fd, path = paths.open_file(ctx, args.file, flags, 0o600)
    try:
        ctx.emit(1, f"sending {args.name} to {path}")
        await be.send(args.name, fd, args.base, args.intermediary, args.replicate,
                      args.properties, _progress(ctx, "sent", lambda: os.fstat(fd).st_size))
        size = os.fstat(fd).st_size
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    finally:
        os.close(fd)
    ctx.emit(1, f"sent {size} bytes")
    return {"name": args.name, "file": path, "bytes": size}


@dataclass(frozen=True)
class ReceiveArgs(Schema):
    name: DatasetOrSnapshot
    file: Annotated[AbsPath, Doc("stream file on the node (from zfs.send)")]
    force: Annotated[bool, Doc("roll the target back to its latest snapshot first (-F)")
                     ] = False


@command("zfs.receive", ReceiveArgs, role=Role.ADMIN)
async def receive(ctx: Context, args: ReceiveArgs) -> dict[str, Any]:
    """Receive a send stream from ``file`` on the node (a **file path on the node**) into
    dataset ``name`` (full streams create it; incremental ones need it, and ``force`` if it
    changed since its last snapshot). Progress lines ("received N bytes") every second.
    409 if the target exists for a full stream, 404 if an incremental's base is missing.
    The datasets are received unmounted; a mount point the stream carries that lies outside
    the filesystem root is moved inside it (``<root>/<mountpoint>``), then they are
    mounted."""
    be = await zfs.backend(ctx)
    fd, path = paths.open_file(ctx, args.file, os.O_RDONLY)
    target = args.name.split("@")[0]
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise BadRequest(f"empty stream file: {path}")
        new = not await be.exists(target)
        ctx.emit(1, f"receiving {path} ({size} bytes) into {args.name}")
        try:
            await be.receive(args.name, fd, args.force,
                             _progress(ctx, "received",
                                       lambda: os.lseek(fd, 0, os.SEEK_CUR)),
                             mount=False)
        except asyncio.CancelledError:
            # killed: a dataset the cut stream began is destroyed (a retry found it: 409)
            if new:
                await whole.undo(_destroy_if_there(be, target), f"dataset {target}")
            raise
    finally:
        os.close(fd)
    # to its end: a kill here left received datasets unmounted, and a mount point from the
    # stream outside the root (a later `zfs mount -a` mounted it there)
    await whole.step(_received(ctx, be, args.name))
    try:
        await whole.deliver()
    except asyncio.CancelledError:
        # killed meanwhile: a dataset the stream made is destroyed as well (before, KILLED
        # was answered with it received, and a retry answered 409)
        if new:
            await whole.undo(_destroy_if_there(be, target), f"dataset {target}")
        raise
    return {"name": args.name, "file": path, "bytes": size}


async def _received(ctx: Context, be: Any, name: str) -> None:
    if not await be.exists(name):
        raise Conflict(f"zfs receive ended but {name} does not exist")
    if "@" not in name:
        await _confine_received(ctx, be, name)


async def _destroy_if_there(be: Any, name: str) -> None:
    if await be.exists(name):
        await be.destroy(name, True, False, False, True)


async def _confine_received(ctx: Context, be: Any, name: str) -> None:
    """Move mount points of received datasets into the root, then mount them."""
    res = await be.zfs("get", "-H", "-r", "-o", "name,value,source", "mountpoint", "--", name)
    rows = [r for r in (ln.split("\t") for ln in res.stdout.splitlines())
            if len(r) == 3 and "@" not in r[0]]
    fsroot = ctx.config.main.filesystem_root
    for ds, value, source in rows:
        if value.startswith("/") and source in ("local", "received") and \
                not zfsconf.inside_root(ctx, value):
            inner = zfsconf.mountpoint(ctx, value, "mountpoint")
            ctx.emit(4, f"{ds}: mountpoint {value} is outside {fsroot}: set to {inner}")
            await be.set_props(ds, {"mountpoint": inner})
    for ds, _value, _source in sorted(rows, key=lambda r: r[0].count("/")):
        await tools.run(ctx, ["zfs", "mount", "--", ds], check=False)
    await zfsconf.verify(ctx, [name])
