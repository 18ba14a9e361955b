"""Container networking: a named netns per container with nics, made on the host side.

A container created with nics (and every userns container, whose netns must belong to its
user namespace) gets a named network namespace (``/run/netns/core0-<tag>-<id>``) made by core0
before the runtime starts; the OCI spec joins it by path. A container created without nics
gets the anonymous netns the runtime makes for its init (runc and crun bring its ``lo`` up):
no bind mount, no netlink session, nothing to remove on terminate. When a nic is added to it
later, :func:`pin_init_netns` binds ``/proc/<init>/ns/net`` at the container's netns name and
points ``config.json`` at that path (a keeper's restart joins it again), so from then on it is
a named netns like the others. Its nics are configured from the node's side with netlink (no
tool runs inside):

- ``default``: a veth whose peer (``eth0``) is created inside the netns and whose host end is
  enslaved to core0's NAT bridge ``core0`` (172.18.0.1/16, masquerade, DNS from a dnsmasq on
  the bridge), made on first use through ``bridge.create``. The container's address is
  172.18.x.y with x.y = id + 1 (0-core's rule); gateway and DNS are 172.18.0.1. Its MAC is
  core0's choice (random, recorded as the nic's ``hwaddr``) unless the nic names one;
- ``bridge``: the same, into a named existing bridge, with ``config.cidr``/``gateway``;
- every veth on the NAT bridge (``default``, and ``bridge`` nics into ``core0``) is guarded
  (:mod:`core0.net.portguard`) before it is made: from its port the bridge takes only its MAC
  as source, and only its own address as IPv4 source and ARP sender; the guard goes after
  the link (nic-remove, terminate). No macvlan nor DHCP on that bridge (400);
- ``macvlan`` ``{id: parent link}``: a macvlan (bridge mode) made on the node, moved into the
  netns and named ``eth<index>`` there, with ``config.cidr``/``gateway``;
- ``passthrough`` ``{id: a link of the node}``: that link itself moved into the netns, named
  ``eth<index>`` (or the nic's name) there, with ``config.cidr``/``gateway`` (or dhcp); on
  nic-remove and terminate it goes back to the node's netns under its own name (down, without
  the addresses it had inside).

Port forwards go through ``nft.forward_add`` with owner ``container:<id>``, so they are in
core0's one nft table and are removed together (``nft.owner_remove``) on terminate.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core0 import registry
from core0.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    Internal,
    NotFound,
    PreconditionFailed,
)
from core0.net import netlink as nl
from core0.net import portguard, segments
from core0.net import validate as v
from core0.registry import Role
from core0.sandbox import dhcp
from core0.sandbox.store import Nic, Record, Store

if TYPE_CHECKING:
    from pyroute2 import IPRoute

    from core0.context import Context

BRIDGE = "core0"
NETWORK = ipaddress.ip_network("172.18.0.0/16")
GATEWAY = ipaddress.ip_address("172.18.0.1")
_BRIDGE_LOCK = asyncio.Lock()


def default_address(cid: int) -> str:
    """0-core's address of container ``cid`` on the default network."""
    return f"{NETWORK.network_address + cid + 1}/{NETWORK.prefixlen}"


async def _call(ctx: Context, name: str, args: dict[str, Any]) -> Any:
    """Run another domain's command handler in this job (its schema checks apply)."""
    spec = registry.get(name)
    if spec is None:
        raise PreconditionFailed(f"this node has no {name} command")
    return await spec.handler(ctx, spec.args.parse(args))


async def ensure_bridge(ctx: Context) -> None:
    """Make core0's NAT bridge unless it exists."""
    async with _BRIDGE_LOCK:
        def exists() -> bool:
            with nl.session() as r:
                return bool(r.link_lookup(ifname=BRIDGE))

        if await ctx.to_thread(exists):
            return
        gw = f"{GATEWAY}/{NETWORK.prefixlen}"
        try:
            await _call(ctx, "bridge.create", {"name": BRIDGE, "network": {
                "mode": "static", "nat": True, "cidr": gw}})
        except Conflict:
            if not await ctx.to_thread(exists):
                raise


