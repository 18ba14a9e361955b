"""core.reboot, core.poweroff: ask PID 1 for an ordered reboot or power off.

The command answers first: its SUCCESS result is written to Redis, and only then is PID 1
signalled (SIGINT reboot, SIGTERM power off), so the caller always gets its answer. PID 1 then
stops the dispatcher, the jobs and the services in order, syncs, unmounts and calls
``reboot(2)``. Only a dispatcher whose supervisor is the node's init (``core0 init``) does this:
under ``core0 dev`` on a host the commands refuse with 412 and nothing is signalled.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Any

from core0.context import Context
from core0.errors import PreconditionFailed
from core0.registry import Role, command
from core0.schema import NoArgs

log = logging.getLogger(__name__)

#: set by ``core0 init`` in the environment of the dispatcher it supervises
PID1_ENV = "CORE0_PID1"
#: longest wait for the result to be written before PID 1 is signalled anyway
RESULT_WAIT = 10.0

_pending: set[asyncio.Task[None]] = set()


def node_init_pid() -> int:
    """1 when this dispatcher runs under ``core0 init`` as PID 1; raises 412 otherwise."""
    if os.environ.get(PID1_ENV) != "1" or os.getppid() != 1:
        raise PreconditionFailed(
            "core0 is not this machine's init (core0 dev?): refusing to reboot or power off "
            "the host")
    return 1


async def _signal_after_result(ctx: Context, sig: int) -> None:
    """Wait until the job's result is written (the engine remembers it after publishing),
    then signal PID 1."""
    deadline = time.monotonic() + RESULT_WAIT
    while ctx.id not in ctx.engine.recent and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    log.warning("%s: signalling PID 1 (%s)", ctx.job.cmd.command, signal.Signals(sig).name)
    try:
        os.kill(node_init_pid(), sig)
    except (OSError, PreconditionFailed) as e:
        log.error("cannot signal PID 1: %s", e)


def _schedule(ctx: Context, sig: int) -> None:
    task = asyncio.ensure_future(_signal_after_result(ctx, sig))
    _pending.add(task)
    task.add_done_callback(_pending.discard)


@command("core.reboot", role=Role.ADMIN)
async def reboot(ctx: Context, args: NoArgs) -> dict[str, Any]:
    """Reboot the node in order: the result is written first, then PID 1 stops the
    dispatcher, the jobs (TERM, grace, KILL) and the services, syncs, unmounts and reboots.
    412 when core0 is not the node's init (``core0 dev`` never reboots its host)."""
    node_init_pid()
    _schedule(ctx, signal.SIGINT)
    return {"action": "reboot"}


@command("core.poweroff", role=Role.ADMIN)
async def poweroff(ctx: Context, args: NoArgs) -> dict[str, Any]:
    """Power the node off in order (as ``core.reboot``, then the machine stops; a qemu VM
    exits with status 0). 412 when core0 is not the node's init."""
    node_init_pid()
    _schedule(ctx, signal.SIGTERM)
    return {"action": "poweroff"}
