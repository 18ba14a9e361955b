"""The embedded redis-server: its configuration and readiness check.

core0 runs its own redis-server by default: TCP on ``redis.bind:redis.port`` (127.0.0.1:6379;
0-core's clients connect here) and a unix socket in the state dir that core0 itself uses.
``maxmemory-policy noeviction`` so queues and results are never evicted silently (a full Redis
refuses writes with an OOM error instead), AOF on by default so a redis-server crash loses at
most a second of writes, protected configs (``CONFIG SET dir``…) and DEBUG/MODULE off.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from core0.config import Config


def _q(value: str) -> str:
    """Quote a value for redis.conf."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_conf(cfg: Config) -> str:
    r = cfg.redis
    data_dir = cfg.state_dir / "redis"
    lines = [
        f"port {r.port}",
        f"bind {r.bind}" if r.port else "bind 127.0.0.1",
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
        # protected mode only matters without a password: then it keeps remote clients out
        # (unless the node is opened on purpose: redis.protected_mode = false)
        f"protected-mode {'yes' if r.protected_mode and not (r.password or r.aclfile) else 'no'}",
    ]
    if r.aclfile:
        lines.append(f"aclfile {_q(r.aclfile)}")
    elif r.password:
        lines.append(f"requirepass {_q(r.password)}")
    if r.tls_port:
        lines += [
            f"tls-port {r.tls_port}",
            f"tls-cert-file {_q(r.tls_cert)}",
            f"tls-key-file {_q(r.tls_key)}",
            f"tls-auth-clients {'yes' if r.tls_auth_clients else 'no'}",
        ]
        if r.tls_ca:
            lines.append(f"tls-ca-cert-file {_q(r.tls_ca)}")
    return "\n".join(lines) + "\n"


def prepare(cfg: Config) -> list[str]:
    """Write redis.conf into the state dir; return the argv that starts the server."""
    state = cfg.state_dir
    (state / "redis").mkdir(parents=True, exist_ok=True)
    os.chmod(state / "redis", 0o700)
    conf = state / "redis.conf"
    conf.write_text(render_conf(cfg))
    os.chmod(conf, 0o600)
    return [cfg.redis.binary, str(conf)]


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
