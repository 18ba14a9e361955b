"""VM networking on core0's own machinery: the ``kvm0`` NAT bridge, static leases, forwards.

The default nic of a VM sits on core0's NAT bridge (0-core's ``kvm0``, 172.19.0.1/16, dnsmasq
DHCP), made on first use exactly as ``bridge.create`` makes a bridge and recorded in the same
network state, so ``bridge.info``/``nft.*`` show it. Each VM gets 0-core's address pair from a
16-bit sequence number (skipping 0, 1 and 0xffff): MAC ``00:28:06:82:HH:LL`` and the bridge
network's address + seq, registered as a dnsmasq static lease. Port forwards are core0's nft
forwards with owner ``vm:<uuid>``; everything of a VM goes when the VM goes. The VMs' taps on
the bridge are guarded against spoofing (:mod:`core0.virt.guards`); once the bridge is made,
those not guarded (yet) send nothing.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from core0 import cancel
from core0.errors import BadRequest, Conflict
from core0.net import dnsmasq, nft, portguard
from core0.net import netlink as nl
from core0.net import state as netstate
from core0.net.state import Bridge

if TYPE_CHECKING:
    from core0.context import Context

MAC_PREFIX = "00:28:06:82"


def owner(uuid: str) -> str:
    return f"vm:{uuid}"


def address(cidr: str, seq: int) -> tuple[str, str]:
    """(mac, ip) of sequence number ``seq`` on the bridge network ``cidr``."""
    net = ipaddress.ip_interface(cidr).network
    ip = net.network_address + seq
    if ip not in net or ip == net.broadcast_address:
        raise Conflict(f"no address left on {net} for VM number {seq}")
    return f"{MAC_PREFIX}:{seq >> 8:02x}:{seq & 0xff:02x}", str(ip)


def free_seq(used: set[int]) -> int:
    for seq in range(2, 0xffff):
        if seq not in used:
            return seq
    raise Conflict("no default-nic address left (65533 VMs)")


async def ensure_bridge(ctx: Context) -> Bridge:
    """The default nics' bridge, made (NAT + dnsmasq DHCP) when core0 has not made it yet."""
    name, cidr = ctx.config.virt.bridge, ctx.config.virt.bridge_cidr
    async with netstate.LOCK:
        st = netstate.load(ctx.config.state_dir)
        if name in st.bridges:
            return st.bridges[name]
        iface = ipaddress.ip_interface(cidr)
        net = iface.network
        br = Bridge(name, mode="dnsmasq", nat=True, cidr=str(iface),
                    start=str(net.network_address + 2), end=str(net.broadcast_address - 1))

        def build() -> None:
            with nl.session() as r:
                if r.link_lookup(ifname=name):
                    raise Conflict(f"link {name} exists already (not made by core0)")
                nl.link_add(r, nl.LinkSpec(name=name, kind="bridge"))
                try:
                    nl.addr_change(r, "add", name, br.cidr)
                    nl.link_set(r, name, state="up")
                    nl.enable_ip_forward()
                except BaseException:
                    nl.link_del(r, name)
                    raise

        def drop() -> None:
            with nl.session() as r:
                nl.link_del(r, name)

        # made whole even if the job is killed meanwhile, the kill taken in the try below,
        # whose undoing a second kill does not cut short (as bridge.create)
        await cancel.atomic(ctx.to_thread(build))
        new = st.copy()
        new.bridges[name] = br

        async def undo() -> None:
            await dnsmasq.stop(ctx, name, remove=True)
            await ctx.to_thread(drop)
            await netstate.commit(ctx, st, new)

        try:
            await netstate.commit(ctx, new, st)
            await dnsmasq.start(ctx, br)
        except BaseException:
            await cancel.atomic(undo(), defer=False)
            raise
        # its unguarded c0t… taps send nothing from now on (core0/virt/guards.py)
        await portguard.change(ctx, refresh=True)
        return br


