"""nft.*: open ports, the input policy and port forwards, in core0's own table ``inet core0``.

Port forwards use 0-core's syntax: ``{"<src>": dst_port}`` with src ``port``, ``ip:port``,
``cidr:port``, ``nic:port`` or ``nic*:port``, optionally followed by ``|udp`` or ``|tcp+udp``
(tcp when omitted). A forward applies to traffic addressed to one of the node's own addresses
(``fib daddr type local``) and arriving on any link (or the named ones, for the nic forms). It
works for connections the node opens to its own addresses too, except over loopback (an
``output`` DNAT, 0-core#682), and from containers on core0's bridges (masqueraded hairpin).
Forwards never overlap (a second one that could match the same packets is a 409), never take
a port the node listens on (409) and never point at the node itself, loopback, broadcast,
multicast or link-local addresses (400): see docs/networking.md.
Each forward belongs to an owner (``container:<id>``, ``vm:<id>``, ``user:<id>``), written on
its rules as an nft comment; ``nft.owner_remove`` drops all of an owner's rules at once. A
``user:`` owner belongs to the queue that made its first forward, as a job does to its queue:
only a queue that may act on that queue's jobs changes its forwards (403 otherwise). Every
change rebuilds core0's table in one nft transaction (see :mod:`core0.net.nft`); other tables
are never touched.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from core0.context import Context
from core0.errors import BadRequest, Conflict, Forbidden, NotFound, ToolError, Unavailable
from core0.net import netlink as nl
from core0.net import nft, sockets
from core0.net import state as netstate
from core0.net import validate as v
from core0.registry import Role, command
from core0.schema import Doc, Len, NoArgs, Pattern, Range, Schema

if TYPE_CHECKING:
    from pyroute2 import IPRoute


@dataclass(frozen=True)
class PortArgs(Schema):
    port: Annotated[int, Doc("TCP port"), Range(1, 65535)]
    interface: Annotated[str, Doc("only on this link (a trailing * matches a prefix)"),
                         Pattern(v.IFGLOB_RE)] | None = None
    subnet: Annotated[str, Doc("only from this network"), Pattern(v.ADDR_RE)] | None = None

    def rule(self) -> nft.OpenPort:
        return nft.OpenPort.make(self.port, self.interface, self.subnet)


@command("nft.open_port", PortArgs)
async def open_port(ctx: Context, args: PortArgs) -> None:
    """Accept TCP ``port`` (optionally only on ``interface`` and/or from ``subnet``) in core0's
    input chain; 409 when that exact rule exists. It matters when the input policy is drop
    (nft.policy)."""
    rule = args.rule()
    async with netstate.LOCK:
        st = netstate.load(ctx.config.state_dir)
        if rule in st.open_ports:
            raise Conflict(f"rule exists: {rule.rule()}")
        new = st.copy()
        new.open_ports.append(rule)
        await netstate.commit(ctx, new, st)


@command("nft.drop_port", PortArgs)
async def drop_port(ctx: Context, args: PortArgs) -> bool:
    """Remove an open-port rule; false when there was none (not an error, as in 0-core)."""
    rule = args.rule()
    async with netstate.LOCK:
        st = netstate.load(ctx.config.state_dir)
        if rule not in st.open_ports:
            return False
        new = st.copy()
        new.open_ports.remove(rule)
        await netstate.commit(ctx, new, st)
        return True


@command("nft.rule_exists", PortArgs, role=Role.READ_ONLY)
async def rule_exists(ctx: Context, args: PortArgs) -> bool:
    """Whether that open-port rule exists."""
    return args.rule() in netstate.load(ctx.config.state_dir).open_ports


@command("nft.list", role=Role.READ_ONLY)
async def list_(ctx: Context, args: NoArgs) -> list[str]:
    """Open ports, as 0-core: the rule strings (``iifname "eth0" ip saddr 10.0.0.0/8 tcp dport
    22 accept``), each the rule core0 keeps in its input chain."""
    return [p.rule() for p in netstate.load(ctx.config.state_dir).open_ports]


@dataclass(frozen=True)
class PolicyArgs(Schema):
    policy: Annotated[Literal["accept", "drop"], Doc("what happens to input traffic no rule "
                                                     "accepts")]


@command("nft.policy", PolicyArgs)
async def policy(ctx: Context, args: PolicyArgs) -> dict[str, str]:
    """Set the policy of core0's input chain. With ``drop`` the node accepts only established
    traffic, loopback, ICMP, DNS/DHCP on core0's dnsmasq bridges, the embedded Redis port and
    the open ports (other tables may drop more, never accept more). Returns {policy, was}."""
    async with netstate.LOCK:
        st = netstate.load(ctx.config.state_dir)
        was = st.policy
        if was != args.policy:
            new = st.copy()
            new.policy = args.policy
            await netstate.commit(ctx, new, st)
    return {"policy": args.policy, "was": was}


@dataclass(frozen=True)
class ForwardAddArgs(Schema):
    owner: v.OWNER
    ip: Annotated[v.ADDR, Doc("IPv4 destination (the container's or VM's address)")]
    forwards: Annotated[dict[str, Annotated[int, Range(1, 65535)]],
                        Doc('{"<src>": destination port}, src in 0-core\'s syntax'),
                        Len(1, 1024)]


#: forwards the node keeps at most (each is two to four nft rules)
MAX_FORWARDS = 4096


def _node_addresses(r: IPRoute) -> list[ipaddress.IPv4Interface]:
    """The node's own IPv4 addresses, with their prefixes (thread)."""
    return [a for _, a in nl.all_networks(r) if isinstance(a, ipaddress.IPv4Interface)]


