"""Managers of the network domains: ``c.ip`` (link, addr, route, netns), ``c.bridge``,
``c.nft``. Every ``ip`` method takes ``netns`` (a named namespace; None = the node's)."""

from __future__ import annotations

import builtins
from typing import Any

from core0_client.managers.base import Manager


class LinkManager(Manager):
    """ip.link.*"""

    def list(self, netns: str | None = None) -> Any:
        return self._json("ip.link.list", netns=netns)

    def get(self, name: str, netns: str | None = None) -> Any:
        return self._json("ip.link.get", name=name, netns=netns)

    def up(self, name: str, netns: str | None = None) -> Any:
        return self._json("ip.link.up", name=name, netns=netns)

    def down(self, name: str, netns: str | None = None) -> Any:
        return self._json("ip.link.down", name=name, netns=netns)

    def name(self, name: str, new: str, netns: str | None = None) -> Any:
        return self._json("ip.link.name", name=name, new=new, netns=netns)

    def mtu(self, name: str, mtu: int, netns: str | None = None) -> Any:
        return self._json("ip.link.mtu", name=name, mtu=mtu, netns=netns)

    def set(self, name: str, netns: str | None = None, **attrs: Any) -> Any:
        """up, mtu, hwaddr, master, nomaster, move_to."""
        return self._json("ip.link.set", name=name, netns=netns, **attrs)

    def add(self, name: str, kind: str, netns: str | None = None, **attrs: Any) -> Any:
        """kind: veth (peer=, peer_netns=), bridge, vxlan (id=, local=, remote=/group=,
        parent=, port=), macvlan (parent=, mode=), vlan (parent=, id=), bond (mode=), dummy;
        any: hwaddr=, mtu=, master=, up=."""
        return self._json("ip.link.add", name=name, kind=kind, netns=netns, **attrs)

    def add_many(self, links: builtins.list[dict[str, Any]], netns: str | None = None) -> Any:
        return self._json("ip.link.add_many", links=links, netns=netns)

    def delete(self, name: str, netns: str | None = None) -> Any:
        return self._json("ip.link.del", name=name, netns=netns)

    def del_many(self, names: builtins.list[str], netns: str | None = None) -> Any:
        return self._json("ip.link.del_many", names=names, netns=netns)


class AddrManager(Manager):
    """ip.addr.*"""

    def add(self, name: str, ip: str, netns: str | None = None) -> Any:
        return self._json("ip.addr.add", name=name, ip=ip, netns=netns)

    def delete(self, name: str, ip: str, netns: str | None = None) -> Any:
        return self._json("ip.addr.del", name=name, ip=ip, netns=netns)

    def list(self, name: str | None = None, netns: str | None = None) -> Any:
        return self._json("ip.addr.list", name=name, netns=netns)


class RouteManager(Manager):
    """ip.route.*"""

    def add(self, dst: str = "default", gw: str | None = None, dev: str | None = None,
            netns: str | None = None, **kw: Any) -> Any:
        return self._json("ip.route.add", dst=dst, gw=gw, dev=dev, netns=netns, **kw)

    def delete(self, dst: str = "default", gw: str | None = None, dev: str | None = None,
               netns: str | None = None, **kw: Any) -> Any:
        return self._json("ip.route.del", dst=dst, gw=gw, dev=dev, netns=netns, **kw)

    def list(self, dev: str | None = None, table: int | None = None,
             netns: str | None = None) -> Any:
        return self._json("ip.route.list", dev=dev, table=table, netns=netns)


class NetnsManager(Manager):
    """ip.netns.*"""

    def add(self, name: str) -> Any:
        return self._json("ip.netns.add", name=name)

    def delete(self, name: str) -> Any:
        return self._json("ip.netns.del", name=name)

    def list(self) -> Any:
        return self._json("ip.netns.list")


class IpManager(Manager):
    """ip.*: ``c.ip.link``, ``c.ip.addr``, ``c.ip.route``, ``c.ip.netns``."""

    def __init__(self, client: Any):
        super().__init__(client)
        self.link = LinkManager(client)
        self.addr = AddrManager(client)
        self.route = RouteManager(client)
        self.netns = NetnsManager(client)


class BridgeManager(Manager):
    """bridge.*"""

    def create(self, name: str, hwaddr: str | None = None, network: dict[str, Any] | None = None
               ) -> Any:
        """network: {mode: none|static|dnsmasq, nat, cidr, start, end}."""
        return self._json("bridge.create", name=name, hwaddr=hwaddr, network=network)

    def delete(self, name: str) -> Any:
        return self._json("bridge.delete", name=name)

    def list(self) -> Any:
        return self._json("bridge.list")

    def info(self, name: str) -> Any:
        return self._json("bridge.info", name=name)

    def nic_add(self, name: str, nic: str) -> Any:
        return self._json("bridge.nic-add", name=name, nic=nic)

    def nic_remove(self, nic: str) -> Any:
        return self._json("bridge.nic-remove", nic=nic)

    def nic_list(self, name: str) -> Any:
        return self._json("bridge.nic-list", name=name)

    def add_host(self, bridge: str, ip: str, mac: str) -> Any:
        return self._json("bridge.add_host", bridge=bridge, ip=ip, mac=mac)

    def host_remove(self, bridge: str, mac: str) -> Any:
        return self._json("bridge.host_remove", bridge=bridge, mac=mac)


class NftManager(Manager):
    """nft.*: open ports, input policy, port forwards by owner."""

    def open_port(self, port: int, interface: str | None = None,
                  subnet: str | None = None) -> Any:
        return self._json("nft.open_port", port=port, interface=interface, subnet=subnet)

    def drop_port(self, port: int, interface: str | None = None,
                  subnet: str | None = None) -> Any:
        return self._json("nft.drop_port", port=port, interface=interface, subnet=subnet)

    def rule_exists(self, port: int, interface: str | None = None,
                    subnet: str | None = None) -> Any:
        return self._json("nft.rule_exists", port=port, interface=interface, subnet=subnet)

    def list(self) -> Any:
        return self._json("nft.list")

    def policy(self, policy: str) -> Any:
        return self._json("nft.policy", policy=policy)

    def forward_add(self, owner: str, ip: str, forwards: dict[str, int]) -> Any:
        """forwards: {"<src>": dst_port}, src ``port``, ``ip:port``, ``cidr:port``,
        ``nic:port``, ``nic*:port``, optionally ``|udp`` / ``|tcp+udp``."""
        return self._json("nft.forward_add", owner=owner, ip=ip, forwards=forwards)

    def forward_remove(self, owner: str, src: builtins.list[str]) -> Any:
        return self._json("nft.forward_remove", owner=owner, src=src)

    def forward_list(self, owner: str | None = None) -> Any:
        return self._json("nft.forward_list", owner=owner)

    def owner_remove(self, owner: str) -> Any:
        return self._json("nft.owner_remove", owner=owner)

    def show(self) -> Any:
        return self._json("nft.show")


MANAGERS: dict[str, type] = {"ip": IpManager, "bridge": BridgeManager, "nft": NftManager}
