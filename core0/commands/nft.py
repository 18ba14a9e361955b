"""nft.*: open ports, the input policy and port forwards, in core0's own table ``inet core0``.

Port forwards use 0-core's syntax: ``{"<src>": dst_port}`` with src ``port``, ``ip:port``,
``cidr:port``, ``nic:port`` or ``nic*:port``, optionally followed by ``|udp`` or ``|tcp+udp``
(tcp when omitted). A forward applies to traffic addressed to one of the node's own addresses
(``fib daddr type local``) and arriving on any link (or the named ones, for the nic forms). It
works for connections the node opens to its own addresses too, except over loopback (an
``output`` DNAT, 0-core#682), and from containers on core0's bridges (masqueraded hairpin).
Each forward belongs to an owner (``container:<id>``, ``vm:<id>``, ``user:<id>``), written on
its rules as an nft comment; ``nft.owner_remove`` drops all of an owner's rules at once. Every
change rebuilds core0's table in one nft transaction (see :mod:`core0.net.nft`); other tables
are never touched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from core0.context import Context
from core0.errors import Conflict, NotFound, ToolError
from core0.net import netlink as nl
from core0.net import nft
from core0.net import state as netstate
from core0.net import validate as v
from core0.registry import Role, command
from core0.schema import Doc, Len, NoArgs, Pattern, Range, Schema


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


@command("nft.forward_add", ForwardAddArgs)
async def forward_add(ctx: Context, args: ForwardAddArgs) -> list[dict[str, Any]]:
    """Add port forwards (DNAT) of ``owner`` to ``ip``: all or nothing. 409 when a source is
    forwarded already by another owner or elsewhere; adding the same forward again is a no-op.
    Enables IPv4 forwarding. Returns the owner's forwards."""
    fwds = [nft.Forward.make(args.owner, src, args.ip, dport)
            for src, dport in args.forwards.items()]
    async with netstate.LOCK:
        st = netstate.load(ctx.config.state_dir)
        new = st.copy()
        used = {slot: f for f in st.forwards for slot in f.slots()}
        for f in fwds:
            if f in new.forwards:
                continue
            for slot in f.slots():
                other = used.get(slot)
                if other is not None:
                    raise Conflict(f"{f.src}: forwarded already to {other.ip}:{other.port} "
                                   f"by {other.owner}")
                used[slot] = f
            new.forwards.append(f)
        if new.forwards != st.forwards:
            await ctx.to_thread(nl.enable_ip_forward)
            await netstate.commit(ctx, new, st)
    return [f.to_dict() for f in new.forwards if f.owner == args.owner]


@dataclass(frozen=True)
class ForwardRemoveArgs(Schema):
    owner: v.OWNER
    src: Annotated[list[Annotated[str, Len(1, 80)]], Doc("sources to remove (any spelling of "
                                                         "them)"), Len(1, 1024)]


@command("nft.forward_remove", ForwardRemoveArgs)
async def forward_remove(ctx: Context, args: ForwardRemoveArgs) -> int:
    """Remove some of an owner's forwards by source; 404 when the owner has none of them.
    Returns how many were removed."""
    keys = {nft.parse_source(s, "src").key for s in args.src}
    async with netstate.LOCK:
        st = netstate.load(ctx.config.state_dir)
        new = st.copy()
        new.forwards = [f for f in st.forwards if not (f.owner == args.owner and f.src in keys)]
        removed = len(st.forwards) - len(new.forwards)
        if not removed:
            raise NotFound(f"{args.owner} has no forward from {', '.join(sorted(keys))}")
        await netstate.commit(ctx, new, st)
    return removed


@dataclass(frozen=True)
class OwnerArgs(Schema):
    owner: v.OWNER


@command("nft.owner_remove", OwnerArgs)
async def owner_remove(ctx: Context, args: OwnerArgs) -> int:
    """Remove every rule of an owner (its forwards); returns how many forwards went (0 is not
    an error: cleaning up twice is fine)."""
    async with netstate.LOCK:
        st = netstate.load(ctx.config.state_dir)
        new = st.copy()
        new.forwards = [f for f in st.forwards if f.owner != args.owner]
        removed = len(st.forwards) - len(new.forwards)
        if removed:
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
