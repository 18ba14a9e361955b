"""kvm.*: virtual machines through libvirt, with 0-core's command names and argument shapes.

VMs are transient libvirt domains (libvirtd runs qemu; the dispatcher can restart without
touching them). The domain type comes from a real probe (kvm only where a guest kernel really
runs under KVM, else qemu/TCG). Disks are files confined to the filesystem root, optionally a
per-VM qcow2 overlay on a shared base image; the default nic is on core0's NAT bridge ``kvm0``
with a fixed address per VM and nft port forwards owned by ``vm:<uuid>``. See docs/kvm.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass
from typing import Annotated, Any

from core0 import cancel
from core0.context import Context
from core0.errors import BadRequest, Conflict, NotFound, PreconditionFailed
from core0.registry import Role, command
from core0.schema import Doc, Len, NoArgs, Range, Schema
from core0.virt import disks, guard, hotplug, incoming, migration, network, persist
from core0.virt import domain as dx
from core0.virt.access import VM, EventFilter, allow_record, load
from core0.virt.manager import Virt, lv_error, of
from core0.virt.owner import Owner, allow, caller
from core0.virt.spec import (
    UUID,
    ConvertArgs,
    CreateArgs,
    DiskArgs,
    ForwardArgs,
    GetArgs,
    ImageArgs,
    LimitArgs,
    MigrateArgs,
    Nic,
    NicArgs,
    ShutdownArgs,
    UuidArgs,
    check_desturi,
    check_iotune,
    check_slot,
    iotune_params,
)

#: 0-core's output level of JSON data messages
LEVEL_JSON = 20


async def _virt(ctx: Context) -> Virt:
    return await of(ctx).ready()


async def _act(ctx: Context, uuid: str, what: str, fn: Any) -> Any:
    """``fn(domain)`` on VM ``uuid`` through the one door (404 not core0's, 403 not the
    caller's: core0/virt/access.py), to its end once libvirt acts (:meth:`VM.act`)."""
    return await (await load(ctx, uuid)).act(what, fn)


@command("kvm.create", CreateArgs)
async def create(ctx: Context, args: CreateArgs) -> str:
    """Create and start a VM; returns its uuid. ``{name, media: [{url|path, type: disk|cdrom,
    bus, format, overlay, iotune}], cpu, memory (MiB), nics: [{type: default|bridge, id,
    hwaddr}], port: {"<host port>": guest port}, vnc, kernel, initrd, cmdline, tags}``. The
    first medium is the boot device (or direct kernel boot). 0-core's ``flist``, ``mount``
    and ``config`` are refused with 412 when set, ``share_cache``, ``storage`` and ``kvm``
    are accepted and ignored. 409 when the name is taken; 400 for paths outside the
    filesystem root, more than 4 vCPUs per host CPU or more memory than the host has.
    ``persistent`` (needs main.persistent_dir): declared, created again with the same name and
    uuid after a reboot; the same spec again returns the running VM, a changed one
    recreates it."""
    v = of(ctx)
    who = caller(ctx)
    if not args.persistent:
        return await v.create(ctx, args, owner=who)
    if not ctx.config.main.persistent_dir:
        raise PreconditionFailed("persistent VMs need main.persistent_dir")
    async with persist.name_lock(args.name):
        return await _create_declared(ctx, v, args, who)


async def _create_declared(ctx: Context, v: Virt, args: CreateArgs, who: Owner) -> str:
    """A persistent create (under the name's lock): the running VM of that name when its
    spec is the same, else it is replaced; the declaration recorded."""
    h = persist.hash_of(args)
    decl = persist.declaration(ctx.config, args.name) or {}
    if decl:
        if ctx.job.internal:  # core0's own re-creation (a start): as declared
            who = persist.owner_of(decl)
        allow(who, persist.owner_of(decl), f"the declared VM {args.name}")
    await v.ready()
    with contextlib.suppress(NotFound):
        dom = await v.by_name(args.name)
        cur = await v.describe(dom)
        meta = (await _live_of(v, dom)).meta
        if not meta.get("declared"):
            raise Conflict(f"a VM named {args.name} exists already (not declared)",
                           field="name")
        owner = Owner.of(meta)
        allow(who, owner, f"VM {args.name}")
        if meta["declared"] == h and cur["state"] in ("running", "paused", "blocked"):
            persist.declare(ctx.config, args, cur["uuid"], owner.role, owner.scope)
            return str(cur["uuid"])
        # a changed spec: the old one goes, its destroy and clean-up to their end (a kill
        # meanwhile is raised after them: before, KILLED could be answered while libvirt
        # still destroyed it, its clean-up never run)
        await cancel.atomic(_replaced(v, dom, args.name, str(cur["uuid"])))
    uuid = await v.create(ctx, args, prefer_uuid=str(decl.get("uuid") or ""), declared=h,
                          owner=who)
    persist.declare(ctx.config, args, uuid, who.role, who.scope)
    return uuid


async def _replaced(v: Virt, dom: Any, name: str, uuid: str) -> None:
    """Destroy the VM a changed declaration replaces, and clean up after it. (Fault tests:
    the step ``<name>/replace`` holds libvirt's thread right after the destroy.)"""
    def gone(_conn: Any) -> None:
        dom.destroy()
        guard.test_hold_sync(f"{name}/replace")

    try:
        await v.conn.call(gone)
    except Exception as e:
        err = lv_error(e, f"destroy {uuid}")
        if not isinstance(err, NotFound):
            raise err from None
    await v.cleanup(uuid)


async def _live_of(v: Virt, dom: Any) -> dx.Live:
    try:
        return dx.parse(await v.conn.call(lambda c: dom.XMLDesc(0)))
    except Exception as e:
        raise lv_error(e) from None


def _undeclare(ctx: Context, name: str) -> None:
    if name:
        persist.undeclare(ctx.config, name)


@command("kvm.destroy", UuidArgs)
async def destroy(ctx: Context, args: UuidArgs) -> None:
    """Force a VM off; its overlays, static lease and port forwards are removed (and the
    declaration of a persistent one). For a VM prepared here by
    kvm.prepare_migration_target that has not arrived: what was prepared is released.
    Killed once libvirt is destroying it, the job answers when the VM is gone and cleaned
    up."""
    v = await _virt(ctx)
    try:
        vm = await load(ctx, args.uuid)
    except NotFound:
        rec = v.record(args.uuid)
        if rec is not None and rec.get("incoming"):
            allow_record(ctx, args.uuid)
            if await v.cancel_incoming(args.uuid):
                return
        raise
    await asyncio.sleep(0)  # a kill before libvirt acts: nothing done
    await cancel.atomic(_destroy(ctx, vm), defer=False)


async def _destroy(ctx: Context, vm: VM) -> None:
    """Destroy ``vm``, its declaration and what core0 made for it, to the end once begun (a
    kill meanwhile is too late: before, the job answered KILLED while libvirt destroyed the
    VM, and a declared VM kept its declaration, which brought it back at the next start and
    which a retry, 404, could not remove). The declaration goes first, so a dispatcher
    killed -9 meanwhile does not bring back the VM libvirt destroyed (nor keep one the
    destroy did not reach: kvm.forget-undeclared ends it at the next start); it is written
    again when libvirt refuses the destroy."""
    decl = persist.declaration(ctx.config, vm.declared) if vm.declared else None
    _undeclare(ctx, vm.declared)
    try:
        await vm.call("destroy", lambda d: d.destroy())
    except BaseException:
        if decl is not None:
            persist.redeclare(ctx.config, decl)
        raise
    await vm.v.cleanup(vm.uuid)


@command("kvm.shutdown", ShutdownArgs)
async def shutdown(ctx: Context, args: ShutdownArgs) -> None:
    """Ask the guest to power off (ACPI power button). With ``timeout``, wait that long for it
    to stop, then destroy it; without, return at once (cleanup follows the stop). A
    persistent VM's declaration is removed. Killed while libvirt asks the guest, the job
    answers KILLED once the guest was asked and the declaration removed."""
    v = await _virt(ctx)
    vm = await load(ctx, args.uuid)
    # the request to its end once begun, and the declaration removed with it: a kill
    # meanwhile is taken right after (before, the guest powered off after a KILLED answer
    # and stayed declared: back at the next start, and a retry, 404, could not undeclare it)
    await cancel.atomic(vm.call("shutdown", lambda d: d.shutdown()))
    _undeclare(ctx, vm.declared)
    if args.timeout is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    while loop.time() < deadline:
        if args.uuid not in await v.live_uuids():
            await v.cleanup(args.uuid)
            return
        await asyncio.sleep(0.2)
    await asyncio.sleep(0)  # a kill before libvirt acts: nothing done
    try:
        await cancel.atomic(_destroy(ctx, vm), defer=False)
    except NotFound:  # it stopped just now
        await v.cleanup(args.uuid)


@command("kvm.reboot", UuidArgs)
async def reboot(ctx: Context, args: UuidArgs) -> None:
    """Ask the guest to reboot (ACPI)."""
    await _act(ctx, args.uuid, "reboot", lambda d: d.reboot(0))


@command("kvm.reset", UuidArgs)
async def reset(ctx: Context, args: UuidArgs) -> None:
    """Hard-reset a VM."""
    await _act(ctx, args.uuid, "reset", lambda d: d.reset(0))


@command("kvm.pause", UuidArgs)
async def pause(ctx: Context, args: UuidArgs) -> None:
    """Suspend a VM's vCPUs (409 when it is not running)."""
    await _act(ctx, args.uuid, "pause", lambda d: d.suspend())


@command("kvm.resume", UuidArgs)
async def resume(ctx: Context, args: UuidArgs) -> None:
    """Resume a paused VM (409 when it is not paused)."""
    await _act(ctx, args.uuid, "resume", lambda d: d.resume())


@command("kvm.list", role=Role.READ_ONLY)
async def list_(ctx: Context, args: NoArgs) -> list[dict[str, Any]]:
    """The VMs: [{id, uuid, name, state (running|paused|shutoff|crashed…), vnc (port, -1 =
    none), tags, ifctargets, default_ip, params (the create arguments), console (serial log
    file)}]."""
    v = await _virt(ctx)
    doms = await v.conn.call(lambda c: c.listAllDomains(0))
    out = []
    for d in doms:
        try:
            item = await v.describe(d, caller(ctx))
        except NotFound:
            continue  # gone meanwhile
        out.append(item)  # describe refuses (404) domains that are not core0's
    return sorted(out, key=lambda i: i["name"])


@command("kvm.get", GetArgs, role=Role.READ_ONLY)
async def get(ctx: Context, args: GetArgs) -> dict[str, Any]:
    """One VM by ``uuid`` or ``name``: the kvm.list item (404 when there is none)."""
    v = await _virt(ctx)
    if (args.uuid is None) == (args.name is None):
        raise BadRequest("give exactly one of uuid and name", field="uuid")
    dom = await (v.domain(args.uuid) if args.uuid else v.by_name(args.name or ""))
    return await v.describe(dom, caller(ctx))


def _stats(raw: dict[str, Any]) -> dict[str, Any]:
    def group(prefix: str, keys: list[tuple[str, str]]) -> list[dict[str, Any]]:
        out = []
        for i in range(int(raw.get(f"{prefix}.count", 0))):
            out.append({name: raw.get(f"{prefix}.{i}.{k}", 0 if name != "name" else "")
                        for name, k in keys})
        return out

    vcpus = []
    for i in range(int(raw.get("vcpu.current", 0))):
        vcpus.append({"state": raw.get(f"vcpu.{i}.state", 0), "time": raw.get(f"vcpu.{i}.time",
                                                                              0)})
    return {
        "vcpu": vcpus,
        "net": group("net", [("name", "name"), ("rxbytes", "rx.bytes"), ("rxpkts", "rx.pkts"),
                             ("rxerrs", "rx.errs"), ("rxdrop", "rx.drop"),
                             ("txbytes", "tx.bytes"), ("txpkts", "tx.pkts"),
                             ("txerrs", "tx.errs"), ("txdrop", "tx.drop")]),
        "block": group("block", [("name", "name"), ("rdbytes", "rd.bytes"),
                                 ("rdtimes", "rd.times"), ("rdreqs", "rd.reqs"),
                                 ("wrbytes", "wr.bytes"), ("wrtimes", "wr.times"),
                                 ("wrreqs", "wr.reqs")]),
        "cputime": raw.get("cpu.time", 0),
    }


async def _raw_stats(ctx: Context, uuid: str) -> dict[str, Any]:
    from core0.virt.conn import libvirt_module

    lv = libvirt_module()
    v = await _virt(ctx)
    dom = await v.domain(uuid)
    flags = (lv.VIR_DOMAIN_STATS_VCPU | lv.VIR_DOMAIN_STATS_INTERFACE
             | lv.VIR_DOMAIN_STATS_BLOCK | lv.VIR_DOMAIN_STATS_CPU_TOTAL)
    try:
        res = await v.conn.call(lambda c: c.domainListGetStats([dom], flags))
    except Exception as e:
        raise lv_error(e, f"stats of {uuid}") from None
    return dict(res[0][1]) if res else {}


@command("kvm.info", UuidArgs, role=Role.READ_ONLY)
async def info(ctx: Context, args: UuidArgs) -> dict[str, Any]:
    """Counters of a VM: {vcpu: [{state, time}], net: [{name, rx/tx bytes, pkts, errs,
    drop}], block: [{name, rd/wr bytes, times, reqs}], cputime} (libvirt's domain stats)."""
    return _stats(await _raw_stats(ctx, args.uuid))


@command("kvm.infops", UuidArgs, role=Role.READ_ONLY)
async def infops(ctx: Context, args: UuidArgs) -> dict[str, Any]:
    """Rates of a VM over one second (two samples of kvm.info's counters): the same shape,
    each counter per second (0-core read these from its aggregator, which core0 has not)."""
    a = _stats(await _raw_stats(ctx, args.uuid))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.sleep(1.0)
    b = _stats(await _raw_stats(ctx, args.uuid))
    dt = max(loop.time() - t0, 1e-3)

    def rate(x: Any, y: Any) -> Any:
        if isinstance(y, dict):
            return {k: (val if k in ("name", "state") else rate(x.get(k, 0), val))
                    for k, val in y.items()}
        if isinstance(y, list):
            return [rate(x[i] if i < len(x) else {}, item) for i, item in enumerate(y)]
        return (y - x) / dt if isinstance(y, (int, float)) and isinstance(x, (int, float)) else y

    return dict(rate(a, b))


# ---------------------------------------------------------------- devices


@command("kvm.attach_disk", DiskArgs)
async def attach_disk(ctx: Context, args: DiskArgs) -> None:
    """Hot-plug a disk (or cdrom) into a running VM (virtio disks appear as the next vdX).
    The guest is paused while it goes in, until qemu's new files are checked (409, and the
    disk taken out again — the VM destroyed if its guest keeps it — when qemu opened a file
    core0 did not check). Killed while libvirt plugs it, the job answers as the plug ends."""
    vm = await load(ctx, args.uuid)
    live = vm.live
    m = args.media
    ids: set[guard.Ident] = set()
    path = disks.resolve_file(ctx, m.source("media"), "media", ids)
    if any(d["source"] == path for d in live.disks):
        raise Conflict(f"media: {path} is attached already", field="media")
    device = m.type or "disk"
    bus = m.bus or ("ide" if device == "cdrom" else "virtio")
    fmt = ("raw" if device == "cdrom"
           else await disks.check_image(ctx, path, m.format, "media", ids=ids))
    used = {d["target"] for d in live.disks}
    n = 0
    while dx.target_name(bus, n) in used:
        n += 1
    check_slot(bus, n, "media")
    tune = iotune_params(m.iotune)
    check_iotune(tune, "media.iotune")
    xml = dx.element_xml(dx.disk_element(dx.Disk(path, fmt, device, bus, dx.target_name(bus, n),
                                                 tune)))
    await hotplug.plug_disk(ctx, vm, xml, path, ids)


@command("kvm.detach_disk", DiskArgs)
async def detach_disk(ctx: Context, args: DiskArgs) -> None:
    """Hot-unplug a disk, found by its path; waits up to 3 s for the guest to let it go."""
    vm = await load(ctx, args.uuid)
    path = disks.resolve_file(ctx, args.media.source("media"), "media")
    dev = dx.find_device(vm.xml, "disk", source=path)
    if dev is None:
        raise NotFound(f"media: {path} is not attached to {args.uuid}")
    alias = next((d["alias"] for d in vm.live.disks if d["source"] == path), "")
    await hotplug.unplug(vm, dev, alias, "detach_disk")


@command("kvm.add_nic", NicArgs)
async def add_nic(ctx: Context, args: NicArgs) -> None:
    """Hot-plug a nic: ``type`` bridge onto bridge ``id``, vlan/vxlan onto the node's segment
    bridge of VLAN id/VNI ``id`` (docs/networking.md; a second default nic: 409)."""
    from core0.net import segments

    vm = await load(ctx, args.uuid)
    v, dom, live = vm.v, vm.dom, vm.live
    if args.type == "default":
        raise Conflict("type: a VM has at most one default nic, given at creation")
    nic = v._nic(Nic(args.type, args.id, args.hwaddr), 0)
    pinned = ""
    if args.type in ("vlan", "vxlan"):  # pinned, and known to be, even if killed meanwhile
        pinned = await cancel.atomic(ctx.to_thread(segments.ensure, ctx.config.segments,
                                                   args.type, args.id, None, "id", True))
    try:
        await _plug(v, dom, live, nic)
    except BaseException:
        if pinned:
            segments.unpin(pinned)
            await ctx.to_thread(segments.collect)  # a segment made for nothing goes again
        raise
    if pinned:
        segments.unpin(pinned)


async def _plug(v: Virt, dom: Any, live: Any, nic: Any) -> None:
    from core0.virt.conn import libvirt_module

    if any(n["mac"].lower() == nic.mac.lower() for n in live.nics):
        raise Conflict(f"hwaddr: {nic.mac} is in use on this VM already", field="hwaddr")
    xml = dx.element_xml(dx.nic_element(nic))
    lv = libvirt_module()
    try:
        await v.conn.call(lambda c: dom.attachDeviceFlags(xml, lv.VIR_DOMAIN_AFFECT_LIVE))
    except Exception as e:
        raise lv_error(e, "add_nic") from None


@command("kvm.remove_nic", NicArgs)
async def remove_nic(ctx: Context, args: NicArgs) -> None:
    """Hot-unplug a nic, found by ``hwaddr`` (or the first on bridge ``id``)."""
    vm = await load(ctx, args.uuid)
    live, xml = vm.live, vm.xml
    if args.hwaddr:
        found = next((n for n in live.nics if n["mac"].lower() == args.hwaddr.lower()), None)
    elif args.id:
        bridge = args.id
        if args.type in ("vlan", "vxlan"):
            from core0.net import segments

            bridge = segments.names(args.type, args.id)[2]
        found = next((n for n in live.nics if n["bridge"] == bridge), None)
    else:
        raise BadRequest("give hwaddr or id", field="hwaddr")
    if found is None:
        raise NotFound(f"no such nic on {args.uuid}")
    dev = dx.find_device(xml, "interface", mac=found["mac"])
    assert dev is not None

    async def collect() -> None:  # a segment left without ports goes
        if found["bridge"].startswith(("c0vxb", "c0vlb")):
            from core0.net import segments

            await ctx.to_thread(segments.collect)

    await hotplug.unplug(vm, dev, found["alias"], "remove_nic", collect)


@command("kvm.limit_disk_io", LimitArgs)
async def limit_disk_io(ctx: Context, args: Any) -> None:
    """Set a disk's I/O limits (0-core's 42 iotune fields; a value applies when its ``*set``
    flag is true)."""
    from core0.virt.conn import libvirt_module

    vm = await load(ctx, args.uuid)
    live = vm.live
    path = disks.resolve_file(ctx, args.media.source("media"), "media")
    disk = next((d for d in live.disks if d["source"] == path), None)
    if disk is None:
        raise NotFound(f"media: {path} is not attached to {args.uuid}")
    params = iotune_params(args)
    check_iotune(params, "iotune")
    lv = libvirt_module()
    await vm.act("limit_disk_io", lambda d: d.setBlockIoTune(disk["target"], params,
                                                              lv.VIR_DOMAIN_AFFECT_LIVE))


# ---------------------------------------------------------------- images


@command("kvm.create-image", ImageArgs)
async def create_image(ctx: Context, args: ImageArgs) -> None:
    """Create an image file (``qemu-img create``): {file_name, format qcow2|raw, size}; 409
    when the name exists."""
    with disks.new_file(ctx, args.file_name, "file_name") as fd:
        await guard.test_hold(os.path.basename(args.file_name))
        await disks.create(ctx, disks.fd_path(fd), args.format, args.size)


@command("kvm.convert-image", ConvertArgs)
async def convert_image(ctx: Context, args: ConvertArgs) -> None:
    """Convert an image (``qemu-img convert``, confined to the files it was given):
    {input_file, output_file, output_format}; 409 when the output exists, which is removed
    again when the conversion fails."""
    with contextlib.ExitStack() as stack:  # the input and its chain, open once (disks.py)
        src = await disks.pinned_image(ctx, args.input_file, "input_file", stack)
        with disks.new_file(ctx, args.output_file, "output_file") as dst:
            await guard.test_hold(os.path.basename(args.output_file))
            await disks.convert(ctx, src, dst, args.output_format)


# ---------------------------------------------------------------- port forwards


@command("kvm.portforward-add", ForwardArgs)
async def portforward_add(ctx: Context, args: ForwardArgs) -> None:
    """Forward ``host_port`` (or any nft source) to the VM's ``container_port`` on its default
    nic (412 without one; 409 when the source is taken)."""
    v = (await load(ctx, args.uuid)).v
    rec = v.record(args.uuid) or {}
    if not rec.get("ip"):
        from core0.errors import PreconditionFailed

        raise PreconditionFailed(f"{args.uuid} has no default nic")
    await network.add_forwards(ctx, args.uuid, str(rec["ip"]),
                               {str(args.host_port): args.container_port})


@command("kvm.portforward-remove", ForwardArgs)
async def portforward_remove(ctx: Context, args: ForwardArgs) -> None:
    """Remove a forward of the VM (404 when it has none from ``host_port``)."""
    await load(ctx, args.uuid)
    if not await network.remove_forwards(ctx, args.uuid, [str(args.host_port)]):
        raise NotFound(f"{args.uuid} has no forward from {args.host_port}")


# ---------------------------------------------------------------- migration


@command("kvm.migrate", MigrateArgs)
async def migrate(ctx: Context, args: MigrateArgs) -> None:
    """Live-migrate a VM to the libvirtd at ``desturi`` (peer to peer, tunnelled through
    libvirt, bandwidth capped at 10 GiB/s, as 0-core). ``shared_storage``: the disks are on
    storage the destination sees at the same paths; otherwise libvirt copies them (the
    destination needs same-size files at the same paths). The VM's port forwards and static
    lease on this node are released; its files here are kept (a declared VM's declaration
    is removed). The destination runs it as a transient domain under the same uuid. Cut
    short (job.kill, max_time), the migration is aborted: the VM keeps running here."""
    check_desturi(args.desturi)
    vm = await load(ctx, args.uuid)
    await migration.migrate(vm, args.desturi, args.shared_storage)
    _undeclare(ctx, vm.declared)  # it runs elsewhere now


# ---------------------------------------------------------------- events


@command("kvm.events", role=Role.READ_ONLY)
async def events(ctx: Context, args: NoArgs) -> None:
    """A long-running job publishing the lifecycle events of core0's VMs that this queue may
    see (its own role's and lower, below admin its private queue's) as level-20 messages
    ``{uuid, name, event, detail, sequence, time}`` (event: started, suspended, resumed,
    stopped, shutdown, crashed, device_removed…; ``connection`` lost/reconnected when libvirtd
    restarts); other libvirt domains' events are not shown. Read it through ``log:<id>``
    (many readers) or ``stream:<id>``; stop it with job.kill."""
    v = await _virt(ctx)
    only = EventFilter(ctx, v)  # core0's VMs the caller may see (core0/virt/access.py)
    with v.conn.subscribe() as sub:
        await only.prime()
        ctx.emit(LEVEL_JSON, json.dumps({"event": "subscribed", "uuid": "", "name": "",
                                         "detail": v.conn.uri}))
        while True:
            ev = await sub.get()
            if await only.shows(ev):
                ctx.emit(LEVEL_JSON, json.dumps(ev, sort_keys=True))


@dataclass(frozen=True)
class PrepareArgs(Schema):
    """0-core's arguments: the VM's uuid, nics and forwards (as in its ``params``)."""

    uuid: UUID
    nics: Annotated[list[Nic], Doc("the VM's nics (a default nic with its hwaddr)"),
                    Len(0, 8)] | None = None
    port: Annotated[dict[str, Annotated[int, Range(1, 65535)]],
                    Doc('forwards {"<host port or nft source>": guest port} to make here'),
                    Len(0, 256)] | None = None


@command("kvm.prepare_migration_target", PrepareArgs)
async def prepare_migration_target(ctx: Context, args: PrepareArgs) -> dict[str, Any]:
    """On the destination node, before ``kvm.migrate`` on the source: make the VM's nics'
    bridges (core0's NAT bridge for a default nic, with a static lease for its ``hwaddr`` at
    the address that MAC encodes, so the guest keeps its address; a ``bridge`` nic's bridge
    must exist here: 412) and its port forwards (owner ``vm:<uuid>``). They are removed when
    the VM stops here, like those of a VM created here. Returns {uuid, mac, ip}. 409 when the
    VM runs here already or the address is another VM's."""
    v = await _virt(ctx)
    return await incoming.prepare(v, ctx, args.uuid, list(args.nics or []),
                                  dict(args.port or {}))
