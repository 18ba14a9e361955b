"""``corex.dispatch``: a command run inside a container, as a job of its own.

The inner command is checked like one from the bus (protocol rules, its schema) and against
the *outer* queue's role. It becomes a process job of the engine whose process is the
runtime's ``exec`` into the container (same namespaces, capabilities, seccomp filter and
cgroup as the container's init): output, ``max_time``, kill and adoption after a dispatcher
restart work as for host jobs. Its pickup flag is set at once, so 0-core's clients waiting on
``result:<inner id>`` see it running; its result carries ``container: <id>``.

Supported inside: ``core.system`` and ``bash`` (``sh -c`` in the container's root).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from core0_client.protocol import ProtocolError, Result, decode_command, new_id

from core0 import registry
from core0.context import ProcessSpec
from core0.errors import BadRequest, Conflict, Forbidden, PreconditionFailed
from core0.registry import CommandSpec
from core0.sandbox import runtime
from core0.sandbox.store import Store

if TYPE_CHECKING:
    from core0.context import Context
    from core0.jobs import Job

SUPPORTED = ("core.system", "bash")


def _argv(name: str, args: Any) -> tuple[list[str], dict[str, str], str, bytes]:
    """(argv inside, env additions, cwd, stdin) of a supported inner command."""
    if name == "core.system":
        return [args.name, *args.args], dict(args.env or {}), args.dir, args.stdin.encode()
    return ["sh", "-c", args.script], {}, "", args.stdin.encode()


async def dispatch(ctx: Context, cid: int, inner: dict[str, Any]) -> str:
    """Start ``inner`` inside container ``cid``; returns the inner job id."""
    from core0.jobs import Job

    rec = Store(ctx.config.state_dir).load(cid)
    inner.setdefault("arguments", {})
    inner.setdefault("id", new_id())
    try:
        cmd = decode_command(json.dumps(inner), ctx.config.bus.max_command_bytes)
    except ProtocolError as e:
        raise BadRequest(f"command: {e}", field="command") from None
    spec = registry.get(cmd.command)
    if spec is None or spec.internal:
        raise BadRequest(f"command.command: unknown command {cmd.command!r}",
                         field="command.command")
    if cmd.command not in SUPPORTED:
        raise PreconditionFailed(f"{cmd.command} cannot run inside a container yet "
                                 f"(supported: {', '.join(SUPPORTED)})")
    if spec.role > ctx.job.role:
        raise Forbidden(f"{cmd.command} is not permitted for this queue")
    args: Any = spec.args.parse(cmd.arguments, "command.arguments")
    if cmd.command == "core.system":
        from core0.commands.core import check_env

        check_env(args.env)
    argv, env, cwd, stdin = _argv(cmd.command, args)
    rt = await runtime.choose(ctx.config.state_dir)
    if rec.state != "running" or not runtime.alive(rec.pid):
        raise Conflict(f"container {cid} is not running")
    exec_argv = rt.exec_argv(rec.runtime_id, argv, env=env, cwd=cwd)

    async def run_inside(_ctx: Context, _args: Any) -> ProcessSpec:
        return ProcessSpec(exec_argv, stdin=stdin, label=f"container {cid}: {' '.join(argv)}"
                           [:200])

    inner_spec = CommandSpec(cmd.command, run_inside, spec.args, spec.role, False, spec.doc)
    engine = ctx.engine
    raw = cmd.to_json().encode()
    processing = ctx.job.processing
    if cmd.id in engine.table or not await engine.bus.pickup(cmd.id, processing, raw):
        raise Conflict(f"a job with id {cmd.id} exists already")
    job: Job = Job(engine, cmd, inner_spec, args, ctx.job.role, raw, processing)

    def mark(_job: Job, result: Result) -> None:
        result.container = cid

    job.run_end.append(mark)
    engine.start(job)
    return cmd.id
