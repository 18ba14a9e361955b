"""What the sync and asyncio clients share: building commands, checking results."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from typing import Any

from core0_client.errors import ResultError
from core0_client.managers import MANAGERS
from core0_client.protocol import Command, Keys, Level, Result, State

#: chunk of a blocking wait; the last chunk is cut to the caller's deadline
WAIT_CHUNK = 10.0
DEFAULT_TIMEOUT = 60.0


def build(
    command: str,
    arguments: dict[str, Any] | None = None,
    *,
    queue: str | None = None,
    max_time: int | None = None,
    max_restart: int | None = None,
    recurring_period: int | None = None,
    stream: bool = False,
    tags: Sequence[str] | None = None,
    id: str | None = None,
) -> Command:
    kw: dict[str, Any] = {}
    if id is not None:
        kw["id"] = id
    return Command(
        command=command,
        arguments=dict(arguments or {}),
        queue=queue,
        max_time=max_time,
        max_restart=max_restart,
        recurring_period=recurring_period,
        stream=stream,
        tags=list(tags) if tags is not None else None,
        **kw,
    )


def system_args(
    cmdline: str | Sequence[str],
    dir: str = "",
    stdin: str = "",
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``core.system`` arguments; a string command line is split like a shell would (shlex),
    but never run by one."""
    argv = shlex.split(cmdline) if isinstance(cmdline, str) else list(cmdline)
    if not argv:
        raise ValueError("empty command line")
    return {"name": argv[0], "args": argv[1:], "dir": dir, "stdin": stdin, "env": env}


def check(result: Result) -> Result:
    """Raise ResultError unless the result is SUCCESS."""
    if result.state is not State.SUCCESS:
        msg = result.critical or result.data or result.stderr or result.state.value
        if result.level == Level.RESULT_JSON and result.data:
            try:
                decoded = json.loads(result.data)
                if isinstance(decoded, str):
                    msg = decoded
            except ValueError:
                pass
        raise ResultError(f"{result.command}: {result.state.value}: {msg}", result.code, result)
    return result


def decode_json(result: Result) -> Any:
    check(result)
    if result.level != Level.RESULT_JSON:
        raise ResultError(f"{result.command}: result is not JSON (level {result.level})", 406,
                          result)
    return json.loads(result.data) if result.data else None


class ClientBase:
    """Attributes shared by both clients."""

    keys: Keys
    queue_key: str

    def _init_common(self, prefix: str, queue: str) -> None:
        self.keys = Keys(prefix)
        self.queue_key = self.keys.queue(queue)
        for name, cls in MANAGERS.items():
            setattr(self, name, cls(self))

    def _connection_kwargs(self, host: str, port: int, password: str | None,
                           username: str | None, unix_socket_path: str | None, ssl: bool,
                           ssl_ca_certs: str | None, ssl_certfile: str | None,
                           ssl_keyfile: str | None, ssl_verify: bool,
                           timeout: float) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "socket_timeout": WAIT_CHUNK + timeout,
            "socket_connect_timeout": timeout,
            "socket_keepalive": True,
            "health_check_interval": 30,
        }
        if password:
            kw["password"] = password
        if username:
            kw["username"] = username
        if unix_socket_path:
            kw.pop("socket_keepalive")
            kw["unix_socket_path"] = unix_socket_path
        else:
            kw["host"] = host
            kw["port"] = port
            if ssl:
                kw["ssl"] = True
                kw["ssl_cert_reqs"] = "required" if ssl_verify else "none"
                if ssl_ca_certs:
                    kw["ssl_ca_certs"] = ssl_ca_certs
                if ssl_certfile:
                    kw["ssl_certfile"] = ssl_certfile
                if ssl_keyfile:
                    kw["ssl_keyfile"] = ssl_keyfile
        return kw
