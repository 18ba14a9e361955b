"""``core0`` entry point: ``init`` (PID 1), ``dev`` (supervisor + embedded Redis, not PID 1),
``dispatcher`` (the restartable command bus worker), ``docs`` (regenerate the reference), and
``user`` / ``tls`` / ``security`` (who may use the node's Redis; see docs/security.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from core0 import config as configmod


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="TOML config file (default /etc/core0/core0.toml)")
    p.add_argument("--state-dir", help="runtime state dir (default /run/core0)")
    p.add_argument("--redis-port", type=int, help="embedded redis TCP port (0 = none)")
    p.add_argument("--redis-bind", help="embedded redis bind address")
    p.add_argument("--redis-url", help="use this Redis instead of the embedded one")
    p.add_argument("--prefix", help="key prefix of this node ('' = 0-core's key names)")
    p.add_argument("--log-level", help="debug, info, warning, error")
    p.add_argument("--overrides-json", help=argparse.SUPPRESS)


def overrides_from(ns: argparse.Namespace) -> dict[str, dict[str, Any]]:
    o: dict[str, dict[str, Any]] = {}
    if ns.overrides_json:
        o = json.loads(ns.overrides_json)
    def put(section: str, key: str, value: Any) -> None:
        if value is not None:
            o.setdefault(section, {})[key] = value
    put("main", "state_dir", ns.state_dir and str(Path(ns.state_dir).resolve()))
    put("main", "log_level", ns.log_level)
    put("redis", "port", ns.redis_port)
    put("redis", "bind", ns.redis_bind)
    if ns.redis_url:
        put("redis", "embedded", False)
        put("redis", "url", ns.redis_url)
    put("bus", "prefix", ns.prefix)
    return o


def load_config(ns: argparse.Namespace) -> tuple[configmod.Config, dict[str, dict[str, Any]]]:
    o = overrides_from(ns)
    try:
        return configmod.load(ns.config, overrides=o), o
    except configmod.ConfigError as e:
        print(f"core0: configuration error: {e}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="core0", description=__doc__)
    sub = ap.add_subparsers(dest="mode", required=True)
    for name, help_ in (
        ("init", "run as PID 1 (mounts, reaper, services, supervisor)"),
        ("dev", "run the supervisor, an embedded redis-server and the dispatcher on this host"),
        ("dispatcher", "run the dispatcher alone (normally started by init or dev)"),
        ("front", "serve 0-core's clients: TLS, LKEYEXISTS/LTTL (started by init or dev "
                  "when redis.front_port is set)"),
        ("metrics", "print the running node's Prometheus metrics (metrics.port)"),
    ):
        _add_config_flags(sub.add_parser(name, help=help_))
    from core0.security import cli as seccli

    seccli.add_parsers(sub, _add_config_flags)
    d = sub.add_parser("docs", help="write docs/commands.md from the registry")
    d.add_argument("--output", "-o", default="docs/commands.md")
    d.add_argument("--check", action="store_true", help="fail if the file is stale")
    ns = ap.parse_args(argv)

    if ns.mode == "docs":
        from core0.docs import write_or_check

        sys.exit(write_or_check(ns.output, ns.check))
    if ns.mode == "init":
        # PID 1 loads its own configuration: an error there must not end init (kernel panic)
        from core0.init.main import run_init

        run_init(ns.config, overrides_from(ns))
    if ns.mode == "tls":
        sys.exit(seccli.run_tls(ns))
    if ns.mode in ("user", "security"):
        from core0.security import node as nodeconf

        try:
            node_cfg = nodeconf.load(ns.config, overrides_from(ns))
        except configmod.ConfigError as e:
            print(f"core0: configuration error: {e}", file=sys.stderr)
            sys.exit(2)
        sys.exit(seccli.run_user(node_cfg, ns) if ns.mode == "user"
                 else seccli.run_security(node_cfg, ns))
    cfg, overrides = load_config(ns)
    from core0.init.supervise import setup_logging

    if ns.mode == "dispatcher":
        setup_logging(cfg.main.log_level, "core0-dispatcher")
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        from core0.bus import dispatcher
        from core0.security.acl import internal_config

        # the embedded Redis: core0 connects as its own ACL user (secret in the state dir)
        dispatcher.main(internal_config(cfg),
                        lambda: internal_config(configmod.load(ns.config, overrides=overrides)))
    elif ns.mode == "front":
        setup_logging(cfg.main.log_level, "core0-front")
        from core0.security import front

        sys.exit(front.main(cfg))
    elif ns.mode == "metrics":
        if not cfg.metrics.port:
            print("core0: metrics.port is 0: the metrics endpoint is off", file=sys.stderr)
            sys.exit(2)
        from core0.fleet.metrics import fetch

        try:
            sys.stdout.buffer.write(fetch(cfg))
        except OSError as e:
            print(f"core0: metrics endpoint unreachable: {e}", file=sys.stderr)
            sys.exit(1)
    elif ns.mode == "dev":
        setup_logging(cfg.main.log_level, "core0")
        from core0.init.dev import run_dev

        sys.exit(run_dev(cfg, ns.config, overrides))


if __name__ == "__main__":
    main(sys.argv[1:])
    os._exit(0)
