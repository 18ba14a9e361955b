"""A job's environment and the internal command that runs core0's own long-lived processes."""

from __future__ import annotations

import os

#: the internal command behind boot services and core0's own daemons (dnsmasq…); its handler is
#: in commands/core.py, the engine only needs its name
SERVICE_COMMAND = "core.service"


def job_env(extra: dict[str, str] | None) -> dict[str, str]:
    """The environment of a job: the node's (minus core0's own variables) plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORE0_")}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.setdefault("HOME", "/")
    if extra:
        env.update(extra)
    return env
