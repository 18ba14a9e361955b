"""Netlink through pyroute2, for worker threads (``ctx.to_thread``).

Every public function here is blocking and meant to run in a thread. A function that takes
``netns`` opens its netlink socket inside that named namespace (``/run/netns/<name>``): the
worker thread enters the namespace with setns(2) (which is per thread for network
namespaces), creates the socket, and returns to the dispatcher's namespace at once. The
socket keeps its namespace for its whole life, so no thread ever works in a foreign namespace
for longer than a ``socket()`` call. Namespaces and the error mapping live in
:mod:`core0.net.netns` (re-exported here).

pyroute2 is imported inside functions only: the dispatcher does not pay for it until the
first network command.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from core0.errors import BadRequest, CommandError, NotFound, PreconditionFailed
from core0.net import validate as v
from core0.net.netns import NETNS_DIR as NETNS_DIR
from core0.net.netns import Owned as Owned
from core0.net.netns import entered as entered
from core0.net.netns import ipr as ipr
from core0.net.netns import namespace_id as namespace_id
from core0.net.netns import netns_create as netns_create
from core0.net.netns import netns_id as netns_id
from core0.net.netns import netns_list as netns_list
from core0.net.netns import netns_path as netns_path
from core0.net.netns import netns_remove as netns_remove
from core0.net.netns import nl_error as nl_error
from core0.net.netns import open_netns as open_netns
from core0.net.netns import session as session
from core0.schema import Doc, Pattern, Range, Schema

if TYPE_CHECKING:
    from pyroute2 import IPRoute

IFF_UP = 0x1

KINDS = ("veth", "bridge", "vxlan", "macvlan", "vlan", "bond", "dummy")
BOND_MODES = {"balance-rr": 0, "active-backup": 1, "balance-xor": 2, "broadcast": 3,
              "802.3ad": 4, "balance-tlb": 5, "balance-alb": 6}
MACVLAN_MODES = ("private", "vepa", "bridge", "passthru", "source")


# ---------------------------------------------------------------- links


@dataclass(frozen=True)
class LinkSpec(Schema):
    """A link to create (``ip.link.add``, and each item of ``ip.link.add_many``)."""

    name: v.IFNAME
    kind: Annotated[Literal["veth", "bridge", "vxlan", "macvlan", "vlan", "bond", "dummy"],
                    Doc("link kind; kinds this kernel lacks answer 412")]
    hwaddr: v.MAC | None = None
    mtu: Annotated[int, Doc("MTU"), Range(68, 65535)] | None = None
    up: Annotated[bool, Doc("bring the link up after creating it")] = False
    master: Annotated[str, Doc("enslave to this bridge/bond"), Pattern(v.IFNAME_RE)] | None = None
    peer: Annotated[str, Doc("veth: the peer's name"), Pattern(v.IFNAME_RE)] | None = None
    peer_netns: Annotated[str, Doc("veth: create the peer inside this named netns"),
                          Pattern(v.NETNS_RE)] | None = None
    parent: Annotated[str, Doc("macvlan/vlan: the lower link (required); vxlan: the underlay "
                               "device"), Pattern(v.IFNAME_RE)] | None = None
    id: Annotated[int, Doc("vxlan: VNI (0..16777215); vlan: VLAN id (1..4094)"),
                  Range(0, 16777215)] | None = None
    local: Annotated[str, Doc("vxlan: local address"), Pattern(v.ADDR_RE)] | None = None
    remote: Annotated[str, Doc("vxlan: unicast remote"), Pattern(v.ADDR_RE)] | None = None
    group: Annotated[str, Doc("vxlan: multicast group"), Pattern(v.ADDR_RE)] | None = None
    port: Annotated[int, Doc("vxlan: UDP destination port (default 4789)"),
                    Range(1, 65535)] | None = None
    mode: Annotated[str, Doc("macvlan: private|vepa|bridge|passthru|source (default bridge); "
                             "bond: balance-rr|active-backup|balance-xor|broadcast|802.3ad|"
                             "balance-tlb|balance-alb (default balance-rr)"),
                    Pattern(r"[a-z0-9.-]{1,16}")] | None = None

    def __post_init__(self) -> None:
        k = self.kind
        allowed = {"name", "kind", "hwaddr", "mtu", "up", "master"} | {
            "veth": {"peer", "peer_netns"},
            "vxlan": {"parent", "id", "local", "remote", "group", "port"},
            "macvlan": {"parent", "mode"},
            "vlan": {"parent", "id"},
            "bond": {"mode"},
        }.get(k, set())
        for f in ("peer", "peer_netns", "parent", "id", "local", "remote", "group", "port",
                  "mode"):
            if getattr(self, f) is not None and f not in allowed:
                raise BadRequest(f"{f}: not an attribute of a {k} link", field=f)
        if k == "veth" and self.peer is None:
            raise BadRequest("peer: a veth needs a peer name", field="peer")
        if k == "veth" and self.peer == self.name and self.peer_netns is None:
            raise BadRequest("peer: must differ from name", field="peer")
        if k in ("macvlan", "vlan") and self.parent is None:
            raise BadRequest(f"parent: a {k} needs a parent link", field="parent")
        if k in ("vxlan", "vlan") and self.id is None:
            raise BadRequest(f"id: a {k} needs an id", field="id")
        if k == "vlan" and self.id is not None and not 1 <= self.id <= 4094:
            raise BadRequest("id: VLAN id must be 1..4094", field="id")
        if k == "macvlan" and self.mode is not None and self.mode not in MACVLAN_MODES:
            raise BadRequest(f"mode: one of {', '.join(MACVLAN_MODES)}", field="mode")
        if k == "bond" and self.mode is not None and self.mode not in BOND_MODES:
            raise BadRequest(f"mode: one of {', '.join(BOND_MODES)}", field="mode")
        if k == "vxlan":
            if self.remote is not None and self.group is not None:
                raise BadRequest("remote and group are exclusive", field="group")
            versions = {v.ip(a, f).version for f, a in
                        (("local", self.local), ("remote", self.remote), ("group", self.group))
                        if a is not None}
            if len(versions) > 1:
                raise BadRequest("local/remote/group: mixed IPv4 and IPv6", field="local")
            if self.group is not None and not v.ip(self.group, "group").is_multicast:
                raise BadRequest("group: not a multicast address", field="group")
            for f, a in (("local", self.local), ("remote", self.remote)):
                if a is not None:
                    v.unicast(a, f)


def index_of(r: IPRoute, name: str) -> int:
    idx = r.link_lookup(ifname=name)
    if not idx:
        raise NotFound(f"no such link: {name}")
    return int(idx[0])


def _kind(link: Any) -> str:
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    if kind:
        return str(kind)
    return "loopback" if link.get("ifname") == "lo" else "device"


def describe_links(r: IPRoute) -> list[dict[str, Any]]:
    links = list(r.get_links())
    names = {int(link["index"]): link.get("ifname") for link in links}
    out = []
    for link in links:
        master = link.get("master")
        out.append(_describe(link, names.get(int(master), "") if master else ""))
    return sorted(out, key=lambda d: d["index"])


def link_kinds() -> dict[str, str]:
    """Each link of the calling thread's namespace → its kind ("device" for a NIC)."""
    with session() as r:
        return {str(d["name"]): str(d["type"]) for d in describe_links(r)}


