"""Port guards: what a guest's port on a bridge of core0's may send (nft table ``bridge core0``).

A guest (a container's veth on core0's NAT bridge, a VM's tap on its VM NAT bridge ``kvm0``)
could send frames with another MAC as source, or IPv4 packets and ARP with another guest's or
the gateway's address as sender: it would take over the other's traffic (the bridge's FDB, the
neighbours' ARP caches) or speak in its name to the node and, through NAT, to the outside. A
:class:`Guard` names a bridge port (the host end of the guest's link) with the guest's MAC and
IPv4 addresses; from a guarded port the bridge takes only

- IPv4 whose ``iifname . ether saddr . ip saddr`` is one of the port's tuples (0.0.0.0 is
  never taken here);
- DHCP client messages (UDP 68 → 67, not fragmented) whose tuple is one of the port's
  (0.0.0.0 included: a guard with 0.0.0.0 lets a DHCP client ask) and whose BOOTP ``chaddr``
  is the port's MAC (dnsmasq acts on ``chaddr``: a DECLINE or RELEASE naming another guest's
  MAC would disable its static lease); nothing else to UDP port 67 or 68 (a rogue DHCP
  server's offers);
- ARP (Ethernet/IPv4) whose ethernet source and sender MAC are the port's MAC and whose
  sender address is one of its addresses (0.0.0.0: an address-conflict probe);

everything else is dropped (other MACs, other addresses, IPv6, VLAN tags, other protocols).
The check sits on the bridge family's ``prerouting`` hook, so it sees every frame a port sends,
to another port or to the node itself (the gateway), before the bridge learns its source. A
port that is not guarded is not looked at — except the ports named ``c0t…`` (:data:`CLOSED`:
the taps core0 names for VMs' nics on ``kvm0``), which send nothing until guarded, while
core0's VM bridge exists (the table stays then, guards or not). Three sets and a few rules,
whatever the number of guests::

    table bridge core0 {
      set ports { type ifname; elements = { "vc1a2b3", ... } }
      set addrs { type ifname . ether_addr . ipv4_addr;
                  elements = { "vc1a2b3" . 02:.. . 172.18.0.2, ... } }
      set macs { typeof iifname . @th,288,48; elements = { "vc1a2b3" . 0x02.., ... } }
      chain prerouting { type filter hook prerouting priority filter; policy accept;
        iifname @ports jump guard; iifname "c0t*" drop }
      chain guard { udp dport {67, 68}: jump dhcp; ip: tuple in @addrs accept;
                    arp: both tuples in @addrs accept; counter drop }
      chain dhcp { 68 → 67, not a fragment, tuple in @addrs, chaddr in @macs: accept;
                   counter drop }
    }

The guards are kept in ``<state_dir>/net/guards.json`` (port → owner, MAC, addresses) and the
whole table is rebuilt from them on every change, as one ``nft -f -`` transaction (the table
is deleted when no guard is left and no port is closed), so rules changed behind core0's back
are repaired by the next change, a restarted dispatcher finds both the table and the file as
they were, and the ``inet core0`` table of :mod:`core0.net.nft` (rebuilt on its own changes)
is never touched. Every value in the text is checked first (:mod:`core0.net.validate`,
``ipaddress``).
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

from core0 import cancel
from core0.errors import BadRequest, Conflict
from core0.net import validate as v

if TYPE_CHECKING:
    from core0.context import Context

FAMILY, TABLE = "bridge", "core0"
#: the script when no port is guarded: the table is deleted (made first, so that never fails)
EMPTY = f"table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}\n"
#: the name prefix of closed ports: core0's taps of VMs' nics on its VM NAT bridge
#: (:mod:`core0.virt.guards`); one that is not guarded sends nothing
CLOSED = "c0t"
#: serialises every read-change-apply-write of the guards (one dispatcher process)
LOCK = asyncio.Lock()


@dataclass(frozen=True)
class Guard:
    port: str  #: the bridge port (the host end of the guest's link)
    owner: str  #: whose it is: ``container:<id>`` or ``vm:<uuid>``
    mac: str  #: the only ethernet source (and ARP sender MAC, DHCP chaddr) it may use
    #: the only IPv4 sources and ARP sender addresses (0.0.0.0 lets a DHCP client ask)
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


def build(guards: Iterable[Guard], closed: bool = False) -> str:
    """The nft script that replaces the table (or deletes it when there is no guard and no
    port is ``closed``)."""
    gs = sorted(guards, key=lambda g: g.port)
    if not gs and not closed:
        return EMPTY
    ports = ", ".join(f'"{v.ifname(g.port)}"' for g in gs)
    addrs = ", ".join(f'"{g.port}" . {v.link_mac(g.mac)} . {ipaddress.IPv4Address(a)}'
                      for g in gs for a in g.ips)
    macs = ", ".join(f'"{g.port}" . 0x{v.link_mac(g.mac).replace(":", "")}' for g in gs)
    arp = "arp htype 1 arp ptype ip arp hlen 6 arp plen 4"
    tuple_ = "iifname . ether saddr . ip saddr @addrs"

    def elements(items: str) -> str:
        return f"elements = {{ {items} }}; " if items else ""

    return EMPTY + "\n".join([
        f"table {FAMILY} {TABLE} {{",
        f"  set ports {{ type ifname; {elements(ports)}}}",
        f"  set addrs {{ type ifname . ether_addr . ipv4_addr; {elements(addrs)}}}",
        f"  set macs {{ typeof iifname . @th,288,48; {elements(macs)}}}",
        "  chain prerouting {",
        "    type filter hook prerouting priority filter; policy accept;",
        "    iifname @ports jump guard",
        *([f'    iifname "{CLOSED}*" counter drop comment "unguarded"'] if closed else []),
        "  }",
        "  chain guard {",
        "    ether type ip udp dport { 67, 68 } jump dhcp",
        f"    ether type ip ip saddr != 0.0.0.0 {tuple_} accept",
        f"    ether type arp {arp} iifname . ether saddr . arp saddr ip @addrs "
        "iifname . arp saddr ether . arp saddr ip @addrs accept",
        '    counter drop comment "spoofed"',
        "  }",
        # a DHCP client message (68 → 67): its tuple (0.0.0.0 included) and chaddr (36 bytes
        # into the UDP datagram) the port's, never a fragment (whose chaddr the check cannot
        # see); anything else to those ports (a DHCP server's reply) is dropped
        "  chain dhcp {",
        f"    udp sport 68 udp dport 67 ip frag-off & 0x3fff == 0 {tuple_} "
        "iifname . @th,288,48 @macs accept",
        '    counter drop comment "dhcp"',
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


def closed(ctx: Context) -> bool:
    """Whether ``c0t…`` ports are closed: core0 has made its VM NAT bridge (``virt.bridge``,
    in the network state), whose VMs' taps core0 names so."""
    from core0.net import state as netstate

    return ctx.config.virt.bridge in netstate.load(ctx.config.state_dir).bridges


