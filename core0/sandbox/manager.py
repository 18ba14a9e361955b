"""Container lifecycle: create, describe, terminate. Used by ``core0.commands.container``.

Nothing about a container lives only in the dispatcher's memory: the record is on the state
dir (:mod:`.store`) and the runtime keeps its own state, so a new dispatcher lists, dispatches
into and terminates the containers an old one created, by the same ids.

Create order (each step recorded, so :func:`teardown` undoes exactly what was made, also after
a failure half way or a dispatcher crash): id → volume binds (:mod:`.volumes`) → root clone →
netns + nics → forwards → bundle → runtime start. A container without nics has no named
netns: the runtime makes an anonymous one for its init (see :mod:`.netsetup`), named only if
a nic is added later. The id is allocated within the creating role's cap (:mod:`.quota`).
Terminate (by a queue that may act on the container, :mod:`.access`) runs it backwards:
runtime stop + delete (its cgroup goes with it) → forwards → nics → netns → root clone,
volume binds and the container dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core0 import cancel
from core0.context import ProcessSpec
from core0.errors import BadRequest, Conflict, NotFound
from core0.sandbox import (
    access,
    images,
    netsetup,
    quota,
    roots,
    runtime,
    spec,
    startup,
    userns,
    zfsroots,
)
from core0.sandbox.listing import (  # noqa: F401  (re-exported: the API's faces)
    REDACTED,
    SECRET_ARGS,
    describe,
    find_record,
    list_all,
    monitor,
    usage,
    visible_args,
)
from core0.sandbox.store import Nic, Record, Store
from core0.sandbox.volumes import Source, check_target, check_targets, open_source

if TYPE_CHECKING:
    from core0.context import Context

log = logging.getLogger(__name__)


@dataclass
class CreateRequest:
    root: str
    mounts: dict[str, str] = field(default_factory=dict)
    host_network: bool = False
    nics: list[Nic] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    hostname: str = ""
    privileged: bool = False
    name: str = ""
    env: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    limits: spec.Limits = field(default_factory=spec.Limits)
    arguments: dict[str, Any] = field(default_factory=dict)
    #: no | on-failure | always (the init pauses, so it only ends by a signal or an OOM
    #: kill: both policies restart it)
    restart: str = "no"
    #: the command the init runs (a service container, :func:`prepare_foreground`); empty:
    #: the init pauses and commands come through dispatch
    command: list[str] = field(default_factory=list)
    #: hash of a declared (persistent) container's spec, see :mod:`.persist`
    spec_hash: str = ""
    #: the id to take when free (a declared container keeps its id across reboots)
    prefer_id: int = 0
    #: the service that runs it in the foreground ("" for a detached container)
    service: str = ""
    #: run it in a user namespace of its own uid/gid range (:mod:`.userns`)
    userns: bool = False


async def get_runtime(ctx: Context) -> runtime.Runtime:
    return await runtime.choose(ctx.config.state_dir)


def _store(ctx: Context) -> Store:
    return Store(ctx.config.state_dir)


# ---------------------------------------------------------------- checks


async def import_path(ctx: Context, name: str, source: str, ref: str, origin: str,
                      field_name: str) -> dict[str, Any]:
    """Import the host path ``source`` (checked for the queue's role) as image ``name``:
    read through the descriptor it was resolved to, only a directory or a regular file (a
    FIFO or a device would block or stream forever: 400)."""
    fd = open_source(ctx, source, field_name)
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            raise BadRequest(f"{field_name}: {source} is neither a directory nor a regular "
                             "file", field=field_name)
        return await import_image(ctx, name, f"/proc/self/fd/{fd}", ref, origin or source)
    finally:
        os.close(fd)


async def import_image(ctx: Context, name: str, source: str, ref: str = "",
                       origin: str = "") -> dict[str, Any]:
    """Import ``source`` as image ``name`` into the store (a ZFS dataset + snapshot per image
    when the store is a dataset, see :mod:`.zfsroots`; a btrfs subvolume or a directory
    otherwise)."""
    sd = ctx.config.state_dir
    store = zfsroots.store_dataset(images.images_dir(sd))
    if not store:  # (a cancel waits for the thread: nothing of it changes after the answer)
        return await ctx.long_work(images.import_blocking, sd, name, source, ref, origin,
                                   wait=True)
    if (images.image_dir(sd, name) / "image.json").exists():
        raise Conflict(f"image {name} exists already")
    if images.image_dir(sd, name).exists():  # left by an import that died half way
        await zfsroots.destroy_image(ctx, store, name)
    await zfsroots.create_image(ctx, store, name)
    try:  # (a cancel waits for the unpacking to stop: a dataset in use is not destroyed)
        meta = await ctx.long_work(images.import_blocking, sd, name, source, ref, origin, True,
                                   wait=True)
        await zfsroots.seal_image(ctx, store, name)
    except BaseException:
        with contextlib.suppress(Exception):
            await cancel.atomic(zfsroots.destroy_image(ctx, store, name), defer=False)
        raise
    return meta


async def delete_image(ctx: Context, name: str) -> None:
    sd = ctx.config.state_dir
    if images.load(sd, name).get("storage") == "zfs":
        await zfsroots.destroy_image(ctx, zfsroots.store_dataset(images.images_dir(sd)), name)
    else:
        await ctx.long_work(images.delete, sd, name)


async def image_for(ctx: Context, root: str) -> str:
    """The stored image a container's ``root`` names: an image name, or a host path (a
    directory, a tarball, an OCI layout) imported once under its own path as name."""
    sd = ctx.config.state_dir
    if root.startswith("/"):
        with contextlib.suppress(NotFound):
            images.load(sd, root)
            return root
        try:
            await import_path(ctx, root, root, "", root, "root")
        except Conflict:
            images.load(sd, root)  # imported by a concurrent create meanwhile
        return root
    images.load(sd, root)
    return root


# ---------------------------------------------------------------- create


def _write_etc(cdir: Path, rec: Record, dns: list[str]) -> list[spec.Mount]:
    files = {"hostname": rec.hostname + "\n",
             "hosts": f"127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{rec.hostname}\n"}
    if dns:
        files["resolv.conf"] = "".join(f"nameserver {d}\n" for d in dns)
    elif any(n.config.get("dhcp") for n in rec.nics):
        # the DHCP client has written it already, and rewrites it (core0/sandbox/dhcp.py)
        lease = cdir / "resolv.conf"
        files["resolv.conf"] = lease.read_text() if lease.exists() else ""
    elif rec.host_network:
        with contextlib.suppress(OSError):
            files["resolv.conf"] = Path("/etc/resolv.conf").read_text()
    out = []
    for name, text in files.items():
        p = cdir / name
        p.write_text(text)
        out.append(spec.Mount(str(p), f"/etc/{name}"))
    return out


#: the containers this dispatcher is making now: a record left ``creating`` that is not one
#: of these was cut short by a dispatcher that died (:func:`unfinished`)
CREATING: set[int] = set()
#: fault tests only: the dispatcher dies once (per state dir) in a corex.create, its nics and
#: forwards made, its container not started
_CRASH_IN_CREATE = os.environ.get("CORE0_TEST_CRASH_IN_CREATE") == "1"


def unfinished(state_dir: Path) -> list[Record]:
    """Containers a dead dispatcher was making (state ``creating``, not being made now) or
    tearing down (state ``terminating``): nobody will finish them (their command was
    answered 503 interrupted), so they are terminated at the next dispatcher's start."""
    return [r for r in Store(state_dir).all() if r.state == "terminating"
            or (r.state == "creating" and r.id not in CREATING)]


