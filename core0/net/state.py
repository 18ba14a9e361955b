"""The node's network model: core0's bridges, open ports, port forwards, input policy and
the named network namespaces core0 made.

Kept in ``<state_dir>/net/state.json`` (written atomically: temp file, fsync, rename) so a
restarted dispatcher knows what it owns. The kernel objects (links, the nft table, dnsmasq
processes) live as long as the node; so does the state dir (a tmpfs), so both vanish together
on reboot. Every change happens under :data:`LOCK` (one dispatcher process, asyncio tasks).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core0 import cancel
from core0.net.nft import BridgeRules, Forward, OpenPort

if TYPE_CHECKING:
    from core0.context import Context

#: serialises every read-modify-apply-write of the network state
LOCK = asyncio.Lock()


@dataclass
class Bridge:
    name: str
    hwaddr: str = ""
    mode: str = "none"  #: none | static | dnsmasq
    nat: bool = False
    cidr: str = ""  #: the bridge's address with prefix (10.0.0.1/24)
    start: str = ""
    end: str = ""
    hosts: dict[str, str] = field(default_factory=dict)  #: static leases mac → ip

    def rules(self) -> BridgeRules:
        net = str(ipaddress.ip_interface(self.cidr).network) if self.cidr else ""
        return BridgeRules(self.name, net, self.nat, self.mode in ("static", "dnsmasq"))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "hwaddr": self.hwaddr,
                "network": {"mode": self.mode, "nat": self.nat, "cidr": self.cidr,
                            "start": self.start, "end": self.end},
                "hosts": dict(self.hosts)}


@dataclass
class NetState:
    policy: str = "accept"
    open_ports: list[OpenPort] = field(default_factory=list)
    forwards: list[Forward] = field(default_factory=list)
    bridges: dict[str, Bridge] = field(default_factory=dict)
    #: named network namespaces made by ``ip.netns.add``: name → the namespace's identity
    #: (:func:`core0.net.netlink.namespace_id`: a namespace of the same name made by someone
    #: else is never taken for core0's)
    netns: dict[str, int] = field(default_factory=dict)
    #: ``user:`` owners of forwards → the role and private-queue scope of the queue that
    #: made their first forward ({"role": int, "scope": str}); gone with their last forward
    owners: dict[str, dict[str, Any]] = field(default_factory=dict)

    def prune_owners(self) -> None:
        """Forget the owners that have no forward left (their names are free again)."""
        live = {f.owner for f in self.forwards}
        self.owners = {o: r for o, r in self.owners.items() if o in live}

    def copy(self) -> NetState:
        return NetState.from_json(self.to_json())

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "policy": self.policy,
            "open_ports": [{"port": p.port, "interface": p.interface, "subnet": p.subnet}
                           for p in self.open_ports],
            "forwards": [f.to_dict() for f in self.forwards],
            "bridges": {n: {k: val for k, val in b.__dict__.items()}
                        for n, b in self.bridges.items()},
            "netns": dict(self.netns),
            "owners": {o: dict(r) for o, r in self.owners.items()},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NetState:
        return cls(
            policy=d.get("policy", "accept"),
            open_ports=[OpenPort(**p) for p in d.get("open_ports", [])],
            forwards=[Forward(**f) for f in d.get("forwards", [])],
            bridges={n: Bridge(**b) for n, b in d.get("bridges", {}).items()},
            netns={str(n): int(i) for n, i in d.get("netns", {}).items()},
            owners={str(o): {"role": int(r.get("role", 3)), "scope": str(r.get("scope", ""))}
                    for o, r in d.get("owners", {}).items()},
        )


def net_dir(state_dir: Path) -> Path:
    d = state_dir / "net"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


def load(state_dir: Path) -> NetState:
    p = net_dir(state_dir) / "state.json"
    try:
        return NetState.from_json(json.loads(p.read_text()))
    except FileNotFoundError:
        return NetState()


def save(state_dir: Path, st: NetState) -> None:
    p = net_dir(state_dir) / "state.json"
    tmp = p.with_suffix(".tmp")
    data = json.dumps(st.to_json(), indent=1, sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, p)


def ruleset(ctx: Context, st: NetState) -> str:
    """The nft script of ``st`` (see :func:`core0.net.nft.build`)."""
    from core0.net import nft

    r = ctx.config.redis
    api_ports = [p for p in (r.port, r.tls_port) if r.embedded and p > 0]
    return nft.build(st.policy, st.open_ports, st.forwards,
                     [b.rules() for b in st.bridges.values()], api_ports)


async def commit(ctx: Context, st: NetState, old: NetState | None = None) -> None:
    """Load the nft table for ``st`` (one transaction), then persist ``st``.

    Called under :data:`LOCK`. When nft refuses the ruleset nothing is saved and the
    previous table stays in force. When neither ``old`` nor ``st`` needs a table, nft is not
    run at all (a node without nftables can still have plain bridges).
    """
    from core0.net import nft, reserve

    text = ruleset(ctx, st)
    if not (old is not None and text == nft.EMPTY == ruleset(ctx, old)):
        # run to its end when the job is cancelled meanwhile: the kernel's table and the
        # saved state must agree (a forward in force that the state lacks is never removed)
        await cancel.atomic(ctx.run(["nft", "-f", "-"], stdin=text.encode(), timeout=30))
    save(ctx.config.state_dir, st)
    # a forward took its port: no longer held for one to come (socat.reserve)
    reserve.RESERVED.release(f.source.port for f in st.forwards)
