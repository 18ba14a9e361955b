"""The destination's side of a migration: ``kvm.prepare_migration_target`` (0-core's name).

Run on the destination node before ``kvm.migrate`` on the source. It makes here what the VM's
nics and forwards need, so that libvirt finds its bridges and the VM keeps its address:

- a ``default`` nic: core0's NAT bridge (made if needed) and a static lease for the nic's MAC
  (``hwaddr``, which the source's ``kvm.get`` shows in ``params.nics``). The address is the
  one the MAC encodes (``00:28:06:82:HH:LL`` → the bridge network + HHLL, as on the source
  when both use the same ``bridge_cidr``), so the guest keeps its address; 409 when another
  VM here has it. Another MAC gets the next free address (the guest learns it at its next
  DHCP renewal);
- a ``bridge`` nic: the bridge must exist here (412 otherwise);
- ``port``: the forwards, owner ``vm:<uuid>``, to the default nic's address.

The VM's record here (``<virt dir>/<uuid>/vm.json``) is marked ``incoming`` and names the
preparing queue's role and scope (only a queue that may act for it prepares it again or
cancels it with ``kvm.destroy``; the VM, once here, has its owner from the source's
metadata). Cleanup and reconciliation leave it alone for :data:`WAIT` seconds; when the VM
starts here (the migration's ``started`` event, or a reconciliation finding it) it becomes an
ordinary record, and everything above is removed when the VM stops, as for a VM created
here. A migration that
never comes leaves its lease and forwards until the first reconciliation after :data:`WAIT`
(at the next dispatcher start or libvirtd reconnection). Calling it again replaces the
forwards and keeps the lease.
"""

from __future__ import annotations

import ipaddress
import time
from typing import TYPE_CHECKING, Any

from core0 import cancel
from core0.errors import BadRequest, Conflict, PreconditionFailed
from core0.net import netlink as nl
from core0.net import validate as nv
from core0.virt import guard, network
from core0.virt.owner import Owner, allow, caller
from core0.virt.spec import Nic

if TYPE_CHECKING:
    from core0.context import Context
    from core0.virt.manager import Virt

#: seconds a prepared record waits for its VM
WAIT = 3600.0


def waiting(rec: dict[str, Any]) -> bool:
    """A prepared record whose VM has not arrived and may still come."""
    since = rec.get("incoming")
    return isinstance(since, int | float) and time.time() - since < WAIT


def _seq_of(mac: str, cidr: str) -> int | None:
    """The sequence number a core0 default-nic MAC encodes (None for another MAC)."""
    prefix = network.MAC_PREFIX.lower() + ":"
    if not mac.startswith(prefix):
        return None
    hh, ll = mac[len(prefix):].split(":")
    seq = int(hh, 16) << 8 | int(ll, 16)
    net = ipaddress.ip_interface(cidr).network
    return seq if 1 < seq < min(0xffff, net.num_addresses - 1) else None


def _bridge_exists(name: str) -> bool:
    with nl.session() as r:
        return bool(r.link_lookup(ifname=name))


async def prepare(v: Virt, ctx: Context, uuid: str, nics: list[Nic],
                  port: dict[str, int]) -> dict[str, Any]:
    """Prepare this node for incoming VM ``uuid``; returns {uuid, mac, ip} of its default
    nic (empty strings without one)."""
    await v.ready()
    if uuid in await v.live_uuids():
        raise Conflict(f"VM {uuid} runs on this node already", field="uuid")
    rec = v.record(uuid)
    if rec is not None and not rec.get("incoming"):
        raise Conflict(f"VM {uuid} has files on this node already", field="uuid")
    if rec is not None:  # prepared before: the preparing queue's to prepare again
        allow(caller(ctx), Owner.of(rec), f"VM {uuid}")
    defaults = [(i, n) for i, n in enumerate(nics) if n.type == "default"]
    if len(defaults) > 1:
        raise BadRequest("nics: at most one default nic", field="nics")
    if port and not defaults:
        raise BadRequest("port: forwards need a default nic", field="port")
    for i, n in enumerate(nics):
        if n.type == "default":
            continue
        v._nic(n, i)  # the checks of kvm.create: vlan/vxlan 412, a bridge name
        if not await ctx.to_thread(_bridge_exists, n.id or ""):
            raise PreconditionFailed(f"nics[{i}].id: bridge {n.id} does not exist on this node",
                                     field=f"nics[{i}].id")
    mac = ip = ""
    if defaults:
        i, n = defaults[0]
        if not n.hwaddr:
            raise BadRequest(f"nics[{i}].hwaddr: the default nic's MAC is needed (the source's "
                             "kvm.get shows it in params.nics)", field=f"nics[{i}].hwaddr")
        mac = nv.mac(n.hwaddr, f"nics[{i}].hwaddr")
        cidr = ctx.config.virt.bridge_cidr
        others = {u: r for u, r in v.records().items() if u != uuid}
        used = {int(r.get("seq", 0)) for r in others.values()}
        if rec and rec.get("mac") == mac:
            seq = int(rec["seq"])
        else:
            want = _seq_of(mac, cidr)
            if want is not None and want in used:
                raise Conflict(f"the address of {mac} is used by another VM here",
                               field=f"nics[{i}].hwaddr")
            seq = want if want is not None else network.free_seq(used)
        ip = network.address(cidr, seq)[1]
        await network.ensure_bridge(ctx)
        new = {"uuid": uuid, "name": "", "created": time.time(), "incoming": time.time(),
               "seq": seq, "mac": mac, "ip": ip}
    else:
        new = {"uuid": uuid, "name": "", "created": time.time(), "incoming": time.time()}
    new["owner"] = caller(ctx).to_json()  # who may cancel it (kvm.destroy)
    v.vm_dir(uuid).mkdir(mode=0o711, exist_ok=True)
    v._save_record(uuid, new)
    try:
        await guard.test_hold(f"prepare/{uuid}")  # (fault tests: core0/virt/guard.py)
        if rec and rec.get("mac") and rec.get("mac") != mac:
            await network.remove_lease(ctx, str(rec["mac"]))
        if mac:
            await network.add_lease(ctx, mac, ip)
        await network.remove_forwards(ctx, uuid)
        if port:
            await network.add_forwards(ctx, uuid, ip, port)
    except BaseException:
        # what was prepared goes, the record with it (cut short too: a second kill does not
        # cut this short). Before, an expired record stayed until a reconciliation (the next
        # dispatcher start), and the same preparation tried again meanwhile was a 409
        new["incoming"] = 0
        v._save_record(uuid, new)
        await cancel.atomic(v.cleanup(uuid), defer=False)
        raise
    return {"uuid": uuid, "mac": mac, "ip": ip}
