"""Fan-out to many nodes on one shared Redis: ``Fleet`` (blocking) and ``AsyncFleet``.

Nodes announce themselves in the registry (``nodes:<id>``, written by each node with a TTL;
``Fleet.nodes()`` lists them with their age). ``run`` selects nodes by id or by tags, pushes one
command to each in a single pipelined round trip, and gathers every node's result: a node that
fails, times out or leaves the registry mid-call is reported in its own :class:`NodeResult`,
never as an exception of the whole call. ``stream`` does the same while relaying every node's
output, labelled with the node's id.

Like the node clients, both classes share one definition: generators yielding I/O operations
(``_api.Call``/``Sleep``), driven by a ``Client`` or an ``AsyncClient`` connected to the shared
Redis (one connection, every request pipelined).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from core0_client._api import GRACE, ClientAPI, Gen, Sleep, _xread_entries
from core0_client._base import build, error_message
from core0_client.errors import AuthError, Core0Error, ProtocolError, TimeoutError
from core0_client.protocol import NODES_INDEX, Command, Keys, Result, State, node_key
from core0_client.replies import parse_record, parse_result

#: callback of ``stream``: (node id, level, message, flags)
FleetCallback = Callable[[str, int, str, int], None]
#: callback of ``run``/``stream`` after each node's outcome: (done, total, failed)
ProgressCallback = Callable[[int, int, int], None]

#: seconds between two checks that the nodes still waited for are in the registry
LIVENESS_EVERY = 1.0
#: longest wait for one node's result in a gathering round (then another node's is waited on)
BLOCK_MAX = 0.25


@dataclass
class NodeInfo:
    """A node's registry entry; ``age``: seconds since its last heartbeat, ``uptime``: since
    it started."""

    id: str
    prefix: str
    tags: list[str]
    entry: dict[str, Any]
    age: float
    uptime: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.entry, "age": round(self.age, 3), "uptime": round(self.uptime, 3)}


@dataclass
class NodeResult:
    """One node's outcome: its ``result`` (any state), or an ``error`` (timeout, lost,
    not registered, unreachable) when no result came."""

    node: str
    id: str = ""
    result: Result | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result.state is State.SUCCESS

    def message(self) -> str:
        if self.error is not None:
            return self.error
        assert self.result is not None
        return "" if self.ok else error_message(self.result)

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "id": self.id, "ok": self.ok, "error": self.error,
                "result": self.result.to_dict() if self.result is not None else None}


@dataclass
class FleetResult:
    """Every selected node's :class:`NodeResult`, by node id."""

    nodes: dict[str, NodeResult] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.nodes.values())

    @property
    def succeeded(self) -> list[str]:
        return sorted(n for n, r in self.nodes.items() if r.ok)

    @property
    def failed(self) -> list[str]:
        return sorted(n for n, r in self.nodes.items() if not r.ok)

    def __getitem__(self, node: str) -> NodeResult:
        return self.nodes[node]

    def __len__(self) -> int:
        return len(self.nodes)

    def to_dict(self) -> dict[str, Any]:
        return {n: r.to_dict() for n, r in sorted(self.nodes.items())}


@dataclass
class _Pending:
    info: NodeInfo
    cmd: Command
    keys: Keys
    log_last: str = "0-0"
    log_done: bool = False


def _select(nodes: list[NodeInfo], ids: Sequence[str] | None,
            tags: Sequence[str] | None) -> tuple[list[NodeInfo], list[str]]:
    """The registered nodes selected (by id, else every node carrying all ``tags``, else all)
    and the ids asked for that are not registered."""
    by_id = {n.id: n for n in nodes}
    if ids is not None:
        return [by_id[i] for i in dict.fromkeys(ids) if i in by_id], \
            [i for i in dict.fromkeys(ids) if i not in by_id]
    want = set(tags or ())
    return [n for n in nodes if want <= set(n.tags)], []