def _addr_kw(prefix: str, addr: str) -> tuple[str, str]:
    a = v.ip(addr, prefix)
    return (f"vxlan_{prefix}6" if a.version == 6 else f"vxlan_{prefix}", str(a))


def link_add(r: IPRoute, spec: LinkSpec, owned: Owned = None) -> dict[str, Any]:
    """Create one link; on a later step's failure the link is removed again. ``owned``
    scopes ``peer_netns`` (see :func:`open_netns`)."""
    kw: dict[str, Any] = {"ifname": spec.name, "kind": spec.kind}
    fds: list[int] = []
    try:
        if spec.kind == "veth":
            peer: dict[str, Any] = {"ifname": spec.peer}
            if spec.peer_netns is not None:
                fd = open_netns(spec.peer_netns, owned)
                fds.append(fd)
                peer["net_ns_fd"] = fd
            kw["peer"] = peer
        elif spec.kind == "vxlan":
            kw["vxlan_id"] = spec.id
            kw["vxlan_port"] = spec.port or 4789
            if spec.parent is not None:
                kw["vxlan_link"] = index_of(r, spec.parent)
            if spec.local is not None:
                k, a = _addr_kw("local", spec.local)
                kw[k] = a
            for src in (spec.remote, spec.group):
                if src is not None:
                    k, a = _addr_kw("group", src)
                    kw[k] = a
        elif spec.kind == "macvlan":
            kw["link"] = index_of(r, spec.parent or "")
            kw["macvlan_mode"] = spec.mode or "bridge"
        elif spec.kind == "vlan":
            kw["link"] = index_of(r, spec.parent or "")
            kw["vlan_id"] = spec.id
        elif spec.kind == "bond":
            kw["bond_mode"] = BOND_MODES[spec.mode or "balance-rr"]
        if spec.hwaddr is not None:
            kw["address"] = v.link_mac(spec.hwaddr)
        if spec.mtu is not None:
            kw["mtu"] = spec.mtu
        master = index_of(r, spec.master) if spec.master is not None else None
        try:
            r.link("add", **kw)
        except Exception as e:
            err = nl_error(e, f"link {spec.name}")
            if isinstance(err, PreconditionFailed):
                err = PreconditionFailed(
                    f"link {spec.name}: this kernel does not support {spec.kind} links "
                    f"(no {spec.kind} driver: {err.message.split(': ', 1)[-1]})")
            raise err from None
    finally:
        for fd in fds:
            os.close(fd)
    if master is not None or spec.up:
        try:
            idx = index_of(r, spec.name)
            if master is not None:
                r.link("set", index=idx, master=master)
            if spec.up:
                r.link("set", index=idx, state="up")
        except Exception as e:
            with contextlib.suppress(Exception):
                r.link("del", ifname=spec.name)
            if isinstance(e, CommandError):
                raise
            raise _master_error(nl_error(e, f"link {spec.name}"), spec.master) from None
    return {"name": spec.name, "kind": spec.kind}


