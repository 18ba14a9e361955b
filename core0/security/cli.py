"""``core0 user``, ``core0 tls`` and ``core0 security``: manage who may use a node's bus.

    core0 user add NAME --role operator [--queue Q] [--password-file F]   # live, no restart
    core0 user passwd NAME [--password-file F]
    core0 user remove NAME
    core0 user list [--json]
    core0 tls init [--dir D] [--name HOST]... [--client NAME]...
    core0 tls client NAME [--dir D]
    core0 security apply        # re-read config + users, apply them to the running Redis
    core0 security status

Passwords are read from ``--password-file``, else prompted for on a terminal, else the first
line of stdin; they are hashed at once and never printed or logged. Errors: one line on stderr,
exit status 2 for bad input, 1 when the node refused the change.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from core0.security import acl, live, tls
from core0.security.users import UserError, all_users, config_users, locked, new_user

if TYPE_CHECKING:
    from core0.config import Config


def add_parsers(sub: argparse._SubParsersAction, config_flags) -> None:  # type: ignore[type-arg,no-untyped-def]
    """Register ``user``, ``tls`` and ``security`` on core0's argument parser."""
    u = sub.add_parser("user", help="manage the Redis ACL users of a node (live)")
    usub = u.add_subparsers(dest="action", required=True)
    for name, help_ in (("add", "add a user"), ("passwd", "change a user's password"),
                        ("remove", "remove a user"), ("list", "list users")):
        p = usub.add_parser(name, help=help_)
        config_flags(p)
        if name != "list":
            p.add_argument("name")
        if name in ("add", "passwd"):
            p.add_argument("--password-file", type=Path,
                           help="read the password from this file (else: prompt or stdin)")
        if name == "add":
            p.add_argument("--role", required=True, help="admin, operator or read-only")
            p.add_argument("--queue", action="append", dest="queues",
                           help="queue the user may push to (repeatable; default: every "
                                "queue of its role)")
        if name == "list":
            p.add_argument("--json", action="store_true")
    t = sub.add_parser("tls", help="make a CA, server and client certificates (openssl)")
    tsub = t.add_subparsers(dest="action", required=True)
    ti = tsub.add_parser("init", help="CA + server certificate (+ client certificates)")
    ti.add_argument("--dir", type=Path, default=Path("/etc/core0/tls"))
    ti.add_argument("--name", action="append", default=[],
                    help="host name or IP address of the node (repeatable)")
    ti.add_argument("--client", action="append", default=[], help="also a client certificate")
    ti.add_argument("--days", type=int, default=tls.CERT_DAYS)
    ti.add_argument("--force", action="store_true", help="replace existing material")
    tc = tsub.add_parser("client", help="a client certificate signed by the CA")
    tc.add_argument("name")
    tc.add_argument("--dir", type=Path, default=Path("/etc/core0/tls"))
    tc.add_argument("--days", type=int, default=tls.CERT_DAYS)
    tc.add_argument("--force", action="store_true")
    s = sub.add_parser("security", help="apply config + users to the running Redis / status")
    ssub = s.add_subparsers(dest="action", required=True)
    for name in ("apply", "status"):
        config_flags(ssub.add_parser(name))


def _read_password(ns: argparse.Namespace) -> str:
    if ns.password_file is not None:
        try:
            text = ns.password_file.read_text()
        except OSError as e:
            raise UserError(f"{ns.password_file}: {e.strerror}") from None
        return text.splitlines()[0] if text else ""
    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {ns.name}: ")
        if getpass.getpass("again: ") != first:
            raise UserError("the passwords differ")
        return first
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


def _apply(cfg: Config, kill: tuple[str, ...] = ()) -> int:
    try:
        p, is_live = live.apply(cfg, kill)
    except live.LiveError as e:
        print(f"core0: {e}", file=sys.stderr)
        return 1
    where = "applied to the running redis" if is_live else \
        "the node is not running: applies at its next start"
    print(f"{where}; {p.describe()}")
    return 0


def run_user(cfg: Config, ns: argparse.Namespace) -> int:
    """``core0 user …``"""
    if not cfg.redis.embedded:
        print("core0: users are managed on the embedded Redis only", file=sys.stderr)
        return 2
    try:
        if ns.action == "list":
            users = all_users(cfg)
            rows = [{"name": u.name, "role": u.role, "queues": u.queue_names(cfg),
                     "source": u.source} for u in users.values()]
            if ns.json:
                print(json.dumps(rows, indent=1))
            else:
                for r in rows:
                    print(f"{r['name']:<20} {r['role']:<10} {','.join(r['queues']) or '-':<24}"
                          f" {r['source']}")
                if not rows:
                    print("no users: the bus listens on loopback and the unix socket only")
            return 0
        if ns.action == "add":
            user = new_user(cfg, ns.name, ns.role, _read_password(ns), ns.queues)
            with locked(cfg) as store:
                if ns.name in store.users:
                    raise UserError(f"user {ns.name!r} exists (core0 user passwd / remove)")
                store.users[ns.name] = user
                store.write()
            return _apply(cfg)
        if ns.name in config_users(cfg):
            raise UserError(f"user {ns.name!r} is defined in the configuration; change it there")
        with locked(cfg) as store:
            old = store.users.get(ns.name)
            if old is None:
                raise UserError(f"no user {ns.name!r}")
            if ns.action == "passwd":
                fresh = new_user(cfg, ns.name, old.role, _read_password(ns),
                                 list(old.queues) if old.queues is not None else None)
                store.users[ns.name] = fresh
            else:
                del store.users[ns.name]
            store.write()
        return _apply(cfg, kill=(ns.name,))
    except (UserError, acl.AclError) as e:
        print(f"core0: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"core0: {e}", file=sys.stderr)
        return 1


def run_tls(ns: argparse.Namespace) -> int:
    """``core0 tls …``"""
    try:
        if ns.action == "init":
            files = tls.init(ns.dir, ns.name, force=ns.force, days=ns.days)
            for c in ns.client:
                files += tls.client(ns.dir, c, force=ns.force, days=ns.days)
        else:
            files = tls.client(ns.dir, ns.name, force=ns.force, days=ns.days)
    except tls.TlsError as e:
        print(f"core0: {e}", file=sys.stderr)
        return 2
    for f in files:
        print(f)
    if ns.action == "init":
        d = ns.dir.resolve()
        print(f"\n# in core0.toml (or conf.d/):\n[redis]\ntls_port = 6379\n"
              f'tls_cert = "{d}/server.crt"\ntls_key = "{d}/server.key"\n'
              f'tls_ca = "{d}/ca.crt"')
    return 0


def run_security(cfg: Config, ns: argparse.Namespace) -> int:
    """``core0 security apply|status``"""
    try:
        if ns.action == "apply":
            return _apply(cfg)
        p = acl.plan(cfg)
        print(acl.opening_hint(cfg, p))
        return 0
    except (UserError, acl.AclError) as e:
        print(f"core0: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"core0: {e}", file=sys.stderr)
        return 1
