"""Redis ACL users: config tables, the runtime store of ``core0 user``, password hashing.

A user is a name, a role (admin, operator, read-only) and the SHA-256 of its password; it may
push commands to the queues of its role (``bus.queues``), or to the queues listed for it.
Passwords are never stored: config may hold ``password`` (hashed when the ACL file is written)
or ``password_sha256``; the runtime store (``redis.users_file``, default
``<state_dir>/users.json``, mode 0600) holds hashes only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar

from core0.errors import CommandError
from core0.registry import ROLE_NAME
from core0.schema import Doc, Len, Pattern, Schema, Secret

if TYPE_CHECKING:
    from core0.config import Config

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: core0's own connection; never configurable, never listed as a client user
INTERNAL_USER = "core0"
#: Redis's user for clients that send a one-argument AUTH (0-core's clients)
DEFAULT_USER = "default"
CONFIG_KEYS = {"role", "password", "password_sha256", "queues", "__source__"}


class UserError(ValueError):
    """A user definition or operation is invalid; the message says which and why."""


def sha256_hex(password: str) -> str:
    """The SHA-256 of a password, as Redis's ACL ``#<hex>`` form expects it."""
    return hashlib.sha256(password.encode()).hexdigest()


def normalize_hash(value: str) -> str:
    """A SHA-256 given in hex (optionally with Redis's leading ``#``), lower-cased."""
    return _one(_Hash, "password_sha256", value).strip().lower().removeprefix("#")


def check_password(password: str) -> str:
    """Refuse passwords that would be weak or break the ACL file; return it unchanged."""
    return _one(_Password, "password", password)


def check_name(name: str, *, allow_default: bool = True) -> str:
    if not NAME_RE.match(name):
        raise UserError(f"invalid user name {name!r}: letters, digits, _ . - (at most 64)")
    if name == INTERNAL_USER:
        raise UserError(f"{INTERNAL_USER!r} is core0's own user")
    if name == DEFAULT_USER and not allow_default:
        raise UserError("'default' is set with redis.password")
    return name


def check_role(role: str) -> str:
    """The canonical label of a role name (admin, operator, read-only)."""
    from core0.registry import Role

    try:
        return Role.parse(role).label
    except ValueError as e:
        raise UserError(str(e)) from None


@dataclass(frozen=True)
class User:
    """One ACL user as the ACL file renders it."""

    name: str
    role: str
    #: SHA-256 hex of the password
    hash: str
    #: explicit queues; None = every queue of the role
    queues: tuple[str, ...] | None = None
    #: where it comes from: a config file, "runtime" (core0 user), or "redis.password"
    source: str = "runtime"

    def queue_names(self, cfg: Config) -> list[str]:
        """The queues this user may push to."""
        if self.queues is not None:
            return list(self.queues)
        from core0.registry import Role

        mine = Role.parse(self.role)
        return sorted(q for q, r in cfg.bus.queue_roles().items() if r == mine)


def _check_queues(cfg: Config, queues: list[str] | None, where: str) -> tuple[str, ...] | None:
    """The queues of a user (their type is the schema's): each must be one of bus.queues."""
    if queues is None:
        return None
    for q in queues:
        if q not in cfg.bus.queues:
            raise UserError(f"{where}: queue {q!r} is not in bus.queues")
    return tuple(queues)


#: a password: 8 to 512 characters on one line (it is a line of the ACL file); never quoted
PASSWORD = Annotated[str, Doc("the password (stored as its SHA-256 only)"), Len(8, 512),
                     Pattern(r"[^\r\n\x00]*", what="one line"), Secret()]
#: a SHA-256 in hex, optionally with Redis's leading ``#`` (any case); never quoted either
SHA256_HEX = Annotated[str, Doc("or its SHA-256 (hex)"),
                       Pattern(r"\s*#?[0-9A-Fa-f]{64}\s*", what="64 hex digits (a SHA-256)"),
                       Secret()]


@dataclass(frozen=True)
class UserTable(Schema):
    """A ``[users.<name>]`` table of the configuration. Each key is checked here; what spans
    keys or needs the rest of the configuration (exactly one of password, password_sha256;
    the queues exist in bus.queues) is checked by :func:`config_users`."""

    __unknown__: ClassVar[str] = "key"

    role: Annotated[str, Doc("admin, operator or read-only"), ROLE_NAME]
    password: PASSWORD | None = None
    password_sha256: SHA256_HEX | None = None
    queues: Annotated[list[str] | None, Doc("queues (default: every queue of the role)")] = None


