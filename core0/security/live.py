"""Apply the users and listening plan to a running embedded redis-server, without a restart.

``apply(cfg)`` rewrites the ACL file and redis.conf, then, over the unix socket as core0's own
user: ``ACL LOAD`` (all users at once; an invalid file changes nothing), ``CONFIG SET`` of the
listening keys (bind, port, protected-mode, TLS), and ``CLIENT KILL USER`` for users whose
password or role changed or who were removed, so no session outlives its credential.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from core0.security import acl

if TYPE_CHECKING:
    from core0.config import Config


class LiveError(RuntimeError):
    """The running redis-server refused the change (the files are written regardless)."""


def _connect(cfg: Config) -> Any:
    import redis

    own = acl.internal_config(cfg).redis
    return redis.Redis(unix_socket_path=cfg.redis_socket, username=own.username,
                       password=own.password, socket_timeout=10, socket_connect_timeout=5)


def _config_pairs(cfg: Config, p: acl.Plan) -> list[str]:
    r = cfg.redis
    pairs = ["protected-mode", "no" if p.mode == "open" else "yes"]
    if p.tls_port:
        pairs += ["tls-cert-file", r.tls_cert, "tls-key-file", r.tls_key,
                  "tls-auth-clients", "yes" if r.tls_auth_clients else "no"]
        if r.tls_ca:
            pairs += ["tls-ca-cert-file", r.tls_ca]
    pairs += ["bind", p.bind, "port", str(p.port), "tls-port", str(p.tls_port)]
    return pairs


def apply(cfg: Config, kill_users: tuple[str, ...] = ()) -> tuple[acl.Plan, bool]:
    """Write the files and apply them to the running server. Returns (plan, live): live is
    False when no redis-server answers (the files apply at its next start)."""
    import redis

    from core0 import redis_server

    p = redis_server.write_files(cfg)
    if not Path(cfg.redis_socket).exists():
        return p, False
    r = _connect(cfg)
    try:
        try:
            r.ping()
        except redis.AuthenticationError:
            raise  # reported below: not "not running"
        except (redis.ConnectionError, OSError):
            return p, False
        r.execute_command("ACL", "LOAD")
        current = r.config_get("bind", "port", "tls-port")
        pairs = _config_pairs(cfg, p)
        wanted = dict(zip(pairs[::2], pairs[1::2], strict=True))
        if any(current.get(k) != wanted[k] for k in ("bind", "port", "tls-port")) or p.tls_port:
            r.execute_command("CONFIG", "SET", *pairs)
        else:
            r.execute_command("CONFIG", "SET", "protected-mode", wanted["protected-mode"])
        for name in kill_users:
            try:
                r.execute_command("CLIENT", "KILL", "USER", name)
            except redis.ResponseError:
                pass  # no such user any more: ACL LOAD has closed its connections
    except redis.AuthenticationError as e:
        raise LiveError(f"core0's own credential was refused by redis ({e}); is this the "
                        "node's state dir?") from None
    except redis.ResponseError as e:
        raise LiveError(f"redis refused the change: {e}") from None
    except redis.RedisError as e:
        raise LiveError(f"redis: {e}") from None
    finally:
        r.close()
    return p, True
