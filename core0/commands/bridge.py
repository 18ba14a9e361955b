"""bridge.*: Linux bridges with an address, NAT masquerade and a supervised dnsmasq.

``bridge.create`` makes the bridge, gives it ``cidr``'s address, masquerades the bridge's
network when ``nat`` (and enables IPv4 forwarding), and runs dnsmasq on it: DNS in ``static``
mode, DNS and DHCP (``start``..``end``) in ``dnsmasq`` mode. What core0 created is recorded in
the network state (see :mod:`core0.net.state`), so ``bridge.delete`` removes all of it: the
dnsmasq service and its files, the nft rules, the link. Bridges act in the node's own network
namespace.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from core0 import cancel
from core0.commands.ip import keep_core0_links
from core0.context import Context
from core0.errors import BadRequest, Conflict, NotFound, PreconditionFailed, Unavailable
from core0.net import dnsmasq
from core0.net import netlink as nl
from core0.net import state as netstate
from core0.net import validate as v
from core0.net.sockets import Listener
from core0.net.state import Bridge
from core0.registry import Role, command
from core0.schema import Doc, NoArgs, Pattern, Schema

if TYPE_CHECKING:
    from pyroute2 import IPRoute

T = TypeVar("T")

#: static leases per bridge at most (each is a line of the dnsmasq config, rewritten per change)
MAX_HOSTS = 1024

_BRNAME = Annotated[str, Doc("bridge name (1-15 chars, not 'default')"),
                    Pattern(r"(?!default$)" + v.IFNAME_RE)]


@dataclass(frozen=True)
class Settings(Schema):
    """0-core's ``network.settings``."""

    cidr: v.CIDR | None = None
    start: v.ADDR | None = None
    end: v.ADDR | None = None


@dataclass(frozen=True)
class Network(Schema):
    mode: Annotated[Literal["", "none", "static", "dnsmasq"],
                    Doc("none ('' too): no address service; static: DNS only; dnsmasq: DNS "
                        "and DHCP")] = "none"
    nat: Annotated[bool, Doc("masquerade the bridge's network to other links")] = False
    cidr: Annotated[v.CIDR, Doc("the bridge's address, e.g. 10.20.0.1/24")] | None = None
    start: Annotated[v.ADDR, Doc("dnsmasq mode: first address of the DHCP range")] | None = None
    end: Annotated[v.ADDR, Doc("dnsmasq mode: last address of the DHCP range")] | None = None
    settings: Annotated[Settings, Doc("0-core's spelling of cidr/start/end")] | None = None


@dataclass(frozen=True)
class CreateArgs(Schema):
    name: _BRNAME
    hwaddr: v.MAC | None = None
    network: Network | None = None


def _plan(args: CreateArgs) -> Bridge:
    """Validate the arguments into the bridge to build (400 on any inconsistency)."""
    n = args.network or Network()
    s = n.settings or Settings()
    vals = {}
    for f in ("cidr", "start", "end"):
        a, b = getattr(n, f), getattr(s, f)
        if a is not None and b is not None:
            raise BadRequest(f"network.{f}: given twice (also in settings)",
                             field=f"network.{f}")
        vals[f] = a if a is not None else b
    mode = n.mode or "none"
    br = Bridge(args.name, hwaddr=v.link_mac(args.hwaddr) if args.hwaddr else "", mode=mode,
                nat=n.nat)
    cidr = vals["cidr"]
    if cidr is None:
        if mode != "none" or n.nat:
            raise BadRequest(f"network.cidr: required (mode {mode}, nat {n.nat})",
                             field="network.cidr")
        if vals["start"] or vals["end"]:
            raise BadRequest("network.start/end: only with mode dnsmasq", field="network.start")
        return br
    iface = v.interface(cidr, "network.cidr", version=4)
    v.host_interface(cidr, "network.cidr", args.name)
    br.cidr = str(iface)
    if mode == "dnsmasq":
        if vals["start"] is None or vals["end"] is None:
            raise BadRequest("network.start and network.end: required in dnsmasq mode",
                             field="network.start")
        start = v.ip(vals["start"], "network.start", version=4)
        end = v.ip(vals["end"], "network.end", version=4)
        for name, a in (("start", start), ("end", end)):
            _host_of(iface, a, f"network.{name}")
        if int(start) > int(end):
            raise BadRequest("network.start: after network.end", field="network.start")
        if int(start) <= int(iface.ip) <= int(end):
            raise BadRequest(f"network.start..end: the range includes the bridge's own address "
                             f"{iface.ip}", field="network.start")
        br.start, br.end = str(start), str(end)
    elif vals["start"] or vals["end"]:
        raise BadRequest("network.start/end: only with mode dnsmasq", field="network.start")
    return br


