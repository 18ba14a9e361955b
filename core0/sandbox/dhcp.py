"""DHCP nics of containers (``config: {dhcp: true}`` on bridge, macvlan, vlan and vxlan nics).

The address comes from whatever DHCP server serves that network (core0's own bridges run
dnsmasq). busybox's ``udhcpc`` runs in the container's network namespace
(:mod:`core0.net.innetns`), from the node's side like every other nic setting (no tool runs
inside the container): first once, so ``corex.create``/``nic-add`` answer with the leased
address or fail with 412 when no server answers, then as a protected service of the job
engine (``dhcp:<container>:<nic>``) that renews the lease, requesting the same address, and is
stopped with the nic. Its script (written to the container's directory) sets the address, the
default route and the container's ``resolv.conf`` with busybox's ``ip``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from core0.context import ProcessSpec
from core0.errors import PreconditionFailed
from core0.net import netlink as nl
from core0.proc import process

if TYPE_CHECKING:
    from core0.context import Context
    from core0.sandbox.store import Nic, Record

SCRIPT = """#!{bb} sh
# written by core0 (core0/sandbox/dhcp.py): udhcpc's events for {inner}
BB={bb}
case "$1" in
  deconfig)
    # the first lease: start clean; the renewing client (started with the address leased)
    # keeps it meanwhile, so the container never loses its address while the lease holds
    [ "$CORE0_DHCP_RENEW" = 1 ] || $BB ip -4 addr flush dev "$interface"
    $BB ip link set "$interface" up ;;
  bound|renew)
    # a renewal that keeps the address touches nothing: the container never sees its
    # address, route or resolv.conf missing for a moment
    if ! $BB ip -4 -o addr show dev "$interface" | $BB grep -q " inet $ip/$mask "; then
      $BB ip -4 addr flush dev "$interface"
      $BB ip addr add "$ip/$mask" dev "$interface"
    fi
    for r in $router; do $BB ip route replace default via "$r" dev "$interface"; break; done
    if [ -n "$dns" ]; then
      : > {resolv}.new
      for d in $dns; do echo "nameserver $d" >> {resolv}.new; done
      # resolv.conf is bind-mounted into the container (its inode must stay): rewritten in
      # place, and only when it changes
      $BB cmp -s {resolv}.new {resolv} || $BB cat {resolv}.new > {resolv}
      $BB rm -f {resolv}.new
    fi ;;
esac
exit 0
"""


def busybox() -> str:
    bb = shutil.which("busybox")
    if bb is None:
        raise PreconditionFailed("dhcp nics need busybox (its udhcpc) on the node")
    return os.path.realpath(bb)


def service_id(netns: str, inner: str) -> str:
    return f"dhcp:{netns}:{inner}"


def _argv(netns: str, bb: str, inner: str, script: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "core0.net.innetns", netns, "--", bb, "udhcpc", "-f",
            "-i", inner, "-s", str(script), "-x", "hostname:core0", *extra]


async def configure(ctx: Context, rec: Record, nic: Nic, inner: str, cdir: Path,
                    where: str) -> str:
    """Lease an address for ``inner`` (in the container's netns), then keep it renewed.
    Returns the address (cidr)."""
    bb = busybox()
    script = cdir / f"udhcpc-{inner}.sh"
    script.write_text(SCRIPT.format(bb=bb, inner=inner, resolv=cdir / "resolv.conf"))
    script.chmod(0o700)
    res = await process.run(_argv(rec.netns, bb, inner, script, "-q", "-n", "-t", "4", "-T",
                                  "2"), timeout=30)
    if res.status != 0:
        raise PreconditionFailed(f"{where}: no DHCP lease ({res.stderr.strip()[-200:]})")
    cidr = await ctx.to_thread(_address, rec.netns, inner)
    if not cidr:
        raise PreconditionFailed(f"{where}: the DHCP lease set no address")
    ctx.engine.start_service(service_id(rec.netns, inner), ProcessSpec(
        _argv(rec.netns, bb, inner, script, "-r", cidr.split("/")[0]),
        env={**{k: v for k, v in os.environ.items() if not k.startswith("CORE0_")},
             "CORE0_DHCP_RENEW": "1"},
        label=f"container {rec.id}: dhcp on {inner}"))
    return cidr


def _address(netns: str, inner: str) -> str:
    with nl.session(netns=netns) as r:
        idx = nl.index_of(r, inner)
        for a in r.get_addr(index=idx, family=2):
            return f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
    return ""


async def release(ctx: Context, nic: Nic, netns: str) -> None:
    """Stop the nic's DHCP client (if any)."""
    if nic.inner and netns and nic.config.get("dhcp"):
        await ctx.engine.stop_service(service_id(netns, nic.inner))
