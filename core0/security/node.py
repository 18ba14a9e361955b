"""The running node's configuration sources, recorded so ``core0 user`` sees the same config.

``core0 dev`` / ``core0 init`` write ``<state_dir>/config-source.json`` (0600): the config
file, the command-line overrides and the ``CORE0_*`` environment they started with. ``core0
user``/``security`` load the configuration from those sources (plus their own flags), so a
live change never moves the node's port or bind to a default it was not started with.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from core0 import config as configmod
from core0.security.acl import write_private
from core0.security.users import sha256_hex

FILE = "config-source.json"


def record(state_dir: Path, config_path: str | None,
           overrides: dict[str, dict[str, Any]]) -> None:
    """Write the sources; a password among them is kept as its SHA-256 (all the ACL needs)."""
    env = {k: v for k, v in os.environ.items() if k.startswith("CORE0_")}
    if env.get("CORE0_REDIS_PASSWORD"):
        env["CORE0_REDIS_PASSWORD_SHA256"] = sha256_hex(env["CORE0_REDIS_PASSWORD"])
        env["CORE0_REDIS_PASSWORD"] = ""  # "" also hides a config file's password
    over = json.loads(json.dumps(overrides))
    redis = over.get("redis") or {}
    if redis.get("password"):
        redis["password_sha256"] = sha256_hex(redis["password"])
        redis["password"] = ""
    data = {"config": config_path, "overrides": over, "env": env}
    write_private(state_dir / FILE, json.dumps(data))


def load(config_path: str | None, overrides: dict[str, dict[str, Any]]) -> configmod.Config:
    """The node's configuration as it runs, with ``overrides`` (this command's flags) on top."""
    first = configmod.load(config_path, overrides=overrides)
    try:
        data = json.loads((first.state_dir / FILE).read_text())
    except (OSError, ValueError):
        return first
    merged: dict[str, dict[str, Any]] = {}
    for layer in (data.get("overrides") or {}, overrides):
        for section, values in layer.items():
            merged.setdefault(section, {}).update(values)
    env = dict(data.get("env") or {})
    env.update({k: v for k, v in os.environ.items() if k.startswith("CORE0_")})
    return configmod.load(config_path or data.get("config"), env=env, overrides=merged)