def check_local(fwds: list[nft.Forward], mine: list[ipaddress.IPv4Interface]) -> None:
    """400 when a destination is one of the node's own addresses (the forward would redirect
    traffic to the node's own services, e.g. ``3000`` → its sshd) or the network/broadcast
    address of one of its networks."""
    for f in fwds:
        a = ipaddress.IPv4Address(f.ip)
        for iface in mine:
            net = iface.network
            if a == iface.ip:
                why = "the node's own address"
            elif net.prefixlen < 31 and a in (net.network_address, net.broadcast_address):
                why = f"the network or broadcast address of {net}"
            else:
                continue
            raise BadRequest(f"ip: {a} is {why}: not a destination for a forward", field="ip")


def check_listeners(fwds: list[nft.Forward], socks: list[sockets.Listener]) -> None:
    """409 when the node itself listens on a forward's port (on an address the source
    matches): the DNAT would take the port from the node's own service (its sshd, the Redis
    API, dnsmasq on a bridge)."""
    for f in fwds:
        for sock in socks:
            if f.source.takes(sock):
                raise Conflict(f"{f.src}: the node itself listens on {sock.proto} "
                               f"{sock.addr}:{sock.port}")


def check_overlaps(existing: list[nft.Forward], fwds: list[nft.Forward]) -> list[nft.Forward]:
    """The forwards of ``fwds`` that are new; 409 when one could match a packet that an
    existing forward (or an earlier one of ``fwds``) matches too: nft applies the first DNAT
    that matches, so the later forward would silently never work."""
    by_port: dict[int, list[nft.Forward]] = {}
    for f in existing:
        by_port.setdefault(f.source.port, []).append(f)
    added: list[nft.Forward] = []
    for f in fwds:
        if f in existing or f in added:
            continue
        for other in by_port.get(f.source.port, []):
            if f.overlaps(other):
                raise Conflict(f"{f.src}: overlaps {other.src} (forwarded to "
                               f"{other.ip}:{other.port} by {other.owner})")
        by_port.setdefault(f.source.port, []).append(f)
        added.append(f)
    return added


