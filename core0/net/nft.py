"""core0's nftables table: the model and its ruleset builder.

core0 owns one table, ``inet core0``, and never touches another. The whole table is rebuilt
from the model (:class:`core0.net.state.NetState`) and loaded as one ``nft -f -``
transaction on every change::

    table inet core0 {}            # make sure it exists, so that...
    delete table inet core0        # ...this never fails
    table inet core0 { ... }       # the complete new table

Either the whole change applies or nothing does; rules added behind core0's back inside its
table are repaired away on the next change; other tables are never flushed. When the model is
empty the table is deleted, so a node that never used nft has none.

Chains:

- ``input`` (filter): the open ports (``nft.open_port``), and when the input policy is
  ``drop`` the base accepts (established, lo, ICMP, DNS/DHCP from core0's bridges, the Redis
  port) before the policy;
- ``prerouting`` (nat, dstnat): port forwards (DNAT), each tagged ``comment "owner=..."``;
- ``output`` (nat, -100): the same forwards for traffic the host itself sends to its own
  addresses (0-core#682), loopback excluded;
- ``postrouting`` (nat, srcnat): masquerade of NAT bridges (``comment "bridge=<name>"``), and
  of forwarded connections that come from a bridge's network and go back into it (hairpin:
  a container reaching another one's forward through the node's address; a container cannot
  reach its own forward this way: the kernel does not route a packet back to its sender).

Every value in the text comes from :mod:`core0.net.validate` (ints, ``ipaddress`` objects,
interface names of ``[A-Za-z0-9_.-]`` with an optional trailing ``*``); nothing else is ever
interpolated.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass
from typing import Any

from core0.errors import BadRequest
from core0.net import validate as v
from core0.net.sockets import Listener

TABLE = "core0"
FAMILY = "inet"
#: the script of an empty model: the table is deleted (created first so that never fails)
EMPTY = f"table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}\n"
PROTOS = {"tcp": ("tcp",), "udp": ("udp",), "tcp+udp": ("tcp", "udp"),
          "udp+tcp": ("tcp", "udp")}


# ---------------------------------------------------------------- open ports


@dataclass(frozen=True)
class OpenPort:
    port: int
    interface: str = ""
    subnet: str = ""

    @classmethod
    def make(cls, port: int, interface: str | None, subnet: str | None) -> OpenPort:
        p = v.port(port)
        iface = v.ifglob(interface, "interface") if interface else ""
        net = str(v.network(subnet, "subnet")) if subnet else ""
        return cls(p, iface, net)

    def rule(self) -> str:
        parts = []
        if self.interface:
            parts.append(f'iifname "{self.interface}"')
        if self.subnet:
            n = ipaddress.ip_network(self.subnet)
            parts.append(f"{'ip6' if n.version == 6 else 'ip'} saddr {n}")
        parts.append(f"tcp dport {self.port} accept")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rule": self.rule()}


# ---------------------------------------------------------------- port forwards


@dataclass(frozen=True)
class Source:
    """The parsed source of a forward: 0-core's ``[ip|cidr|nic|nic*:]port[|proto]``."""

    kind: str  #: any | ip | cidr | nic
    match: str  #: the address, network or interface (glob); "" for any
    port: int
    protos: tuple[str, ...]

    @property
    def key(self) -> str:
        """The canonical spelling (what forward_list shows and forward_remove takes)."""
        proto = "+".join(self.protos)
        return (f"{self.match}:" if self.match else "") + f"{self.port}|{proto}"

    def overlaps(self, other: Source) -> bool:
        """Whether a packet could match both sources (so the later forward would be shadowed
        by the earlier one: nft applies the first DNAT that matches)."""
        if self.port != other.port or not set(self.protos) & set(other.protos):
            return False
        if self.kind == "any" or other.kind == "any":
            return True
        if self.kind == "nic" and other.kind == "nic":
            return _globs_overlap(self.match, other.match)
        if self.kind == "nic" or other.kind == "nic":
            return True  # a packet to that address may arrive on that link
        return ipaddress.ip_network(self.match).overlaps(ipaddress.ip_network(other.match))

    def takes(self, sock: Listener) -> bool:
        """Whether this source would take packets meant for the node's own socket ``sock``
        (loopback sockets never: forwards leave loopback alone)."""
        a = sock.ipv4
        if sock.proto not in self.protos or sock.port != self.port or a is None \
                or a.is_loopback:
            return False
        if int(a) == 0 or self.kind in ("any", "nic"):
            return True
        return a in ipaddress.ip_network(self.match)

    def matches(self) -> str:
        if self.kind in ("ip", "cidr"):
            return f"ip daddr {self.match} "
        if self.kind == "nic":
            return f'iifname "{self.match}" '
        return ""


