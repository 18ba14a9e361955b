"""The node registry, node side: ``nodes:<id>`` with a heartbeat and a TTL.

Every node writes its entry (hostname, version, addresses, capabilities, tags, load, start
time, the prefix and queues a client reaches it on) as JSON with ``SET … EX node.ttl`` every
``node.heartbeat`` seconds, and its id into the index ``nodes:{index}`` (a sorted set scored by
the entry's expiry; expired ids are trimmed on every heartbeat, and the index has a TTL too, so
both are bounded). A clean shutdown removes both, only if the entry is still this process's
(another node started with the same id keeps its own). A node that dies just expires.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import psutil
from core0_client.protocol import NODES_INDEX, node_key

import core0
from core0 import registry
from core0.config import Config

log = logging.getLogger(__name__)

#: KEYS: entry   ARGV: instance → 1 removed, 0 not ours (one key: one slot in a cluster)
_REMOVE = """
local cur = redis.call('GET', KEYS[1])
if cur and cjson.decode(cur)['instance'] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


def node_id(cfg: Config) -> str:
    """``node.id``, else the hostname."""
    return cfg.node.id or cfg.main.hostname or socket.gethostname()


def addresses() -> list[str]:
    """The node's non-loopback IP addresses."""
    out = []
    for name, addrs in psutil.net_if_addrs().items():
        if name == "lo":
            continue
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6) and not a.address.startswith("fe80"):
                out.append(a.address.split("%", 1)[0])
    return out


def capabilities() -> list[str]:
    """The command namespaces this node serves (``core``, ``disk``, ``kvm``…)."""
    return sorted({s.name.split(".", 1)[0] for s in registry.all_commands() if not s.internal})


class NodeRegistry:
    """Writes and removes this node's registry entry. ``r`` is a redis.asyncio client (plain
    or cluster); ``jobs`` tells the number of jobs running (reported as load)."""

    def __init__(self, cfg: Config, r: Any, jobs: Callable[[], int] = lambda: 0):
        self.cfg = cfg
        self.r = r
        self.jobs = jobs
        self.id = node_id(cfg)
        self.key = node_key(self.id)
        #: tells this process's entry from another one's with the same id
        self.instance = uuid.uuid4().hex
        self.started = time.time()
        self._static = {
            "id": self.id,
            "hostname": cfg.main.hostname or socket.gethostname(),
            "version": core0.__version__,
            "prefix": cfg.bus.prefix,
            "queues": sorted(cfg.bus.queues),
            "tags": list(cfg.node.tags),
            "capabilities": capabilities(),
            "addresses": addresses(),
            "started": self.started,
            "instance": self.instance,
        }

    def entry(self) -> dict[str, Any]:
        """The entry as written now."""
        load1, load5, load15 = os.getloadavg()
        return {**self._static, "updated": time.time(),
                "load": {"load1": load1, "load5": load5, "load15": load15,
                         "cpus": os.cpu_count() or 1, "jobs": self.jobs(),
                         "mem_percent": psutil.virtual_memory().percent}}

    async def beat(self) -> None:
        """Write the entry once (entry with its TTL, index trimmed and bounded)."""
        ttl = self.cfg.node.ttl
        now = time.time()
        pipe = self.r.pipeline(transaction=False)
        pipe.set(self.key, json.dumps(self.entry()), ex=ttl)
        pipe.zadd(NODES_INDEX, {self.id: now + ttl})
        pipe.zremrangebyscore(NODES_INDEX, "-inf", now)
        # the index lives as long as its longest-lived entry could (bounded by node.ttl max)
        pipe.expire(NODES_INDEX, 86400)
        await pipe.execute()

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeat until ``stop``; Redis errors are logged and retried at the next beat."""
        failing = False
        while not stop.is_set():
            try:
                await self.beat()
                if failing:
                    log.info("registry: %s written again", self.key)
                failing = False
            except Exception as e:  # any Redis trouble: the next beat tries again
                if not failing:
                    log.warning("registry: cannot write %s (%s)", self.key, e)
                failing = True
            try:
                await asyncio.wait_for(stop.wait(), self.cfg.node.heartbeat)
            except TimeoutError:
                pass

    async def remove(self) -> bool:
        """Remove the entry (clean shutdown), if it is still this process's."""
        try:
            if not await self.r.eval(_REMOVE, 1, self.key, self.instance):
                return False
            await self.r.zrem(NODES_INDEX, self.id)
            return True
        except Exception as e:
            log.warning("registry: cannot remove %s (%s)", self.key, e)
            return False
