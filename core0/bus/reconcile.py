"""Crash recovery of a queue's ``processing`` list (run once per pop loop at its start).

What a dispatcher leaves in ``processing`` when it dies (or stops with builtin jobs of
containers running): commands it had popped whose results were not yet written. Each is
settled by what Redis and the job engine know of its id: a result exists → released; running
here (adopted from the state dir) → left to its job; flag never set → run as new; flag set, no
result → cut short: run again as the owner of that flag if it may run twice
(:func:`runs_again`), at most ``bus.max_deliveries`` times, then dead-lettered with a result
saying so (a poison pill that crashes the dispatcher each time); a command that changes the
node is answered :class:`~core0.errors.Interrupted` instead (a second ``filesystem.move`` or
``zfs.destroy`` would answer 404 for what the first did, a second ``*.create`` 409 or a
duplicate).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from core0_client.protocol import Code, Command, ProtocolError, decode_command

from core0 import registry
from core0.bus.store import Publish
from core0.errors import CommandError, Interrupted
from core0.jobs.result import exception_result
from core0.registry import CommandSpec, Role
from core0.sandbox.dispatch import requeued

if TYPE_CHECKING:
    from core0.bus.dispatcher import Dispatcher

log = logging.getLogger("core0.bus.dispatcher")


async def reconcile(d: Dispatcher, queue: str, processing: str, role: Role) -> None:
    """Settle what a crash left in ``processing``: finished → released, in flight → run
    again if it may run twice (up to max_deliveries, then dead-lettered as a poison pill),
    else answered as interrupted; never started → run."""
    items = await d.bus.processing_items(processing)
    if not items:
        return
    log.info("reconciling %d command(s) in %s", len(items), processing)
    fresh: list[bytes] = []
    for raw in items:
        try:
            cmd: Command | None = decode_command(raw, d.cfg.bus.max_command_bytes)
        except ProtocolError:
            cmd = None
        job_id = cmd.id if cmd is not None else None
        if cmd is None or job_id is None:
            fresh.append(raw)
            continue
        if job_id in d.engine.table:
            continue
        if await d.bus.exists(d.bus.keys.result(job_id)):
            await d.bus.release(processing, raw)
            continue
        if job_id in d.engine.recent or not await d.bus.exists(d.bus.keys.flag(job_id)):
            fresh.append(raw)
            continue
        spec = _spec(cmd)
        if spec is not None and not spec.internal and not runs_again(cmd, spec):
            log.warning("command %s (%s) was cut short: answered as interrupted, not run again",
                        job_id, spec.name)
            await d.bus.publish([interrupted(job_id, cmd, spec, raw, processing)])
            await d.bus.forget_deliveries(job_id)
            continue
        n = await d.bus.deliveries(job_id)
        if n >= d.cfg.bus.max_deliveries:
            log.error("command %s crashed the dispatcher %d times: dead-lettered", job_id, n)
            exc = CommandError(f"poison: crashed the dispatcher {n} times", code=Code.INTERNAL)
            res = exception_result(job_id, "", exc)
            await d.bus.dead_letter(queue, raw, str(exc), job_id)
            await d.bus.publish([Publish(job_id, res.to_json(), raw, processing, "owned")])
            await d.bus.forget_deliveries(job_id)
            continue
        await d.bus.publish(await d.handle([raw], queue, processing, role, d.bus.pickup_many,
                                           owned=True))
    if fresh:
        await d.bus.publish(await d.handle(fresh, queue, processing, role, d.bus.pickup_many))


def _spec(cmd: Command) -> CommandSpec | None:
    """The command's spec (a container's builtin inner job: the one it runs inside with)."""
    spec = registry.get(cmd.command)
    if spec is None and (inner := requeued(cmd)) is not None:
        spec = inner[1]
    return spec


def runs_again(cmd: Command, spec: CommandSpec) -> bool:
    """May this command, cut short by a dispatcher that stopped while it ran, run a second
    time? Yes for what changes nothing (:attr:`CommandSpec.rerun`) and for what its sender
    asked to repeat (``recurring_period``, ``max_restart``)."""
    return spec.rerun or bool(cmd.recurring_period) or bool(cmd.max_restart)


def interrupted(job_id: str, cmd: Command, spec: CommandSpec, raw: bytes,
                processing: str) -> Publish:
    """The one result of a command cut short that may not run twice (its flag is ours)."""
    exc = Interrupted(
        f"interrupted: core0's dispatcher stopped while {spec.name} ran; it was not run "
        "again, as it changes the node and may have taken effect: check before retrying")
    res = exception_result(job_id, spec.name, exc, tags=cmd.tags)
    return Publish(job_id, res.to_json(), raw, processing, "owned")