_PORT = re.compile(r"[0-9]{1,5}")


def _globs_overlap(a: str, b: str) -> bool:
    """Whether two nft interface names (``eth0`` or prefix globs ``eth*``) can both match one
    link name."""
    pa, pb = a.rstrip("*"), b.rstrip("*")
    ga, gb = a.endswith("*"), b.endswith("*")
    if ga and gb:
        return pa.startswith(pb) or pb.startswith(pa)
    if ga:
        return pb.startswith(pa)
    if gb:
        return pa.startswith(pb)
    return a == b


#: IPv4 ranges that are never a unicast host: as a forward's source they never match
#: (``fib daddr type local`` excludes them, loopback is excluded on purpose), as a destination
#: they would turn a forward against the node itself (loopback), spray it (broadcast,
#: multicast) or reach nothing (0.0.0.0/8, 240.0.0.0/4)
NOT_HOSTS = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4"))
#: link-local (169.254.0.0/16): never a forward's destination (on a cloud VM,
#: 169.254.169.254 is the instance metadata service, with its credentials)
LINK_LOCAL = ipaddress.IPv4Network("169.254.0.0/16")


def _not_host(a: ipaddress.IPv4Address) -> str | None:
    """Why ``a`` cannot be a host (None when it can)."""
    for n in NOT_HOSTS:
        if a in n:
            what = {"0.0.0.0/8": "an unspecified (0.0.0.0/8) address",
                    "127.0.0.0/8": "a loopback address", "224.0.0.0/4": "a multicast address",
                    "240.0.0.0/4": "the broadcast or a reserved address"}[str(n)]
            return what
    return None


def check_destination(ip: str, field: str = "ip") -> ipaddress.IPv4Address:
    """A forward's destination: a unicast IPv4 host address that is not the node itself
    (loopback), not link-local, not broadcast/multicast/unspecified/reserved (400)."""
    a = v.ip(ip, field, version=4)
    assert isinstance(a, ipaddress.IPv4Address)
    why = _not_host(a)
    if why is None and a in LINK_LOCAL:
        why = "a link-local address"
    if why is not None:
        raise BadRequest(f"{field}: {a} is {why}, not a destination for a forward",
                         field=field)
    return a


def parse_source(text: str, field: str = "src", strict: bool = True) -> Source:
    """Parse 0-core's forward source syntax (``8080``, ``10.0.0.1:80``, ``10.0.0.0/8:80``,
    ``eth0:80``, ``zt*:80``, each optionally with ``|udp`` or ``|tcp+udp``). ``strict``
    refuses addresses that can never match (for new forwards; a saved one is re-read as it
    is)."""
    if not isinstance(text, str) or len(text) > 80:
        raise BadRequest(f"{field}: invalid forward source", field=field)
    body, bar, proto = text.partition("|")
    if bar and proto not in PROTOS:
        raise BadRequest(f"{field}: protocol must be tcp, udp or tcp+udp: {text!r:.80}",
                         field=field)
    protos = PROTOS[proto] if bar else ("tcp",)
    host, colon, port_s = body.rpartition(":")
    if not _PORT.fullmatch(port_s):
        raise BadRequest(f"{field}: no port in {text!r:.80}", field=field)
    port = v.port(port_s, field)
    if not colon:
        return Source("any", "", port, protos)
    if not host:
        raise BadRequest(f"{field}: empty address in {text!r:.80}", field=field)
    if "/" in host:
        net = v.network(host, field)
        if net.version != 4:
            raise BadRequest(f"{field}: IPv6 forwards are not supported", field=field)
        assert isinstance(net, ipaddress.IPv4Network)
        if strict and any(net.subnet_of(n) for n in NOT_HOSTS):
            raise BadRequest(f"{field}: {net} holds no unicast host address: a forward from "
                             "it never matches", field=field)
        return Source("cidr", str(net), port, protos)
    if re.fullmatch(r"[0-9.]+", host) or ":" in host:
        a = v.ip(host, field)
        if a.version != 4:
            raise BadRequest(f"{field}: IPv6 forwards are not supported", field=field)
        assert isinstance(a, ipaddress.IPv4Address)
        why = _not_host(a) if strict else None
        if why is not None:
            raise BadRequest(f"{field}: {a} is {why}: a forward from it never matches",
                             field=field)
        return Source("ip", str(a), port, protos)
    return Source("nic", v.ifglob(host, field), port, protos)


