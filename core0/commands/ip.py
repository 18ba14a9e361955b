"""ip.*: links, addresses, routes and named network namespaces, through netlink (pyroute2).

Every command takes an optional ``netns``: the name of a network namespace under
``/run/netns`` to act in (a container's, for instance); without it the command acts in the
node's own namespace. Netlink calls run in worker threads; see :mod:`core0.net.netlink`.

Operator and read-only queues reach only the named namespaces ``ip.netns.add`` made; the admin
role reaches every one but never deletes one core0 did not make (docs/networking.md).
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from core0 import cancel
from core0.context import Context
from core0.errors import BadRequest, CommandError, Conflict, NotFound, Unavailable
from core0.net import netlink as nl
from core0.net import portguard
from core0.net import state as netstate
from core0.net import validate as v
from core0.registry import Role, command
from core0.sandbox.store import veth_prefix
from core0.schema import Doc, Len, NoArgs, Pattern, Range, Schema
from core0.virt.guards import CONTAINERS_BRIDGE

if TYPE_CHECKING:
    from pyroute2 import IPRoute

T = TypeVar("T")


#: named namespaces ip.netns.add keeps at most
MAX_NETNS = 1024


def owned_netns(ctx: Context) -> nl.Owned:
    """The named namespaces this command may use: every one under /run/netns for the admin
    role, only those ip.netns.add made (by identity: the namespace's cookie) for the others.
    Under ``core0 dev`` /run/netns is the host's, holding namespaces core0 has no business
    with. Every command that takes a ``netns`` (ip.*, 0-core's ip.bridge.* and ip.bond.*)
    goes through here. Inside a container (``corex.dispatch``) only the container's."""
    if ctx.netns_only is not None:
        return ctx.netns_only
    if ctx.job.role >= Role.ADMIN:
        return None
    return netstate.load(ctx.config.state_dir).netns


async def in_netns(ctx: Context, netns: str | None, fn: Callable[[IPRoute], T]) -> T:
    """Run ``fn(ipr)`` in a worker thread on a netlink socket of ``netns`` (scoped: see
    :func:`owned_netns`)."""
    owned = owned_netns(ctx) if netns is not None else None

    def work() -> T:
        with nl.session(netns, owned) as r:
            return fn(r)

    return await ctx.to_thread(work)


def _not_managed(ctx: Context, netns: str | None, names: list[str]) -> None:
    """409 for a bridge of bridge.create (bridge.delete removes it with its dnsmasq and
    rules) and for the node's own loopback (only ``up`` may change it) in the node's own
    namespace."""
    if netns is not None:
        return
    if "lo" in names:
        raise Conflict("lo is the node's loopback: it stays as it is (only ip.link.up)")
    bridges = netstate.load(ctx.config.state_dir).bridges
    for name in names:
        if name in bridges:
            raise Conflict(f"{name} was made by bridge.create: bridge.delete removes it")


#: prefixes of the links core0 names itself in the node's namespace: VM taps on kvm0
#: (``c0t<mac>``), segments' uplinks and bridges (``c0vl``/``c0vlb``/``c0vx``/``c0vxb``)
CORE0_PREFIXES = (portguard.CLOSED, "c0v")


#: the commands whose callers :func:`keep_core0_links` checks (other domains call these
#: handlers for core0's own links: corex.create makes its NAT bridge with bridge.create's)
_NET_DOMAINS = ("ip.", "bridge.")


def core0_link(ctx: Context, name: str, made: Container[str] = ()) -> str | None:
    """What ``name`` is when it is a link core0 makes and keeps in the node's namespace (its
    NAT bridges, a segment's uplink or bridge, a VM's tap, a container's veth, or one of
    ``made``: the bridges of bridge.create), else None."""
    if name in (CONTAINERS_BRIDGE, ctx.config.virt.bridge):
        return "a NAT bridge of core0's"
    if name.startswith(CORE0_PREFIXES):
        return "a link core0 makes for VMs and segments"
    if name.startswith(veth_prefix(Path(ctx.config.state_dir))):
        return "a container's nic"
    if name in made:
        return "a bridge of bridge.create"
    return None


def keep_core0_links(ctx: Context, netns: str | None, *names: str | None,
                     bridges: bool = True) -> None:
    """Below admin, 409 when one of ``names`` (links of the node's own namespace a command
    would change, create, or enslave to) is core0's (:func:`core0_link`): those change only
    through core0's own commands, which check whose VM or container they serve — a VM's tap
    moved into an operator's namespace would have taken that VM's traffic, an unguarded port
    enslaved to a NAT bridge could spoof the other queues' VMs and containers there, a tap or
    veth deleted would have cut another queue's workload off, a name taken ahead would have
    stopped the next container or VM from being made."""
    if (netns is not None or ctx.role >= Role.ADMIN or getattr(ctx.job, "internal", False)
            or not ctx.job.cmd.command.startswith(_NET_DOMAINS)):
        return  # core0's own jobs, and core0's use of these handlers (corex.create's bridge)
    made = netstate.load(ctx.config.state_dir).bridges if bridges else {}
    for name in names:
        why = core0_link(ctx, name, made) if name else None
        if why is not None:
            raise Conflict(f"{name} is {why}: below admin it changes only through core0's "
                           "own commands")


# ---------------------------------------------------------------- links


@dataclass(frozen=True)
class NsArgs(Schema):
    netns: v.NETNS | None = None


@command("ip.link.list", NsArgs, role=Role.READ_ONLY)
async def link_list(ctx: Context, args: NsArgs) -> list[dict[str, Any]]:
    """Links: [{name, index, type (veth, bridge, device, loopback…), hwaddr, master, up, mtu,
    operstate}]."""
    return await in_netns(ctx, args.netns, nl.describe_links)


@dataclass(frozen=True)
class LinkArgs(Schema):
    name: v.IFNAME
    netns: v.NETNS | None = None


@command("ip.link.get", LinkArgs, role=Role.READ_ONLY)
async def link_get(ctx: Context, args: LinkArgs) -> dict[str, Any]:
    """One link, as in ip.link.list (404 when missing)."""
    return await in_netns(ctx, args.netns, lambda r: nl.link_get(r, args.name))


@command("ip.link.up", LinkArgs)
async def link_up(ctx: Context, args: LinkArgs) -> None:
    """Bring a link up."""
    await in_netns(ctx, args.netns, lambda r: nl.link_set(r, args.name, state="up"))


@command("ip.link.down", LinkArgs)
async def link_down(ctx: Context, args: LinkArgs) -> None:
    """Bring a link down (409 for the node's own lo; below admin for core0's links)."""
    if args.name == "lo":
        _not_managed(ctx, args.netns, [args.name])
    keep_core0_links(ctx, args.netns, args.name)
    await in_netns(ctx, args.netns, lambda r: nl.link_set(r, args.name, state="down"))


@dataclass(frozen=True)
class RenameArgs(Schema):
    name: v.IFNAME
    new: Annotated[v.IFNAME, Doc("the new name")]
    netns: v.NETNS | None = None


@command("ip.link.name", RenameArgs)
async def link_name(ctx: Context, args: RenameArgs) -> None:
    """Rename a link (the kernel may refuse while it is up: 409; 409 for a bridge made by
    bridge.create; below admin for core0's links and their names)."""
    _not_managed(ctx, args.netns, [args.name])
    keep_core0_links(ctx, args.netns, args.name, args.new)
    await in_netns(ctx, args.netns, lambda r: nl.link_set(r, args.name, ifname=args.new))


@dataclass(frozen=True)
class MtuArgs(Schema):
    name: v.IFNAME
    mtu: Annotated[int, Doc("MTU"), Range(68, 65535)]
    netns: v.NETNS | None = None


@command("ip.link.mtu", MtuArgs)
async def link_mtu(ctx: Context, args: MtuArgs) -> None:
    """Set a link's MTU (409 for the node's own lo; below admin for core0's links)."""
    if args.name == "lo":
        _not_managed(ctx, args.netns, [args.name])
    keep_core0_links(ctx, args.netns, args.name)
    await in_netns(ctx, args.netns, lambda r: nl.link_set(r, args.name, mtu=args.mtu))


@dataclass(frozen=True)
class SetArgs(Schema):
    name: v.IFNAME
    netns: v.NETNS | None = None
    up: Annotated[bool, Doc("true: up, false: down")] | None = None
    mtu: Annotated[int, Range(68, 65535)] | None = None
    hwaddr: v.MAC | None = None
    master: Annotated[v.IFNAME, Doc("enslave to this bridge/bond")] | None = None
    nomaster: Annotated[bool, Doc("release from its bridge/bond")] = False
    move_to: Annotated[v.NETNS, Doc("move the link into this named netns")] | None = None


@command("ip.link.set", SetArgs)
async def link_set(ctx: Context, args: SetArgs) -> None:
    """Change several attributes of a link at once (up, mtu, hwaddr, master/nomaster) and/or
    move it into another named netns (``move_to``; it leaves ``netns``)."""
    if args.master is not None and args.nomaster:
        raise BadRequest("master and nomaster are exclusive", field="nomaster")
    if args.move_to is not None or (args.name == "lo" and (
            args.up is not True or args.mtu or args.hwaddr or args.master or args.nomaster)):
        _not_managed(ctx, args.netns, [args.name])
    keep_core0_links(ctx, args.netns, args.name, args.master)
    state = None if args.up is None else ("up" if args.up else "down")
    master = "" if args.nomaster else args.master
    owned = owned_netns(ctx)
    await in_netns(ctx, args.netns, lambda r: nl.link_set(
        r, args.name, owned, state=state, mtu=args.mtu, address=args.hwaddr, master=master,
        netns=args.move_to))


@dataclass(frozen=True)
class LinkAddArgs(nl.LinkSpec):
    netns: v.NETNS | None = None


@command("ip.link.add", LinkAddArgs)
async def link_add(ctx: Context, args: LinkAddArgs) -> dict[str, Any]:
    """Create a link: veth (``peer``, optionally ``peer_netns``), bridge, vxlan (``id``,
    ``local``, ``remote`` or ``group``, ``parent``, ``port``), macvlan (``parent``, ``mode``),
    vlan (``parent``, ``id``), bond (``mode``), dummy. Optional ``hwaddr``, ``mtu``,
    ``master``, ``up``. A kind the running kernel lacks answers 412 naming it; an existing name
    409."""
    keep_core0_links(ctx, args.netns, *_made(args))
    owned = owned_netns(ctx)
    return await in_netns(ctx, args.netns, lambda r: nl.link_add(r, args, owned))


def _made(spec: nl.LinkSpec) -> tuple[str | None, ...]:
    """The node-namespace names a new link takes or joins: its own, its master, its lower
    link (a macvlan or vlan on a segment bridge would see that VLAN), and its veth peer's
    when the peer stays beside it."""
    return (spec.name, spec.master, spec.parent,
            spec.peer if spec.peer_netns is None else None)


@dataclass(frozen=True)
class AddManyArgs(Schema):
    links: Annotated[list[nl.LinkSpec], Doc("links to create, in order"), Len(1, 4096)]
    netns: v.NETNS | None = None


@command("ip.link.add_many", AddManyArgs)
async def link_add_many(ctx: Context, args: AddManyArgs) -> dict[str, Any]:
    """Create many links in one command (one netlink socket, one thread hop): all or nothing —
    on the first failure the links this command created are deleted again and the error
    names the failing item."""

    keep_core0_links(ctx, args.netns, *(n for spec in args.links for n in _made(spec)))
    owned = owned_netns(ctx)

    def work(r: IPRoute) -> dict[str, Any]:
        done: list[str] = []
        for i, spec in enumerate(args.links):
            try:
                nl.link_add(r, spec, owned)
            except CommandError as e:
                for name in reversed(done):
                    try:
                        nl.link_del(r, name)
                    except CommandError:
                        pass
                e.message = f"links[{i}]: {e.message}"
                e.args = (e.message,)
                raise
            done.append(spec.name)
        return {"created": done}

    return await in_netns(ctx, args.netns, work)


@command("ip.link.del", LinkArgs)
async def link_del(ctx: Context, args: LinkArgs) -> None:
    """Delete a link (deleting one end of a veth deletes both); 409 for a bridge made by
    bridge.create (bridge.delete removes it), below admin for core0's links."""
    _not_managed(ctx, args.netns, [args.name])
    keep_core0_links(ctx, args.netns, args.name)
    await in_netns(ctx, args.netns, lambda r: nl.link_del(r, args.name))


@dataclass(frozen=True)
class DelManyArgs(Schema):
    names: Annotated[list[v.IFNAME], Doc("links to delete"), Len(1, 4096)]
    netns: v.NETNS | None = None


@command("ip.link.del_many", DelManyArgs)
async def link_del_many(ctx: Context, args: DelManyArgs) -> dict[str, list[str]]:
    """Delete many links in one command; returns {deleted, missing} (missing links are not
    an error here); 409 before anything is deleted when one is a bridge made by
    bridge.create (below admin: one of core0's links)."""
    _not_managed(ctx, args.netns, args.names)
    keep_core0_links(ctx, args.netns, *args.names)

    def work(r: IPRoute) -> dict[str, list[str]]:
        deleted, missing = [], []
        for name in args.names:
            try:
                nl.link_del(r, name)
                deleted.append(name)
            except CommandError as e:
                if e.code != 404:
                    e.message = f"{name}: {e.message}"
                    e.args = (e.message,)
                    raise
                missing.append(name)
        return {"deleted": deleted, "missing": missing}

    return await in_netns(ctx, args.netns, work)


# ---------------------------------------------------------------- addresses


@dataclass(frozen=True)
class AddrArgs(Schema):
    name: v.IFNAME
    ip: Annotated[v.CIDR, Doc("address/prefix, e.g. 10.0.0.1/24 or fd00::1/64")]
    netns: v.NETNS | None = None


@command("ip.addr.add", AddrArgs)
async def addr_add(ctx: Context, args: AddrArgs) -> None:
    """Add an address to a link (409 when it is there already). 400 for an address no host
    may carry: unspecified (0.0.0.0, ::), multicast, broadcast/reserved (240.0.0.0/4),
    IPv4-mapped, a /0 prefix, the network or broadcast address of its IPv4 prefix (below /31),
    or loopback on a link other than lo. 409 in the node's namespace for the destination of a
    port forward (the node would take that traffic), and below admin on core0's links."""
    keep_core0_links(ctx, args.netns, args.name)
    iface = v.host_interface(args.ip, "ip", args.name)
    if args.netns is None:
        fwd = next((f for f in netstate.load(ctx.config.state_dir).forwards
                    if f.ip == str(iface.ip)), None)
        if fwd is not None:
            raise Conflict(f"{iface.ip} is the destination of the forward {fwd.src} of "
                           f"{fwd.owner}: as the node's own address it would redirect that "
                           "traffic to the node")
    await in_netns(ctx, args.netns, lambda r: nl.addr_change(r, "add", args.name, args.ip))


@command("ip.addr.del", AddrArgs)
async def addr_del(ctx: Context, args: AddrArgs) -> None:
    """Remove an address from a link (404 when it is not there; 409 for the address of a
    bridge made by bridge.create: its dnsmasq serves on it; below admin on core0's links)."""
    keep_core0_links(ctx, args.netns, args.name)
    if args.netns is None:
        br = netstate.load(ctx.config.state_dir).bridges.get(args.name)
        if br is not None and br.cidr and v.interface(args.ip) == v.interface(br.cidr):
            raise Conflict(f"{args.ip} is the address of bridge {args.name} (made by "
                           "bridge.create): bridge.delete removes it")
    await in_netns(ctx, args.netns, lambda r: nl.addr_change(r, "del", args.name, args.ip))


@dataclass(frozen=True)
class AddrListArgs(Schema):
    name: Annotated[v.IFNAME, Doc("only this link")] | None = None
    netns: v.NETNS | None = None


@command("ip.addr.list", AddrListArgs, role=Role.READ_ONLY)
async def addr_list(ctx: Context, args: AddrListArgs) -> list[Any]:
    """Addresses. With ``name`` (0-core's form): ["10.0.0.1/24", ...] of that link; without:
    [{name, addr, family}] of every link."""
    rows = await in_netns(ctx, args.netns, lambda r: nl.addr_list(r, args.name))
    if args.name is not None:
        return [a["addr"] for a in rows]
    return rows


# ---------------------------------------------------------------- routes


@dataclass(frozen=True)
class RouteArgs(Schema):
    dst: Annotated[str, Doc('"default" or a network (10.1.0.0/16)'),
                   Pattern(r"default|[0-9A-Fa-f:./]{2,64}")] = "default"
    gw: Annotated[v.ADDR, Doc("gateway")] | None = None
    dev: Annotated[v.IFNAME, Doc("output link")] | None = None
    src: Annotated[v.ADDR, Doc("preferred source address")] | None = None
    metric: Annotated[int, Range(0, 2**32 - 1)] | None = None
    table: Annotated[int, Doc("routing table (default main)"), Range(1, 2**32 - 1)] | None = None
    netns: v.NETNS | None = None


def _route_kw(args: RouteArgs) -> dict[str, Any]:
    return {"dst": args.dst, "gw": args.gw, "dev": args.dev, "metric": args.metric,
            "table": args.table, "src": args.src}


@command("ip.route.add", RouteArgs)
async def route_add(ctx: Context, args: RouteArgs) -> None:
    """Add a route: ``dst`` via ``gw`` and/or ``dev`` (an unreachable gateway is a 400)."""
    await in_netns(ctx, args.netns, lambda r: nl.route_change(r, "add", **_route_kw(args)))


@command("ip.route.del", RouteArgs)
async def route_del(ctx: Context, args: RouteArgs) -> None:
    """Delete a route (404 when there is no such route); ``dst`` alone is enough."""
    await in_netns(ctx, args.netns, lambda r: nl.route_change(r, "del", **_route_kw(args)))


@dataclass(frozen=True)
class RouteListArgs(Schema):
    dev: Annotated[v.IFNAME, Doc("only routes through this link")] | None = None
    table: Annotated[int, Range(1, 2**32 - 1)] = 254
    netns: v.NETNS | None = None


@command("ip.route.list", RouteListArgs, role=Role.READ_ONLY)
async def route_list(ctx: Context, args: RouteListArgs) -> list[dict[str, Any]]:
    """Unicast routes of a table (main by default): [{dst, gw, dev, metric, table, proto,
    scope, src, family}]."""
    return await in_netns(ctx, args.netns, lambda r: nl.route_list(r, args.dev, args.table))


# ---------------------------------------------------------------- namespaces


@dataclass(frozen=True)
class NetnsArgs(Schema):
    name: v.NETNS


@command("ip.netns.add", NetnsArgs)
async def netns_add(ctx: Context, args: NetnsArgs) -> None:
    """Create a named network namespace (/run/netns/<name>, like ``ip netns add``); its
    loopback is brought up. core0 records it (by name and namespace cookie) in its state dir:
    only such namespaces are listed, used (``netns``, ``peer_netns``, ``move_to``) and
    deleted from operator and read-only queues. At most 1024 (503 beyond). Below admin,
    409 for a ``core0-`` name: the containers' namespaces are named so, and one taken ahead
    would stop that container from being made."""
    if args.name.startswith("core0-") and ctx.role < Role.ADMIN:
        raise Conflict(f"{args.name}: core0-… namespaces are the containers' (core0's own)")
    async with netstate.LOCK:
        st = netstate.load(ctx.config.state_dir)
        if len(st.netns) >= MAX_NETNS:  # forget those removed behind core0's back
            st.netns = await ctx.to_thread(
                lambda: {n: i for n, i in st.netns.items() if nl.netns_id(n) == i})
            if len(st.netns) >= MAX_NETNS:
                raise Unavailable(f"core0 has made {MAX_NETNS} network namespaces already")
        # made and recorded even when the job is killed meanwhile (the kill comes after the
        # record): one made after the kill was left unrecorded, out of an operator's reach
        ident = await cancel.atomic(ctx.to_thread(nl.netns_create, args.name))
        st.netns[args.name] = ident
        netstate.save(ctx.config.state_dir, st)
    await in_netns(ctx, args.name, lambda r: nl.link_set(r, "lo", state="up"))


@command("ip.netns.del", NetnsArgs)
async def netns_del(ctx: Context, args: NetnsArgs) -> None:
    """Remove a named network namespace that ip.netns.add made (its links go when the last
    process leaves it). 404 when there is none of that name; a namespace core0 did not make
    is never removed: 409 for the admin role (who sees it in ip.netns.list), 404 for the
    others."""
    async with netstate.LOCK:
        st = netstate.load(ctx.config.state_dir)
        ident = await ctx.to_thread(nl.netns_id, args.name)
        mine = ident is not None and st.netns.get(args.name) == ident
        if not mine:
            if args.name in st.netns:  # gone, or replaced behind core0's back: forget it
                del st.netns[args.name]
                netstate.save(ctx.config.state_dir, st)
            if ident is not None and ctx.job.role >= Role.ADMIN:
                raise Conflict(f"network namespace {args.name} was not made by core0: "
                               "not deleting it")
            raise NotFound(f"no network namespace {args.name} made by core0")
        await cancel.atomic(ctx.to_thread(nl.netns_remove, args.name))
        del st.netns[args.name]
        netstate.save(ctx.config.state_dir, st)


@command("ip.netns.list", role=Role.READ_ONLY)
async def netns_list(ctx: Context, args: NoArgs) -> list[str]:
    """Names of network namespaces: those ip.netns.add made for operator and read-only
    queues; every one under /run/netns for the admin role (the host's too under
    ``core0 dev``)."""
    owned = owned_netns(ctx)
    if owned is None:
        return await ctx.to_thread(nl.netns_list)
    names = sorted(owned)
    return [n for n, i in zip(names, await ctx.to_thread(
        lambda: [nl.netns_id(n) for n in names]), strict=True) if i == owned[n]]
