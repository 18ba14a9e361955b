"""The node's VMs: creation (with rollback), lookup, description, cleanup, reconciliation.

VMs are transient libvirt domains: they run under libvirtd, not under the dispatcher, so a
dispatcher restart leaves them running; the new dispatcher finds them (and their uuids) in
libvirt, and core0's data about each in the domain's metadata. What core0 made for a VM outside
libvirt — its directory ``<virt dir>/<uuid>`` (``vm.json``, overlays, the console log), its
static lease, its port forwards and its taps' port guards (:mod:`core0.virt.guards`) — is
removed when the VM stops, whoever stopped it (a command, the guest powering off, a crash):
the libvirt ``stopped`` event triggers the cleanup, and a reconciliation at first use and
after each reconnection catches stops that happened while no dispatcher was listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import time
import uuid as uuidlib
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core0 import cancel
from core0.errors import BadRequest, CommandError, Conflict, Internal, NotFound
from core0.init import libvirtd as embedded_libvirtd
from core0.net import segments
from core0.net import validate as nv
from core0.registry import Role
from core0.virt import bootfiles, disks, fetch, guard, guards, incoming, network, probe, quota
from core0.virt import domain as dx
from core0.virt.conn import Conn, libvirt_module
from core0.virt.owner import Owner, Owners, caller, owned, visible_params
from core0.virt.spec import (
    CreateArgs,
    Media,
    Nic,
    check_iotune,
    check_slot,
    host_limits,
    iotune_params,
    params_of,
    random_mac,
)

if TYPE_CHECKING:
    from core0.context import Context

log = logging.getLogger(__name__)
STATES = ["nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed",
          "pmsuspended"]
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: qemu refusing an image another process holds (its write or shared lock)
_LOCKED = re.compile(r'Failed to get (shared )?"(write|consistent read)" lock')
_VIRTS: weakref.WeakKeyDictionary[Any, Virt] = weakref.WeakKeyDictionary()


def vm_uuids(vm_dir: Path) -> set[str]:
    """The uuids of core0's VMs: the directories named so in ``virt.dir``."""
    with contextlib.suppress(OSError):
        return {d.name for d in vm_dir.iterdir() if _UUID_RE.fullmatch(d.name)}
    return set()


def of(ctx: Context) -> Virt:
    """The dispatcher's Virt (one per job engine)."""
    v = _VIRTS.get(ctx.engine)
    if v is None:
        v = _VIRTS[ctx.engine] = Virt(ctx)
    return v


def current() -> Virt | None:
    """The dispatcher's Virt if a ``kvm.*`` command has made it (None otherwise)."""
    return next(iter(_VIRTS.values()), None)


def lv_error(e: Exception, what: str = "") -> CommandError:
    """A libvirt error as a command error (404 no domain, 409 invalid state, else 500)."""
    lv = libvirt_module()
    if isinstance(e, CommandError):
        return e
    msg = f"{what}: {e}" if what else str(e)
    if isinstance(e, lv.libvirtError):
        code = e.get_error_code()
        if code == lv.VIR_ERR_NO_DOMAIN:
            return NotFound(msg)
        if code in (lv.VIR_ERR_OPERATION_INVALID, lv.VIR_ERR_OPERATION_FAILED):
            return Conflict(msg)
        if code in (lv.VIR_ERR_XML_ERROR, lv.VIR_ERR_XML_DETAIL, lv.VIR_ERR_INVALID_ARG,
                    lv.VIR_ERR_CONFIG_UNSUPPORTED):
            return BadRequest(msg)
        if _LOCKED.search(msg):  # qemu's image lock: the file is in use (by another VM)
            return Conflict(msg)
    return Internal(msg)


