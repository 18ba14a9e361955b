"""VLAN and VXLAN segments: the network behind ``vlan`` and ``vxlan`` nics of VMs and containers.

0-core delegated these nics to an Open vSwitch container (``ovs.vlan-ensure``,
``ovs.vxlan-ensure``). core0 uses the kernel's own drivers instead, with no extra daemon: a
segment is one Linux bridge per VLAN id or VNI on the node, holding the segment's uplink,

* ``vlan`` ``{id: 1..4094}``: ``c0vl<id>``, an 802.1Q link on the underlay, in bridge
  ``c0vlb<id>``;
* ``vxlan`` ``{id: 1..16777215}``: ``c0vx<id>``, a VXLAN link (UDP ``[segments]
  vxlan_port``) on the underlay, flooding to ``[segments] vxlan_group`` (multicast) or to the
  unicast ``vxlan_remotes`` (one all-zeros FDB entry per peer), in bridge ``c0vxb<id>``;

and the nics of that segment on this node (a VM's tap through libvirt's ``bridge``
interface, a container's veth) are ports of that bridge: every node whose nics use VNI 42
shares one L2 network. The underlay is ``[segments] parent`` or the link of the default route.

:func:`ensure` makes a segment (idempotent; a half-made one is removed again);
:func:`collect` removes every segment whose bridge has no port left but its uplink, and is
called when a VM or a container's nic goes. Names are core0's own (``c0v…``): links of
other names are never touched.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

from core0.errors import BadRequest, CommandError, NotFound, PreconditionFailed
from core0.net import netlink as nl
from core0.net import validate as v

if TYPE_CHECKING:
    from pyroute2 import IPRoute

    from core0.segconfig import SegmentsConfig

#: kind → (id range, uplink name prefix, bridge name prefix)
KINDS = {"vlan": ((1, 4094), "c0vl", "c0vlb"), "vxlan": ((1, 16777215), "c0vx", "c0vxb")}
_lock = threading.Lock()  # ensure/collect from worker threads: one at a time
#: bridge → how many nics are being attached to it now (collect leaves those alone)
_pins: dict[str, int] = {}


def names(kind: str, seg_id: Any, where: str = "id") -> tuple[int, str, str]:
    """(id, uplink name, bridge name) of a segment; 400 for a bad kind or id."""
    if kind not in KINDS:
        raise BadRequest(f"{where}: not a segment kind: {kind}", field=where)
    (lo, hi), up, br = KINDS[kind]
    try:
        n = int(str(seg_id), 10)
    except ValueError:
        raise BadRequest(f"{where}: a {kind} id is a number {lo}..{hi}", field=where) from None
    if not lo <= n <= hi:
        raise BadRequest(f"{where}: a {kind} id is {lo}..{hi}", field=where)
    return n, f"{up}{n}", f"{br}{n}"


def _default_route_link(r: IPRoute) -> str:
    for route in r.get_default_routes(family=2):
        oif = route.get_attr("RTA_OIF")
        if oif:
            links = r.get_links(oif)
            if links:
                return str(links[0].get_attr("IFLA_IFNAME"))
    raise PreconditionFailed("segments: no [segments] parent and no IPv4 default route to "
                             "take the underlay link from")


def ensure(cfg: SegmentsConfig, kind: str, seg_id: Any, netns: str | None = None,
           where: str = "id", pin: bool = False) -> str:
    """Make segment ``kind``/``seg_id`` unless it exists; returns its bridge's name.
    ``netns``: in that named network namespace (tests; a node in a namespace). ``pin``: the
    caller attaches a nic next, :func:`collect` keeps the segment until :func:`unpin`."""
    n, uplink, bridge = names(kind, seg_id, where)
    with _lock, nl.session(netns=netns) as r:
        _make(r, cfg, kind, n, uplink, bridge)
        if pin:
            _pins[bridge] = _pins.get(bridge, 0) + 1
    return bridge


def unpin(bridge: str) -> None:
    """A nic is attached to ``bridge`` (or its attachment failed): collect may judge it."""
    with _lock:
        left = _pins.get(bridge, 0) - 1
        if left > 0:
            _pins[bridge] = left
        else:
            _pins.pop(bridge, None)


def _make(r: IPRoute, cfg: SegmentsConfig, kind: str, n: int, uplink: str, bridge: str
          ) -> None:
    """Make the bridge and its uplink where missing (a half-made segment is removed)."""
    if r.link_lookup(ifname=bridge) and r.link_lookup(ifname=uplink):
        return
    parent = cfg.parent or _default_route_link(r)
    v.ifname(parent, "segments.parent")
    if not r.link_lookup(ifname=parent):
        raise PreconditionFailed(f"segments: the underlay link {parent} does not exist")
    made: list[str] = []
    try:
        if not r.link_lookup(ifname=bridge):
            nl.link_add(r, nl.LinkSpec(name=bridge, kind="bridge", up=True,
                                       mtu=cfg.mtu or None))
            made.append(bridge)
        if not r.link_lookup(ifname=uplink):
            if kind == "vlan":
                spec = nl.LinkSpec(name=uplink, kind="vlan", parent=parent, id=n,
                                   master=bridge, up=True)
            else:
                group = None if cfg.vxlan_remotes else cfg.vxlan_group
                spec = nl.LinkSpec(name=uplink, kind="vxlan", parent=parent, id=n,
                                   group=group, port=cfg.vxlan_port, master=bridge,
                                   up=True)
            nl.link_add(r, spec)
            made.append(uplink)
            if kind == "vxlan":
                idx = nl.index_of(r, uplink)
                for peer in cfg.vxlan_remotes:
                    addr = v.unicast(peer, "segments.vxlan_remotes")
                    r.fdb("append", ifindex=idx, lladdr="00:00:00:00:00:00",
                          dst=str(addr))
    except Exception as e:
        for name in reversed(made):
            with contextlib.suppress(Exception):
                nl.link_del(r, name)
        if isinstance(e, CommandError):
            raise
        raise PreconditionFailed(f"segment {kind} {n}: {e}") from None


def collect(netns: str | None = None) -> list[str]:
    """Remove every segment whose bridge has no port but its uplink (or whose uplink is
    gone); returns the bridges removed."""
    removed = []
    with _lock, nl.session(netns=netns) as r:
        links = list(r.get_links())
        by_index = {int(link["index"]): str(link.get_attr("IFLA_IFNAME")) for link in links}
        ports: dict[str, list[str]] = {}
        for link in links:
            master = link.get_attr("IFLA_MASTER")
            if master:
                ports.setdefault(by_index.get(int(master), ""), []).append(
                    str(link.get_attr("IFLA_IFNAME")))
        for (_lo_hi, up, br) in KINDS.values():
            for name in by_index.values():
                if not name.startswith(br) or not name[len(br):].isdigit():
                    continue
                uplink = up + name[len(br):]
                if _pins.get(name) or any(p != uplink for p in ports.get(name, [])):
                    continue  # still in use, or a nic is being attached
                for link in (uplink, name):
                    with contextlib.suppress(NotFound):
                        nl.link_del(r, link)
                removed.append(name)
    return removed
