"""The embedded Redis's ACL file and listening plan, generated from the configuration.

Without any credential (no ``redis.password``, no user) the node is *closed*: TCP on loopback
only (and the unix socket), Redis's ``default`` user open there as before. With a credential it
is *locked*: ``redis.bind`` is served, the ``default`` user is off (or, with
``redis.password``, limited to the queues of ``redis.default_role``) and each user may only:

* ``RPUSH`` to its queue keys (``<prefix>core:<queue>``) — nothing else there;
* read results: ``EXISTS TTL PTTL TYPE LRANGE LINDEX LLEN`` on ``result:*``, and the rotations
  0-core's and core0's clients read results with (``BRPOPLPUSH RPOPLPUSH BLMOVE LMOVE``, which
  can only move elements between ``result:*`` keys: no ``RPUSH``/``SET`` there, so a result
  cannot be forged from scratch);
* read output: ``BLPOP LPOP LRANGE LLEN`` on ``stream:*`` (0-core's one-reader stream) and
  ``logger:*`` (logger.subscribe's lists), ``XREAD XRANGE XREVRANGE XLEN`` on ``log:*``;
* ``PING ECHO HELLO QUIT RESET``, ``CLIENT SETNAME|GETNAME|ID``, ``MULTI EXEC DISCARD``.

Everything else (``KEYS SCAN FLUSHALL CONFIG DEBUG EVAL ACL``, pub/sub, other queues) is
refused with NOPERM. core0 itself connects as user ``core0`` with a secret generated into the
state dir (mode 0600).
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core0.security.users import DEFAULT_USER, INTERNAL_USER, User, all_users, sha256_hex

if TYPE_CHECKING:
    from core0.config import Config

log = logging.getLogger("core0.security")

LOOPBACK = "127.0.0.1"
CONNECTION_CMDS = ("+ping", "+echo", "+hello", "+quit", "+reset", "+client|setname",
                   "+client|getname", "+client|id", "+multi", "+exec", "+discard")
RESULT_CMDS = ("+exists", "+ttl", "+pttl", "+type", "+lrange", "+lindex", "+llen",
               "+brpoplpush", "+rpoplpush", "+blmove", "+lmove")
STREAM_CMDS = ("+blpop", "+lpop", "+lrange", "+llen", "+exists", "+ttl")
LOG_CMDS = ("+xread", "+xrange", "+xrevrange", "+xlen", "+exists", "+ttl")
_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-{}/@=+,")


class AclError(ValueError):
    """A name cannot be written into an ACL rule safely."""


def glob_literal(text: str) -> str:
    """``text`` as a Redis glob matching only itself (queue names and the key prefix)."""
    bad = [c for c in text if c not in _SAFE and c not in "*?[]\\"]
    if bad:
        raise AclError(f"{text!r}: character {bad[0]!r} cannot be used in a key name here")
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def user_rules(cfg: Config, user: User) -> list[str]:
    """The ACL rules of one client user (after ``on #hash``)."""
    p = glob_literal(cfg.bus.prefix)
    queues = user.queue_names(cfg)
    rules = ["resetkeys", "resetchannels", "-@all", *CONNECTION_CMDS]
    if queues:
        rules.append("(+rpush " + " ".join(f"~{p}core:{glob_literal(q)}" for q in queues) + ")")
    # a user whose queues are all private reads only its own jobs' keys (ids "<queue>.…")
    own = [f"{glob_literal(q)}.*" for q in queues]
    ids = own if queues and all(q in cfg.bus.private_queues for q in queues) else ["*"]
    for cmds, kind in ((RESULT_CMDS, "result"), (STREAM_CMDS, "stream"), (LOG_CMDS, "log"),
                       (STREAM_CMDS, "logger")):
        rules.append("(" + " ".join(cmds) + " " + " ".join(f"~{p}{kind}:{i}" for i in ids)
                     + ")")
    return rules


def secret_path(cfg: Config) -> Path:
    return cfg.state_dir / "core0.secret"


def internal_secret(cfg: Config, create: bool = True) -> str:
    """core0's own Redis password: generated once into the state dir (0600), then reused."""
    path = secret_path(cfg)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        if not create:
            raise
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # first writer wins when two processes race
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()


@dataclass(frozen=True)
class Plan:
    """What the embedded redis-server serves."""

    #: "closed" (no credential: loopback only), "locked" (ACL users), "open" (insecure)
    mode: str
    bind: str
    #: plain TCP port (0 = off)
    port: int
    tls_port: int
    users: tuple[User, ...]
    aclfile: Path

    def describe(self) -> str:
        ports = ([f"tcp {self.port}"] if self.port else []) + (
            [f"tls {self.tls_port}"] if self.tls_port else [])
        names = ", ".join(f"{u.name} ({u.role})" for u in self.users) or "none"
        return f"{self.mode}: {self.bind} {' + '.join(ports) or 'no tcp'}; users {names}"


def plan(cfg: Config) -> Plan:
    """The listening plan and users for ``cfg`` (config users + the runtime store)."""
    r = cfg.redis
    users = tuple(sorted(all_users(cfg).values(), key=lambda u: u.name))
    port = r.port if (not r.tls_port or r.plain_tcp) else 0
    if users:
        mode, bind = "locked", r.bind
    elif not r.protected_mode:
        mode, bind = "open", r.bind
    else:
        mode, bind = "closed", LOOPBACK
    return Plan(mode, bind, port, r.tls_port, users, cfg.state_dir / "users.acl")


def opening_hint(cfg: Config, p: Plan) -> str:
    """The console line that says how the node's bus is reached, and how to open it."""
    if p.mode == "locked":
        return f"redis: ACL users on {p.bind} ({p.describe()})"
    if p.mode == "open":
        return (f"redis: OPEN on {p.bind} without any password (redis.protected_mode = false); "
                "anyone who reaches this port runs commands as root")
    asked = "" if cfg.redis.bind in ("127.0.0.1", "::1", "localhost") else (
        f" (redis.bind = {cfg.redis.bind} is not served)")
    return (f"redis: no credential configured: the bus listens on {LOOPBACK} and the unix "
            f"socket only{asked}. To open it: core0.redis.password=<pw> on the kernel command "
            "line (development), redis.password or [users.<name>] in /etc/core0/conf.d, or "
            "`core0 user add NAME --role admin` (live); see docs/security.md")


def render_acl(cfg: Config, p: Plan) -> str:
    """The ACL file for plan ``p``."""
    lines = [f"user {INTERNAL_USER} on #{sha256_hex(internal_secret(cfg))} ~* &* +@all"]
    by_name = {u.name: u for u in p.users}
    if p.mode in ("closed", "open"):
        lines.append(f"user {DEFAULT_USER} on nopass ~* &* +@all")
    elif DEFAULT_USER in by_name:
        d = by_name[DEFAULT_USER]
        lines.append(f"user {DEFAULT_USER} on #{d.hash} " + " ".join(user_rules(cfg, d)))
    else:
        lines.append(f"user {DEFAULT_USER} off resetkeys resetchannels -@all")
    for u in p.users:
        if u.name != DEFAULT_USER:
            lines.append(f"user {u.name} on #{u.hash} " + " ".join(user_rules(cfg, u)))
    if cfg.redis.aclfile:
        lines += _extra_rules(Path(cfg.redis.aclfile), set(by_name) | {DEFAULT_USER, INTERNAL_USER})
    return "\n".join(lines) + "\n"


def _extra_rules(path: Path, taken: set[str]) -> list[str]:
    out = []
    try:
        text = path.read_text()
    except OSError as e:
        log.error("redis.aclfile %s: %s (ignored)", path, e)
        return []
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] != "user" or len(words) < 2 or words[1] in taken:
            log.error("redis.aclfile %s:%d: not a new `user NAME …` line (ignored)", path, n)
            continue
        out.append(line.strip())
    return out


def write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def internal_config(cfg: Config) -> Config:
    """``cfg`` with core0's own credentials for the embedded Redis (what the dispatcher and
    the shim's readiness check use); unchanged for a remote Redis."""
    import dataclasses

    if not cfg.redis.embedded:
        return cfg
    r = dataclasses.replace(cfg.redis, username=INTERNAL_USER, password=internal_secret(cfg))
    return dataclasses.replace(cfg, redis=r)
