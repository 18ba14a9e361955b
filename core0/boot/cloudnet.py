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
from typing import TYPE_CHECKING, Annotated, Any

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


def _check(ethernets: Any) -> dict[str, dict[str, Any]]:
    """Check every entry against :class:`Ethernet` (BadRequest naming the key); the entries are
    then applied as given."""
    if not isinstance(ethernets, dict):
        raise BadRequest("network.ethernets: expected a mapping")
    for eid, conf in ethernets.items():
        where = f"network.ethernets.{eid}"
        eth = Ethernet.parse(conf, where)
        if eth.dhcp6:
            raise BadRequest(f"{where}.dhcp6: not supported")
        for a in eth.addresses:
            try:
                ipaddress.ip_interface(a)
            except ValueError:
                raise BadRequest(f"{where}.addresses: bad address {a!r}") from None
    return ethernets


def _nics(eid: str, conf: dict[str, Any], links: dict[str, dict[str, Any]]) -> list[str]:
    match = conf.get("match")
    if not match:
        return [eid] if eid in links else []
    if not isinstance(match, dict):
        raise BadRequest(f"network.ethernets.{eid}.match: expected a mapping")
    out = []
    for name, info in links.items():
        if "name" in match and not fnmatch.fnmatchcase(name, str(match["name"])):
            continue
        mac = match.get("macaddress")
        if mac and str(info.get("mac", "")).lower() != str(mac).lower():
            continue
        out.append(name)
    return sorted(out)


def _apply_sync(ethernets: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    from pyroute2 import IPRoute

    results = []
    with IPRoute() as r:
        links = {str(lk.get("ifname")): {"index": int(lk["index"]), "mac": lk.get("address"),
                                         "mtu": lk.get("mtu"), "up": bool(lk["flags"] & 1)}
                 for lk in r.get_links()}
        for eid, conf in ethernets.items():
            item: dict[str, Any] = {"id": eid, "ok": True, "changed": False, "nics": []}
            results.append(item)
            try:
                nics = _nics(eid, conf, links)
                if not nics:
                    raise BadRequest(f"network.ethernets.{eid}: no such NIC")
                item["nics"] = nics
                for nic in nics:
                    item["changed"] |= _apply_nic(r, links[nic], conf)
            except Exception as e:
                item["ok"] = False
                item["error"] = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
    return results


def _apply_nic(r: Any, link: dict[str, Any], conf: dict[str, Any]) -> bool:
    idx = link["index"]
    changed = False
    mtu = conf.get("mtu")
    if mtu and link["mtu"] != mtu:
        r.link("set", index=idx, mtu=int(mtu))
        changed = True
    if not link["up"]:
        r.link("set", index=idx, state="up")
        changed = True
    have = {(str(a.get("address")), int(a["prefixlen"])) for a in r.get_addr(index=idx)}
    for cidr in conf.get("addresses") or []:
        iface = ipaddress.ip_interface(cidr)
        if (str(iface.ip), iface.network.prefixlen) not in have:
            r.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            changed = True
    routes = [{"to": "default", "via": conf[k]} for k in ("gateway4", "gateway6") if conf.get(k)]
    routes += list(conf.get("routes") or [])
    for rt in routes:
        changed |= _route(r, idx, rt)
    return changed


def _route(r: Any, idx: int, rt: Any) -> bool:
    if not isinstance(rt, dict) or "to" not in rt:
        raise BadRequest(f"route {rt!r}: needs 'to'")
    via = ipaddress.ip_address(rt["via"]) if rt.get("via") else None
    to = str(rt["to"])
    if to == "default":
        dst = ipaddress.ip_network("0.0.0.0/0" if via is None or via.version == 4 else "::/0")
    else:
        dst = ipaddress.ip_network(to, strict=False)
    fam = socket.AF_INET if dst.version == 4 else socket.AF_INET6
    metric = rt.get("metric")
    for cur in r.get_routes(family=fam, table=254):
        cur_dst = cur.get("dst")
        if (int(cur["dst_len"]) == dst.prefixlen
                and (cur_dst or str(dst.network_address)) == str(dst.network_address)
                and cur.get("oif") == idx
                and (cur.get("gateway") or None) == (str(via) if via else None)
                and (metric is None or cur.get("priority") == metric)):
            return False
    kw: dict[str, Any] = {"dst": str(dst), "oif": idx}
    if via is not None:
        kw["gateway"] = str(via)
    if metric is not None:
        kw["priority"] = int(metric)
    r.route("replace", **kw)
    return True


def _resolv(ethernets: dict[str, dict[str, Any]]) -> str | None:
    servers: list[str] = []
    search: list[str] = []
    for conf in ethernets.values():
        ns = conf.get("nameservers") or {}
        if not isinstance(ns, dict):
            raise BadRequest("nameservers: expected a mapping")
        for a in ns.get("addresses") or []:
            ipaddress.ip_address(a)
            if a not in servers:
                servers.append(str(a))
        for s in ns.get("search") or []:
            if str(s) not in search:
                search.append(str(s))
    if not servers and not search:
        return None
    lines = ([f"search {' '.join(search)}"] if search else []) + [
        f"nameserver {s}" for s in servers]
    return "\n".join(lines) + "\n"


async def apply_v2(ctx: Context, cfg: Config, root: Root, net: dict[str, Any]) -> dict[str, Any]:
    """Apply ``net`` (v2); returns the step's fields (``ethernets`` results, ``changed``)."""
    ethernets = _check(net.get("ethernets") or {})
    unknown = sorted(set(net) - {"version", "ethernets", "renderer"})
    if unknown:
        raise BadRequest(f"network: unsupported keys {', '.join(unknown)} (ethernets only)")
    statics = {k: v for k, v in ethernets.items()}
    results = await ctx.to_thread(_apply_sync, statics)
    out: dict[str, Any] = {"ethernets": results,
                           "changed": any(x["changed"] for x in results),
                           "ok": all(x["ok"] for x in results)}
    for item in results:
        conf = ethernets[item["id"]]
        if conf.get("dhcp4") and item["ok"]:
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
