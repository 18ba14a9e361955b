"""``monitor`` and ``kvm.monitor``: 0-core's statistics passes into the aggregator
(core0/fleet/monitor.py has the keys; the dispatcher also runs them every
``[metrics] monitor_period`` seconds)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated

from core0.context import Context
from core0.errors import BadRequest
from core0.fleet import monitor
from core0.registry import command
from core0.schema import Doc, NoArgs, Schema


@dataclass(frozen=True)
class MonitorArgs(Schema):
    domain: Annotated[str, Doc("cpu, memory, disk or network")]


def feed(ctx: Context, stats: list[monitor.Stat]) -> None:
    for key, value, op, tags in stats:
        ctx.node.aggregator.feed(key, value, op, tags)


@command("monitor", MonitorArgs)
async def monitor_domain(ctx: Context, args: MonitorArgs) -> None:
    """One pass of 0-core's node monitor for ``domain`` (cpu, memory, disk, network): its
    statistics go to the aggregator (``aggregator.query``) under 0-core's keys
    (``machine.CPU.percent``, ``disk.iops.read``, ``network.throughput.incoming``…, docs/fleet.md).
    The dispatcher runs all four every ``[metrics] monitor_period`` seconds by itself."""
    domain = args.domain.lower()
    if domain not in monitor.DOMAINS:
        raise BadRequest(f"domain: invalid monitoring domain {args.domain!r} (one of "
                         f"{', '.join(monitor.DOMAINS)})", field="domain")
    from core0.net.netlink import link_kinds

    feed(ctx, await asyncio.to_thread(monitor.collect, [domain], link_kinds))


@command("kvm.monitor")
async def kvm_monitor(ctx: Context, args: NoArgs) -> None:
    """One pass of 0-core's VM monitor: the statistics of core0's running VMs (memory, CPU
    and vCPU time, each tap's and disk's traffic) go to the aggregator under 0-core's
    ``kvm.*`` keys. Connects to libvirt (the periodic pass does so only once a ``kvm.*``
    command has)."""
    from core0.virt import manager as vms
    from core0.virt import stats

    feed(ctx, await stats.monitor(await vms.of(ctx).ready()))
