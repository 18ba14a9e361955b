"""Where and how core0 reaches its Redis: the one factory behind both of its connections.

core0 talks to Redis over two kinds of connection: the pop loop's own RESP link
(:mod:`core0.bus.resp`) and redis.asyncio (everything else). Both are built from one
:class:`Endpoint`, so an option (TLS files, credentials, database, the cluster node) reaches
both or neither.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, ReadOnlyError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core0.config import Config


@dataclass(frozen=True)
class Endpoint:
    """One Redis server as core0 connects to it."""

    #: a unix socket path, or None for TCP
    path: str | None = None
    host: str = "127.0.0.1"
    port: int = 6379
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    username: str = ""
    password: str = ""
    db: int = 0
    cluster: bool = False

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context (server verified against ``tls_ca``, or the system's CAs; a client
        certificate when ``tls_cert`` is set), None without TLS."""
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.tls_ca or None)
        if self.tls_cert:
            ctx.load_cert_chain(self.tls_cert, self.tls_key or None)
        return ctx

    def redis_kwargs(self) -> dict[str, Any]:
        """redis-py connection arguments for this endpoint (credentials, database, TLS)."""
        kw: dict[str, Any] = {"db": self.db}
        if self.username:
            kw["username"] = self.username
        if self.password:
            kw["password"] = self.password
        if self.path is None:
            kw.update(host=self.host, port=self.port)
            if self.tls:
                kw.update(ssl=True, ssl_cert_reqs="required", ssl_ca_certs=self.tls_ca or None,
                          ssl_certfile=self.tls_cert or None, ssl_keyfile=self.tls_key or None)
        else:
            kw["path"] = self.path
        return kw


def endpoint(cfg: Config) -> Endpoint:
    """The configured Redis: the embedded server's unix socket, or ``redis.url`` (redis://,
    rediss://, unix://; its user, password and database win over ``redis.username`` /
    ``redis.password``) with the ``redis.tls_*`` files."""
    r = cfg.redis
    if r.embedded:
        return Endpoint(path=cfg.redis_socket, username=r.username, password=r.password)
    u = urlsplit(r.url)
    username = unquote(u.username) if u.username else r.username
    password = unquote(u.password) if u.password else r.password
    base = Endpoint(username=username, password=password, cluster=r.cluster, tls_ca=r.tls_ca,
                    tls_cert=r.tls_cert, tls_key=r.tls_key)
    if u.scheme == "unix":
        query = dict(p.split("=", 1) for p in u.query.split("&") if "=" in p)
        return replace(base, path=unquote(u.path), db=int(query.get("db", 0)))
    db = u.path.strip("/")
    return replace(base, host=u.hostname or "127.0.0.1", port=u.port or 6379,
                   tls=u.scheme == "rediss", db=int(db) if db.isdigit() else 0)

def timeouts(cfg: Config) -> dict[str, Any]:
    """redis-py timeouts and health checks of core0's own connections."""
    return {
        "health_check_interval": 30,
        # socket timeout above the blocking timeout, so a BLMOVE never times out the socket
        "socket_timeout": cfg.bus.block_timeout + 5,
        "socket_connect_timeout": 5,
    }


def _slot_bound(base: type[aioredis.Connection]) -> type[aioredis.Connection]:
    class SlotBound(base):  # type: ignore[valid-type,misc]
        """A connection to whichever master serves the node's hash slot, looked up at each
        (re)connect: after a failover the next connection reaches the promoted replica."""

        def __init__(self, *, slot_cfg: Config, **kw: Any):
            super().__init__(**kw)
            self._slot_cfg = slot_cfg

        async def _connect(self) -> None:
            self.host, self.port = await slot_owner(self._slot_cfg)
            await super()._connect()

        async def read_response(self, *args: Any, **kw: Any) -> Any:
            try:
                return await super().read_response(*args, **kw)
            except _MOVED as e:
                # this server no longer serves the slot (failover, resharding): drop the
                # connection, so the retry reconnects to the slot's new master
                await self.disconnect()
                raise RedisConnectionError(f"the node's slot moved: {e}") from e

    return SlotBound