def _host_of(iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
             a: ipaddress.IPv4Address | ipaddress.IPv6Address, field: str) -> None:
    """400 unless ``a`` is a host address of the bridge's network that a client may get: not
    the network or broadcast address, not the bridge's own address."""
    net = iface.network
    if a not in net:
        raise BadRequest(f"{field}: {a} is not in {net}", field=field)
    if a == iface.ip:
        raise BadRequest(f"{field}: {a} is the bridge's own address", field=field)
    if net.prefixlen < 31 and a in (net.network_address, net.broadcast_address):
        which = "network" if a == net.network_address else "broadcast"
        raise BadRequest(f"{field}: {a} is the {which} address of {net}", field=field)


def _build(r: IPRoute, br: Bridge) -> None:
    """Create the bridge link with its address (thread); removes it again on failure."""
    if r.link_lookup(ifname=br.name):
        raise Conflict(f"link {br.name} exists already")
    if br.cidr:
        mine = ipaddress.ip_interface(br.cidr).network
        for link, addr in nl.all_networks(r):
            if addr.version == 4 and addr.network.overlaps(mine):
                raise Conflict(f"network {mine} overlaps {addr} on {link}")
    nl.link_add(r, nl.LinkSpec(name=br.name, kind="bridge", hwaddr=br.hwaddr or None))
    try:
        if br.cidr:
            nl.addr_change(r, "add", br.name, br.cidr)
        nl.link_set(r, br.name, state="up")
        if br.nat:
            nl.enable_ip_forward()
    except BaseException:
        nl.link_del(r, br.name)
        raise


async def _netlink(ctx: Context, fn: Callable[[IPRoute], T]) -> T:
    def work() -> T:
        with nl.session() as r:
            return fn(r)

    return await ctx.to_thread(work)


def _dns_not_forwarded(br: Bridge, st: netstate.NetState) -> None:
    """409 when a port forward would take the DNS (53) or DHCP (67) of the bridge's dnsmasq
    (the other way round, nft.forward_add refuses ports the node listens on)."""
    if br.mode not in ("static", "dnsmasq"):
        return
    own = ipaddress.ip_interface(br.cidr).ip
    socks = [Listener("udp", own, 53), Listener("tcp", own, 53)]
    if br.mode == "dnsmasq":
        socks.append(Listener("udp", ipaddress.IPv4Address(0), 67))
    for f in st.forwards:
        for sock in socks:
            if f.source.takes(sock):
                raise Conflict(f"the forward {f.src} of {f.owner} would take {sock.proto} "
                               f"port {sock.port} from the bridge's dnsmasq")


@command("bridge.create", CreateArgs)
async def create(ctx: Context, args: CreateArgs) -> dict[str, Any]:
    """Create a bridge: ``{name, hwaddr, network: {mode: none|static|dnsmasq, nat, cidr,
    start, end}}`` (0-core's ``network.settings`` is accepted too). The bridge gets ``cidr``'s
    address (409 when its network overlaps an existing address, or when a port forward would
    take its DNS/DHCP ports); ``nat`` masquerades it and
    enables IPv4 forwarding; static/dnsmasq modes run a supervised dnsmasq on it (DNS; DHCP
    over start..end in dnsmasq mode). Returns the bridge as bridge.info shows it. Below
    admin, 409 for a name core0 keeps for its own links (``core0``, ``kvm0``, ``c0t…``,
    ``c0v…``)."""
    keep_core0_links(ctx, None, args.name, bridges=False)
    br = _plan(args)
    async with netstate.LOCK:
        st = netstate.load(ctx.config.state_dir)
        if br.name in st.bridges:
            raise Conflict(f"bridge {br.name} exists already")
        _dns_not_forwarded(br, st)
        # made whole even when the job is killed meanwhile (the kill then comes in the try
        # below, whose clean-up removes it): a link made after the kill stayed, unrecorded
        await cancel.atomic(_netlink(ctx, lambda r: _build(r, br)))
        new = st.copy()
        new.bridges[br.name] = br
        try:
            await netstate.commit(ctx, new, st)
            if br.mode in ("static", "dnsmasq"):
                await dnsmasq.start(ctx, br)
        except BaseException:
            await cancel.atomic(_unmake(ctx, br.name, st, new), defer=False)
            raise
    return await _info(ctx, br.name)