@dataclass(frozen=True)
class Forward:
    owner: str
    src: str  #: canonical source key
    ip: str  #: IPv4 destination
    port: int  #: destination port

    @classmethod
    def make(cls, owner: str, src: str, ip: str, port: int) -> Forward:
        if not re.fullmatch(v.OWNER_RE, owner):
            raise BadRequest(f"owner: invalid owner {owner!r:.80}", field="owner")
        s = parse_source(src)
        dst = check_destination(ip, "ip")
        return cls(owner, s.key, str(dst), v.port(port, f"forwards.{src}"))

    @property
    def source(self) -> Source:
        return parse_source(self.src, strict=False)

    def slots(self) -> set[tuple[str, str, int]]:
        """The (source match, protocol, port) triples this forward occupies."""
        s = self.source
        return {(s.match, proto, s.port) for proto in s.protos}

    def overlaps(self, other: Forward) -> bool:
        """Whether some packet could match both forwards (see :meth:`Source.overlaps`)."""
        return self.source.overlaps(other.source)

    def rules(self, chain: str) -> list[str]:
        s = self.source
        if chain == "output" and s.kind == "nic":
            return []  # host-originated traffic arrives on no interface
        guard = "ip daddr != 127.0.0.0/8 " if chain == "output" else ""
        return [
            f"meta nfproto ipv4 {s.matches()}{guard}fib daddr type local "
            f"{proto} dport {s.port} dnat ip to {self.ip}:{self.port} "
            f'comment "owner={self.owner}"'
            for proto in s.protos
        ]

    def to_dict(self) -> dict[str, Any]:
        return {"owner": self.owner, "src": self.src, "ip": self.ip, "port": self.port}


# ---------------------------------------------------------------- bridges


@dataclass(frozen=True)
class BridgeRules:
    name: str
    cidr: str  #: the bridge's network (e.g. 10.0.0.0/24) or ""
    nat: bool
    dnsmasq: bool  #: dnsmasq serves DNS (and maybe DHCP) on it


# ---------------------------------------------------------------- the table


def build(policy: str, ports: list[OpenPort], forwards: list[Forward],
          bridges: list[BridgeRules], api_ports: list[int]) -> str:
    """The nft script that replaces core0's table (or deletes it when there is nothing)."""
    head = EMPTY
    if policy == "accept" and not ports and not forwards and not any(b.nat for b in bridges):
        return head
    lines = [f"table {FAMILY} {TABLE} {{"]

    def chain(name: str, hook: str, ctype: str, prio: str, pol: str, body: list[str]) -> None:
        lines.append(f"  chain {name} {{")
        lines.append(f"    type {ctype} hook {hook} priority {prio}; policy {pol};")
        lines.extend(f"    {r}" for r in body)
        lines.append("  }")

    inp: list[str] = []
    if policy == "drop":
        inp += [
            "ct state established,related accept",
            "ct state invalid drop",
            'iif "lo" accept',
            "meta l4proto { icmp, ipv6-icmp } accept",
        ]
        for b in bridges:
            if b.dnsmasq:
                inp.append(f'iifname "{b.name}" udp dport {{ 53, 67 }} accept '
                           f'comment "bridge={b.name}"')
                inp.append(f'iifname "{b.name}" tcp dport 53 accept comment "bridge={b.name}"')
        for p in sorted(set(api_ports)):
            inp.append(f'tcp dport {v.port(p)} accept comment "core0 api"')
    inp += [f'{p.rule()} comment "open_port"' for p in ports]
    chain("input", "input", "filter", "filter", policy, inp)

    pre = [r for f in forwards for r in f.rules("prerouting")]
    out = [r for f in forwards for r in f.rules("output")]
    chain("prerouting", "prerouting", "nat", "dstnat", "accept", pre)
    chain("output", "output", "nat", "-100", "accept", out)
    post = []
    for b in bridges:
        if not b.cidr:
            continue
        net = ipaddress.ip_network(b.cidr)
        if b.nat:
            post.append(f'ip saddr {net} oifname != "{b.name}" masquerade '
                        f'comment "bridge={b.name}"')
        if forwards:
            # hairpin: a forward used from the bridge's own network back into it
            post.append(f'ip saddr {net} oifname "{b.name}" ct status dnat masquerade '
                        f'comment "bridge={b.name}"')
    chain("postrouting", "postrouting", "nat", "srcnat", "accept", post)
    lines.append("}")
    return head + "\n".join(lines) + "\n"


def parse_live(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """``nft -j list table inet core0`` → [{chain, handle, comment}] of its rules."""
    out = []
    for item in doc.get("nftables", []):
        rule = item.get("rule")
        if rule and rule.get("table") == TABLE and rule.get("family") == FAMILY:
            out.append({"chain": rule.get("chain"), "handle": rule.get("handle"),
                        "comment": rule.get("comment", "")})
    return out
