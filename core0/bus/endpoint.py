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


def make_client(cfg: Config, *, single: bool = False, ep: Endpoint | None = None) -> Any:
    """A redis.asyncio client (a cluster client with ``redis.cluster``) for the endpoint."""
    ep = ep or endpoint(cfg)
    kw = {**ep.redis_kwargs(), **timeouts(cfg)}
    if ep.cluster:
        kw.pop("db")
        return RedisCluster(**kw)
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