async def _unmake(ctx: Context, name: str, st: netstate.NetState,
                  new: netstate.NetState) -> None:
    """Undo a bridge.create cut short: its dnsmasq, its link, the state before it."""
    await dnsmasq.stop(ctx, name, remove=True)
    with contextlib.suppress(NotFound):
        await _netlink(ctx, lambda r: nl.link_del(r, name))
    await netstate.commit(ctx, st, new)


@dataclass(frozen=True)
class NameArgs(Schema):
    name: v.IFNAME


@command("bridge.delete", NameArgs)
async def delete(ctx: Context, args: NameArgs) -> None:
    """Delete a bridge made by bridge.create and what core0 made for it (dnsmasq and its
    files, NAT rules). Only such bridges: 404 when there is no link of that name, 409 when
    the link exists but bridge.create did not make it (a bridge of the host, or one made with
    ip.link.add: ip.link.del removes those); below admin 409 for the containers' NAT bridge
    (core0 made it with bridge.create: every container's network hangs on it)."""
    keep_core0_links(ctx, None, args.name, bridges=False)
    async with netstate.LOCK:
        st = netstate.load(ctx.config.state_dir)
        if args.name not in st.bridges:
            exists = await _netlink(ctx, lambda r: bool(r.link_lookup(ifname=args.name)))
            if exists:
                raise Conflict(f"{args.name} was not made by bridge.create: not deleting it")
            raise NotFound(f"no such bridge: {args.name}")

        def drop(r: IPRoute) -> None:
            # gone already (or replaced by another kind of link): only forget it
            if r.link_lookup(ifname=args.name) and \
                    nl.link_get(r, args.name)["type"] == "bridge":
                nl.link_del(r, args.name)

        new = st.copy()
        del new.bridges[args.name]

        async def unmake() -> None:
            await dnsmasq.stop(ctx, args.name, remove=True)
            await _netlink(ctx, drop)
            await netstate.commit(ctx, new, st)

        # to its end once begun: killed half-way, the bridge was recorded without its dnsmasq
        await cancel.atomic(unmake())


@command("bridge.list", role=Role.READ_ONLY)
async def list_(ctx: Context, args: NoArgs) -> list[str]:
    """Names of the node's bridges (0-core's form; bridge.info has the details)."""
    links = await _netlink(ctx, nl.describe_links)
    return [d["name"] for d in links if d["type"] == "bridge"]


async def _info(ctx: Context, name: str) -> dict[str, Any]:
    def work(r: IPRoute) -> dict[str, Any]:
        d = nl.link_get(r, name)
        if d["type"] != "bridge":
            raise BadRequest(f"{name} is not a bridge", field="name")
        return {"link": d, "nics": nl.slaves(r, name),
                "addrs": [a["addr"] for a in nl.addr_list(r, name)]}

    out = await _netlink(ctx, work)
    st = netstate.load(ctx.config.state_dir)
    br = st.bridges.get(name)
    out["name"] = name
    out["managed"] = br is not None
    if br is not None:
        out.update(network=br.to_dict()["network"], hosts=dict(br.hosts),
                   dnsmasq=dnsmasq.pid(ctx, name), leases=dnsmasq.leases(ctx, name))
    return out


@command("bridge.info", NameArgs, role=Role.READ_ONLY)
async def info(ctx: Context, args: NameArgs) -> dict[str, Any]:
    """A bridge: {name, link, nics, addrs, managed} and, when core0 created it, {network,
    hosts (static leases), dnsmasq (pid or null), leases (dynamic DHCP leases)}."""
    return await _info(ctx, args.name)


@dataclass(frozen=True)
class NicArgs(Schema):
    name: Annotated[v.IFNAME, Doc("the bridge")]
    nic: Annotated[v.IFNAME, Doc("the link to attach")]


def _must_be_bridge(r: IPRoute, name: str) -> None:
    if nl.link_get(r, name)["type"] != "bridge":
        raise BadRequest(f"{name} is not a bridge", field="name")


@command("bridge.nic-add", NicArgs)
async def nic_add(ctx: Context, args: NicArgs) -> None:
    """Attach a link to a bridge (and bring it up); 409 for the node's ``lo``, and below
    admin for core0's own links (a VM's tap, a container's nic, a segment's link) and bridges
    other than bridge.create's (its NAT bridges, a segment's)."""
    if args.nic == "lo":
        raise Conflict("lo is the node's loopback: it stays as it is")
    keep_core0_links(ctx, None, args.nic)
    keep_core0_links(ctx, None, args.name, bridges=False)

    def work(r: IPRoute) -> None:
        _must_be_bridge(r, args.name)
        nl.link_set(r, args.nic, master=args.name, state="up")

    await _netlink(ctx, work)


