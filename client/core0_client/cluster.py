"""A blocking client on a Redis Cluster, for ``Fleet(…, cluster=True)``.

The same generators as every client (``_api``); only the execution of a round trip differs:
each command goes to the master serving its key's slot (``CLUSTER SLOTS``, asked of the URL's
node, else of any node seen), the commands of one round trip are sent to their masters
concurrently (one pipelined write per master), and the replies come back in order. An
``XREAD`` over several streams is split into one ``XREAD`` per stream (a node's keys share one
slot, different nodes' do not). A MOVED/ASK/CLUSTERDOWN reply or a lost master drops the slot
map and fails the round trip like a lost connection, so the caller's usual retry looks the
slots up again (after a failover: the promoted replica)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from redis.crc import key_slot

from core0_client._api import Arg
from core0_client.resp import ErrorReply
from core0_client.sync import Client
from core0_client.transport import Pool

#: error replies that mean "the slot map is stale": look it up again and retry
_MOVED = ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "READONLY")


def _key_bytes(key: Arg) -> bytes:
    return key if isinstance(key, bytes) else str(key).encode()


class ClusterClient(Client):
    """A :class:`~core0_client.sync.Client` whose round trips are routed by key slot over the
    masters of a Redis Cluster (same arguments; the URL names any node of the cluster)."""

    def _open_pool(self, max_bulk: int, connect_timeout: float) -> None:
        self._max_bulk, self._connect_timeout = max_bulk, connect_timeout
        self._pools: dict[tuple[str, int], Pool] = {}
        self._lock = threading.Lock()
        #: (first slot, last slot, host, port) of each master
        self._slots: list[tuple[int, int, str, int]] = []
        self._pool_exec = ThreadPoolExecutor(max_workers=16, thread_name_prefix="core0-cluster")
        self.pool = self._pool(self.endpoint.host, self.endpoint.port)

    def _pool(self, host: str, port: int) -> Pool:
        with self._lock:
            pool = self._pools.get((host, port))
            if pool is None:
                ep = dataclasses.replace(self.endpoint, host=host, port=port)
                pool = Pool(ep, self._max_bulk, self._connect_timeout)
                self._pools[(host, port)] = pool
            return pool

    def _connected_once(self) -> bool:
        return any(p.connected_once for p in list(self._pools.values()))

    def _refresh(self, deadline: float) -> None:
        """Read the slot map from the first node that answers (the URL's node first)."""
        err: Exception = ConnectionError("no cluster node answered")
        for pool in [self.pool, *[p for p in list(self._pools.values()) if p is not self.pool]]:
            try:
                (reply,) = pool.execute([["CLUSTER", "SLOTS"]], deadline)
            except (ConnectionError, OSError, TimeoutError) as e:
                err = e
                continue
            if isinstance(reply, ErrorReply) or not isinstance(reply, list):
                err = ConnectionError(f"CLUSTER SLOTS: {reply}")
                continue
            slots = []
            for entry in reply:
                host = entry[2][0].decode() if isinstance(entry[2][0], bytes) else entry[2][0]
                slots.append((int(entry[0]), int(entry[1]), host or self.endpoint.host,
                              int(entry[2][1])))
            self._slots = sorted(slots)
            return
        raise ConnectionError(f"cluster slot map unavailable: {err}")

    def _owner(self, key: Arg) -> Pool:
        slot = key_slot(_key_bytes(key))
        for first, last, host, port in self._slots:
            if first <= slot <= last:
                return self._pool(host, port)
        raise ConnectionError(f"no master serves slot {slot}")

    def _execute(self, cmds: Sequence[Sequence[Arg]], deadline: float) -> list[Any]:
        if not self._slots:
            self._refresh(deadline)
        # one pipelined write per master; the parts of a split XREAD each on a connection of
        # their own (they may block: side by side, not one after the other)
        routed: dict[tuple[Pool, int], list[tuple[int, list[Arg]]]] = {}
        for i, cmd in enumerate(cmds):
            parts = _split(list(cmd))
            for n, part in enumerate(parts):
                key = _first_key(part)
                pool = self._owner(key) if key is not None else self.pool
                routed.setdefault((pool, -1 if len(parts) == 1 else i * 1000 + n),
                                  []).append((i, part))

        def run(group: tuple[Pool, int], items: list[tuple[int, list[Arg]]]) -> list[Any]:
            return group[0].execute([c for _, c in items], deadline)

        try:
            if len(routed) == 1:
                ((group, items),) = routed.items()
                results = {group: run(group, items)}
            else:
                futs = {group: self._pool_exec.submit(run, group, items)
                        for group, items in routed.items()}
                results = {group: f.result() for group, f in futs.items()}
        except (ConnectionError, OSError, TimeoutError):
            self._slots = []  # a master lost: the next try looks the slots up again
            raise
        replies: list[Any] = [None] * len(cmds)
        for group, items in routed.items():
            for (i, _), reply in zip(items, results[group], strict=True):
                if isinstance(reply, ErrorReply) and reply.split(" ", 1)[0] in _MOVED:
                    self._slots = []
                    raise ConnectionError(f"cluster: {reply}")
                if _is_xread(cmds[i]) and len(_stream_keys(list(cmds[i]))) > 1:
                    if isinstance(reply, list):  # streams with entries, merged
                        replies[i] = (replies[i] or []) + reply
                else:
                    replies[i] = reply
        return replies

    def close(self) -> None:
        """Close every master's connections."""
        for pool in list(self._pools.values()):
            pool.close()
        self._pool_exec.shutdown(wait=False)


def _is_xread(cmd: Sequence[Arg]) -> bool:
    return bool(cmd) and str(cmd[0]).upper() == "XREAD"


def _stream_keys(cmd: list[Arg]) -> list[Arg]:
    names = [str(a).upper() if isinstance(a, str) else "" for a in cmd]
    at = names.index("STREAMS") + 1
    rest = cmd[at:]
    return rest[: len(rest) // 2]


def _split(cmd: list[Arg]) -> list[list[Arg]]:
    """One command per key slot: an XREAD over several streams becomes one per stream."""
    if not _is_xread(cmd):
        return [cmd]
    keys = _stream_keys(cmd)
    if len(keys) <= 1:
        return [cmd]
    at = len(cmd) - 2 * len(keys)
    head, ids = cmd[:at], cmd[at + len(keys):]
    return [[*head, k, i] for k, i in zip(keys, ids, strict=True)]


def _first_key(cmd: list[Arg]) -> Arg | None:
    if _is_xread(cmd):
        keys = _stream_keys(cmd)
        return keys[0] if keys else None
    return cmd[1] if len(cmd) > 1 else None


__all__ = ["ClusterClient"]
