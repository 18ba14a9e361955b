"""Just enough rtnetlink for PID 1: list addresses, add an address and a default route, watch
address and link changes. Plain sockets and ``struct`` (no pyroute2 in the shim: it costs
~200 ms of imports, and the shim should hold as little as possible that can fail)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE = 24
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_CREATE = 0x100, 0x400
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST, IFA_FLAGS = 1, 2, 4, 8
IFA_F_TENTATIVE, IFA_F_DADFAILED = 0x40, 0x08
RTA_OIF, RTA_GATEWAY = 4, 5
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x1, 0x10, 0x100
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
IFF_UP = 0x1
ARPHRD_ETHER = 1

_NLMSG = struct.Struct("=IHHII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTA = struct.Struct("=HH")


class NetlinkError(OSError):
    """The kernel refused a netlink request."""


@dataclass(frozen=True)
class Address:
    index: int
    nic: str
    family: int
    address: str
    prefixlen: int
    scope: int
    flags: int

    @property
    def usable(self) -> bool:
        """Global scope and not still in duplicate address detection."""
        return self.scope == RT_SCOPE_UNIVERSE and not self.flags & (
            IFA_F_TENTATIVE | IFA_F_DADFAILED)

    def __str__(self) -> str:
        return f"{self.address}/{self.prefixlen}"


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, data: bytes) -> bytes:
    raw = _RTA.pack(_RTA.size + len(data), kind) + data
    return raw + b"\0" * (_align(len(raw)) - len(raw))


def _attrs(buf: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    off = 0
    while off + _RTA.size <= len(buf):
        length, kind = _RTA.unpack_from(buf, off)
        if length < _RTA.size:
            break
        out[kind & 0x3FFF] = buf[off + _RTA.size : off + length]
        off += _align(length)
    return out


def _messages(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, flags, payload) of each message in one datagram."""
    out = []
    off = 0
    while off + _NLMSG.size <= len(data):
        length, kind, flags, _seq, _pid = _NLMSG.unpack_from(data, off)
        if length < _NLMSG.size:
            break
        out.append((kind, flags, data[off + _NLMSG.size : off + length]))
        off += _align(length)
    return out


def _open(groups: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    s.bind((0, groups))
    return s


def _request(kind: int, flags: int, payload: bytes) -> list[tuple[int, int, bytes]]:
    """Send one request; return the replies (a dump's parts, or raise on an error ACK)."""
    with _open() as s:
        s.settimeout(5)
        msg = _NLMSG.pack(_NLMSG.size + len(payload), kind, flags | NLM_F_REQUEST, 1, 0)
        s.send(msg + payload)
        replies: list[tuple[int, int, bytes]] = []
        while True:
            data = s.recv(1 << 16)
            for mkind, mflags, body in _messages(data):
                if mkind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", body)
                    if code:
                        raise NetlinkError(-code, os.strerror(-code))
                    return replies
                if mkind == NLMSG_DONE:
                    return replies
                replies.append((mkind, mflags, body))
            if not flags & NLM_F_DUMP and not flags & NLM_F_ACK:
                return replies


def ifname(index: int) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return f"if{index}"


def parse_address(kind: int, body: bytes) -> Address | None:
    """An RTM_NEWADDR/RTM_DELADDR payload → Address."""
    if kind not in (RTM_NEWADDR, RTM_DELADDR) or len(body) < _IFADDR.size:
        return None
    family, plen, flags, scope, index = _IFADDR.unpack_from(body)
    attrs = _attrs(body[_IFADDR.size :])
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    if IFA_FLAGS in attrs and len(attrs[IFA_FLAGS]) == 4:
        (flags,) = struct.unpack("=I", attrs[IFA_FLAGS])
    return Address(index, ifname(index), family, socket.inet_ntop(family, raw), plen, scope,
                   flags)


def addresses() -> list[Address]:
    """Every address of every NIC in this network namespace."""
    out = []
    for kind, _flags, body in _request(RTM_GETADDR, NLM_F_DUMP,
                                       _IFADDR.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        a = parse_address(kind, body)
        if a is not None:
            out.append(a)
    return out


def add_address(nic: str, cidr: str) -> None:
    """Add (or replace) ``cidr`` ("10.0.2.15/24", "fd00::2/64") on ``nic``."""
    iface = ipaddress.ip_interface(cidr)
    family = socket.AF_INET if iface.version == 4 else socket.AF_INET6
    index = socket.if_nametoindex(nic)
    packed = iface.ip.packed
    payload = _IFADDR.pack(family, iface.network.prefixlen, 0, RT_SCOPE_UNIVERSE, index)
    payload += _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
    if iface.version == 4 and iface.network.prefixlen < 31:
        payload += _attr(IFA_BROADCAST, iface.network.broadcast_address.packed)
    _request(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, payload)


def add_default_route(gateway: str, nic: str | None = None) -> None:
    """Add (or replace) the default route through ``gateway``."""
    gw = ipaddress.ip_address(gateway)
    family = socket.AF_INET if gw.version == 4 else socket.AF_INET6
    payload = _RTMSG.pack(family, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE,
                          RTN_UNICAST, 0)
    payload += _attr(RTA_GATEWAY, gw.packed)
    if nic:
        payload += _attr(RTA_OIF, struct.pack("=I", socket.if_nametoindex(nic)))
    _request(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, payload)


def link_up(nic: str) -> None:
    """Set IFF_UP on ``nic`` (SIOCSIFFLAGS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        req = struct.pack("16sH14x", nic.encode()[:15], 0)
        res = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req)
        (flags,) = struct.unpack_from("H", res, 16)
        if not flags & IFF_UP:
            fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", nic.encode()[:15],
                                                              flags | IFF_UP))


def monitor() -> socket.socket:
    """A non-blocking socket that receives link and address changes."""
    s = _open(RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
    s.setblocking(False)
    return s


def drain(sock: socket.socket) -> list[tuple[int, int, bytes]]:
    """Read every pending notification (non-blocking)."""
    out: list[tuple[int, int, bytes]] = []
    while True:
        try:
            data = sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return out
        except OSError as e:
            if e.errno == errno.ENOBUFS:  # overrun: the caller re-reads the full state
                out.append((RTM_NEWLINK, 0, b""))
                continue
            return out
        out += _messages(data)


def nics() -> list[str]:
    """Every interface name of this network namespace."""
    return [name for _i, name in socket.if_nameindex()]


def is_wired(nic: str, sysfs: str = "/sys/class/net") -> bool:
    """A physical Ethernet NIC: it has a device, is of type Ethernet, is not wireless."""
    base = Path(sysfs, nic)
    if nic == "lo" or not (base / "device").exists():
        return False
    if (base / "wireless").exists() or (base / "phy80211").exists():
        return False
    with contextlib.suppress(OSError, ValueError):
        return int((base / "type").read_text()) == ARPHRD_ETHER
    return False
