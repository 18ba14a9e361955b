"""Port guards: what a guest's port on a bridge of core0's may send (nft table ``bridge core0``).

A guest (a container's veth on core0's NAT bridge) could send frames with another MAC as
source, or IPv4 packets and ARP with another guest's or the gateway's address as sender: it
would take over the other's traffic (the bridge's FDB, the neighbours' ARP caches) or speak in
its name to the node and, through NAT, to the outside. A :class:`Guard` names a bridge port
(the host end of the guest's link) with the guest's MAC and IPv4 addresses; from a guarded
port the bridge takes only

- IPv4 whose ``iifname . ether saddr . ip saddr`` is one of the port's tuples;
- ARP (Ethernet/IPv4) whose ethernet source and sender MAC are the port's MAC and whose
  sender address is one of its addresses;

everything else is dropped (other MACs, other addresses, IPv6, VLAN tags, other protocols).
The check sits on the bridge family's ``prerouting`` hook, so it sees every frame a port
sends, to another port or to the node itself (the gateway), before the bridge learns its
source. A port that is not guarded is not looked at. Two sets and three rules, whatever the
number of guests::

    table bridge core0 {
      set ports { type ifname; elements = { "vc1a2b3", ... } }
      set addrs { type ifname . ether_addr . ipv4_addr;
                  elements = { "vc1a2b3" . 02:.. . 172.18.0.2, ... } }
      chain prerouting { type filter hook prerouting priority filter; policy accept;
        iifname @ports jump guard }
      chain guard { ip: tuple in @addrs accept; arp: both tuples in @addrs accept; counter drop }
    }

The guards are kept in ``<state_dir>/net/guards.json`` (port → owner, MAC, addresses) and the
whole table is rebuilt from them on every change, as one ``nft -f -`` transaction (the table
is deleted when no guard is left), so rules changed behind core0's back are repaired by the
next change, a restarted dispatcher finds both the table and the file as they were, and the
``inet core0`` table of :mod:`core0.net.nft` (rebuilt on its own changes) is never touched.
Every value in the text is checked first (:mod:`core0.net.validate`, ``ipaddress``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core0.errors import BadRequest, Conflict
from core0.net import validate as v

if TYPE_CHECKING:
    from core0.context import Context

FAMILY, TABLE = "bridge", "core0"
#: the script when no port is guarded: the table is deleted (made first, so that never fails)
EMPTY = f"table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}\n"
#: serialises every read-change-apply-write of the guards (one dispatcher process)
LOCK = asyncio.Lock()


@dataclass(frozen=True)
class Guard:
    port: str  #: the bridge port (the host end of the guest's link)
    owner: str  #: whose it is: ``container:<id>`` (``vm:<uuid>`` would do for a tap)
    mac: str  #: the only ethernet source (and ARP sender MAC) it may use
    #: the only IPv4 sources and ARP sender addresses (0.0.0.0 would let a DHCP client ask)
    ips: tuple[str, ...] = ()

    @classmethod
    def make(cls, port: str, owner: str, mac: str, ips: Iterable[str]) -> Guard:
        if not re.fullmatch(v.OWNER_RE, owner):
            raise BadRequest(f"owner: invalid owner {owner!r:.80}", field="owner")
        addrs = tuple(sorted({str(v.ip(a, "ip", version=4)) for a in ips}))
        return cls(v.ifname(port, "port"), owner, v.link_mac(mac), addrs)


def random_mac() -> str:
    """A random locally administered unicast MAC (46 random bits)."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def build(guards: Iterable[Guard]) -> str:
    """The nft script that replaces the table (or deletes it when there is no guard)."""
    gs = sorted(guards, key=lambda g: g.port)
    if not gs:
        return EMPTY
    ports = ", ".join(f'"{v.ifname(g.port)}"' for g in gs)
    addrs = ", ".join(f'"{g.port}" . {v.link_mac(g.mac)} . {ipaddress.IPv4Address(a)}'
                      for g in gs for a in g.ips)
    arp = "arp htype 1 arp ptype ip arp hlen 6 arp plen 4"
    return EMPTY + "\n".join([
        f"table {FAMILY} {TABLE} {{",
        f"  set ports {{ type ifname; elements = {{ {ports} }}; }}",
        "  set addrs { type ifname . ether_addr . ipv4_addr; "
        + (f"elements = {{ {addrs} }}; " if addrs else "") + "}",
        "  chain prerouting {",
        "    type filter hook prerouting priority filter; policy accept;",
        "    iifname @ports jump guard",
        "  }",
        "  chain guard {",
        "    ether type ip iifname . ether saddr . ip saddr @addrs accept",
        f"    ether type arp {arp} iifname . ether saddr . arp saddr ip @addrs "
        "iifname . arp saddr ether . arp saddr ip @addrs accept",
        '    counter drop comment "spoofed"',
        "  }",
        "}",
    ]) + "\n"


def _path(state_dir: Path) -> Path:
    from core0.net.state import net_dir

    return net_dir(state_dir) / "guards.json"


def load(state_dir: Path) -> dict[str, Guard]:
    """The guards, by port."""
    try:
        d = json.loads(_path(state_dir).read_text())
    except FileNotFoundError:
        return {}
    return {p: Guard(g["port"], g["owner"], g["mac"], tuple(g["ips"])) for p, g in d.items()}


def _save(state_dir: Path, guards: dict[str, Guard]) -> None:
    p = _path(state_dir)
    tmp = p.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps({k: asdict(g) for k, g in sorted(guards.items())}).encode())
    finally:
        os.close(fd)
    os.replace(tmp, p)


async def change(ctx: Context, add: Guard | None = None, drop: str = "",
                 alive: Callable[[Guard], bool] | None = None) -> None:
    """Guard ``add.port`` (replacing its guard) and/or stop guarding port ``drop``; guards
    that are not ``alive`` any more are dropped on the way. 409 when another port is guarded
    with ``add``'s MAC (two ports with one MAC: the bridge would send one's traffic to the
    other). nft runs only when something changed (or a guard is added: that also repairs a
    table deleted behind core0's back); when it refuses, nothing is saved."""
    sd = ctx.config.state_dir
    async with LOCK:
        old = load(sd)
        new = {p: g for p, g in old.items() if p != drop and (alive is None or alive(g))}
        if add is not None:
            other = next((g for g in new.values() if g.mac == add.mac and g.port != add.port),
                         None)
            if other is not None:
                raise Conflict(f"MAC {add.mac} is {other.owner}'s already", field="hwaddr")
            new[add.port] = add
        if add is None and new == old:
            return
        await ctx.run(["nft", "-f", "-"], stdin=build(new.values()).encode(), timeout=30)
        _save(sd, new)