def _master_error(err: CommandError, master: str | None) -> CommandError:
    """The kernel's "not supported" when enslaving to a link that takes no slaves is the
    caller's mistake (400), not a missing kernel feature."""
    if master and isinstance(err, PreconditionFailed):
        return BadRequest(f"master: {master} cannot take links (not a bridge or bond?): "
                          f"{err.message}", field="master")
    return err


def link_del(r: IPRoute, name: str) -> None:
    """Delete a link: 404 when missing, 400 for a link the kernel cannot delete (a device,
    loopback)."""
    try:
        r.link("del", ifname=name)
    except Exception as e:
        err = nl_error(e, f"link {name}")
        if err.code == 404:
            err = NotFound(f"no such link: {name}")
        elif isinstance(err, PreconditionFailed):
            err = BadRequest(f"link {name} cannot be deleted (a device or loopback: "
                             "ip.link.down takes it out of use)", field="name")
        raise err from None


def link_set(r: IPRoute, name: str, owned: Owned = None, **attrs: Any) -> None:
    """``ip link set``: state ("up"/"down"), mtu, address, ifname, master (a name, or "" for
    none), netns (move into a named netns, scoped by ``owned``: see :func:`open_netns`).
    The master is set first, on its own; then the rest in one request."""
    idx = index_of(r, name)
    kw: dict[str, Any] = {}
    fd = None
    try:
        for k, val in attrs.items():
            if val is None:
                continue
            if k == "address":
                kw["address"] = v.link_mac(val)
            elif k == "master":
                kw["master"] = index_of(r, val) if val else 0
            elif k == "netns":
                fd = open_netns(val, owned)
                kw["net_ns_fd"] = fd
            else:
                kw[k] = val
        if "master" in kw:  # first and alone: a refused master leaves the link as it was
            r.link("set", index=idx, master=kw.pop("master"))
        if kw:
            r.link("set", index=idx, **kw)
    except CommandError:
        raise
    except Exception as e:
        raise _master_error(nl_error(e, f"link {name}"), attrs.get("master")) from None
    finally:
        if fd is not None:
            os.close(fd)


def _describe(link: Any, master: str) -> dict[str, Any]:
    return {
        "name": link.get("ifname"),
        "index": int(link["index"]),
        "type": _kind(link),
        "hwaddr": link.get("address") or "",
        "master": master,
        "up": bool(link["flags"] & IFF_UP),
        "mtu": link.get("mtu"),
        "operstate": link.get("operstate") or "",
    }


def link_get(r: IPRoute, name: str) -> dict[str, Any]:
    try:
        link = list(r.link("get", ifname=name))[0]
    except Exception as e:
        err = nl_error(e, f"link {name}")
        raise (NotFound(f"no such link: {name}") if err.code == 404 else err) from None
    master, midx = "", link.get("master")
    if midx:
        m = list(r.link("get", index=int(midx)))
        master = str(m[0].get("ifname")) if m else ""
    return _describe(link, master)