#: replies of a server that no longer serves the node's slot
_MOVED = (MovedError, AskError, ReadOnlyError)

#: cluster nodes seen in the last slot map, asked when the configured one does not answer
_known_nodes: list[tuple[str, int]] = []


async def slot_owner(cfg: Config) -> tuple[str, int]:
    """The master serving this node's hash slot (every key of a node shares its hash tag):
    ``CLUSTER SLOTS`` asked of the configured node, else of a node seen in an earlier slot map,
    with the endpoint's credentials and TLS files like any other connection."""
    ep = endpoint(cfg)
    slot = key_slot(f"{cfg.bus.prefix}core:default".encode())
    error: Exception = ConnectionError("no cluster node answers")
    for host, port in dict.fromkeys([(ep.host, ep.port), *_known_nodes]):
        kw = {**replace(ep, host=host, port=port, cluster=False).redis_kwargs(),
              **timeouts(cfg)}
        kw.pop("db", None)
        r = aioredis.Redis(**kw)
        try:
            reply = await r.execute_command("CLUSTER SLOTS")
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            error = e
            continue
        finally:
            await r.aclose()
        owner, nodes = _owner_in(reply, slot)
        _known_nodes[:] = nodes
        if owner is None:
            raise ConnectionError(f"no cluster node serves slot {slot} (CLUSTERDOWN?)")
        return owner
    raise ConnectionError(f"cannot reach the cluster to find slot {slot}'s master: {error}")


def _owner_in(reply: Any, slot: int) -> tuple[tuple[str, int] | None, list[tuple[str, int]]]:
    """(the master of ``slot``, every node) in a CLUSTER SLOTS reply (raw, or as redis-py
    parses it: {(start, end): {"primary": (host, port), "replicas": [...]}})."""
    owner = None
    nodes: list[tuple[str, int]] = []

    def addr(a: Any) -> tuple[str, int]:
        host = a[0].decode() if isinstance(a[0], bytes) else str(a[0])
        return host, int(a[1])

    if isinstance(reply, dict):
        for (start, end), v in reply.items():
            members = [addr(v["primary"]), *[addr(x) for x in v.get("replicas", [])]]
            nodes += members
            if int(start) <= slot <= int(end):
                owner = members[0]
    else:
        for entry in reply:
            members = [addr(x) for x in entry[2:]]
            nodes += members
            if int(entry[0]) <= slot <= int(entry[1]):
                owner = members[0]
    return owner, list(dict.fromkeys(nodes))


def make_client(cfg: Config, *, single: bool = False, ep: Endpoint | None = None,
                cluster_wide: bool = False) -> Any:
    """A redis.asyncio client for the endpoint. With ``redis.cluster``: a client of the master
    serving the node's own slot (all of its keys, scripts and pipelines included), or, with
    ``cluster_wide``, a cluster client (keys of any slot: the fleet's registry)."""
    ep = ep or endpoint(cfg)
    kw = {**ep.redis_kwargs(), **timeouts(cfg)}
    if ep.cluster and cluster_wide:
        kw.pop("db")
        return RedisCluster(**kw)
    if ep.cluster:
        kw.pop("db")
        conn_class = _slot_bound(aioredis.SSLConnection if ep.tls else aioredis.Connection)
        kw.pop("ssl", None)
        pool = aioredis.ConnectionPool(connection_class=conn_class, socket_keepalive=True,
                                       max_connections=2 if single else 64, slot_cfg=cfg, **kw)
        return aioredis.Redis(connection_pool=pool)
    if ep.path is not None:
        pool = aioredis.ConnectionPool(connection_class=aioredis.UnixDomainSocketConnection,
                                       max_connections=2 if single else 64, **kw)
    else:
        conn_class = aioredis.SSLConnection if ep.tls else aioredis.Connection
        for k in ("ssl",):
            kw.pop(k, None)
        pool = aioredis.ConnectionPool(connection_class=conn_class, socket_keepalive=True,
                                       max_connections=2 if single else 64, **kw)
    return aioredis.Redis(connection_pool=pool)
