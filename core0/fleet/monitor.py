"""0-core's monitoring: the node's and its VMs' statistics fed to the aggregator.

0-core ran its ``monitor {domain}`` builtin every 30 s for the domains ``cpu``, ``memory``,
``disk`` and ``network`` (startup commands of its ``monitor.toml``) and ``kvm.monitor`` every
30 s, each reporting level-10 statistics that ``aggregator.query`` returns. core0 keeps the
same keys, operations and tags (``id`` names the instance: a CPU's number, a disk, a link, a
VM), so a dashboard reading 0-core's aggregator reads core0's:

=============================  ====  ===========================================  ==========
key                            op    value                                        id
=============================  ====  ===========================================  ==========
machine.CPU.utilisation        D     user + system seconds                        CPU number
machine.CPU.percent            A     % busy since the last sample (1 s at least)  CPU number
machine.CPU.contextswitch      D     context switches                             —
machine.CPU.interrupts         D     interrupts                                   —
machine.process.threads        A     threads of all processes                     —
machine.memory.ram.available   A     MiB                                          —
machine.memory.swap.left       A     MiB                                          —
machine.memory.swap.used       A     MiB                                          —
disk.iops.read / .write        D     requests completed                           device
disk.throughput.read / .write  D     KiB                                          device
disk.size.total / .free        A     bytes (tag ``fs``)                           device
network.throughput.incoming    D     MiB received (``.outgoing``: sent)           link
network.packets.rx / .tx       D     packets                                      link
kvm.memory.max                 A     MB (KiB / 1000, as 0-core)                   VM name
kvm.cpu.time                   D     seconds                                      VM name
kvm.vcpu.state / .time         A/D   libvirt's state / seconds (tag ``nr``)       VM name
kvm.net.rx/txbytes, …packets   D     bytes / packets (tag ``name``: the tap)      name.mac
kvm.disk.rd/wrbytes, iops.*    D     bytes / requests (tag ``name``: the target)  name.dev
=============================  ====  ===========================================  ==========

Every node statistic has the tag ``type=phys``, every VM one ``type=virt``; links also
``kind`` (device, bridge, veth, openvswitch: 0-core's kinds; ``lo`` left out). Values come
from psutil and libvirt's domain stats. :func:`run` runs them every ``[metrics]
monitor_period`` seconds in the dispatcher (the VMs' only once a ``kvm.*`` command made
core0's libvirt connection); the ``monitor`` and ``kvm.monitor`` commands run one pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import psutil

log = logging.getLogger(__name__)

#: 0-core's monitoring domains
DOMAINS = ("cpu", "memory", "disk", "network")
#: a statistic: (key, value, op "A"|"D", tags)
Stat = tuple[str, float, str, list[tuple[str, str]]]
#: the link kinds 0-core monitored (a physical NIC is "device")
LINK_KINDS = ("device", "bridge", "openvswitch", "veth")
_PHYS = ("type", "phys")


def _tags(ident: str, *more: tuple[str, str]) -> list[tuple[str, str]]:
    return sorted([_PHYS, *more, *([("id", ident)] if ident else [])])


class _Cpu:
    """CPU samples; the percentages are taken against the previous call (one second at
    least, sampled then when the previous call is more recent, as 0-core's one second)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: tuple[float, list[Any]] | None = None

    def prime(self) -> None:
        """Take the first sample now (the periodic pass: its first percentages then need no
        second of sleep in a worker thread)."""
        with self._lock:
            self._last = (time.monotonic(), psutil.cpu_times(percpu=True))

    def percents(self) -> list[float]:
        with self._lock:
            now = time.monotonic()
            if self._last is None or now - self._last[0] < 1.0:
                before = psutil.cpu_times(percpu=True)
                time.sleep(1.0)
            else:
                before = self._last[1]
            after = psutil.cpu_times(percpu=True)
            self._last = (time.monotonic(), after)
        out = []
        for a, b in zip(before, after, strict=False):
            total = sum(b) - sum(a)
            idle = (b.idle + getattr(b, "iowait", 0.0)) - (a.idle + getattr(a, "iowait", 0.0))
            out.append(max(0.0, min(100.0, 100.0 * (total - idle) / total)) if total > 0 else 0.0)
        return out


_CPU = _Cpu()


def cpu() -> Iterator[Stat]:
    for nr, t in enumerate(psutil.cpu_times(percpu=True)):
        yield "machine.CPU.utilisation", t.user + t.system, "D", _tags(str(nr))
    for nr, pct in enumerate(_CPU.percents()):
        yield "machine.CPU.percent", pct, "A", _tags(str(nr))
    st = psutil.cpu_stats()
    yield "machine.CPU.contextswitch", float(st.ctx_switches), "D", _tags("")
    yield "machine.CPU.interrupts", float(st.interrupts), "D", _tags("")
    yield "machine.process.threads", float(_threads()), "A", _tags("")


def _threads() -> int:
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    n += int(f.read().rsplit(b")", 1)[1].split()[17])
            except (OSError, IndexError, ValueError):
                continue
    return n


def memory() -> Iterator[Stat]:
    mib = 1024.0 * 1024.0
    yield "machine.memory.ram.available", psutil.virtual_memory().available / mib, "A", \
        _tags("")
    sw = psutil.swap_memory()
    yield "machine.memory.swap.left", sw.free / mib, "A", _tags("")
    yield "machine.memory.swap.used", sw.used / mib, "A", _tags("")


def disk() -> Iterator[Stat]:
    for name, c in sorted(psutil.disk_io_counters(perdisk=True).items()):
        tags = _tags(name)
        yield "disk.iops.read", float(c.read_count), "D", tags
        yield "disk.iops.write", float(c.write_count), "D", tags
        yield "disk.throughput.read", float(c.read_bytes // 1024), "D", tags
        yield "disk.throughput.write", float(c.write_bytes // 1024), "D", tags
    mounts: dict[str, tuple[str, str]] = {}
    for part in psutil.disk_partitions(all=False):  # a device's first mount point will do
        if not part.fstype.startswith("fuse"):  # (a dead FUSE daemon would hang statvfs)
            mounts.setdefault(part.device, (part.mountpoint, part.fstype))
    for device, (mountpoint, fstype) in sorted(mounts.items()):
        try:
            usage = psutil.disk_usage(mountpoint)
        except OSError:
            continue
        tags = _tags(os.path.basename(device), ("fs", fstype))
        yield "disk.size.total", float(usage.total), "A", tags
        yield "disk.size.free", float(usage.free), "A", tags


#: each link of the node's namespace → its kind ("device" for a NIC): given by the caller
#: (core0.net.netlink.link_kinds; this layer does not reach netlink itself)
LinkKinds = Callable[[], dict[str, str]]


def network(kinds: LinkKinds) -> Iterator[Stat]:
    mib = 1024.0 * 1024.0
    kinds_now = kinds()
    for name, c in sorted(psutil.net_io_counters(pernic=True).items()):
        kind = kinds_now.get(name, "")
        if kind not in LINK_KINDS:
            continue
        tags = _tags(name, ("kind", kind))
        yield "network.throughput.outgoing", c.bytes_sent / mib, "D", tags
        yield "network.throughput.incoming", c.bytes_recv / mib, "D", tags
        yield "network.packets.tx", float(c.packets_sent), "D", tags
        yield "network.packets.rx", float(c.packets_recv), "D", tags


COLLECTORS: dict[str, Callable[[], Iterator[Stat]]] = {"cpu": cpu, "memory": memory,
                                                       "disk": disk}


def vm_stats(name: str, stats: dict[str, Any], memory_kib: int, macs: dict[str, str]
             ) -> Iterator[Stat]:
    """One VM's statistics from libvirt's domain stats (``macs``: its taps' MACs)."""
    virt = ("type", "virt")
    base = sorted([virt, ("id", name)])
    yield "kvm.memory.max", memory_kib / 1000.0, "A", base
    yield "kvm.cpu.time", stats.get("cpu.time", 0) / 1e9, "D", base
    for i in range(int(stats.get("vcpu.current", 0))):
        nr = sorted([*base, ("nr", str(i))])
        yield "kvm.vcpu.state", float(stats.get(f"vcpu.{i}.state", 0)), "A", nr
        yield "kvm.vcpu.time", stats.get(f"vcpu.{i}.time", 0) / 1e9, "D", nr
    for i in range(int(stats.get("net.count", 0))):
        tap = str(stats.get(f"net.{i}.name", i))
        tags = sorted([virt, ("id", f"{name}.{macs.get(tap, '')}"), ("name", tap)])
        for key, stat in (("rxbytes", "rx.bytes"), ("rxpackets", "rx.pkts"),
                          ("txbytes", "tx.bytes"), ("txpackets", "tx.pkts")):
            yield f"kvm.net.{key}", float(stats.get(f"net.{i}.{stat}", 0)), "D", tags
    for i in range(int(stats.get("block.count", 0))):
        dev = str(stats.get(f"block.{i}.name", i))
        tags = sorted([virt, ("id", f"{name}.{dev}"), ("name", dev)])
        for key, stat in (("rdbytes", "rd.bytes"), ("iops.read", "rd.reqs"),
                          ("wrbytes", "wr.bytes"), ("iops.write", "wr.reqs")):
            yield f"kvm.disk.{key}", float(stats.get(f"block.{i}.{stat}", 0)), "D", tags


def collect(domains: Iterable[str], kinds: LinkKinds) -> list[Stat]:
    """One pass of the node's ``domains`` (blocking: run it in a thread)."""
    return [s for d in domains
            for s in (network(kinds) if d == "network" else COLLECTORS[d]())]


async def run(feed: Callable[[str, float, str, list[tuple[str, str]]], None], period: float,
              stop: asyncio.Event, kinds: LinkKinds,
              more: Callable[[], Awaitable[list[Stat]]] | None = None) -> None:
    """Every ``period`` seconds until ``stop``: one pass of every domain (in a thread) and
    of ``more`` (the VMs'), each statistic handed to ``feed`` (the aggregator's)."""
    _CPU.prime()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), 1.0)
    while not stop.is_set():
        try:
            found = await asyncio.to_thread(collect, DOMAINS, kinds)
            if more is not None:
                found += await more()
            for key, value, op, tags in found:
                feed(key, value, op, tags)
        except Exception as e:  # (the next pass tries again)
            log.warning("monitor: %s", e)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), period)