@dataclass(frozen=True)
class _Password(Schema):
    password: PASSWORD


@dataclass(frozen=True)
class _Hash(Schema):
    password_sha256: SHA256_HEX


def _one(schema: type[Schema], key: str, value: str) -> str:
    """Check one value against the field ``key`` of ``schema`` (UserError: the key, the rule;
    never the value of a secret)."""
    try:
        return str(getattr(schema.parse({key: value}, "user"), key))
    except CommandError as e:
        raise UserError(e.message.removeprefix("user.")) from None


def config_users(cfg: Config) -> dict[str, User]:
    """Users defined by the configuration: ``redis.password`` (user ``default``) and the
    ``[users.<name>]`` tables."""
    out: dict[str, User] = {}
    r = cfg.redis
    if r.password or r.password_sha256:
        h = sha256_hex(r.password) if r.password else normalize_hash(r.password_sha256)
        out[DEFAULT_USER] = User(DEFAULT_USER, check_role(r.default_role), h,
                                 source="redis.password")
    for name, spec in cfg.users.items():
        where = f"{spec.get('__source__', 'config')}: [users.{name}]"
        try:
            check_name(name, allow_default=False)
            try:  # the shape: core0.schema, the one validator (no secret in its messages)
                t = UserTable.parse({k: v for k, v in spec.items() if k != "__source__"},
                                    f"users.{name}")
            except CommandError as e:
                raise UserError(e.message.removeprefix(f"users.{name}.")) from None
            if t.password is not None and t.password_sha256 is None:
                h = sha256_hex(t.password)
            elif t.password_sha256 is not None and t.password is None:
                h = normalize_hash(t.password_sha256)
            else:
                raise UserError("exactly one of password, password_sha256 is required")
            out[name] = User(name, check_role(t.role), h, _check_queues(cfg, t.queues, where),
                             source=str(spec.get("__source__", "config")))
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
    return out


def check_config_users(cfg: Config) -> None:
    """Config validation hook: raise ConfigError for a bad ``[users.*]`` table."""
    from core0.config import ConfigError

    try:
        config_users(cfg)
    except UserError as e:
        raise ConfigError(str(e)) from None


def users_file(cfg: Config) -> Path:
    return Path(cfg.redis.users_file) if cfg.redis.users_file else cfg.state_dir / "users.json"


@dataclass
class UserStore:
    """The runtime users (``core0 user``): a JSON file of name → role, hash, queues."""

    path: Path
    users: dict[str, User] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> UserStore:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: unreadable user store: {e}") from None
        users = {}
        for name, u in (data.get("users") or {}).items():
            q = u.get("queues")
            users[name] = User(name, u["role"], u["hash"], tuple(q) if q is not None else None)
        return cls(path, users)

    def write(self) -> None:
        """Atomically (temp file, fsync, rename), mode 0600."""
        data = {"version": 1, "users": {
            n: {"role": u.role, "hash": u.hash,
                "queues": list(u.queues) if u.queues is not None else None}
            for n, u in sorted(self.users.items())}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


@contextlib.contextmanager
def locked(cfg: Config) -> Iterator[UserStore]:
    """The runtime store, under an exclusive lock for a read-modify-write."""
    path = users_file(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield UserStore.read(path)
    finally:
        os.close(fd)


def all_users(cfg: Config) -> dict[str, User]:
    """Config users, then runtime users not defined by the config."""
    out = config_users(cfg)
    for name, u in UserStore.read(users_file(cfg)).users.items():
        out.setdefault(name, u)
    return out


def new_user(cfg: Config, name: str, role: str, password: str,
             queues: list[str] | None = None) -> User:
    """A checked runtime user (the password is hashed here and dropped)."""
    check_name(name)
    if name in config_users(cfg):
        raise UserError(f"user {name!r} is defined in the configuration; change it there")
    label = check_role(role)
    q = _check_queues(cfg, queues, f"user {name}") if queues else None
    u = User(name, label, sha256_hex(check_password(password)), q)
    if name != DEFAULT_USER and not u.queue_names(cfg):
        raise UserError(f"no queue has role {label}: add one to bus.queues "
                        f'(e.g. [bus.queues] {label.replace("-", "")} = "{label}") or pass --queue')
    return u
