"""Crash recovery of a queue's ``processing`` list (run once per pop loop at its start).

What a dispatcher leaves in ``processing`` when it dies (or stops with builtin jobs of
containers running): commands it had popped whose results were not yet written. Each is
settled by what Redis and the job engine know of its id: a result exists → released; running
here (adopted from the state dir) → left to its job; flag never set → run as new; flag set, no
result → run again as the owner of that flag, at most ``bus.max_deliveries`` times, then
dead-lettered with a result saying so (a poison pill that crashes the dispatcher each time).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from core0_client.protocol import Code, ProtocolError, decode_command

from core0.bus.store import Publish
from core0.errors import CommandError
from core0.jobs.result import exception_result
from core0.registry import Role

if TYPE_CHECKING:
    from core0.bus.dispatcher import Dispatcher

log = logging.getLogger("core0.bus.dispatcher")


async def reconcile(d: Dispatcher, queue: str, processing: str, role: Role) -> None:
    """Settle what a crash left in ``processing``: finished → released, in flight → run
    again (up to max_deliveries, then dead-lettered as a poison pill), never started → run."""
    items = await d.bus.processing_items(processing)
    if not items:
        return
    log.info("reconciling %d command(s) in %s", len(items), processing)
    fresh: list[bytes] = []
    for raw in items:
        job_id: str | None
        try:
            job_id = decode_command(raw, d.cfg.bus.max_command_bytes).id
        except ProtocolError:
            job_id = None
        if job_id is None:
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
