"""Containers run in the foreground by a job (``container.run``, boot services as
containers): the teardown after each run.

The job's process is the runtime's ``run`` (the container's whole life). When a run ends,
a ``run_end`` hook tears the container down (runtime state, nics, netns, root clone), once
the job's result is written (the client waits for the result, not for the cleanup). A new
dispatcher puts the hook back on the jobs it adopted and terminates the containers whose
job is gone (:func:`reattach`, by the job id recorded in the container's ``service``
field); :func:`settle` removes what an earlier run left before the next one starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from core0 import cancel
from core0.sandbox import manager
from core0.sandbox.store import Record, Store

if TYPE_CHECKING:
    from core0.context import Context

log = logging.getLogger(__name__)
#: job id → the teardown in progress of its last run's container
_PENDING: dict[str, asyncio.Task[None]] = {}
#: seconds a teardown waits for its job's result to be written first
RESULT_FIRST = 0.05


async def settle(ctx: Context, job_id: str) -> None:
    """Before a run: wait for the last run's teardown; tear down what is left of it."""
    task = _PENDING.get(job_id)
    if task is not None:
        with contextlib.suppress(Exception):
            await asyncio.shield(task)
    for rec in Store(ctx.config.state_dir).all():
        if rec.service == job_id:
            log.info("container %d of %s: left by an earlier run, torn down", rec.id, job_id)
            # to its end, a kill meanwhile raised after it (never a container half torn down)
            await cancel.atomic(manager.teardown(ctx, rec))


def watch(ctx: Context, rec: Record) -> None:
    """Tear ``rec`` down when the job's current run ends."""
    job = ctx.job
    hook: Any = None

    async def down() -> None:
        try:
            # after the job's result is out (its client waits for that, not for the
            # cleanup); a service going on to its next run: a moment later (that run's
            # settle waits for this teardown anyway)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.done.wait(), RESULT_FIRST)
            await manager.teardown(ctx, rec)
        except Exception:
            log.exception("container %d of %s: teardown failed", rec.id, job.id)
        finally:
            if _PENDING.get(job.id) is asyncio.current_task():
                del _PENDING[job.id]

    def ended(_job: Any, _result: Any) -> None:
        with contextlib.suppress(ValueError):
            job.run_end.remove(hook)
        _PENDING[job.id] = asyncio.ensure_future(down())

    hook = ended
    job.run_end.append(hook)


def reattach(engine: Any, state_dir: Any) -> None:
    """Dispatcher start: the teardown hook again on every adopted job running a container,
    and ``corex.terminate`` (a job of core0's own) for a service container whose job is
    gone."""
    from core0_client.protocol import Command

    from core0.context import Context

    for rec in Store(state_dir).all():
        if not rec.service:
            continue
        job = engine.table.get(rec.service)
        if job is not None:
            watch(Context(engine, job), rec)
            continue
        with contextlib.suppress(Exception):
            engine.submit_internal(Command(command="corex.terminate",
                                           arguments={"container": rec.id},
                                           id=f"orphan-container:{rec.id}"))