def unrecorded(state_dir: Path) -> list[int]:
    """Container dirs without a record, at a dispatcher's start (none is being made): a
    terminate cut short by a dispatcher that died while the dir was being removed (the
    record can go before the rest), or a create that died before its first record."""
    st = Store(state_dir)
    return [cid for cid in st.ids() if cid not in CREATING
            and not (st.dir(cid) / "container.json").exists()]


async def create(ctx: Context, req: CreateRequest) -> int:
    """Create and start a container (detached: the runtime exits once the init runs);
    returns its id."""
    rec, rt = await prepare(ctx, req)
    st = _store(ctx)
    cid, cdir = rec.id, st.dir(rec.id)
    try:
        if _CRASH_IN_CREATE and not (mark := st.state_dir / "test-crashed-in-create").exists():
            mark.touch()
            os._exit(70)
        rec.pid = await rt.run_detached(rec.runtime_id, cdir, cdir / "container.log")
        rec.state = "running"
        st.save(rec)
        await asyncio.sleep(0)  # a kill held back while runc ran is raised here, undone below
        if req.restart != "no":
            rec.keeper = f"container-keeper.{st.tag}.{cid}"
            st.save(rec)
            ctx.engine.start_service(rec.keeper, ProcessSpec(
                [sys.executable, "-m", "core0.sandbox.keeper", "--runtime", rt.binary,
                 "--root", str(rt.root), "--bundle", str(cdir), "--id", rec.runtime_id],
                label=f"keeper of container {cid}"), protected=True)
        # 0-core's /.startup.toml services (coreX ran them): a job of core0's own runs them
        startup.begin(ctx.engine, ctx.config, cid)
    except BaseException:
        with contextlib.suppress(Exception):  # a second kill does not cut it short
            await cancel.atomic(teardown(ctx, rec, rt, 0), defer=False)
        raise
    finally:
        CREATING.discard(cid)
    log.info("container %d (%s) started: pid %d, image %s", cid, rec.name, rec.pid,
             rec.image)
    return cid


