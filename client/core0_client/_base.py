"""What the sync and asyncio clients share: building commands, checking results."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

from core0_client.errors import ProtocolError, ResultError
from core0_client.protocol import Command, Level, Result, State
from core0_client.replies import load_json, result_data

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
    """A Command with every option checked by type (a bad argument is a ValueError)."""
    if not isinstance(command, str) or not command:
        raise ValueError("command: a non-empty string")
    if arguments is not None and not isinstance(arguments, dict):
        raise ValueError(f"arguments: expected an object, got {type(arguments).__name__}")
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


def error_message(result: Result) -> str:
    """The message of a failed result: its JSON-encoded error string, else critical/data."""
    msg = result.critical or result.data or result.stderr or result.state.value
    if result.level == Level.RESULT_JSON and result.data:
        try:
            decoded = load_json(result.data, "result.data")
        except ProtocolError:
            return msg
        if isinstance(decoded, str):
            msg = decoded
    return msg


def check(result: Result) -> Result:
    """Raise ResultError unless the result is SUCCESS."""
    if result.state is not State.SUCCESS:
        raise ResultError(f"{result.command}: {result.state.value}: {error_message(result)}",
                          result.code, result)
    return result


def decode_json(result: Result) -> Any:
    """The decoded level-20 data of a successful result."""
    check(result)
    if result.level != Level.RESULT_JSON:
        raise ResultError(f"{result.command}: result is not JSON (level {result.level})", 406,
                          result)
    return result_data(result)