@command("nft.forward_add", ForwardAddArgs)
async def forward_add(ctx: Context, args: ForwardAddArgs) -> list[dict[str, Any]]:
    """Add port forwards (DNAT) of ``owner`` to ``ip``: all or nothing. 409 when a source
    could match the same packets as an existing forward of any owner (same port and protocol,
    and: either one is a bare port, the same or overlapping addresses/networks, link names
    that can be the same link, or a link and an address), or as another source of the same
    call, or when the node itself listens on that port (on an address the source matches:
    the forward would take the port from the node's own service); adding the same forward
    again is a no-op. 400 when ``ip`` is not a unicast host
    (loopback, 0.0.0.0/8, broadcast, multicast, reserved, link-local) or is one of the node's
    own addresses or the network/broadcast address of one of its networks. At most
    4096 forwards on the node (503 beyond). Enables IPv4 forwarding. Returns the owner's
    forwards. Below admin, not for a container or VM as owner (403: their own commands); a
    ``user:`` owner is its first forward's maker's: a queue that may not act on that queue's
    jobs (a lower role; below admin, another private queue's) gets 403."""
    _may_change(ctx, args.owner)
    fwds = [nft.Forward.make(args.owner, src, args.ip, dport)
            for src, dport in args.forwards.items()]
    async with netstate.LOCK:
        st = netstate.load(ctx.config.state_dir)
        _may_act_for(ctx, st, args.owner)
        added = check_overlaps(st.forwards, fwds)
        new = st.copy()
        new.forwards.extend(added)
        if added:
            _record_owner(ctx, new, args.owner)
            if len(new.forwards) > MAX_FORWARDS:
                raise Unavailable(f"too many forwards on this node (at most {MAX_FORWARDS})")

            def work() -> None:
                with nl.session() as r:
                    check_local(added, _node_addresses(r))
                check_listeners(added, sockets.listeners())
                nl.enable_ip_forward()

            await ctx.to_thread(work)
            await netstate.commit(ctx, new, st)
    return [f.to_dict() for f in new.forwards if f.owner == args.owner]


#: owners of the workloads' forwards: below admin, changed only through the workloads' own
#: commands (corex.portforward-*, kvm.portforward-*, terminate, destroy), which check that
#: the calling queue may act on that container or VM (an operator removed an admin's
#: container's forwards with nft.owner_remove)
WORKLOAD_OWNERS = ("container:", "vm:")


def _may_change(ctx: Context, owner: str) -> None:
    if (owner.startswith(WORKLOAD_OWNERS) and ctx.role < Role.ADMIN
            and ctx.job.cmd.command.startswith("nft.")):
        raise Forbidden(f"owner {owner}: a container's or VM's forwards change through its "
                        "own commands (corex.portforward-*, kvm.portforward-*) below admin",
                        field="owner")


def _may_act_for(ctx: Context, st: netstate.NetState, owner: str) -> None:
    """403 when ``owner`` (``user:<id>``) has forwards made by a queue this one may not act
    for: the rule of jobs and containers (:meth:`Role.sees`: at least the maker's role, and
    below admin a private queue's owners only from that queue). Forwards from before the
    makers were recorded count as an admin's. core0's own jobs act for every owner."""
    if not owner.startswith("user:"):
        return
    rec = st.owners.get(owner)
    if rec is None:
        if not any(f.owner == owner for f in st.forwards):
            return  # a free name
        role, scope = Role.ADMIN, None
    else:
        role, scope = _role(rec.get("role")), rec.get("scope") or None
    if not ctx.may_act_for(role, scope):
        why = (f"made by a queue of role {role.label}" if ctx.job.role < role
               else "made by another private queue" if ctx.scope or scope
               else "made by another queue")
        raise Forbidden(f"owner {owner}: this queue may not change its forwards ({why})",
                        field="owner")


def _role(value: Any) -> Role:
    try:
        return Role(int(value))
    except (TypeError, ValueError):
        return Role.ADMIN


def _record_owner(ctx: Context, st: netstate.NetState, owner: str) -> None:
    """Remember who made a ``user:`` owner's first forward (see :func:`_may_act_for`)."""
    if owner.startswith("user:") and owner not in st.owners:
        st.owners[owner] = {"role": int(ctx.job.role), "scope": ctx.scope or ""}


@dataclass(frozen=True)
class ForwardRemoveArgs(Schema):
    owner: v.OWNER
    src: Annotated[list[Annotated[str, Len(1, 80)]], Doc("sources to remove (any spelling of "
                                                         "them)"), Len(1, 1024)]