def _unique(guards: dict[str, Guard], add: Guard) -> None:
    """409 when another port is guarded with ``add``'s MAC (two ports with one MAC: the bridge
    would send one's traffic to the other)."""
    other = next((g for g in guards.values() if g.mac == add.mac and g.port != add.port), None)
    if other is not None:
        raise Conflict(f"MAC {add.mac} is {other.owner}'s already", field="hwaddr")


async def _apply(ctx: Context, old: dict[str, Guard], new: dict[str, Guard],
                 force: bool) -> None:
    """nft (when something changed, or ``force``), then the file; nothing saved on a
    refusal."""
    if new == old and not force:
        return
    # to its end even when the job is cancelled: the table and the file agree (net/state.py)
    await cancel.atomic(ctx.run(["nft", "-f", "-"],
                                stdin=build(new.values(), closed(ctx)).encode(), timeout=30))
    _save(ctx.config.state_dir, new)


async def change(ctx: Context, add: Guard | None = None, drop: str = "",
                 alive: Callable[[Guard], bool] | None = None, refresh: bool = False) -> None:
    """Guard ``add.port`` (replacing its guard) and/or stop guarding port ``drop``; guards
    that are not ``alive`` any more are dropped on the way. 409 when another port is guarded
    with ``add``'s MAC. nft runs only when something changed (or a guard is added, or
    ``refresh``: that also repairs a table deleted behind core0's back); when it refuses,
    nothing is saved."""
    async with LOCK:
        old = load(ctx.config.state_dir)
        new = {p: g for p, g in old.items() if p != drop and (alive is None or alive(g))}
        if add is not None:
            _unique(new, add)
            new[add.port] = add
        await _apply(ctx, old, new, refresh or add is not None)


async def replace(ctx: Context, mine: Callable[[Guard], bool], guards: Iterable[Guard],
                  refresh: bool = False) -> None:
    """Make ``guards`` the whole set of the guards that are ``mine`` (one caller's kind, e.g.
    every VM's): the others of that kind go, the others' stay. 409 when one of ``guards``
    has the MAC of another port's guard; a port guarded by another kind is not taken over
    (409 as well). nft runs when something changed, or ``refresh``."""
    async with LOCK:
        old = load(ctx.config.state_dir)
        new = {p: g for p, g in old.items() if not mine(g)}
        for g in guards:
            if g.port in new:
                raise Conflict(f"port {g.port} is {new[g.port].owner}'s already", field="port")
            _unique(new, g)
            new[g.port] = g
        await _apply(ctx, old, new, refresh)
