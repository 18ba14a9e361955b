"""Strict parsing of network values. Everything that ends up in netlink attributes, nft rule
text or a dnsmasq config file is checked here first; errors are 400 (BadRequest)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from core0.errors import BadRequest
from core0.schema import Doc, Pattern

#: a kernel interface name: at most 15 bytes, no leading ``-`` or ``.`` (so never ``.``/``..``)
IFNAME_RE = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}"
#: an interface name, or a prefix followed by ``*`` (nft's wildcard, e.g. ``zt*``)
IFGLOB_RE = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}\*?"
#: a named network namespace (a file under /run/netns)
NETNS_RE = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}"
#: a MAC address, colon separated
MAC_RE = r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}"
#: characters an address or CIDR may contain (parsed with ``ipaddress`` afterwards)
ADDR_RE = r"[0-9A-Fa-f:./]{2,64}"
#: an owner of port forwards: ``container:<id>``, ``vm:<id>`` or ``user:<id>``
OWNER_RE = r"(container|vm|user):[A-Za-z0-9_.-]{1,64}"

IFNAME = Annotated[str, Doc("interface name (1-15 chars)"), Pattern(IFNAME_RE)]
NETNS = Annotated[str, Doc("named network namespace (/run/netns/<name>); omitted = the node's"),
                  Pattern(NETNS_RE)]
MAC = Annotated[str, Doc("MAC address aa:bb:cc:dd:ee:ff"), Pattern(MAC_RE)]
ADDR = Annotated[str, Doc("IP address"), Pattern(ADDR_RE)]
CIDR = Annotated[str, Doc("address with prefix length, e.g. 10.0.0.1/24"), Pattern(ADDR_RE)]
OWNER = Annotated[str, Doc("owner of the rules: container:<id>, vm:<id> or user:<id>"),
                  Pattern(OWNER_RE)]

_IFNAME = re.compile(IFNAME_RE)
_IFGLOB = re.compile(IFGLOB_RE)


def ifname(value: str, field: str = "name") -> str:
    if not _IFNAME.fullmatch(value):
        raise BadRequest(f"{field}: invalid interface name {value!r:.40}", field=field)
    return value


def ifglob(value: str, field: str = "interface") -> str:
    if not _IFGLOB.fullmatch(value):
        raise BadRequest(f"{field}: invalid interface name {value!r:.40}", field=field)
    return value


def ip(value: str, field: str = "ip", version: int | None = None
       ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address without prefix."""
    try:
        a = ipaddress.ip_address(value)
    except ValueError:
        raise BadRequest(f"{field}: not an IP address: {value!r:.64}", field=field) from None
    if version is not None and a.version != version:
        raise BadRequest(f"{field}: must be an IPv{version} address", field=field)
    return a


def unicast(value: str, field: str = "ip", version: int | None = None
            ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address that names one host: not unspecified, multicast or (IPv4) broadcast/
    reserved (400)."""
    a = ip(value, field, version)
    if a.is_unspecified or a.is_multicast or (
            a.version == 4 and a in ipaddress.IPv4Network("240.0.0.0/4")):
        raise BadRequest(f"{field}: {a} is not a unicast address", field=field)
    return a


def interface(value: str, field: str = "ip", version: int | None = None
              ) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """An address with prefix length (``10.0.0.1/24``); the prefix is required."""
    if "/" not in value:
        raise BadRequest(f"{field}: expected address/prefix, got {value!r:.64}", field=field)
    try:
        i = ipaddress.ip_interface(value)
    except ValueError:
        raise BadRequest(f"{field}: not an address/prefix: {value!r:.64}", field=field) from None
    if version is not None and i.version != version:
        raise BadRequest(f"{field}: must be IPv{version}", field=field)
    return i


def network(value: str, field: str = "subnet", version: int | None = None
            ) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A network; host bits are cleared (``10.0.0.5/24`` → ``10.0.0.0/24``)."""
    try:
        n = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise BadRequest(f"{field}: not a network: {value!r:.64}", field=field) from None
    if version is not None and n.version != version:
        raise BadRequest(f"{field}: must be IPv{version}", field=field)
    return n


def port(value: int | str, field: str = "port") -> int:
    if isinstance(value, str):
        if not re.fullmatch(r"[0-9]{1,5}", value):
            raise BadRequest(f"{field}: not a port number: {value!r:.40}", field=field)
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise BadRequest(f"{field}: port must be 1..65535", field=field)
    return value


def mac(value: str, field: str = "hwaddr") -> str:
    if not re.fullmatch(MAC_RE, value):
        raise BadRequest(f"{field}: invalid MAC address {value!r:.40}", field=field)
    return value.lower()


def host_interface(value: str, field: str = "ip", link: str | None = None
                   ) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """An address/prefix a link may carry (400 otherwise): not unspecified (``0.0.0.0``,
    ``::``), multicast, reserved (240.0.0.0/4, so neither broadcast), an IPv4-mapped IPv6
    address, or the network or broadcast address of its own IPv4 prefix (below /31); a
    loopback address only on ``lo``; and the prefix is not /0."""
    i = interface(value, field)
    a, net = i.ip, i.network
    why = None
    if a.is_unspecified or (a.version == 4 and a in ipaddress.IPv4Network("0.0.0.0/8")):
        why = "an unspecified address"
    elif a.is_multicast:
        why = "a multicast address"
    elif a.version == 4 and a in ipaddress.IPv4Network("240.0.0.0/4"):
        why = "the broadcast or a reserved address"
    elif isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        why = "an IPv4-mapped address"
    elif a.is_loopback and link != "lo":
        why = "a loopback address (only lo may have one)"
    elif net.prefixlen == 0:
        why = "a /0 prefix"
    elif a.version == 4 and net.prefixlen < 31 and a in (net.network_address,
                                                         net.broadcast_address):
        which = "network" if a == net.network_address else "broadcast"
        why = f"the {which} address of {net}"
    if why is not None:
        raise BadRequest(f"{field}: {i} is {why}, not a host address", field=field)
    return i


def link_mac(value: str, field: str = "hwaddr") -> str:
    """A MAC address a link may take: unicast and not all zeros (400 otherwise)."""
    m = mac(value, field)
    if int(m[:2], 16) & 1 or m == "00:00:00:00:00:00":
        raise BadRequest(f"{field}: {m} is not a unicast MAC address", field=field)
    return m