@command("nft.forward_remove", ForwardRemoveArgs)
async def forward_remove(ctx: Context, args: ForwardRemoveArgs) -> int:
    """Remove some of an owner's forwards by source; 404 when the owner has none of them.
    Returns how many were removed. Below admin, not a container's or VM's (403); a ``user:``
    owner's only from a queue that may act for its maker (403, see nft.forward_add)."""
    _may_change(ctx, args.owner)
    keys = {nft.parse_source(s, "src", strict=False).key for s in args.src}
    async with netstate.LOCK:
        st = netstate.load(ctx.config.state_dir)
        _may_act_for(ctx, st, args.owner)
        new = st.copy()
        new.forwards = [f for f in st.forwards if not (f.owner == args.owner and f.src in keys)]
        removed = len(st.forwards) - len(new.forwards)
        if not removed:
            raise NotFound(f"{args.owner} has no forward from {', '.join(sorted(keys))}")
        new.prune_owners()
        await netstate.commit(ctx, new, st)
    return removed


@dataclass(frozen=True)
class OwnerArgs(Schema):
    owner: v.OWNER


@command("nft.owner_remove", OwnerArgs)
async def owner_remove(ctx: Context, args: OwnerArgs) -> int:
    """Remove every rule of an owner (its forwards); returns how many forwards went (0 is not
    an error: cleaning up twice is fine). Below admin, not a container's or VM's (403); a
    ``user:`` owner's only from a queue that may act for its maker (403)."""
    _may_change(ctx, args.owner)
    async with netstate.LOCK:
        st = netstate.load(ctx.config.state_dir)
        _may_act_for(ctx, st, args.owner)
        new = st.copy()
        new.forwards = [f for f in st.forwards if f.owner != args.owner]
        removed = len(st.forwards) - len(new.forwards)
        if removed:
            new.prune_owners()
            await netstate.commit(ctx, new, st)
    return removed


@dataclass(frozen=True)
class ForwardListArgs(Schema):
    owner: v.OWNER | None = None


@command("nft.forward_list", ForwardListArgs, role=Role.READ_ONLY)
async def forward_list(ctx: Context, args: ForwardListArgs) -> list[dict[str, Any]]:
    """Port forwards: [{owner, src (canonical: [addr:]port|proto), ip, port}], all or one
    owner's."""
    return [f.to_dict() for f in netstate.load(ctx.config.state_dir).forwards
            if args.owner is None or f.owner == args.owner]


@command("nft.show", role=Role.READ_ONLY)
async def show(ctx: Context, args: NoArgs) -> dict[str, Any]:
    """core0's live table: {text (nft's listing, "" when there is no table), rules [{chain,
    handle, comment}]}."""
    res = await ctx.run(["nft", "-j", "list", "table", nft.FAMILY, nft.TABLE], check=False,
                        timeout=30)
    if res.status != 0:
        if "No such file" in res.stderr:
            return {"text": "", "rules": []}
        raise ToolError(res.argv, res.status, res.stderr, res.stdout)
    text = await ctx.run(["nft", "list", "table", nft.FAMILY, nft.TABLE], timeout=30)
    return {"text": text.stdout, "rules": nft.parse_live(json.loads(res.stdout))}


@command("nft.reconcile", NoArgs, role=Role.ADMIN, internal=True)
async def reconcile(ctx: Context, args: NoArgs) -> bool:
    """Load core0's table and the port guards again from the saved network state, so that
    the kernel holds exactly what the state says: a dispatcher killed between an ``nft -f``
    and the record of it left rules the state lacks (a forward that no command could
    remove), and a table deleted behind core0's back comes back. Submitted at each
    dispatcher start by a node that has set up nft before (core0/boot/leftovers.py)."""
    from core0.net import portguard

    async with netstate.LOCK:
        st = netstate.load(ctx.config.state_dir)
        await netstate.commit(ctx, st)
    await portguard.change(ctx, refresh=bool(portguard.load(ctx.config.state_dir)))
    return True
