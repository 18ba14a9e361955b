"""job.*: list, kill, unschedule and killall the jobs of this node."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Annotated, Any

from core0.context import Context
from core0.errors import Forbidden, NotFound
from core0.registry import Role, command
from core0.schema import ID, Doc, NoArgs, Range, Schema

_SIG = Range(1, 64)


@dataclass(frozen=True)
class ListArgs(Schema):
    id: Annotated[str | None, Doc("only this job"), ID] = None


@command("job.list", ListArgs, role=Role.READ_ONLY, inline=True)
async def list_(ctx: Context, args: ListArgs) -> list[dict[str, Any]]:
    """Running jobs: id, command, label, state (running, queued, scheduled), run number, pid,
    start time (ms), and the process's cpu %, rss and vms. Jobs of a higher role than the
    caller's queue are shown without their arguments (``redacted: true``)."""
    if args.id and args.id not in ctx.engine.table:
        raise NotFound(f"no such job: {args.id}")
    return ctx.engine.describe_all(args.id, ctx.role, ctx.scope)


def _own(ctx: Context, job_id: str) -> None:
    """A queue may act only on jobs of its own role or below, and a private queue only on
    its own jobs (Forbidden otherwise)."""
    if ctx.engine.may_access(job_id, ctx.role, ctx.scope) is False:
        raise Forbidden(f"job {job_id} is not this queue's to act on")


@dataclass(frozen=True)
class KillArgs(Schema):
    id: Annotated[str, Doc("job to signal"), ID]
    signal: Annotated[int, Doc("signal number (default SIGTERM)"), _SIG] = int(signal.SIGTERM)


@command("job.kill", KillArgs, role=Role.OPERATOR)
async def kill(ctx: Context, args: KillArgs) -> bool:
    """Send a signal to a job's whole process group (a queued, sleeping or builtin job is
    cancelled: a builtin's work stops too, docs/protocol.md). A job ended this way reports
    state KILLED. Returns true, or false when there
    is no such job (0-core's answer; 0-core's client returns it as is); 403 if the job belongs
    to a higher role than the caller's queue."""
    _own(ctx, args.id)
    return bool(ctx.engine.kill(args.id, args.signal))


@dataclass(frozen=True)
class IdArgs(Schema):
    id: Annotated[str, Doc("job id"), ID]


@command("job.unschedule", IdArgs, role=Role.OPERATOR)
async def unschedule(ctx: Context, args: IdArgs) -> bool:
    """Stop a recurring or restarting job after its current run (the run is not killed)."""
    _own(ctx, args.id)
    if not ctx.engine.unschedule(args.id):
        raise NotFound(f"no such job: {args.id}")
    return True


@command("job.killall", NoArgs, role=Role.OPERATOR)
async def killall(ctx: Context, args: NoArgs) -> int:
    """SIGTERM every job of the caller's role or below but this one, subscribers and core0's
    own services; returns how many were signalled."""
    return ctx.engine.killall(exclude={ctx.id}, role=ctx.role, scope=ctx.scope)
