"""cloud-config ``network`` (netplan v2 subset), applied over netlink with pyroute2.

``ethernets.<id>``: ``match`` (``name`` glob, ``macaddress``; default: the id is the NIC name),
``dhcp4``, ``addresses`` (CIDRs), ``gateway4``, ``gateway6``, ``routes`` (``to``, ``via``,
``metric``), ``mtu``, ``nameservers`` (``addresses``, ``search``: written to resolv.conf under
``cloudconfig.root``). Idempotent: an address, route or MTU already in place is left alone.
``dhcp4`` starts a protected ``udhcpc`` job ``dhcp:<nic>`` unless ``core0 init``'s boot network
already runs DHCP on that NIC. pyroute2 is imported here only (in a worker thread).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from core0.boot.cloudfiles import ensure_file
from core0.boot.node import on_node
from core0.context import ProcessSpec
from core0.errors import BadRequest
from core0.jobs.env import job_env
from core0.schema import Range, Schema

if TYPE_CHECKING:
    from core0.config import Config
    from core0.context import Context
    from core0.fspath import Root


@dataclass(frozen=True)
class Match(Schema):
    """Which NICs an ethernet entry means (``name`` is a glob)."""

    __unknown__ = "key"

    name: str | None = None
    macaddress: str | None = None
    driver: str | None = None  # accepted, not used


@dataclass(frozen=True)
class Route(Schema):
    __unknown__ = "key"

    to: str
    via: str | None = None
    metric: Annotated[int, Range(0)] | None = None


@dataclass(frozen=True)
class Nameservers(Schema):
    __unknown__ = "key"

    addresses: list[str] = field(default_factory=list)
    search: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Ethernet(Schema):
    """One ``network.ethernets.<id>`` entry (netplan v2; the subset core0 applies)."""

    __unknown__ = "key"

    match: Match | None = None
    dhcp4: bool = False
    dhcp6: bool = False
    addresses: list[str] = field(default_factory=list)
    gateway4: str | None = None
    gateway6: str | None = None
    routes: list[Route] = field(default_factory=list)
    mtu: Annotated[int, Range(68, 65535)] | None = None
    nameservers: Nameservers | None = None
    optional: bool = False
    critical: bool = False


@dataclass(frozen=True)
class Network(Schema):
    """The ``network`` key of user-data, or a config drive's network-config (netplan v2;
    ``config: disabled`` turns it off, as cloud-init reads it)."""

    __unknown__ = "key"

    version: Literal[2] | None = None
    config: str | None = None
    renderer: str | None = None  # accepted, not used
    ethernets: dict[str, Ethernet] = field(default_factory=dict)


def _check(net: Network) -> None:
    """What the schema cannot say: dhcp6 is not served, addresses are CIDRs."""
    for eid, eth in net.ethernets.items():
        where = f"network.ethernets.{eid}"
        if eth.dhcp6:
            raise BadRequest(f"{where}.dhcp6: not supported")
        for a in eth.addresses:
            try:
                ipaddress.ip_interface(a)
            except ValueError:
                raise BadRequest(f"{where}.addresses: bad address {a!r}") from None


def _nics(eid: str, eth: Ethernet, links: dict[str, dict[str, Any]]) -> list[str]:
    match = eth.match
    if match is None or match == Match():
        return [eid] if eid in links else []
    out = []
    for name, info in links.items():
        if match.name is not None and not fnmatch.fnmatchcase(name, match.name):
            continue
        if match.macaddress and str(info.get("mac", "")).lower() != match.macaddress.lower():
            continue
        out.append(name)
    return sorted(out)


def _apply_sync(ethernets: dict[str, Ethernet]) -> list[dict[str, Any]]:
    from pyroute2 import IPRoute

    results = []
    with IPRoute() as r:
        links = {str(lk.get("ifname")): {"index": int(lk["index"]), "mac": lk.get("address"),
                                         "mtu": lk.get("mtu"), "up": bool(lk["flags"] & 1)}
                 for lk in r.get_links()}
        for eid, eth in ethernets.items():
            item: dict[str, Any] = {"id": eid, "ok": True, "changed": False, "nics": []}
            results.append(item)
            try:
                nics = _nics(eid, eth, links)
                if not nics:
                    raise BadRequest(f"network.ethernets.{eid}: no such NIC")
                item["nics"] = nics
                for nic in nics:
                    item["changed"] |= _apply_nic(r, links[nic], eth)
            except Exception as e:
                item["ok"] = False
                item["error"] = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
    return results


def _apply_nic(r: Any, link: dict[str, Any], eth: Ethernet) -> bool:
    idx = link["index"]
    changed = False
    if eth.mtu and link["mtu"] != eth.mtu:
        r.link("set", index=idx, mtu=eth.mtu)
        changed = True
    if not link["up"]:
        r.link("set", index=idx, state="up")
        changed = True
    have = {(str(a.get("address")), int(a["prefixlen"])) for a in r.get_addr(index=idx)}
    for cidr in eth.addresses:
        iface = ipaddress.ip_interface(cidr)
        if (str(iface.ip), iface.network.prefixlen) not in have:
            r.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            changed = True
    routes = [Route(to="default", via=gw) for gw in (eth.gateway4, eth.gateway6) if gw]
    for rt in [*routes, *eth.routes]:
        changed |= _route(r, idx, rt)
    return changed


def _route(r: Any, idx: int, rt: Route) -> bool:
    via = ipaddress.ip_address(rt.via) if rt.via else None
    if rt.to == "default":
        dst = ipaddress.ip_network("0.0.0.0/0" if via is None or via.version == 4 else "::/0")
    else:
        dst = ipaddress.ip_network(rt.to, strict=False)
    fam = socket.AF_INET if dst.version == 4 else socket.AF_INET6
    for cur in r.get_routes(family=fam, table=254):
        cur_dst = cur.get("dst")
        if (int(cur["dst_len"]) == dst.prefixlen
                and (cur_dst or str(dst.network_address)) == str(dst.network_address)
                and cur.get("oif") == idx
                and (cur.get("gateway") or None) == (str(via) if via else None)
                and (rt.metric is None or cur.get("priority") == rt.metric)):
            return False
    kw: dict[str, Any] = {"dst": str(dst), "oif": idx}
    if via is not None:
        kw["gateway"] = str(via)
    if rt.metric is not None:
        kw["priority"] = rt.metric
    r.route("replace", **kw)
    return True


def _resolv(ethernets: dict[str, Ethernet]) -> str | None:
    servers: list[str] = []
    search: list[str] = []
    for eth in ethernets.values():
        ns = eth.nameservers or Nameservers()
        for a in ns.addresses:
            ipaddress.ip_address(a)
            if a not in servers:
                servers.append(a)
        for s in ns.search:
            if s not in search:
                search.append(s)
    if not servers and not search:
        return None
    lines = ([f"search {' '.join(search)}"] if search else []) + [
        f"nameserver {s}" for s in servers]
    return "\n".join(lines) + "\n"


async def apply_v2(ctx: Context, cfg: Config, root: Root, net: Network) -> dict[str, Any]:
    """Apply ``net`` (v2, checked by :class:`Network`); returns the step's fields
    (``ethernets`` results, ``changed``)."""
    _check(net)
    ethernets = net.ethernets
    results = await ctx.to_thread(_apply_sync, ethernets)
    out: dict[str, Any] = {"ethernets": results,
                           "changed": any(x["changed"] for x in results),
                           "ok": all(x["ok"] for x in results)}
    for item in results:
        if ethernets[item["id"]].dhcp4 and item["ok"]:
            item["dhcp4"] = [_dhcp(ctx, cfg, nic) for nic in item["nics"]]
    text = _resolv(ethernets)
    if text is not None:
        out["resolv_conf"] = cfg.net.resolv_conf
        out["changed"] |= ensure_file(root, cfg.net.resolv_conf, text.encode(), 0o644)
    if not out["ok"]:
        out["error"] = "; ".join(x["error"] for x in results if not x["ok"])
    return out


def _dhcp(ctx: Context, cfg: Config, nic: str) -> str:
    n = cfg.net
    if on_node() and n.enabled and n.dhcp and nic not in n.skip and (
            not n.interfaces or nic in n.interfaces) and nic not in n.static:
        return "managed by the boot network"
    job_id = f"dhcp:{nic}"
    if job_id in ctx.engine.table:
        return f"running (job {job_id})"
    argv = [n.dhcp_client, "-f", "-i", nic, "-s", n.dhcp_script]
    ctx.engine.start_service(job_id, ProcessSpec(argv, env=job_env(None),
                                                 label=" ".join(argv)))
    return f"started (job {job_id})"
