"""The network guards without a node: forward overlaps, forward destinations and sources,
host addresses of links, the node's listening sockets (the integration side is
tests/integration/test_net_hostile.py)."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from core0.commands.nft import check_listeners, check_local, check_overlaps
from core0.errors import BadRequest, Conflict
from core0.net import nft, sockets
from core0.net import validate as v


def fw(src: str, owner: str = "user:a", ip: str = "10.0.0.2", port: int = 80) -> nft.Forward:
    return nft.Forward.make(owner, src, ip, port)


@pytest.mark.parametrize("a,b,overlap", [
    ("3000", "eth0:3000", True),
    ("3000", "10.0.0.0/8:3000", True),
    ("3000", "10.1.2.3:3000", True),
    ("3000", "3000|udp", False),
    ("3000|tcp+udp", "3000|udp", True),
    ("3000", "3001", False),
    ("eth0:3000", "eth1:3000", False),
    ("eth0:3000", "eth*:3000", True),
    ("eth*:3000", "e*:3000", True),
    ("eth*:3000", "wg*:3000", False),
    ("eth0:3000", "eth0*:3000", True),
    ("eth01:3000", "eth0:3000", False),
    ("eth0:3000", "10.0.0.1:3000", True),  # a packet to that address may come on eth0
    ("10.0.0.0/8:3000", "10.1.0.0/16:3000", True),
    ("10.0.0.0/8:3000", "192.168.0.0/16:3000", False),
    ("10.0.0.1:3000", "10.0.0.1:3000|tcp+udp", True),
    ("10.0.0.1:3000", "10.0.0.2:3000", False),
    ("10.0.0.1:3000", "10.0.0.0/24:3000", True),
    ("0.0.0.0/0:3000", "192.168.1.1:3000", True),
])
def test_source_overlaps(a: str, b: str, overlap: bool) -> None:
    sa, sb = nft.parse_source(a), nft.parse_source(b)
    assert sa.overlaps(sb) is overlap and sb.overlaps(sa) is overlap


def test_check_overlaps() -> None:
    have = [fw("3000")]
    for src in ("eth0:3000", "10.0.0.0/8:3000", "3000|tcp+udp"):
        with pytest.raises(Conflict):
            check_overlaps(have, [fw(src, "user:b")])
    assert check_overlaps(have, [fw("3000")]) == []  # the same again: nothing new
    with pytest.raises(Conflict):
        check_overlaps(have, [fw("3000", ip="10.0.0.3")])  # same owner, other target
    with pytest.raises(Conflict):  # within one call
        check_overlaps([], [fw("4000"), fw("eth0:4000")])
    new = check_overlaps(have, [fw("3000|udp"), fw("eth0:3001"), fw("eth1:3001")])
    assert [f.src for f in new] == ["3000|udp", "eth0:3001|tcp", "eth1:3001|tcp"]


@pytest.mark.parametrize("ip", ["127.0.0.1", "127.9.9.9", "0.0.0.0", "0.1.2.3", "224.0.0.1",
                                "239.1.2.3", "240.0.0.1", "255.255.255.255", "169.254.169.254",
                                "fd00::1", "10.0.0.1/32", "x"])
def test_forward_destination_refused(ip: str) -> None:
    with pytest.raises(BadRequest):
        fw("80", ip=ip)


@pytest.mark.parametrize("src", ["127.0.0.1:80", "127.0.0.0/8:80", "127.1.0.0/16:80",
                                 "224.0.0.1:80", "224.0.0.0/4:80", "240.0.0.0/8:80",
                                 "255.255.255.255:80", "0.0.0.0:80", "0.0.0.0/8:80"])
def test_forward_source_that_never_matches_refused(src: str) -> None:
    with pytest.raises(BadRequest):
        nft.parse_source(src)


def test_check_local() -> None:
    mine = [ipaddress.IPv4Interface("10.0.0.1/24"), ipaddress.IPv4Interface("192.0.2.7/31")]
    for ip in ("10.0.0.1", "10.0.0.0", "10.0.0.255", "192.0.2.7"):
        with pytest.raises(BadRequest):
            check_local([fw("80", ip=ip)], mine)
    check_local([fw("80", ip="10.0.0.2"), fw("81", ip="192.0.2.6")], mine)


@pytest.mark.parametrize("cidr,link", [
    ("0.0.0.0/0", "eth0"), ("10.0.0.1/0", "eth0"), ("0.1.2.3/8", "eth0"),
    ("10.0.0.0/24", "eth0"), ("10.0.0.255/24", "eth0"), ("224.0.0.1/4", "eth0"),
    ("240.0.0.1/8", "eth0"), ("255.255.255.255/32", "eth0"), ("127.0.0.2/8", "eth0"),
    ("::/0", "eth0"), ("::/128", "eth0"), ("::1/128", "eth0"), ("ff02::1/16", "eth0"),
    ("::ffff:10.0.0.1/128", "eth0"), ("fd00::1/0", "eth0"),
])
def test_host_interface_refused(cidr: str, link: str) -> None:
    with pytest.raises(BadRequest):
        v.host_interface(cidr, "ip", link)


@pytest.mark.parametrize("cidr,link", [
    ("10.0.0.1/24", "eth0"), ("10.0.0.0/31", "eth0"), ("10.0.0.1/32", "eth0"),
    ("127.0.0.2/8", "lo"), ("::1/128", "lo"), ("fd00::/64", "eth0"), ("fe80::1/64", "eth0"),
])
def test_host_interface_accepted(cidr: str, link: str) -> None:
    assert str(v.host_interface(cidr, "ip", link)) == str(ipaddress.ip_interface(cidr))


def test_link_mac() -> None:
    assert v.link_mac("02:AB:00:00:00:01") == "02:ab:00:00:00:01"
    for bad in ("01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00", "03:00:00:00:00:00"):
        with pytest.raises(BadRequest):
            v.link_mac(bad)


def _hex4(a: str, port: int) -> str:
    import struct

    return f"{struct.unpack('=I', socket.inet_aton(a))[0]:08X}:{port:04X}"


def test_listeners_parse_and_take() -> None:
    head = "  sl  local_address rem_address   st ...\n"
    tcp = head + "".join(
        f"   {i}: {_hex4(a, p)} 00000000:0000 {st} 0:0 00:0 0 0 0 1 1\n"
        for i, (a, p, st) in enumerate([("127.0.0.1", 6379, "0A"), ("0.0.0.0", 22, "0A"),
                                        ("10.0.0.1", 8443, "0A"), ("10.0.0.1", 9000, "01")]))
    socks = sockets.parse(tcp, "tcp")
    assert [(str(s.addr), s.port) for s in socks] == [("127.0.0.1", 6379), ("0.0.0.0", 22),
                                                      ("10.0.0.1", 8443)]
    for src in ("22", "eth0:22", "192.168.0.1:22", "8443", "10.0.0.0/24:8443"):
        with pytest.raises(Conflict):
            check_listeners([fw(src)], socks)
    # loopback-only, other address, other protocol, other port: free
    check_listeners([fw("6379"), fw("10.0.0.2:8443"), fw("22|udp"), fw("9000")], socks)
    any6 = sockets.Listener("tcp", ipaddress.ip_address("::"), 80)
    mapped = sockets.Listener("udp", ipaddress.ip_address("::ffff:10.0.0.1"), 53)
    assert nft.parse_source("10.9.9.9:80").takes(any6)
    assert nft.parse_source("10.0.0.0/24:53|udp").takes(mapped)
    assert not nft.parse_source("10.0.0.0/24:53").takes(mapped)
    assert not nft.parse_source("80").takes(
        sockets.Listener("tcp", ipaddress.ip_address("fd00::1"), 80))


def test_listeners_of_this_namespace() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert ("tcp", "127.0.0.1", port) in [(x.proto, str(x.addr), x.port)
                                              for x in sockets.listeners()]
