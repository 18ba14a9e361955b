"""Fleet fixtures: core0 nodes (``core0 dev``) sharing one real redis-server, each with its own
hash-tagged prefix and node id, optionally as its own ACL user."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis
from conftest import Node, RedisServer, start_node


@dataclass
class FleetNode:
    """A node of the fleet: its ``core0 dev`` and the prefix it consumes."""

    id: str
    prefix: str
    node: Node


def node_user(srv: RedisServer, node_id: str, password: str) -> None:
    """An ACL user that may touch only this node's keys (and the registry's ``nodes:*``)."""
    srv.client().execute_command(
        "ACL", "SETUSER", node_id, "reset", "on", f">{password}", f"~{{{node_id}}}:*",
        "~nodes:*", "+@all", "-@dangerous", "+info")


def start_fleet_node(srv: RedisServer, base: Path, node_id: str, *, tags: str = "",
                     user: bool = False, env: dict[str, str] | None = None) -> FleetNode:
    """``core0 dev`` on the shared Redis (its unix socket), prefix ``{<id>}:``."""
    prefix = f"{{{node_id}}}:"
    e = {"CORE0_BUS_BLOCK_TIMEOUT": "1", "CORE0_NODE_ID": node_id, "CORE0_NODE_TAGS": tags,
         "CORE0_NODE_HEARTBEAT": "1", "CORE0_NODE_TTL": "3", **(env or {})}
    if user:
        node_user(srv, node_id, f"pw-{node_id}")
        e.update(CORE0_REDIS_USERNAME=node_id, CORE0_REDIS_PASSWORD=f"pw-{node_id}")
    n = start_node(base / node_id, extra=["--redis-url", f"unix://{srv.socket}",
                                          "--prefix", prefix],
                   env=e, port=srv.port, prefix=prefix)
    return FleetNode(node_id, prefix, n)


def shared_client(srv: RedisServer) -> redis.Redis:
    return srv.client()