async def prepare_foreground(ctx: Context, req: CreateRequest) -> tuple[Record, ProcessSpec]:
    """Everything of a container but its start: the ProcessSpec that runs it in the
    foreground (``runtime run``, the init running ``req.command``), so the job engine
    supervises the container as a process job (boot services as containers). The caller
    tears it down (:func:`teardown`) when that process has ended."""
    rec, rt = await prepare(ctx, req)
    cdir = _store(ctx).dir(rec.id)
    try:
        rec.state = "running"
        _store(ctx).save(rec)
        # a kill (or max_time) held back by the last step (the forwards' nft -f runs to its
        # end, cancel.atomic) is raised here and undone below: raised only once the job's
        # process was spawned, it ended the job KILLED without the end of its run, and the
        # container ran on, held by nobody
        await asyncio.sleep(0)
    except BaseException:
        with contextlib.suppress(Exception):
            await cancel.atomic(teardown(ctx, rec, rt, 0), defer=False)
        raise
    finally:
        CREATING.discard(rec.id)
    argv = rt.argv("run", "--bundle", str(cdir), "--pid-file", str(cdir / "init.pid"), "--",
                   rec.runtime_id)
    return rec, ProcessSpec(argv, label=f"container {rec.id}: {' '.join(req.command)}"[:200])


async def prepare(ctx: Context, req: CreateRequest) -> tuple[Record, runtime.Runtime]:
    """Allocate an id and make the container's root clone, netns, nics, forwards and bundle
    (recorded step by step; torn down on failure)."""
    if req.userns and req.privileged:
        raise BadRequest("privileged and userns exclude each other: privileged gives the "
                         "container the node's powers, a user namespace takes them away",
                         field="userns")
    quota.check(ctx, _store(ctx))  # (before an import of root: a refused create makes nothing)
    image = await image_for(ctx, req.root)
    meta = images.load(ctx.config.state_dir, image)
    sources: list[Source] = []
    try:
        for src, target in req.mounts.items():
            ro = target.endswith(":ro")
            t = check_target(target[:-3] if ro else target, f"mount.{src}")
            sources.append(Source(open_source(ctx, src, f"mount.{src}"), f"mount.{src}", t,
                                  ro))
        return await _prepare(ctx, req, image, meta, sources)
    finally:
        for source in sources:
            os.close(source.fd)