@dataclass(frozen=True)
class NicRemoveArgs(Schema):
    nic: v.IFNAME


@command("bridge.nic-remove", NicRemoveArgs)
async def nic_remove(ctx: Context, args: NicRemoveArgs) -> None:
    """Detach a link from its bridge (below admin, not one of core0's own links: 409)."""
    keep_core0_links(ctx, None, args.nic)
    await _netlink(ctx, lambda r: nl.link_set(r, args.nic, master=""))


@command("bridge.nic-list", NameArgs, role=Role.READ_ONLY)
async def nic_list(ctx: Context, args: NameArgs) -> list[str]:
    """Names of the links attached to a bridge."""
    def work(r: IPRoute) -> list[str]:
        _must_be_bridge(r, args.name)
        return nl.slaves(r, args.name)

    return await _netlink(ctx, work)


@dataclass(frozen=True)
class HostArgs(Schema):
    bridge: v.IFNAME
    ip: Annotated[v.ADDR, Doc("the address to give")]
    mac: Annotated[v.MAC, Doc("the client's MAC address")]


def _dhcp_bridge(st: netstate.NetState, name: str) -> Bridge:
    br = st.bridges.get(name)
    if br is None:
        raise NotFound(f"no bridge {name} made by bridge.create")
    if br.mode != "dnsmasq":
        raise PreconditionFailed(f"bridge {name} has no DHCP (mode {br.mode})")
    return br


@command("bridge.add_host", HostArgs)
@command("bridge.host-add", HostArgs)
async def add_host(ctx: Context, args: HostArgs) -> None:
    """Give ``mac`` the fixed address ``ip`` on a dnsmasq-mode bridge (a static lease; dnsmasq
    is restarted with it, dynamic leases survive). 409 when the MAC or the address is taken by
    another static lease; 400 when ``ip`` is outside the bridge's network, its network or
    broadcast address or the bridge's own address, or ``mac`` is not a unicast MAC. At most
    1024 static leases per bridge (503 beyond)."""
    mac = v.link_mac(args.mac, "mac")
    async with netstate.LOCK:
        st = netstate.load(ctx.config.state_dir)
        br = _dhcp_bridge(st, args.bridge)
        iface = ipaddress.ip_interface(br.cidr)
        a = v.ip(args.ip, "ip", version=4)
        _host_of(iface, a, "ip")
        if br.hosts.get(mac) == str(a):
            return
        if len(br.hosts) >= MAX_HOSTS:
            raise Unavailable(f"bridge {br.name} has {MAX_HOSTS} static leases already")
        if mac in br.hosts:
            raise Conflict(f"{mac} has the static lease {br.hosts[mac]} already")
        other = next((m for m, ip in br.hosts.items() if ip == str(a)), None)
        if other is not None:
            raise Conflict(f"{a} is the static lease of {other} already")
        new = st.copy()
        new.bridges[br.name].hosts[mac] = str(a)
        await _restart(ctx, st, new, br.name)


@dataclass(frozen=True)
class HostRemoveArgs(Schema):
    bridge: v.IFNAME
    mac: v.MAC


@command("bridge.host_remove", HostRemoveArgs)
async def host_remove(ctx: Context, args: HostRemoveArgs) -> None:
    """Remove a static lease (404 when there is none for that MAC)."""
    mac = v.mac(args.mac, "mac")
    async with netstate.LOCK:
        st = netstate.load(ctx.config.state_dir)
        br = _dhcp_bridge(st, args.bridge)
        if mac not in br.hosts:
            raise NotFound(f"no static lease for {mac} on {br.name}")
        new = st.copy()
        del new.bridges[br.name].hosts[mac]
        await _restart(ctx, st, new, br.name)


async def _restart(ctx: Context, old: netstate.NetState, new: netstate.NetState,
                   name: str) -> None:
    """Restart the bridge's dnsmasq with ``new``'s hosts; back to ``old`` if that fails."""
    await dnsmasq.stop(ctx, name)
    try:
        await dnsmasq.start(ctx, new.bridges[name])
    except BaseException:
        await dnsmasq.start(ctx, old.bridges[name])
        raise
    netstate.save(ctx.config.state_dir, new)