def _forget_lease(ctx: Context, bridge: str, mac: str) -> None:
    """Drop ``mac``'s dynamic lease from the (stopped) dnsmasq's lease file."""
    f = dnsmasq.bridge_dir(ctx.config.state_dir, bridge) / "leases"
    try:
        lines = f.read_text().splitlines(keepends=True)
    except FileNotFoundError:
        return
    keep = [ln for ln in lines if not (len(ln.split()) > 1 and ln.split()[1].lower() == mac)]
    if keep != lines:
        tmp = f.with_suffix(".tmp")
        tmp.write_text("".join(keep))
        tmp.replace(f)


async def _restart_dnsmasq(ctx: Context, old: netstate.NetState, new: netstate.NetState,
                           name: str, forget: str = "") -> None:
    await dnsmasq.stop(ctx, name)
    if forget:
        _forget_lease(ctx, name, forget.lower())
    try:
        await dnsmasq.start(ctx, new.bridges[name])
    except BaseException:
        await dnsmasq.start(ctx, old.bridges[name])
        raise
    netstate.save(ctx.config.state_dir, new)


async def add_lease(ctx: Context, mac: str, ip: str) -> None:
    name = ctx.config.virt.bridge
    async with netstate.LOCK:
        st = netstate.load(ctx.config.state_dir)
        br = st.bridges[name]
        if br.hosts.get(mac) == ip:
            return
        if mac in br.hosts or ip in br.hosts.values():
            raise Conflict(f"{mac} or {ip} has a static lease on {name} already")
        new = st.copy()
        new.bridges[name].hosts[mac] = ip
        await _restart_dnsmasq(ctx, st, new, name)


async def remove_lease(ctx: Context, mac: str) -> bool:
    """Remove the VM's static lease and forget its dynamic lease (dnsmasq restarts)."""
    name = ctx.config.virt.bridge
    async with netstate.LOCK:
        st = netstate.load(ctx.config.state_dir)
        br = st.bridges.get(name)
        if br is None or mac not in br.hosts:
            return False
        new = st.copy()
        del new.bridges[name].hosts[mac]
        await _restart_dnsmasq(ctx, st, new, name, forget=mac)
        return True


async def add_forwards(ctx: Context, uuid: str, ip: str, ports: dict[str, int]) -> None:
    """Forwards of the VM (all or nothing; 409 when a source is taken by another owner)."""
    who = owner(uuid)
    try:
        fwds = [nft.Forward.make(who, str(src), ip, dport) for src, dport in ports.items()]
    except BadRequest as e:
        raise BadRequest(f"port: {e.message}", field="port") from None
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
                    raise Conflict(f"port {f.src}: forwarded already to {other.ip}:{other.port} "
                                   f"by {other.owner}", field="port")
                used[slot] = f
            new.forwards.append(f)
        if new.forwards != st.forwards:
            await ctx.to_thread(nl.enable_ip_forward)
            await netstate.commit(ctx, new, st)


async def remove_forwards(ctx: Context, uuid: str, srcs: list[str] | None = None) -> int:
    """Remove the VM's forwards (all, or those from ``srcs``); returns how many went."""
    who = owner(uuid)
    keys = {nft.parse_source(s, "host_port").key for s in srcs} if srcs is not None else None
    async with netstate.LOCK:
        st = netstate.load(ctx.config.state_dir)
        new = st.copy()
        new.forwards = [f for f in st.forwards
                        if not (f.owner == who and (keys is None or f.src in keys))]
        removed = len(st.forwards) - len(new.forwards)
        if removed:
            await netstate.commit(ctx, new, st)
        return removed


def forwards_of(ctx: Context, uuid: str) -> dict[str, int]:
    who = owner(uuid)
    return {f.src: f.port for f in netstate.load(ctx.config.state_dir).forwards
            if f.owner == who}


def owners(ctx: Context) -> set[str]:
    """uuids that own forwards."""
    return {f.owner[3:] for f in netstate.load(ctx.config.state_dir).forwards
            if f.owner.startswith("vm:")}