class Virt:
    """VM bookkeeping of one dispatcher: the libvirt connection and core0's VM records."""

    def __init__(self, ctx: Context):
        cfg = ctx.config
        self.conn = Conn(embedded_libvirtd.uri(cfg))  # virt.uri, or the embedded daemon's
        self.dir = Path(cfg.virt.dir)
        #: the context background work (event-driven cleanup) runs with: the first command's
        #: (its engine and configuration are the node's; its job is not used)
        self.node = ctx
        self._dtype: str | None = None
        self._ready = False
        self._ready_lock = asyncio.Lock()
        self._probe_lock = asyncio.Lock()
        self._probe_task: asyncio.Future[str] | None = None
        self._cleanups: dict[str, asyncio.Task[None]] = {}
        self._create_lock = asyncio.Lock()
        #: uuids being created (reconciliation leaves them alone)
        self.creating: set[str] = set()
        #: the owners of the VMs seen (core0/virt/owner.py)
        self.owners = Owners()
        #: the port guards of the VMs' taps on kvm0 (core0/virt/guards.py)
        self.guards = guards.Guards(self)

    async def monitor(self) -> list[tuple[str, str, str, dict[str, str], float]]:
        """The figures of core0's VMs (those with a directory of core0's: other libvirt
        domains are not listed) for the metrics endpoint (core0/fleet/metrics.py): CPU time,
        memory, vCPUs, running or not. Nothing (and no connection made) until a ``kvm.*``
        command has connected."""
        if not self._ready:
            return []
        mine = self.uuids()

        def read(c: Any) -> list[tuple[str, str, list[int]]]:
            return [(d.UUIDString(), d.name(), d.info()) for d in c.listAllDomains(0)
                    if d.UUIDString() in mine]

        out: list[tuple[str, str, str, dict[str, str], float]] = []
        for uuid, name, (state, _max_kib, mem_kib, vcpus, cpu_ns) in await self.conn.call(read):
            labels = {"uuid": uuid, "name": name}
            out += [("core0_vm_cpu_seconds", "CPU time of a VM", "counter", labels,
                     cpu_ns / 1e9),
                    ("core0_vm_memory_bytes", "Memory of a VM", "gauge", labels,
                     mem_kib * 1024.0),
                    ("core0_vm_vcpus", "vCPUs of a VM", "gauge", labels, float(vcpus)),
                    ("core0_vm_running", "1 while a VM runs", "gauge", labels,
                     1.0 if state == 1 else 0.0)]
        return out

    # ------------------------------------------------------------ setup

    @property
    def connected(self) -> bool:
        """Whether a ``kvm.*`` command has made the libvirt connection (and reconciled)."""
        return self._ready

    async def ready(self) -> Virt:
        """Connect, subscribe the cleanup listener and reconcile (once)."""
        if self._ready:
            return self
        async with self._ready_lock:
            if not self._ready:
                # traversable (not listable) by the unprivileged user libvirt may run qemu as
                # (Debian: libvirt-qemu); libvirt chowns the disk files themselves
                self.dir.mkdir(mode=0o711, parents=True, exist_ok=True)
                os.chmod(self.dir, 0o711)
                await self.conn.connection()
                self.conn.listeners.append(self._on_event)
                self._ready = True
                await self.reconcile()
                # the KVM probe (up to its timeout, once per host boot) starts with the first
                # kvm.* command, so that a create that follows (0-core's client waits 10 s by
                # default) does not wait for it
                self._probe_task = asyncio.ensure_future(self._probe_quietly())
        return self

    async def _probe_quietly(self) -> str:
        try:
            return await self.domain_type()
        except Exception as e:  # the create that needs it probes again and reports
            log.warning("virt: KVM probe failed: %s", e)
            return ""

    def _on_event(self, ev: dict[str, Any]) -> None:
        if ev["event"] in guards.EVENTS and ev["uuid"]:
            self.guards.soon()
        if ev["event"] in ("stopped", "undefined") and ev["uuid"]:
            self.cleanup_soon(ev["uuid"])
        elif ev["event"] in ("started", "resumed") and ev["uuid"] and ev.get("detail") != (
                "migrated" if ev["event"] == "started" else None):  # an incoming migration
            self.arrived(ev["uuid"])  # starts, then resumes (arrived) or stops (failed)
        elif ev["event"] == "connection" and ev["detail"] == "reconnected":
            asyncio.ensure_future(self.reconcile())
        elif ev["event"] == "device_removed":  # a nic let go late: core0/virt/hotplug.py
            from core0.virt import hotplug
            hotplug.released()

    async def domain_type(self) -> str:
        async with self._probe_lock:
            if self._dtype is None:
                v = self.node.config.virt
                self._dtype = await probe.domain_type(self.conn, v.domain_type,
                                                      v.probe_kernel, self.dir)
            return self._dtype

    # ------------------------------------------------------------ records

    def vm_dir(self, uuid: str) -> Path:
        return self.dir / uuid

    def record(self, uuid: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.vm_dir(uuid) / "vm.json").read_text()))
        except (OSError, ValueError):
            return None

    def uuids(self) -> set[str]:
        """The uuids of core0's VMs (their directories; no record read)."""
        return vm_uuids(self.dir)

    def records(self) -> dict[str, dict[str, Any]]:
        return {uuid: self.record(uuid) or {} for uuid in self.uuids()}

    def _save_record(self, uuid: str, rec: dict[str, Any]) -> None:
        p = self.vm_dir(uuid) / "vm.json"
        tmp = p.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(rec, sort_keys=True).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, p)

    # ------------------------------------------------------------ lookup

    async def domain(self, uuid: str) -> Any:
        """The libvirt domain of VM ``uuid``: 404 when there is none, or when it is not
        core0's (a domain defined by someone else, the KVM probe's)."""
        try:
            dom = await self.conn.call(lambda c: c.lookupByUUIDString(uuid))
        except Exception as e:
            raise lv_error(e, f"no VM {uuid}") from None
        await self._own(dom, f"no VM {uuid}")
        return dom

    async def by_name(self, name: str, owned: bool = True) -> Any:
        """The domain named ``name`` (``owned``: only core0's, like :meth:`domain`)."""
        try:
            dom = await self.conn.call(lambda c: c.lookupByName(name))
        except Exception as e:
            raise lv_error(e, f"no VM named {name}") from None
        if owned:
            await self._own(dom, f"no VM named {name}")
        return dom

    async def _own(self, dom: Any, msg: str) -> None:
        """404 unless ``dom`` is one of core0's VMs."""
        try:
            name, xml = await self.conn.call(lambda c: (dom.name(), dom.XMLDesc(0)))
        except Exception as e:
            raise lv_error(e, msg) from None
        if not owned(name, dx.parse(xml)):
            raise NotFound(f"{msg} (a libvirt domain core0 did not create is left alone)")

    async def live_uuids(self) -> set[str]:
        doms = await self.conn.call(lambda c: c.listAllDomains(0))
        return {d.UUIDString() for d in doms}

    async def describe(self, dom: Any, viewer: Owner | None = None) -> dict[str, Any]:
        """0-core's kvm.list item: {id, uuid, name, state, vnc, tags, ifctargets, default_ip,
        params} (+ console: the serial log file), as ``viewer`` may see it (secrets of the
        params redacted unless it sees the VM's owner: :func:`owner.visible_params`)."""
        def read() -> tuple[int, str, str, int, str]:
            state = dom.state()[0]
            return dom.ID(), dom.UUIDString(), dom.name(), state, dom.XMLDesc(0)

        try:
            did, uuid, name, state, xml = await self.conn.call(lambda c: read())
        except Exception as e:
            raise lv_error(e) from None
        live = dx.parse(xml)
        if not owned(name, live):
            raise NotFound(f"no VM {uuid}")
        meta = live.meta
        owner = Owner.of(meta)
        self.owners.note(uuid, owner)
        params = meta.get("params", {})
        return {
            "id": did, "uuid": uuid, "name": name,
            "state": STATES[state] if 0 <= state < len(STATES) else str(state),
            "vnc": live.vnc, "tags": meta.get("tags", []),
            "ifctargets": [n["target"] for n in live.nics if n["target"]],
            "default_ip": meta.get("default_ip", ""),
            "params": visible_params(params, owner, viewer) if viewer else params,
            "console": live.serial_log,
            "persistent": bool(meta.get("declared")),
        }

    # ------------------------------------------------------------ create

    async def _media(self, ctx: Context, uuid: str, media: list[Media], vmdir: Path,
                     ids: set[guard.Ident], cached: set[str]) -> list[dx.Disk]:
        """The disks of a spec (overlays made); ``ids`` gets every file qemu may open,
        ``cached`` the digests of the downloaded images they use."""
        out: list[dx.Disk] = []
        counts: dict[str, int] = {}
        for i, m in enumerate(media):
            where = f"media[{i}]"
            src = m.source(where, http=True)
            device = m.type or "disk"
            bus = m.bus or ("ide" if device == "cdrom" else "virtio")
            overlay = m.overlay
            if fetch.is_url(src):
                path = str(await fetch.fetch(ctx, src, fetch.parse_checksum(
                    m.checksum, f"{where}.checksum"), self.dir / "cache", where))
                fmt = await disks.check_image(ctx, path, m.format, where, backing=False)
                ids.add(guard.ident(os.stat(path)))
                cached.add(os.path.basename(path))
                overlay = device == "disk"  # the cached image is shared: never written
            else:
                if m.checksum is not None:
                    raise BadRequest(f"{where}.checksum: only with an http(s) url", field=where)
                path = disks.resolve_file(ctx, src, where, ids)
                fmt = "raw" if device == "cdrom" else await disks.check_image(
                    ctx, path, m.format, where, ids=ids)
            if overlay:
                if device == "cdrom":
                    raise BadRequest(f"{where}.overlay: not for a cdrom", field=where)
                ov = str(vmdir / f"disk{i}.qcow2")
                await disks.overlay(ctx, path, fmt, ov)
                ids.add(guard.ident(os.stat(ov)))
                path, fmt = ov, "qcow2"
            n = counts.get(bus, 0)
            counts[bus] = n + 1
            out.append(dx.Disk(path, fmt, device, bus, dx.target_name(bus, n),
                               iotune_params(m.iotune)))
        return out

    def _nic(self, n: Nic, i: int) -> dx.Nic:
        where = f"nics[{i}]"
        if n.type in ("vlan", "vxlan"):  # a port of the segment's bridge (made in create)
            _, _, bridge = segments.names(n.type, n.id, f"{where}.id")
            mac = nv.mac(n.hwaddr, f"{where}.hwaddr") if n.hwaddr else random_mac()
            return dx.Nic(bridge, mac, "bridge")
        if n.type == "bridge":
            if not n.id:
                raise BadRequest(f"{where}.id: the bridge name is required", field=where)
            nv.ifname(n.id, f"{where}.id")
            mac = nv.mac(n.hwaddr, f"{where}.hwaddr") if n.hwaddr else random_mac()
            return guards.bridge_nic(self.node, dx.Nic(n.id, mac, "bridge"), where)
        return dx.Nic(self.node.config.virt.bridge, "", "default")

    async def create(self, ctx: Context, args: CreateArgs, prefer_uuid: str = "",
                     declared: str = "", owner: Owner | None = None) -> str:
        """Create and start a VM; everything made so far is undone when a step fails.
        ``prefer_uuid``: the uuid to give it when no running VM has it (a declared VM coming
        back); ``declared``: its declaration's hash, kept in the metadata; ``owner``: whose
        it is (the calling queue's role and scope by default)."""
        args.check_unsupported()
        host_limits(args.cpu, args.memory)
        if args.name.startswith(probe.PREFIX):
            raise BadRequest(f"name: {probe.PREFIX}* names are the KVM probe's", field="name")
        counts: dict[str, int] = {}
        for i, m in enumerate(args.media):
            bus = m.bus or ("ide" if m.type == "cdrom" else "virtio")
            counts[bus] = counts.get(bus, 0) + 1
            check_slot(bus, counts[bus] - 1, f"media[{i}]")
            check_iotune(iotune_params(m.iotune), f"media[{i}].iotune")
        if not args.media and not args.kernel:
            raise BadRequest("media: a boot disk (or kernel) is required", field="media")
        if args.initrd and not args.kernel:
            raise BadRequest("initrd: only with kernel", field="initrd")
        nics = [self._nic(n, i) for i, n in enumerate(args.nics)]
        defaults = [n for n in nics if n.kind == "default"]
        if len(defaults) > 1:
            raise BadRequest("nics: at most one default nic", field="nics")
        if args.port and not defaults:
            raise BadRequest("port: forwards need a default nic", field="port")
        owner = owner or caller(ctx)
        boot = bootfiles.BootFiles(ctx, args.kernel, args.initrd,  # checked; copied later
                                   copy=owner.role < Role.ADMIN)
        pinned: list[str] = []
        try:
            await self.ready()
            for i, n in enumerate(args.nics):
                if n.type in ("vlan", "vxlan"):
                    # known as pinned even if the job is killed meanwhile (unpinned below)
                    pinned.append(await cancel.atomic(asyncio.to_thread(
                        segments.ensure, ctx.config.segments, n.type, n.id, None,
                        f"nics[{i}].id", True)))
            uuid = await self._create(ctx, args, nics, defaults, prefer_uuid, declared,
                                      boot, owner)
        except BaseException:
            for bridge in pinned:
                segments.unpin(bridge)
            if pinned:  # segments made for nothing go again
                await asyncio.to_thread(segments.collect)
            raise
        finally:
            boot.close()
        for bridge in pinned:
            segments.unpin(bridge)
        return uuid

    async def _create(self, ctx: Context, args: CreateArgs, nics: list[dx.Nic],
                      defaults: list[dx.Nic], prefer_uuid: str, declared: str,
                      boot: bootfiles.BootFiles, owner: Owner) -> str:
        dtype = await self.domain_type()
        uuid = str(uuidlib.uuid4())
        if prefer_uuid and prefer_uuid not in await self.live_uuids():
            await self.cleanup(prefer_uuid)  # what a stopped run of it left
            uuid = prefer_uuid
        vmdir = self.vm_dir(uuid)
        undo: list[Any] = []
        self.creating.add(uuid)
        async with self._create_lock:
            try:
                with contextlib.suppress(NotFound):
                    await self.by_name(args.name, owned=False)  # whoever's it is
                    raise Conflict(f"a VM named {args.name} exists already", field="name")
                await quota.check(self.conn, ctx.config.virt, owner, args.memory)  # 503
                vmdir.mkdir(mode=0o711)
                undo.append(lambda: asyncio.to_thread(shutil.rmtree, vmdir, True))
                rec: dict[str, Any] = {"uuid": uuid, "name": args.name, "created": time.time(),
                                       "owner": owner.to_json()}
                self._save_record(uuid, rec)
                kernel, initrd = await asyncio.to_thread(boot.paths, vmdir)
                meta: dict[str, Any] = {"tags": list(args.tags or ctx.tags),
                                        "params": params_of(args), "owner": owner.to_json()}
                if declared:
                    meta["declared"] = declared
                if defaults:
                    await network.ensure_bridge(ctx)
                    used = {int(r.get("seq", 0)) for r in self.records().values()}
                    seq = network.free_seq(used)
                    mac, ip = network.address(ctx.config.virt.bridge_cidr, seq)
                    if any(n.hwaddr for n in args.nics if n.type == "default"):
                        mac = nv.mac(next(n.hwaddr for n in args.nics  # type: ignore[misc]
                                          if n.type == "default" and n.hwaddr))
                    defaults[0].mac = mac
                    guards.named(ctx, defaults[0], "nics", nics)  # its tap (409: MAC taken)
                    rec.update(seq=seq, mac=mac, ip=ip)
                    meta["default_ip"] = ip
                    for n in meta["params"]["nics"]:  # what kvm.prepare_migration_target
                        if n["type"] == "default":  # needs from kvm.get's params
                            n["hwaddr"] = mac
                    self._save_record(uuid, rec)
                    await network.add_lease(ctx, mac, ip)
                    undo.append(lambda: network.remove_lease(ctx, mac))
                    if args.port:
                        await network.add_forwards(ctx, uuid, ip, args.port)
                        undo.append(lambda: network.remove_forwards(ctx, uuid))
                ids, cached = set[guard.Ident](), set[str]()
                disks = await self._media(ctx, uuid, args.media, vmdir, ids, cached)
                if cached:  # recorded, then the cache cut back (create lock: fetch.evict_unused)
                    rec["cached"] = sorted(cached)
                    self._save_record(uuid, rec)
                    await asyncio.to_thread(fetch.evict_unused, self.dir / "cache", {
                        u: (self.vm_dir(u), r) for u, r in self.records().items()},
                        ctx.config.virt.cache_max_mib << 20)
                spec = dx.DomainSpec(
                    name=args.name, uuid=uuid, memory=args.memory, vcpus=args.cpu, type=dtype,
                    disks=disks, nics=nics,
                    serial_log=str(vmdir / "console.log"), vnc=args.vnc, kernel=kernel,
                    initrd=initrd, cmdline=args.cmdline or "", meta=meta)
                xml = dx.build(spec)
                await guard.test_hold(args.name)
                self.owners.note(uuid, owner)  # before its first event
                lv = libvirt_module()
                undo.append(lambda: self.guards.sync())  # (after the destroy below)
                try:  # paused: nothing runs until qemu's files are checked (to its end when
                    # cancelled meanwhile: the next await raises, and the domain is undone)
                    dom = await cancel.atomic(self.conn.call(
                        lambda c: c.createXML(xml, lv.VIR_DOMAIN_START_PAUSED)))
                except Exception as e:
                    raise lv_error(e, "libvirt refused the VM") from None
                undo.append(lambda: self.conn.call(lambda c: dom.destroy()))
                await self.check_files(uuid, ids)
                await self.guards.sync(require=uuid)  # its taps on kvm0, before it runs
                try:
                    await self.conn.call(lambda c: dom.resume())
                except Exception as e:
                    raise lv_error(e, "resume of the new VM") from None
            except BaseException:
                await cancel.atomic(undone(undo), defer=False)  # (a second kill waits)
                raise
            finally:
                self.creating.discard(uuid)
        return uuid

    async def check_files(self, uuid: str, ids: set[guard.Ident],
                          before: set[guard.Ident] | None = None) -> None:
        """409 when VM ``uuid``'s qemu holds open a file that is not one core0 resolved
        (``ids``) or held ``before``: a path or an image header changed between core0's
        check and qemu's open (core0/virt/guard.py)."""
        def check() -> list[str]:
            pid = guard.qemu_pid(uuid)
            if pid is None:
                raise Internal(f"cannot find the qemu process of VM {uuid} to check its files")
            return guard.unexpected(pid, ids, before)

        extra = await asyncio.to_thread(check)
        if extra:
            log.warning("virt: VM %s: qemu opened files core0 did not check: %s", uuid, extra)
            raise Conflict("media: a disk image or a directory on its path changed while the "
                           "VM was being made (qemu opened a file core0 did not check)",
                           field="media")

    # ------------------------------------------------------------ cleanup

    def cleanup_soon(self, uuid: str) -> asyncio.Task[None]:
        task = self._cleanups.get(uuid)
        if task is None or task.done():
            task = asyncio.ensure_future(self._cleanup(uuid))
            self._cleanups[uuid] = task
            task.add_done_callback(lambda t: self._cleanups.pop(uuid, None)
                                   if self._cleanups.get(uuid) is t else None)
        return task

    async def cleanup(self, uuid: str) -> None:
        await asyncio.shield(self.cleanup_soon(uuid))

    async def _cleanup(self, uuid: str) -> None:
        """Remove the port guards, forwards, static lease and directory of a stopped VM."""
        ctx = self.node
        rec = self.record(uuid)
        if rec is None and uuid not in network.owners(ctx):
            return
        if rec and incoming.waiting(rec):
            return  # prepared for an incoming migration that has not arrived yet
        try:
            if uuid in await self.live_uuids():
                return  # running again (or never stopped): nothing to clean
        except CommandError:
            return  # libvirt unreachable: the next reconciliation does it
        try:
            await self.guards.quietly()  # its taps' guards go (errors logged)
            await network.remove_forwards(ctx, uuid)
            if rec and rec.get("mac"):
                await network.remove_lease(ctx, str(rec["mac"]))
            if rec and (dest := rec.get("migrated") or rec.get("migrating")):
                # the VM runs elsewhere now, maybe on these very files (shared storage)
                log.info("virt: VM %s migrated to %s: network released, files kept", uuid, dest)
                return
            await asyncio.to_thread(shutil.rmtree, self.vm_dir(uuid), True)
            await asyncio.to_thread(segments.collect)  # vlan/vxlan segments left unused
            log.info("virt: cleaned up after VM %s", uuid)
        except Exception:
            log.exception("virt: cleanup of VM %s failed", uuid)

    async def reconcile(self) -> None:
        """Clean up after every VM core0 has data for that libvirt no longer runs."""
        try:
            live = await self.live_uuids()
        except CommandError:
            return
        self.guards.soon(force=True)  # nothing stale, nothing missing (not waited for)
        recs = self.records()
        for uuid in live & set(recs):
            self.arrived(uuid)
        gone = (set(recs) | network.owners(self.node)) - live - self.creating
        for uuid in gone:
            rec = recs.get(uuid) or {}
            if rec.get("migrated") and not network.forwards_of(self.node, uuid):
                continue  # handed over to another node: nothing of ours left
            await self.cleanup(uuid)

    # ------------------------------------------------------------ migration

    async def cancel_incoming(self, uuid: str) -> bool:
        """Release what kvm.prepare_migration_target made for a VM that has not arrived."""
        rec = self.record(uuid)
        if rec is None or not rec.get("incoming") or uuid in await self.live_uuids():
            return False
        rec["incoming"] = 0
        self._save_record(uuid, rec)
        await self.cleanup(uuid)
        return True

    def arrived(self, uuid: str) -> None:
        """VM ``uuid`` runs here: a prepared incoming record becomes an ordinary one."""
        rec = self.record(uuid)
        if rec is not None and rec.get("incoming"):
            rec.pop("incoming")
            self._save_record(uuid, rec)


async def undone(undo: list[Any]) -> None:
    """Undo what a create made, last first (each step's failure ignored)."""
    for fn in reversed(undo):
        with contextlib.suppress(Exception):
            await fn()