def create_netns(name: str) -> None:
    """The container's named netns with ``lo`` up (thread)."""
    nl.netns_create(name)
    with nl.session(netns=name) as r:
        nl.link_set(r, "lo", state="up")


def remove_netns(name: str) -> None:
    try:
        nl.netns_remove(name)
    except NotFound:
        pass


_libc = ctypes.CDLL(None, use_errno=True)
MS_BIND, MS_REC, MS_SHARED = 4096, 16384, 1 << 20
CLONE_NEWNET = 0x40000000


def pin_netns(src: str, name: str, lo_up: bool = True) -> None:
    """``src`` (a netns file, e.g. ``/proc/<pid>/ns/net``) as the named netns ``name`` (like
    ``ip netns attach``), ``lo`` up unless told otherwise (thread)."""
    path = Path(nl.netns_path(name))
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    d = os.fsencode(path.parent)
    if _libc.mount(b"", d, None, MS_SHARED | MS_REC, None) != 0:  # as netns_create does
        if _libc.mount(d, d, b"none", MS_BIND | MS_REC, None) != 0 or \
                _libc.mount(b"", d, None, MS_SHARED | MS_REC, None) != 0:
            raise Internal(f"make {path.parent} a shared mount: "
                           f"{os.strerror(ctypes.get_errno())}")
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
    except FileExistsError:
        raise Conflict(f"network namespace {name} exists already") from None
    if _libc.mount(os.fsencode(src), os.fsencode(path), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        with contextlib.suppress(OSError):
            path.unlink()
        raise Internal(f"bind {src} on {path}: {os.strerror(err)}")
    if lo_up:
        with nl.session(netns=name) as r:
            nl.link_set(r, "lo", state="up")


def _same_ns(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _join_named(config: Path, path: str | None) -> None:
    """Point the bundle's ``config.json`` at the named netns ``path`` (None: back to a new
    netns of the runtime's); an atomic rewrite."""
    spec = json.loads(config.read_text())
    for ns in spec.get("linux", {}).get("namespaces", []):
        if ns.get("type") == "network":
            if path is None:
                ns.pop("path", None)
            else:
                ns["path"] = path
    tmp = config.with_name(config.name + ".tmp")
    tmp.write_text(json.dumps(spec))
    os.replace(tmp, config)


def _in_cgroup(pid: int, cg_path: str) -> bool:
    """Is ``pid`` in the container's cgroup (or below it), in any hierarchy?"""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            paths = [line.rstrip("\n").split(":", 2)[-1] for line in f]
    except OSError:
        return False
    return any(p == cg_path or p.startswith(cg_path + "/") for p in paths)


def _pin_init(rec: Record, pid: int, cdir: Path) -> None:
    """Name the netns of init ``pid`` (thread): config.json first (a restart between the two
    steps fails to find the path and is retried by its keeper, never gets a new empty netns),
    then the bind mount; the config is put back when the bind fails. The netns is taken
    through an fd opened before checking that ``pid`` is still in the container's cgroup (a
    pid reused meanwhile is refused)."""
    path = nl.netns_path(rec.netns)
    config = cdir / "config.json"
    try:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        raise Conflict(f"container {rec.id} is not running: no nic can be added") from None
    try:
        if not _in_cgroup(pid, rec.cgroups_path):
            raise Conflict(f"container {rec.id} is not running: no nic can be added")
        src = f"/proc/self/fd/{fd}"
        if os.path.exists(path):
            if _same_ns(src, path):  # pinned by an earlier nic-add whose record was lost
                _join_named(config, path)
                return
            raise Conflict(f"network namespace {rec.netns} exists already")
        _join_named(config, path)
        try:
            pin_netns(src, rec.netns, lo_up=False)
        except BaseException:
            _join_named(config, None)
            raise
    finally:
        os.close(fd)


async def pin_init_netns(ctx: Context, rec: Record) -> None:
    """Give a container running in its runtime-made anonymous netns (``rec.netns_anon``) its
    named netns: the netns of its running init, bound at ``rec.netns`` (recorded at once)."""
    if not rec.netns_anon:
        return
    from core0.sandbox import runtime

    rt = await runtime.choose(ctx.config.state_dir)
    st = await rt.state(rec.runtime_id)
    if st is None or st.status != "running" or not st.pid:
        raise Conflict(f"container {rec.id} is not running: no nic can be added")
    store = Store(ctx.config.state_dir)
    await ctx.to_thread(_pin_init, rec, st.pid, store.dir(rec.id))
    rec.netns_anon = False
    store.save(rec)


def _enter_fd(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def session_of(rec: Record, pid: int) -> Iterator[IPRoute]:
    """An IPRoute in the container's netns (thread): its named netns, or, while it is still
    anonymous, the netns of its init ``pid``."""
    if not rec.netns_anon:
        with nl.session(netns=rec.netns) as r:
            yield r
        return
    from pyroute2 import IPRoute

    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _enter_fd(target)
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
        finally:
            try:
                _enter_fd(home)
            except OSError:  # pragma: no cover - cannot happen with our own open fd
                os._exit(70)  # a worker thread left in a container's netns: never go on
    finally:
        os.close(target)
        os.close(home)
    fd = sock.detach()
    try:
        r = IPRoute(fileno=fd, groups=0)
    except BaseException:
        os.close(fd)
        raise
    try:
        yield r
    finally:
        r.close()


def _veth(rec: Record, nic: Nic, index: int, host_name: str, bridge: str, cidr: str,
          gateway: str | None) -> str:
    """Make one veth nic (thread): peer inside the netns, host end in ``bridge``."""
    inner = nic.name or f"eth{index}"
    with nl.session() as r:
        nl.link_add(r, nl.LinkSpec(name=host_name, kind="veth", peer=inner,
                                   peer_netns=rec.netns, master=bridge, up=True))
    try:
        with nl.session(netns=rec.netns) as r:
            _configure_inside(r, nic, inner, cidr, gateway)
    except BaseException:
        with nl.session() as r:
            nl.link_del(r, host_name)
        raise
    return inner


def _static(nic: Nic, index: int) -> tuple[str, str | None]:
    """(cidr, gateway) of a nic's static config."""
    if nic.config.get("dhcp"):  # the address comes from a DHCP server (sandbox/dhcp.py)
        if nic.config.get("cidr") or nic.config.get("gateway"):
            raise BadRequest(f"nics[{index}].config: dhcp or cidr/gateway, not both",
                             field="nics")
        return "", None
    cidr = str(v.interface(nic.config["cidr"], f"nics[{index}].config.cidr")) \
        if nic.config.get("cidr") else ""
    gw = str(v.ip(nic.config["gateway"], f"nics[{index}].config.gateway")) \
        if nic.config.get("gateway") else None
    return cidr, gw


def _configure_inside(r: IPRoute, nic: Nic, inner: str, cidr: str, gateway: str | None) -> None:
    if nic.hwaddr:
        nl.link_set(r, inner, address=v.mac(nic.hwaddr))
    nl.link_set(r, inner, state="up")
    if cidr:
        nl.addr_change(r, "add", inner, cidr)
    if gateway:
        nl.route_change(r, "add", dst="default", gw=gateway, dev=inner, metric=None, table=None)


def _macvlan(rec: Record, nic: Nic, index: int, tmp_name: str, parent: str, cidr: str,
             gateway: str | None) -> str:
    """Make a macvlan on ``parent`` (thread), move it into the netns, name it there."""
    inner = nic.name or f"eth{index}"
    with nl.session() as r:
        nl.link_add(r, nl.LinkSpec(name=tmp_name, kind="macvlan", parent=parent))
        try:
            nl.link_set(r, tmp_name, netns=rec.netns)
        except BaseException:
            nl.link_del(r, tmp_name)
            raise
    with nl.session(netns=rec.netns) as r:
        try:
            nl.link_set(r, tmp_name, ifname=inner)
            _configure_inside(r, nic, inner, cidr, gateway)
        except BaseException:
            for name in (tmp_name, inner):
                with contextlib.suppress(Exception):
                    nl.link_del(r, name)
            raise
    return inner


def _passthrough(rec: Record, nic: Nic, index: int, tmp_name: str, link: str, cidr: str,
                 gateway: str | None) -> str:
    """Move the node's link ``link`` into the netns (thread), named ``eth<index>`` there (or
    the nic's name): down and renamed ``tmp_name`` on the node first, so no name inside can
    clash; everything undone when a step fails."""
    inner = nic.name or f"eth{index}"
    if link in ("lo", BRIDGE):
        raise BadRequest(f"nics[{index}].id: {link} cannot be passed through", field="nics")
    with nl.session() as r:
        if not r.link_lookup(ifname=link):
            raise NotFound(f"nics[{index}].id: the node has no link {link}")
        nl.link_set(r, link, state="down")
        nl.link_set(r, link, ifname=tmp_name)
        try:
            nl.link_set(r, tmp_name, netns=rec.netns)
        except BaseException:
            with contextlib.suppress(Exception):
                nl.link_set(r, tmp_name, ifname=link)
            raise
    try:
        with nl.session(netns=rec.netns) as r:
            nl.link_set(r, tmp_name, ifname=inner)
            _configure_inside(r, nic, inner, cidr, gateway)
    except BaseException:
        with contextlib.suppress(Exception):
            _give_back(rec.netns, (tmp_name, inner), link)
        raise
    return inner


def _give_back(netns: str, names: tuple[str, ...], original: str) -> None:
    """Move a passed-through link (the first of ``names`` found in ``netns``) back to the
    node's netns under its ``original`` name (thread). Its addresses and routes stay behind
    (the kernel drops them with the move)."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with nl.session(netns=netns) as r:
            name = next((n for n in names if r.link_lookup(ifname=n)), "")
            if not name:
                return
            idx = r.link_lookup(ifname=name)[0]
            nl.link_set(r, name, state="down")
            # a name of its own on the way (the original may be taken inside)
            tmp = original if not r.link_lookup(ifname=original) else f"pt{idx}"[:15]
            if tmp != name:
                nl.link_set(r, name, ifname=tmp)
            try:
                r.link("set", index=idx, net_ns_fd=home)
            except Exception as e:
                raise nl.nl_error(e, f"move {name} back to the node") from None
    finally:
        os.close(home)
    if tmp != original:
        with nl.session() as r:
            if r.link_lookup(ifname=tmp) and not r.link_lookup(ifname=original):
                nl.link_set(r, tmp, ifname=original)


async def add_nic(ctx: Context, rec: Record, nic: Nic, index: int, host_base: str) -> Nic:
    """Configure ``nic`` (the ``index``-th of the container; its host end is named
    ``host_base`` + index) and return it as recorded."""
    if nic.type == "passthrough" and ctx.job.role < Role.ADMIN:
        raise Forbidden("a passthrough nic takes a link away from the node: it needs the "
                        "admin role")
    await pin_init_netns(ctx, rec)
    host_name = (host_base + (f"n{index}" if index else ""))[:15]
    if nic.name and (nic.name.startswith("eth") and nic.name != f"eth{index}"):
        raise BadRequest(f"nics[{index}].name: eth* names are reserved", field="nics")
    if nic.type == "default":
        await ensure_bridge(ctx)
        cidr, bridge = default_address(rec.id), BRIDGE
        gw: str | None = str(GATEWAY)
        if index and any(n.type == "default" and n.state == "configured"
                         for n in rec.nics[:index]):
            raise Conflict("the container has a default nic already")
        if nic.config.get("dhcp"):
            raise BadRequest(f"nics[{index}].config.dhcp: the default nic's address is fixed",
                             field="nics")
    elif nic.type in ("bridge", "macvlan"):
        if not nic.id:
            what = "bridge" if nic.type == "bridge" else "parent link"
            raise BadRequest(f"nics[{index}].id: the {what} name is required", field="nics")
        bridge = v.ifname(nic.id, f"nics[{index}].id")
        cidr, gw = _static(nic, index)
        if nic.type == "macvlan" and bridge.startswith(host_base[:6]):
            # (frames of a macvlan on a container's veth end go straight into that container)
            raise BadRequest(f"nics[{index}].id: {bridge} is a container's link", field="nics")
        if bridge == BRIDGE and cidr and ipaddress.ip_interface(cidr).ip in NETWORK:
            # the NAT network's addresses are core0's: the gateway's (DNS, NAT for every
            # container) and each container's own (id + 1); a static one taken here would
            # answer ARP for another's
            raise BadRequest(f"nics[{index}].config.cidr: the addresses of {NETWORK} are "
                             f"core0's (the node's {GATEWAY}, each container's default "
                             "nic): use a default nic", field="nics")
        if bridge == BRIDGE and nic.type == "macvlan":
            # (its frames would enter the bridge as the node's, past the ports' guards)
            raise BadRequest(f"nics[{index}].id: a macvlan on core0's NAT bridge would "
                             "bypass its port guards: use a default or bridge nic",
                             field="nics")
        if bridge == BRIDGE and nic.config.get("dhcp"):
            # (a guard names the address before the link exists; none is leased there)
            raise BadRequest(f"nics[{index}].config.dhcp: core0's NAT bridge serves no "
                             "DHCP: its addresses are static", field="nics")
        if nic.type == "macvlan":
            nic.inner = await ctx.to_thread(_macvlan, rec, nic, index, host_name, bridge, cidr,
                                            gw)
            nic.ip, nic.state = cidr, "configured"
            return await _leased(ctx, rec, nic, index)
    elif nic.type == "passthrough":
        if not nic.id:
            raise BadRequest(f"nics[{index}].id: the node's link to pass through is required",
                             field="nics")
        if nic.hwaddr:
            raise BadRequest(f"nics[{index}].hwaddr: a passed-through link keeps its own "
                             "address", field="nics")
        link = v.ifname(nic.id, f"nics[{index}].id")
        if link.startswith(host_base[:6]):  # another container's veth end (vc<tag>…)
            raise BadRequest(f"nics[{index}].id: {link} is a container's link", field="nics")
        cidr, gw = _static(nic, index)
        nic.inner = await ctx.to_thread(_passthrough, rec, nic, index, host_name, link, cidr,
                                        gw)
        nic.ip, nic.state = cidr, "configured"
        return await _leased(ctx, rec, nic, index)
    elif nic.type in ("vlan", "vxlan"):  # a veth into the segment's bridge (segments.py)
        cidr, gw = _static(nic, index)
        bridge = await ctx.to_thread(segments.ensure, ctx.config.segments, nic.type, nic.id,
                                     None, f"nics[{index}].id", True)
        try:
            nic.inner = await ctx.to_thread(_veth, rec, nic, index, host_name, bridge, cidr,
                                            gw)
        finally:
            segments.unpin(bridge)
        nic.host_link, nic.ip, nic.state = host_name, cidr, "configured"
        return await _leased(ctx, rec, nic, index)
    else:
        raise PreconditionFailed(f"nic type {nic.type} is not supported (default, bridge, "
                                 "macvlan, passthrough, vlan and vxlan are; zerotier needs "
                                 "zerotier-one, which core0 does not run)")
    # (a veth into the NAT bridge is guarded before it exists)
    if bridge == BRIDGE:
        nic.hwaddr = (v.link_mac(nic.hwaddr, f"nics[{index}].hwaddr") if nic.hwaddr
                      else portguard.random_mac())
        ips = [str(ipaddress.ip_interface(cidr).ip)] if cidr else []
        await _guards(ctx, portguard.Guard.make(host_name, rec.owner, nic.hwaddr, ips))
    try:
        nic.inner = await ctx.to_thread(_veth, rec, nic, index, host_name, bridge, cidr, gw)
    except BaseException:
        if bridge == BRIDGE:
            with contextlib.suppress(Exception):
                await _guards(ctx, drop=host_name)
        raise
    nic.host_link, nic.ip, nic.state = host_name, cidr, "configured"
    return await _leased(ctx, rec, nic, index)


async def _guards(ctx: Context, add: portguard.Guard | None = None, drop: str = "") -> None:
    """Guard a port of the NAT bridge / stop guarding one (:mod:`core0.net.portguard`);
    guards of containers whose directory is gone (a teardown cut short) go on the way."""
    store = Store(ctx.config.state_dir)

    def alive(g: portguard.Guard) -> bool:
        kind, _, cid = g.owner.partition(":")
        return kind != "container" or not cid.isdigit() or store.dir(int(cid)).exists()

    await portguard.change(ctx, add, drop, alive)


async def prune_guards(ctx: Context) -> None:
    """Drop the port guards of containers whose directory is gone (no nft run when there are
    none)."""
    await _guards(ctx)


async def _leased(ctx: Context, rec: Record, nic: Nic, index: int) -> Nic:
    """A ``dhcp`` nic's address from its DHCP server (the link is removed when none comes)."""
    if not nic.config.get("dhcp"):
        return nic
    try:
        nic.ip = await dhcp.configure(ctx, rec, nic, nic.inner,
                                      Store(ctx.config.state_dir).dir(rec.id),
                                      f"nics[{index}]")
    except BaseException:
        await remove_nic(ctx, nic, rec.netns)
        nic.state = "error"
        raise
    return nic


def _del_link(name: str) -> None:
    with nl.session() as r:
        try:
            nl.link_del(r, name)
        except NotFound:
            pass


def _del_inner(netns: str, name: str) -> None:
    with contextlib.suppress(NotFound), nl.session(netns=netns) as r:
        nl.link_del(r, name)


async def remove_nic(ctx: Context, nic: Nic, netns: str = "") -> None:
    """Delete a nic: its host end (veth), or the link inside ``netns`` (macvlan); a
    passed-through link goes back to the node under its own name."""
    if nic.state != "destroyed":
        await dhcp.release(ctx, nic, netns)
        if nic.type == "passthrough":
            if nic.inner and netns:
                await ctx.to_thread(_give_back, netns, (nic.inner,), nic.id)
        elif nic.host_link:
            await ctx.to_thread(_del_link, nic.host_link)
            await _guards(ctx, drop=nic.host_link)  # (no nft run for a port not guarded)
            if nic.type in ("vlan", "vxlan"):
                await ctx.to_thread(segments.collect)
        elif nic.inner and netns:
            await ctx.to_thread(_del_inner, netns, nic.inner)
    nic.state = "destroyed"


async def add_forwards(ctx: Context, rec: Record, ports: dict[str, int]) -> None:
    ip = next((n.ip.split("/")[0] for n in rec.nics
               if n.type == "default" and n.state == "configured"), "")
    if not ip:
        raise BadRequest("port forwards need a default nic", field="port")
    await _call(ctx, "nft.forward_add", {"owner": rec.owner, "ip": ip, "forwards": ports})


async def remove_forwards(ctx: Context, rec: Record, sources: list[str] | None = None) -> None:
    if sources is None:
        await _call(ctx, "nft.owner_remove", {"owner": rec.owner})
    else:
        await _call(ctx, "nft.forward_remove", {"owner": rec.owner, "src": sources})


def links_of(r: IPRoute, prefix: str) -> list[str]:
    return [str(link.get("ifname")) for link in r.get_links()
            if str(link.get("ifname")).startswith(prefix)]
