"""ip.bond.*: Linux bonding devices, with 0-core's arguments and results.

``ip.bond.add {bond, interfaces, mtu}`` makes a balance-rr bond (0-core's only mode), sets
the MTU on it and its slaves and enslaves them; ``ip.bond.list`` parses
``/proc/net/bonding/<bond>`` into 0-core's shape. ``ip.link.add`` (kind bond) offers the
other modes.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from core0.commands.ip import in_netns, keep_core0_links, owned_netns
from core0.context import Context
from core0.errors import BadRequest, Conflict
from core0.net import netlink as nl
from core0.net import validate as v
from core0.registry import Role, command
from core0.schema import Doc, Len, Range, Schema

if TYPE_CHECKING:
    from pyroute2 import IPRoute

#: the bonding report of the calling thread's network namespace
BONDING = "/proc/thread-self/net/bonding"


@dataclass(frozen=True)
class BondAddArgs(Schema):
    bond: Annotated[v.IFNAME, Doc("bond name")]
    interfaces: Annotated[list[v.IFNAME], Doc("links to enslave"), Len(0, 32)] = field(
        default_factory=list)
    mtu: Annotated[int, Doc("MTU of the bond and its slaves (0: 1500, as 0-core)"),
                   Range(0, 65535)] = 1500
    netns: v.NETNS | None = None


def _bond_add(r: IPRoute, args: BondAddArgs) -> None:
    mtu = args.mtu or 1500
    if mtu < 68:
        raise BadRequest("arguments.mtu: must be >= 68", field="arguments.mtu")
    if r.link_lookup(ifname=args.bond):
        raise Conflict(f"link {args.bond} exists")
    slaves = [nl.index_of(r, name) for name in args.interfaces]  # 404 before creating
    nl.link_add(r, nl.LinkSpec(name=args.bond, kind="bond", mtu=mtu))
    try:
        bond = nl.index_of(r, args.bond)
        for idx, name in zip(slaves, args.interfaces, strict=True):
            try:  # the kernel enslaves only a link that is down
                r.link("set", index=idx, state="down")
                r.link("set", index=idx, mtu=mtu)
                r.link("set", index=idx, master=bond)
                r.link("set", index=idx, state="up")
            except Exception as e:
                raise nl.nl_error(e, f"link {name}") from None
        r.link("set", index=bond, state="up")
    except BaseException:
        with contextlib.suppress(Exception):
            r.link("del", ifname=args.bond)
        raise


@command("ip.bond.add", BondAddArgs)
async def bond_add(ctx: Context, args: BondAddArgs) -> None:
    """Create a balance-rr bond over ``interfaces`` (each set down, to ``mtu``, enslaved and
    up again) and bring it up, as 0-core. 409 if the name is taken, 404 for a missing slave,
    412 if the kernel has no bonding driver."""

    keep_core0_links(ctx, args.netns, args.bond, *args.interfaces)
    await in_netns(ctx, args.netns, lambda r: _bond_add(r, args))


@dataclass(frozen=True)
class BondArgs(Schema):
    bond: Annotated[v.IFNAME, Doc("bond name")]
    netns: v.NETNS | None = None


@command("ip.bond.del", BondArgs)
async def bond_del(ctx: Context, args: BondArgs) -> None:
    """Delete a bond (its slaves are released). 404 if there is none; 400 if the link is not
    a bond."""

    def work(r: IPRoute) -> None:
        link = nl.link_get(r, args.bond)
        if link["type"] != "bond":
            raise BadRequest(f"{args.bond} is a {link['type']} link, not a bond")
        nl.link_del(r, args.bond)

    keep_core0_links(ctx, args.netns, args.bond)
    await in_netns(ctx, args.netns, work)


def parse_bonding(text: str) -> list[dict[str, str]]:
    """``/proc/net/bonding/<bond>`` → 0-core's list of sections ({key: value}, one section per
    blank-line separated block; values keep their leading space, as 0-core's)."""
    out: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            out.append(cur)
            cur = {}
            continue
        k, sep, val = line.partition(":")
        if sep:
            cur[k] = val
    if cur:
        out.append(cur)
    return out


@dataclass(frozen=True)
class NsArgs(Schema):
    netns: v.NETNS | None = None


@command("ip.bond.list", NsArgs, role=Role.READ_ONLY)
async def bond_list(ctx: Context, args: NsArgs) -> dict[str, list[dict[str, str]]]:
    """Every bond of the node's namespace (or of ``netns``): ``{bond: [{"Bonding Mode":
    " load balancing (round-robin)", "MII Status": " up", ...}, {"Slave Interface": " eth1",
    ...}]}``, the
    kernel's ``/proc/net/bonding`` report cut into sections, as 0-core."""

    owned = owned_netns(ctx) if args.netns is not None else None

    def work() -> dict[str, list[dict[str, str]]]:
        if args.netns is None:
            return read()
        with nl.entered(args.netns, owned):
            return read()

    def read() -> dict[str, list[dict[str, str]]]:
        try:
            names = sorted(os.listdir(BONDING))
        except FileNotFoundError:
            return {}
        out = {}
        for n in names:
            try:
                with open(os.path.join(BONDING, n)) as f:
                    out[n] = parse_bonding(f.read())
            except FileNotFoundError:
                continue
        return out

    return await ctx.to_thread(work)