class FleetAPI:
    """The nodes sharing one Redis. ``Fleet(url=…)`` takes the arguments of ``Client``
    (no ``prefix``: every node has its own, read from the registry); ``cluster=True`` (blocking
    ``Fleet`` only): the URL names a node of a Redis Cluster and each command goes to its
    slot's master."""

    _client_class: type[ClientAPI] = ClientAPI
    #: a Client or an AsyncClient on the shared Redis
    client: Any

    def __init__(self, *args: Any, registry_cache: float = 1.0, cluster: bool = False,
                 **kw: Any):
        kw.pop("prefix", None)
        if cluster:  # every command to its slot's master (core0_client.cluster)
            from core0_client.sync import Client

            if self._client_class is not Client:
                raise ValueError("cluster=True: the blocking Fleet only")
            from core0_client.cluster import ClusterClient

            self._client_class = ClusterClient
        self.client = self._client_class(*args, **kw)
        #: seconds ``run``/``stream`` reuse a registry read (0: read it for every call; a node
        #: that died meanwhile is reported lost by the liveness check)
        self.registry_cache = float(registry_cache)
        self._nodes_read: tuple[float, list[NodeInfo]] | None = None
        #: read results by polling (the ACL user may not BLMOVE them)
        self._poll = False

    def _drive(self, gen: Gen) -> Any:
        return self.client._drive(gen)

    # ------------------------------------------------------------ API

    def nodes(self) -> Any:
        """The registered nodes (live entries only), by id, with their age."""
        return self._drive(self._g_nodes())

    def run(self, command: str, arguments: dict[str, Any] | None = None, *,
            nodes: Sequence[str] | None = None, tags: Sequence[str] | None = None,
            timeout: float | None = None, progress: ProgressCallback | None = None,
            **kw: Any) -> Any:
        """Run ``command`` on every selected node at once (``nodes`` by id, or ``tags``: the
        nodes carrying all of them; neither = all), wait up to ``timeout`` and return a
        :class:`FleetResult` (per-node results and errors). ``kw``: options of
        ``Client.raw`` (max_time, queue, tags of the job…)."""
        return self._drive(self._g_run(command, arguments, nodes, tags, timeout, progress,
                                       None, kw))

    def stream(self, command: str, arguments: dict[str, Any] | None = None, *,
               nodes: Sequence[str] | None = None, tags: Sequence[str] | None = None,
               timeout: float | None = None, callback: FleetCallback | None = None,
               progress: ProgressCallback | None = None, **kw: Any) -> Any:
        """Like :meth:`run`, relaying every node's output as it comes:
        ``callback(node, level, message, flags)`` (default: ``node: message`` lines on
        stdout/stderr)."""
        return self._drive(self._g_run(command, arguments, nodes, tags, timeout, progress,
                                       callback or labelled_callback, kw))

    # ------------------------------------------------------------ generators

    def _g_nodes(self) -> Gen:
        c = self.client
        now = time.time()
        ids = yield from c._one(["ZRANGEBYSCORE", NODES_INDEX, now, "+inf"])
        if not isinstance(ids, list) or not ids:
            return []
        raws = yield from c._pipe([["GET", node_key(i.decode())] for i in ids])
        out = []
        for raw in raws:
            if raw is None:
                continue  # expired since the index was read
            try:
                d = json.loads(raw)
                out.append(NodeInfo(str(d["id"]), str(d.get("prefix", "")),
                                    [str(t) for t in d.get("tags") or []], d,
                                    max(0.0, now - float(d["updated"])),
                                    max(0.0, now - float(d["started"]))))
            except (ValueError, KeyError, TypeError) as e:
                raise ProtocolError(f"registry: malformed entry: {e}") from None
        return sorted(out, key=lambda n: n.id)

    def _g_run(self, command: str, arguments: dict[str, Any] | None,
               ids: Sequence[str] | None, tags: Sequence[str] | None, timeout: float | None,
               progress: ProgressCallback | None, callback: FleetCallback | None,
               kw: dict[str, Any]) -> Gen:
        c = self.client
        timeout = c.timeout if timeout is None else float(timeout)
        deadline = time.monotonic() + timeout
        queue = kw.pop("queue", None) or "default"
        out = FleetResult()
        cached = self._nodes_read
        if cached is None or time.monotonic() - cached[0] > self.registry_cache:
            cached = (time.monotonic(), (yield from self._g_nodes()))
            self._nodes_read = cached
        selected, missing = _select(cached[1], ids, tags)
        for i in missing:
            out.nodes[i] = NodeResult(i, error="not in the registry")
        stream = bool(kw.pop("stream", False)) or callback is not None
        pending: dict[str, _Pending] = {}
        for n in selected:
            pending[n.id] = _Pending(n, build(command, arguments, stream=stream, **kw),
                                     Keys(n.prefix))
        total = len(out.nodes) + len(pending)

        def done(node: str, r: NodeResult) -> None:
            out.nodes[node] = r
            pending.pop(node, None)
            if progress is not None:
                progress(len(out.nodes), total, len(out.failed))

        # one pipelined write pushes to every node (and, without a callback, already waits
        # for the first result)
        push: list[list[Any]] = [["RPUSH", p.keys.queue(queue), p.cmd.to_json()]
                                 for p in pending.values()]
        if push and callback is not None:
            yield from c._pipe(push, retry=False)
            push = []
        next_check = time.monotonic() + LIVENESS_EVERY
        pause = 0.005
        turn = 0
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                for node, p in list(pending.items()):
                    done(node, NodeResult(node, p.cmd.id, error=f"timeout after {timeout:g}s"))
                break
            turn += 1
            got = yield from self._g_collect(pending, callback, min(left, 0.5), turn, push)
            push = []
            for node, res in got.items():
                done(node, NodeResult(node, pending[node].cmd.id, res))
            if got:
                pause = 0.005
            elif callback is None and self._poll:
                yield Sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(pause * 2, 0.1)
            if pending and time.monotonic() >= next_check:
                next_check = time.monotonic() + LIVENESS_EVERY
                alive = yield from c._pipe([["EXISTS", node_key(n)] for n in pending])
                for node, n in zip(list(pending), alive, strict=True):
                    if not n:
                        done(node, NodeResult(node, pending[node].cmd.id,
                                              error="node left the registry (lost)"))
        return out

    def _g_collect(self, pending: dict[str, _Pending], callback: FleetCallback | None,
                   block: float, turn: int, push: list[list[Any]]) -> Gen:
        """Results that arrived (one pipelined round trip). Without ``callback``, the same
        write also waits (BLMOVE onto itself, up to BLOCK_MAX) for one still-pending node's
        result, a different node each turn, so results are read as they arrive without a
        polling pause; with ``callback``, it first relays new output records of every node
        (one XREAD over all their logs, blocking up to ``block``). ``push``: commands sent
        first in the same write (the fan-out's RPUSHes)."""
        c = self.client
        if callback is not None:
            live = [p for p in pending.values() if not p.log_done]
            if live:
                resp = yield from c._one(
                    ["XREAD", "COUNT", 1000, "BLOCK", int(max(10, block * 1000)), "STREAMS",
                     *[p.keys.log(p.cmd.id) for p in live], *[p.log_last for p in live]],
                    time.monotonic() + block + GRACE, blocking=True, retry=False)
                by_key = {p.keys.log(p.cmd.id): p for p in live}
                for stream in resp or []:
                    name = stream[0] if isinstance(stream, list) and stream else b""
                    p = by_key.get(name.decode() if isinstance(name, bytes) else "")
                    if p is None:
                        raise ProtocolError("XREAD: a stream that was not asked for")
                    for entry_id, fields in _xread_entries([stream]):
                        p.log_last = entry_id
                        rec = parse_record(fields.get(b"record"))
                        if rec.eof:
                            p.log_done = True
                            break
                        callback(p.info.id, rec.level, rec.message, rec.flags)
        nodes = list(pending)
        reads: list[list[Any]] = [["LINDEX", pending[n].keys.result(pending[n].cmd.id), -1]
                                  for n in nodes]
        waited = nodes[turn % len(nodes)]
        if callback is None and not self._poll:
            t = max(0.01, min(block, BLOCK_MAX))
            key = pending[waited].keys.result(pending[waited].cmd.id)
            try:
                *raws, last = yield from c._pipe(
                    [*push, *reads, ["BLMOVE", key, key, "RIGHT", "RIGHT", round(t, 3)]],
                    time.monotonic() + t + GRACE, blocking=True, retry=False)
            except AuthError as e:
                if e.kind != "NOPERM" or push:
                    raise
                self._poll = True  # an ACL user that may read results but not BLMOVE them
                return {}
            except TimeoutError:  # a slow Redis: the next round reads again (pushes were sent)
                return {}
            raws = raws[len(push):]
            if last is not None:
                raws[nodes.index(waited)] = last
        else:
            if push:
                yield from c._pipe(push, retry=False)
            raws = yield from c._pipe(reads)
        got: dict[str, Result] = {}
        for node, raw in zip(nodes, raws, strict=True):
            p = pending[node]
            if raw is None or (callback is not None and not p.log_done
                               and not (yield from self._g_log_over(p))):
                continue
            got[node] = parse_result(raw, p.cmd.id)
        return got

    def _g_log_over(self, p: _Pending) -> Gen:
        """A finished job's output was all relayed (its log has nothing after ``log_last``)."""
        more = yield from self.client._one(["XRANGE", p.keys.log(p.cmd.id), f"({p.log_last}",
                                            "+", "COUNT", 1])
        return not more