def slaves(r: IPRoute, master: str) -> list[str]:
    idx = index_of(r, master)
    return sorted(str(link.get("ifname")) for link in r.get_links()
                  if link.get("master") == idx)


# ---------------------------------------------------------------- addresses


def addr_change(r: IPRoute, op: str, name: str, cidr: str) -> None:
    iface = v.interface(cidr, "ip")
    idx = index_of(r, name)
    try:
        r.addr(op, index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
    except Exception as e:
        raise nl_error(e, f"address {iface} on {name}") from None


def addr_list(r: IPRoute, name: str | None = None) -> list[dict[str, Any]]:
    names = {int(link["index"]): str(link.get("ifname")) for link in r.get_links()}
    idx = index_of(r, name) if name is not None else None
    out = []
    for a in r.get_addr(index=idx) if idx is not None else r.get_addr():
        out.append({
            "name": names.get(int(a["index"]), ""),
            "addr": f"{a.get('address')}/{a['prefixlen']}",
            "family": "inet6" if a["family"] == socket.AF_INET6 else "inet",
        })
    return out


def all_networks(r: IPRoute) -> list[tuple[str, ipaddress.IPv4Interface | ipaddress.IPv6Interface]]:
    return [(a["name"], ipaddress.ip_interface(a["addr"])) for a in addr_list(r)]


# ---------------------------------------------------------------- routes

_PROTOS = {0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 16: "dhcp"}
_SCOPES = {0: "universe", 200: "site", 253: "link", 254: "host", 255: "nowhere"}


def route_kw(r: IPRoute, dst: str, gw: str | None, dev: str | None, metric: int | None,
             table: int | None, src: str | None = None, need_via: bool = True
             ) -> dict[str, Any]:
    family = None
    kw: dict[str, Any] = {}
    if gw is not None:
        g = v.unicast(gw, "gw")
        family = g.version
        kw["gateway"] = str(g)
    if dst == "default":
        ver = family or 4
        kw["dst"] = "0.0.0.0/0" if ver == 4 else "::/0"
    else:
        n = v.network(dst, "dst")
        if family is not None and n.version != family:
            raise BadRequest("dst and gw: mixed IPv4 and IPv6", field="dst")
        kw["dst"] = str(n)
        family = n.version
    if src is not None:
        s = v.unicast(src, "src", version=family)
        kw["prefsrc"] = str(s)
    if dev is not None:
        kw["oif"] = index_of(r, dev)
    if metric is not None:
        kw["priority"] = metric
    if table is not None:
        kw["table"] = table
    if need_via and gw is None and dev is None:
        raise BadRequest("a route needs gw or dev", field="gw")
    return kw


def route_change(r: IPRoute, op: str, **kw: Any) -> None:
    try:
        r.route(op, **route_kw(r, **kw, need_via=op == "add"))
    except CommandError:
        raise
    except Exception as e:
        raise nl_error(e, f"route {kw.get('dst')}") from None


def route_list(r: IPRoute, dev: str | None = None, table: int = 254) -> list[dict[str, Any]]:
    names = {int(link["index"]): str(link.get("ifname")) for link in r.get_links()}
    oif = index_of(r, dev) if dev is not None else None
    out = []
    for fam in (socket.AF_INET, socket.AF_INET6):
        for rt in r.get_routes(family=fam, table=table):
            if rt["type"] != 1:  # unicast only (no local/broadcast/multicast)
                continue
            o = rt.get("oif")
            if oif is not None and o != oif:
                continue
            dst = rt.get("dst")
            out.append({
                "dst": f"{dst}/{rt['dst_len']}" if dst else "default",
                "gw": rt.get("gateway") or "",
                "dev": names.get(int(o), "") if o else "",
                "metric": rt.get("priority") or 0,
                "table": rt.get("table") or table,
                "proto": _PROTOS.get(rt["proto"], str(rt["proto"])),
                "scope": _SCOPES.get(rt["scope"], str(rt["scope"])),
                "src": rt.get("prefsrc") or "",
                "family": "inet6" if fam == socket.AF_INET6 else "inet",
            })
    return out


# ---------------------------------------------------------------- sysctl


def enable_ip_forward() -> bool:
    """Set net.ipv4.ip_forward=1 in the calling thread's netns; True when it changed."""
    path = "/proc/sys/net/ipv4/ip_forward"
    with open(path) as f:
        if f.read().strip() == "1":
            return False
    with open(path, "w") as f:
        f.write("1\n")
    return True
