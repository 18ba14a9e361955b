"""The embedded redis-server: its configuration and readiness check.

core0 runs its own redis-server by default: TCP on ``redis.bind:redis.port`` (0-core's clients
connect here; TLS on ``redis.tls_port``) and a unix socket in the state dir that core0 itself
uses. Who may connect is decided by :mod:`core0.security.acl`: with no credential configured
TCP listens on loopback only; with ACL users ``redis.bind`` is served and every client must
authenticate. ``maxmemory-policy noeviction`` so queues and results are never evicted silently
(a full Redis refuses writes with an OOM error instead), AOF on by default (Redis writes it
before it replies, so a redis-server crash loses no acknowledged write), protected configs
(``CONFIG SET dir``…) and DEBUG/MODULE off.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

from core0.config import Config
from core0.security import acl

log = logging.getLogger("core0.redis")


def _q(value: str) -> str:
    """Quote a value for redis.conf."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_conf(cfg: Config, p: acl.Plan | None = None) -> str:
    """redis.conf for the embedded server (``p``: the listening plan, computed when None)."""
    r = cfg.redis
    p = p or acl.plan(cfg)
    data_dir = cfg.state_dir / "redis"
    lines = [
        f"port {p.port}",
        f"bind {p.bind}",
        f"unixsocket {_q(cfg.redis_socket)}",
        "unixsocketperm 700",
        f"dir {_q(str(data_dir))}",
        'save ""',
        f"appendonly {'yes' if r.appendonly else 'no'}",
        f"appendfsync {r.appendfsync}",
        f"maxmemory {r.maxmemory}",
        "maxmemory-policy noeviction",
        "daemonize no",
        'logfile ""',
        "loglevel notice",
        "enable-protected-configs no",
        "enable-debug-command no",
        "enable-module-command no",
        "tcp-keepalive 60",
        "timeout 0",
        # protected mode keeps remote clients away from a default user without password
        f"protected-mode {'no' if p.mode == 'open' else 'yes'}",
        f"aclfile {_q(str(p.aclfile))}",
    ]
    if p.tls_port:
        lines += [
            f"tls-port {p.tls_port}",
            f"tls-cert-file {_q(r.tls_cert)}",
            f"tls-key-file {_q(r.tls_key)}",
            f"tls-auth-clients {'yes' if r.tls_auth_clients else 'no'}",
        ]
        if r.tls_ca:
            lines.append(f"tls-ca-cert-file {_q(r.tls_ca)}")
    return "\n".join(lines) + "\n"


def write_files(cfg: Config) -> acl.Plan:
    """Write the ACL file and redis.conf (both 0600) for the current configuration and users."""
    state = cfg.state_dir
    (state / "redis").mkdir(parents=True, exist_ok=True)
    os.chmod(state / "redis", 0o700)
    p = acl.plan(cfg)
    acl.write_private(p.aclfile, acl.render_acl(cfg, p))
    acl.write_private(state / "redis.conf", render_conf(cfg, p))
    for f in (cfg.redis.tls_cert, cfg.redis.tls_key, cfg.redis.tls_ca):
        if p.tls_port and f and not Path(f).is_file():
            log.error("redis TLS file %s is missing: redis-server will not start", f)
    return p


def prepare(cfg: Config) -> list[str]:
    """Write redis.conf and the ACL file into the state dir, say on the console who may
    connect; return the argv that starts the server."""
    try:
        p = write_files(cfg)
    except (OSError, ValueError) as e:
        # never take PID 1 down over a bad user table: serve loopback only, without users
        log.error("redis users: %s; serving loopback only without users", e)
        p = acl.Plan("closed", acl.LOOPBACK, cfg.redis.port, 0, (), cfg.state_dir / "users.acl")
        acl.write_private(p.aclfile, acl.render_acl(cfg, p))
        acl.write_private(cfg.state_dir / "redis.conf", render_conf(cfg, p))
    hint = acl.opening_hint(cfg, p)
    (log.info if p.mode == "locked" else log.warning)("%s", hint)
    return [cfg.redis.binary, str(cfg.state_dir / "redis.conf")]


def ping(path: str, password: str = "", username: str = "", timeout: float = 0.5) -> bool:
    """True when a redis-server answers PING on the unix socket ``path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            cmds = b""
            if password:
                args = [b"AUTH"] + ([username.encode()] if username else []) + [password.encode()]
                cmds += _resp(args)
            cmds += _resp([b"PING"])
            s.sendall(cmds)
            data = b""
            deadline = time.monotonic() + timeout
            while b"PONG" not in data and time.monotonic() < deadline:
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
                if data.startswith(b"-"):
                    return False
            return b"+PONG" in data
    except OSError:
        return False


def _resp(args: list[bytes]) -> bytes:
    out = b"*%d\r\n" % len(args)
    for a in args:
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def wait_ready(path: str, timeout: float, password: str = "", username: str = "") -> bool:
    """Wait (bounded, start-up only) for the server to answer on its socket."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        if Path(path).exists() and ping(path, password, username):
            return True
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)
    return False