def labelled_callback(node: str, level: int, message: str, flags: int) -> None:
    """Print each output line as ``node: line`` (stderr records to stderr)."""
    from core0_client.protocol import Level

    if level == Level.STDOUT:
        sys.stdout.write(f"{node}: {message}\n")
        sys.stdout.flush()
    elif level == Level.STDERR:
        sys.stderr.write(f"{node}: {message}\n")
        sys.stderr.flush()


class Fleet(FleetAPI):
    """The nodes of one shared Redis, blocking (see :class:`FleetAPI`)."""

    def __init__(self, *args: Any, **kw: Any):
        from core0_client.sync import Client

        self._client_class = Client
        super().__init__(*args, **kw)

    def close(self) -> None:
        """Close the connection."""
        self.client.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncFleet(FleetAPI):
    """Awaitable twin of :class:`Fleet` (same methods)."""

    def __init__(self, *args: Any, **kw: Any):
        from core0_client.aio import AsyncClient

        self._client_class = AsyncClient
        super().__init__(*args, **kw)

    async def close(self) -> None:
        """Close the connection."""
        await self.client.close()

    async def __aenter__(self) -> AsyncFleet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["AsyncFleet", "Fleet", "FleetCallback", "FleetResult", "NodeInfo", "NodeResult",
           "Core0Error"]
