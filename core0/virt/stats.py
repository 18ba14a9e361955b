"""``kvm.monitor``'s pass: the statistics of core0's running VMs for the aggregator
(0-core's keys: :func:`core0.fleet.monitor.vm_stats`), from libvirt's domain stats."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core0.fleet.monitor import Stat, vm_stats
from core0.virt import domain as dx
from core0.virt.conn import libvirt_module
from core0.virt.owner import owned

if TYPE_CHECKING:
    from core0.virt.manager import Virt


async def monitor(v: Virt) -> list[Stat]:
    """One pass over core0's running VMs (foreign libvirt domains and probes left out)."""
    lv = libvirt_module()
    flags = (lv.VIR_DOMAIN_STATS_STATE | lv.VIR_DOMAIN_STATS_VCPU
             | lv.VIR_DOMAIN_STATS_INTERFACE | lv.VIR_DOMAIN_STATS_BLOCK
             | lv.VIR_DOMAIN_STATS_CPU_TOTAL)
    mine = v.uuids()

    def read(c: Any) -> list[tuple[str, str, dict[str, Any], int]]:
        out = []
        for dom, stats in c.getAllDomainStats(
                flags, lv.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE):
            try:
                if dom.UUIDString() not in mine:
                    continue
                out.append((dom.name(), dom.XMLDesc(0), dict(stats), int(dom.info()[1])))
            except lv.libvirtError:  # gone meanwhile
                continue
        return out

    stats: list[Stat] = []
    for name, xml, raw, max_kib in await v.conn.call(read):
        live = dx.parse(xml)
        if not owned(name, live):
            continue
        macs = {n["target"]: n["mac"] for n in live.nics if n.get("target")}
        stats += vm_stats(name, raw, max_kib, macs)
    return stats


async def if_connected() -> list[Stat]:
    """:func:`monitor` once a ``kvm.*`` command has connected core0 to libvirt (the periodic
    pass never makes the connection itself); nothing before."""
    from core0.virt.manager import current

    v = current()
    return await monitor(v) if v is not None and v.connected else []
