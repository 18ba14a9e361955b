"""A job's environment and the internal command that runs core0's own long-lived processes."""

from __future__ import annotations

import os

#: the internal command behind boot services and core0's own daemons (dnsmasq…); its handler is
#: in commands/core.py, the engine only needs its name
SERVICE_COMMAND = "core.service"


#: (size of os.environ, its PATH) → the node's part of a job's environment
_BASE: tuple[tuple[int, str | None], dict[str, str]] | None = None


def _base() -> dict[str, str]:
    """The node's environment minus core0's own variables, built once: iterating os.environ
    decodes every entry, a cost each process job paid. The dispatcher never changes its
    environment after start; a change of its size or PATH rebuilds it anyway."""
    global _BASE
    key = (len(os.environ), os.environ.get("PATH"))
    if _BASE is None or _BASE[0] != key:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORE0_")}
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        env.setdefault("HOME", "/")
        _BASE = (key, env)
    return _BASE[1]


def job_env(extra: dict[str, str] | None) -> dict[str, str]:
    """The environment of a job: the node's (minus core0's own variables) plus ``extra``."""
    env = dict(_base())
    if extra:
        env.update(extra)
    return env
