"""Port guards for VMs' nics on core0's VM NAT bridge ``kvm0`` (no spoofing; docs/kvm.md).

A VM's tap on ``kvm0`` gets the guard of :mod:`core0.net.portguard` (owner ``vm:<uuid>``),
the containers' mechanism: from that port the bridge takes only the nic's MAC, and as IPv4
source, ARP sender and DHCP client the VM's static-lease address — plus 0.0.0.0 for DHCP
(DISCOVER/REQUEST, and ARP probes of address-conflict detection), with the DHCP ``chaddr``
the nic's MAC. A nic on ``kvm0`` without core0's lease (a ``bridge`` nic with ``id: kvm0``)
is guarded with its MAC and no address: it sends nothing.

- **Names.** core0 names the taps it puts on ``kvm0``: ``c0t`` + the MAC's 12 hex digits
  (:func:`tap`; the domain XML's ``<target dev>``), not libvirt's ``vnetN``, which libvirt
  hands to another VM once free. A name is one MAC's, and a MAC is one port's (409), so a
  guard left on a name can only ever match that same nic; and ``c0t…`` ports that are not
  guarded send nothing at all (portguard's closed ports), so a tap that appears before its
  guard (a hot-plug, an incoming migration) is mute until then, never open.
- **When.** :meth:`Guards.sync` computes every guard from what runs — each of core0's
  domains' live XML (its taps on ``kvm0``, their MACs) and its record (the static lease's
  MAC and address) — and makes it the whole set of ``vm:`` guards in one transaction: a guard
  whose port now belongs to another VM, or whose VM is gone, goes; one missing is added. It
  runs while a new VM is still paused (before its first instruction; a MAC another port has
  is a 409 then), on libvirt's events (started and resumed — an incoming migration —, stopped,
  device added/removed — ``kvm.add_nic``/``remove_nic``), in the cleanup of a stopped VM, and
  in every reconciliation (a dispatcher's first ``kvm.*`` command, a libvirtd reconnection;
  in the background, nft run even when nothing changed): nothing stale, nothing missing.
- Taps of VMs made before core0 named them (``vnetN`` on ``kvm0``) are guarded by their name
  the same way, but are not closed before their guard.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from core0.errors import BadRequest, Conflict
from core0.net import portguard
from core0.net import validate as nv
from core0.virt import domain as dx
from core0.virt import network
from core0.virt.owner import owned

if TYPE_CHECKING:
    from core0.context import Context
    from core0.virt.manager import Virt

log = logging.getLogger(__name__)
#: the containers' NAT bridge (core0/sandbox/netsetup.py): no VM nic goes there
CONTAINERS_BRIDGE = "core0"
#: libvirt events after which the guards are synced again
EVENTS = {"started", "resumed", "stopped", "undefined", "crashed", "device_added",
          "device_removed"}


def tap(mac: str) -> str:
    """The name core0 gives the tap of a nic with MAC ``mac`` on ``kvm0`` (15 characters)."""
    return portguard.CLOSED + nv.mac(mac).replace(":", "")


def is_vm(g: portguard.Guard) -> bool:
    return g.owner.startswith("vm:")


def bridge_nic(ctx: Context, n: dx.Nic, where: str) -> dx.Nic:
    """Check a ``bridge`` nic of a VM onto a NAT bridge of core0's (``kvm0``: named and
    guarded like a default nic, with no address; 400 for a MAC of core0's default-nic range,
    409 for one another port of core0's bridges has; the containers' ``core0``: 400)."""
    if n.bridge == CONTAINERS_BRIDGE:
        raise BadRequest(f"{where}.id: {CONTAINERS_BRIDGE} is the containers' NAT bridge, "
                         "where a VM's nic could not be guarded (a VM's NAT nic is "
                         "type default)", field=where)
    if n.bridge != ctx.config.virt.bridge:
        return n
    if n.mac.lower().startswith(network.MAC_PREFIX.lower() + ":"):
        raise BadRequest(f"{where}.hwaddr: {network.MAC_PREFIX}:… MACs are the default nics' "
                         f"on {n.bridge}", field=f"{where}.hwaddr")
    return named(ctx, n, where)


def named(ctx: Context, n: dx.Nic, where: str, siblings: Iterable[dx.Nic] = ()) -> dx.Nic:
    """A nic onto ``kvm0`` gets its tap name (409 when its MAC is guarded on another port, or
    another of the VM's nics has it: two ports with one MAC, and one tap name). The guard of
    a VM's tap that is gone (the next sync drops it) does not count."""
    mac = n.mac.lower()
    taken = next((f"{g.owner}'s" for g in portguard.load(ctx.config.state_dir).values()
                  if g.mac == mac and not (is_vm(g) and not _exists(g.port))), None)
    if taken is None and any(s is not n and s.mac.lower() == mac for s in siblings):
        taken = "another nic's"
    if taken is not None:
        raise Conflict(f"{where}.hwaddr: MAC {n.mac} is {taken} already",
                       field=f"{where}.hwaddr")
    n.target = tap(n.mac)
    return n


def _exists(link: str) -> bool:
    try:
        socket.if_nametoindex(link)
    except OSError:
        return False
    return True


class Guards:
    """The port guards of one dispatcher's VMs (one sync at a time)."""

    def __init__(self, v: Virt):
        self.v = v
        self._lock = asyncio.Lock()
        self._task: asyncio.Future[None] | None = None
        self._again = self._force = False

    async def sync(self, require: str = "", force: bool = False) -> None:
        """Make the ``vm:`` guards those of the VMs that run now. ``require``: a VM being
        created: 409 when one of its taps cannot be guarded (its MAC is another port's).
        nft runs when they changed, or ``force`` (a table changed behind core0's back is
        made whole again)."""
        async with self._lock:
            await self._sync(require, force)

    async def quietly(self, force: bool = False) -> None:
        """:meth:`sync`, errors logged (events, reconciliations; the next one retries)."""
        try:
            await self.sync(force=force)
        except Exception as e:
            log.warning("virt: port guards of the VMs not synced: %s", e)

    def soon(self, force: bool = False) -> asyncio.Future[None]:
        """A sync in the background (events, reconciliations); one more runs when asked
        again meanwhile."""
        self._force = self._force or force
        if self._task is not None and not self._task.done():
            self._again = True
            return self._task

        async def run() -> None:
            while True:
                self._again, forced, self._force = False, self._force, False
                await self.quietly(forced)
                if not self._again:
                    return

        self._task = asyncio.ensure_future(run())
        return self._task

    def _wanted(self, doms: list[tuple[str, str, str]]) -> list[portguard.Guard]:
        bridge = self.v.node.config.virt.bridge
        out = []
        for uuid, name, xml in doms:
            live = dx.parse(xml)
            if not owned(name, live):
                continue  # a domain someone else made is left alone
            rec = self.v.record(uuid) or {}
            for n in live.nics:
                if n["bridge"] != bridge or not n["target"] or not n["mac"]:
                    continue
                mac = n["mac"].lower()
                ips = ([str(rec["ip"]), "0.0.0.0"]
                       if rec.get("ip") and str(rec.get("mac", "")).lower() == mac else [])
                out.append(portguard.Guard.make(n["target"], network.owner(uuid), mac, ips))
        return out

    async def _sync(self, require: str, force: bool) -> None:
        ctx = self.v.node

        def read(c: Any) -> list[tuple[str, str, str]]:
            out = []
            for d in c.listAllDomains(0):
                try:
                    out.append((d.UUIDString(), d.name(), d.XMLDesc(0)))
                except Exception:  # gone meanwhile (libvirtError)
                    continue
            return out

        wanted = self._wanted(await self.v.conn.call(read))
        others = {g.mac for g in portguard.load(ctx.config.state_dir).values() if not is_vm(g)}
        by_mac: dict[str, list[portguard.Guard]] = defaultdict(list)
        for g in wanted:
            by_mac[g.mac].append(g)
        keep, refused = [], []
        for mac, gs in by_mac.items():
            holders = [g for g in gs if g.ips]  # the VM whose lease the MAC is wins
            if mac not in others and (len(gs) == 1 or len(holders) == 1):
                keep.append(gs[0] if len(gs) == 1 else holders[0])
                refused += [g for g in gs if g is not keep[-1]]
            else:
                refused += gs
        for g in refused:  # not guarded: a c0t… port sends nothing
            log.warning("virt: port %s of %s not guarded: MAC %s is another port's", g.port,
                        g.owner, g.mac)
        if require and any(g.owner == network.owner(require) for g in refused):
            mac = next(g.mac for g in refused if g.owner == network.owner(require))
            raise Conflict(f"nics: MAC {mac} is another port's on core0's bridges",
                           field="nics")
        await portguard.replace(ctx, is_vm, keep, force)