async def _prepare(ctx: Context, req: CreateRequest, image: str, meta: dict[str, Any],
                   sources: list[Source]) -> tuple[Record, runtime.Runtime]:
    """:func:`prepare` once the image is known and the volumes' sources are resolved
    (``sources``: their descriptors, closed by the caller)."""
    st = _store(ctx)
    rt = await get_runtime(ctx)
    init = runtime.find_init()
    with quota.admitted(ctx, st):  # the role's cap, counted with this reservation
        cid = st.allocate(req.prefer_id)
        CREATING.add(cid)
        names = st.names(cid)
        rec = Record(id=cid, name=req.name, tags=list(req.tags), root=req.root, image=image,
                     hostname=req.hostname or f"core-{cid}", arguments=req.arguments,
                     runtime_id=names["runtime_id"],
                     netns="" if req.host_network else names["netns"],
                     cgroups_path=names["cgroups_path"], host_network=req.host_network,
                     privileged=req.privileged, created=int(time.time()),
                     spec_hash=req.spec_hash, service=req.service,
                     role=int(ctx.job.role), scope=ctx.scope or "",
                     # no nic: the runtime's own anonymous netns (lo up), named if a nic comes
                     netns_anon=not (req.host_network or req.userns or req.nics))
        st.save(rec)
    cdir = st.dir(cid)
    try:
        # the volumes: each source bound, from the descriptor it was resolved to, below the
        # container's dir; the runtime mounts these (a path it would resolve again could
        # meanwhile, or at a keeper's restart, lead anywhere through a swapped symlink)
        mounts = [spec.Mount(str(await ctx.to_thread(roots.pin_source, v.fd, cdir, i)),
                             v.target, v.readonly) for i, v in enumerate(sources)]
        if req.userns:
            rec.userns_base = await ctx.to_thread(userns.allocate, ctx.config.state_dir, cid)
            st.save(rec)
            ns_fd = await userns.make_namespaces(cdir, rec.userns_base, rec.netns)
            try:
                rootfs = await _clone(ctx, rec, meta, cdir, ns_fd)
            finally:
                os.close(ns_fd)
        else:
            rootfs = await _clone(ctx, rec, meta, cdir)
        await ctx.to_thread(check_targets, rootfs, sources)
        dns: list[str] = []
        if not req.host_network:
            if not req.userns and not rec.netns_anon:  # (userns: made with the user
                # namespace that owns it; netns_anon: the runtime makes it)
                await ctx.to_thread(netsetup.create_netns, rec.netns)
            for i, nic in enumerate(req.nics):
                rec.nics.append(nic)
                await netsetup.add_nic(ctx, rec, nic, i, names["veth"])
                st.save(rec)
                if nic.type == "default":
                    dns.append(str(netsetup.GATEWAY))
                dns += [str(d) for d in nic.config.get("dns") or []]
            if req.ports:
                rec.ports = dict(req.ports)
                st.save(rec)
                await netsetup.add_forwards(ctx, rec, req.ports)
        env = {}
        for item in meta.get("env") or []:
            k, eq, val = str(item).partition("=")
            if eq:
                env[k] = val
        env.update(req.env)
        sb = spec.Sandbox(
            rootfs=str(rootfs), init=init, args=list(req.command), hostname=rec.hostname,
            cgroups_path=rec.cgroups_path, env=env,
            cwd=str(meta.get("workdir") or "/"),
            netns="host" if req.host_network else "new" if rec.netns_anon
            else nl_path(rec.netns),
            mounts=[*_write_etc(cdir, rec, dns), *mounts], privileged=req.privileged,
            limits=req.limits, userns_base=rec.userns_base, userns_size=userns.SIZE,
            userns_path=str(cdir / "userns") if req.userns else "")
        if rec.userns_base:
            await ctx.to_thread(userns.reachable, ctx.config.state_dir, cdir, rec.userns_base)
        (cdir / "config.json").write_text(json.dumps(spec.build(sb)))
    except BaseException:
        with contextlib.suppress(Exception):  # a second kill does not cut it short
            await cancel.atomic(teardown(ctx, rec, rt, 0), defer=False)
        CREATING.discard(cid)
        raise
    return rec, rt


