"""The node's own listening sockets, read from ``/proc/thread-self/net/{tcp,udp}{,6}``.

Port forwards DNAT before the node's own sockets see a packet, so a forward on a port the
node listens on would take that port from the node's service (its sshd, the Redis API,
dnsmasq on a bridge). :func:`listeners` tells ``nft.forward_add`` which ports those are.
Blocking (reads /proc): for worker threads; it reads the calling thread's namespace.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

#: TCP_LISTEN, and TCP_CLOSE (an unconnected, bound UDP socket)
_TCP_LISTEN = "0A"
_UDP_BOUND = "07"


@dataclass(frozen=True)
class Listener:
    proto: str  #: tcp | udp
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    @property
    def ipv4(self) -> ipaddress.IPv4Address | None:
        """The IPv4 address it accepts on ("0.0.0.0" for any, including IPv6 any)."""
        a = self.addr
        if isinstance(a, ipaddress.IPv4Address):
            return a
        if a.is_unspecified:
            return ipaddress.IPv4Address(0)
        return a.ipv4_mapped


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net's hex address: 32-bit words in host byte order."""
    words = [int(text[i:i + 8], 16) for i in range(0, len(text), 8)]
    raw = b"".join(struct.pack("=I", w) for w in words)
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return ipaddress.ip_address(socket.inet_ntop(family, raw))


def parse(text: str, proto: str) -> list[Listener]:
    """The listening (TCP) or bound unconnected (UDP) sockets of one /proc/net table."""
    want = _TCP_LISTEN if proto == "tcp" else _UDP_BOUND
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 4 or f[3] != want:
            continue
        addr, _, port = f[1].partition(":")
        try:
            out.append(Listener(proto, _address(addr), int(port, 16)))
        except ValueError:
            continue
    return out


def listeners() -> list[Listener]:
    """Every TCP listener and bound UDP socket of the calling thread's network namespace."""
    out: list[Listener] = []
    for proto in ("tcp", "udp"):
        for table in (proto, proto + "6"):
            try:
                with open(f"/proc/thread-self/net/{table}") as f:
                    out += parse(f.read(), proto)
            except OSError:
                continue  # no IPv6 on this kernel
    return out
