"""A job's environment and the internal command that runs core0's own long-lived processes."""

from __future__ import annotations

import os
import re

from core0.errors import BadRequest, NotFound
from core0.proc.process import find_executable

#: the internal command behind boot services and core0's own daemons (dnsmasq…); its handler is
#: in commands/core.py, the engine only needs its name
SERVICE_COMMAND = "core.service"


#: a variable's name as a job may set it
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

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


def check_env(env: dict[str, str] | None, path: str = "arguments.env") -> None:
    """400 for a variable a job may not be given: a name that is no shell name, a NUL byte
    in a value (``path``: where the variables are, for the message)."""
    for k, v in (env or {}).items():
        if not ENV_NAME.fullmatch(k):
            raise BadRequest(f"{path}.{k}: not a valid variable name", field=f"env.{k}")
        if "\0" in v:
            raise BadRequest(f"{path}.{k}: NUL byte in value", field=f"env.{k}")


def program(name: str, env: dict[str, str], cwd: str = "", what: str = "") -> str:
    """The executable a job runs (``name`` looked up in ``env``'s PATH); 404 when there is
    none, or when its working directory ``cwd`` is missing (``what``: prefixes the
    message)."""
    exe = find_executable(name, env)
    if exe is None:
        raise NotFound(f"{what}executable not found: {name}")
    if cwd and not os.path.isdir(cwd):
        raise NotFound(f"{what}no such directory: {cwd}")
    return exe