async def _clone(ctx: Context, rec: Record, meta: dict[str, Any], cdir: Path,
                 userns_fd: int = -1) -> Path:
    """The container's fresh root clone (ZFS clone, btrfs snapshot or overlay), owned by its
    uid range when it has a user namespace: the overlay's lower layer is an idmapped mount
    of the image (O(1)), a snapshot or clone has its owners shifted (metadata only)."""
    sd, base = ctx.config.state_dir, rec.userns_base
    if meta.get("storage") == "zfs":
        store = zfsroots.store_dataset(images.images_dir(sd))
        rec.clone_dataset = f"{store}/c{_store(ctx).tag}-{rec.id}"
        _store(ctx).save(rec)
        rootfs = await zfsroots.clone(ctx, store, rec.image, f"c{_store(ctx).tag}-{rec.id}",
                                      cdir / "zroot")
    else:
        lower = images.rootfs(sd, rec.image)
        if base and not roots.is_subvolume(lower):
            lower = await userns.idmap_lower(lower, cdir, userns_fd)
            return await ctx.to_thread(roots.clone, lower, cdir, base)
        rootfs = await ctx.to_thread(roots.clone, lower, cdir)
    if base:
        n = await ctx.long_work(userns.shift_tree, rootfs, base, wait=True)
        log.debug("container %d: %d entries shifted to uid %d", rec.id, n, base)
    return rootfs


def nl_path(netns: str) -> str:
    from core0.net import netlink as nl

    return nl.netns_path(netns)


# ---------------------------------------------------------------- terminate


async def teardown(ctx: Context, rec: Record, rt: runtime.Runtime | None = None,
                   grace: float = 5.0) -> None:
    """Remove everything made for ``rec`` (idempotent). ``grace``: seconds the init has
    between TERM and KILL (0 for a create undone: its init may have started too recently
    to handle TERM, which a PID 1 then ignores, and nobody has used it)."""
    rt = rt or await get_runtime(ctx)
    if rec.keeper:
        await ctx.engine.stop_service(rec.keeper)
    await startup.stop(ctx.engine, ctx.config.state_dir, rec.id)
    await rt.stop(rec.runtime_id, init_pid(_store(ctx).dir(rec.id), rec)
                  if rec.state in ("running", "terminating") else 0, grace)
    errors: list[str] = []
    if rec.ports:
        try:
            await netsetup.remove_forwards(ctx, rec)
        except Exception as e:
            errors.append(f"forwards: {e}")
    for nic in rec.nics:
        try:
            await netsetup.remove_nic(ctx, nic, rec.netns)
        except Exception as e:
            errors.append(f"nic {nic.host_link}: {e}")
    if rec.netns:
        await ctx.to_thread(netsetup.remove_netns, rec.netns)
    if rec.clone_dataset:
        await zfsroots.destroy_clone(ctx, rec.clone_dataset)
    await ctx.long_work(roots.drop, _store(ctx).dir(rec.id))
    await ctx.to_thread(userns.free, ctx.config.state_dir, rec.id)
    try:  # a guard made for a nic whose record a kill cut short: its container dir is gone
        await netsetup.prune_guards(ctx)
    except Exception as e:
        errors.append(f"port guards: {e}")
    if errors:
        log.warning("container %d: cleanup errors: %s", rec.id, "; ".join(errors))


def init_pid(cdir: Path, rec: Record) -> int:
    """The container's current init pid (a keeper's restart rewrites init.pid)."""
    try:
        return int((cdir / "init.pid").read_text().strip())
    except (OSError, ValueError):
        return rec.pid


async def terminate(ctx: Context, cid: int) -> Record | None:
    """Tear container ``cid`` down (403 when this queue may not act on it: nothing is
    touched); returns its record (None for a dir left without one)."""
    st = _store(ctx)
    if not st.dir(cid).exists():
        raise NotFound(f"no such container: {cid}")
    try:
        rec = st.load(cid)
    except NotFound:
        # allocated by a create that died before its first record (written under the
        # store's lock with the allocation): only the dir is left, of nobody
        await cancel.atomic(_drop_dir(ctx, cid), defer=False)
        return None
    access.check(ctx, rec)
    if rec.state != "terminating":  # (a dispatcher that dies in it: the next one ends it)
        rec.state = "terminating"
        st.save(rec)
    # once begun, run to its end (a kill or max_time meanwhile is dropped: what is torn
    # down cannot be put back): cut short, it left the container listed half torn down, or
    # (cut in the removal of its dir, whose thread went on) gone with its uid range held
    await cancel.atomic(teardown(ctx, rec), defer=False)
    return rec


async def _drop_dir(ctx: Context, cid: int) -> None:
    await ctx.long_work(roots.drop, _store(ctx).dir(cid))
    await ctx.to_thread(userns.free, ctx.config.state_dir, cid)
