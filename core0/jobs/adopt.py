"""Adopting the process jobs a killed dispatcher left (``JobEngine.adopt_all``): the exit
status of each one's process, from the job log, the supervisor (the shim) or the process itself.

A job whose dispatcher died between writing "spawning" down and writing the pid is settled by
asking the supervisor for the processes started since, reaped or still running, leaving out
every process that belongs to another job (watched by pid there, in the job table, or read
from a job log at adoption) and those started after this dispatcher: none means it never
started (it is started now); one of its name, else a single one of any name (a program may
exec another), is its process; several leave its status unknown.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core0.bus.store import Publish, retry_forever
from core0.jobs import state as jobstate
from core0.proc import process

if TYPE_CHECKING:
    from core0.jobs.engine import JobEngine
    from core0.jobs.job import Job

log = logging.getLogger("core0.jobs.engine")


async def spawn_candidates(engine: JobEngine, saved: jobstate.Saved) -> list[list[Any]] | None:
    """The processes that may be a job's whose dispatcher died while spawning it:
    ``[[pid, status or None while running, start ticks, comm], …]``, started between the
    spawn and this dispatcher's start; None when nobody can tell (no shim)."""
    if engine.shim is None or not engine.shim.connected:
        return None
    found = await engine.shim.find(saved.comm, saved.start_ticks)
    # never another job's: one in the table, or one adopted with its pid that has ended
    # since (the shim itself leaves out every process watched by pid)
    claimed = {j.pid for j in engine.table.values()} | engine.adopted_pids
    return [m for m in found if m[0] not in claimed and m[2] <= engine.started_ticks]


async def adopted_exit(engine: JobEngine, job: Job, saved: jobstate.Saved) -> int | None:
    """The exit status of an adopted job's process (None: unknowable)."""
    if saved.state == "exited":
        return saved.status
    if saved.state == "spawning":
        # spawned in the instant before the old dispatcher died: the one candidate of its
        # name, else the only candidate (its program exec'd another), else unknown
        found = engine.candidates.pop(job.id, None) or []
        named = [m for m in found if m[3] == saved.comm]
        pick = named if len(named) == 1 else found if len(found) == 1 else []
        if not pick:
            log.warning("job %s: %d candidate process(es) for its exit status", job.id,
                        len(found))
            return None
        pid, status = int(pick[0][0]), pick[0][1]
        job.pid = pid
        if status is None:  # still running (it closed its output files)
            engine.store.save(job, state="running")
            assert engine.shim is not None
            status = await engine.shim.wait_exit(pid)
        if status is not None:
            engine.store.save(job, state="exited", status=status)
        return None if status is None else int(status)
    alive = saved.pid and jobstate.same_process(saved, process.proc_start_ticks(saved.pid))
    exited: int | None = None
    if engine.shim is not None and saved.pid:
        exited = await engine.shim.wait_exit(saved.pid)
    if exited is None and alive and saved.pid:
        # not under our supervisor (a dispatcher run on its own): we can see the end only
        await jobstate.wait_gone(saved.pid)
    if exited is not None:
        engine.store.save(job, state="exited", status=exited)
    return exited


def adopt_all(engine: JobEngine, parse: Any) -> int:
    """Re-create the jobs a previous dispatcher left in the state dir (``parse``: a saved job →
    its command, spec, arguments and role). Returns how many."""
    from core0.jobs.job import Job

    n = 0
    every = list(engine.store.load_all())
    engine.adopted_pids |= {s.pid for s in every if s.pid}
    for saved in every:
        try:
            cmd, spec, args, role = parse(saved)
        except Exception as e:
            log.warning("job %s in state dir cannot be adopted: %s", saved.id, e)
            engine.store.remove(saved.id, saved.run)
            continue
        job = Job(engine, cmd, spec, args, role, saved.raw, saved.processing)
        job.run = saved.run
        job.starttime = saved.starttime
        job.process = True
        job.protected = saved.protected and job.internal
        job.container = saved.container
        if saved.scope:
            job.scope = saved.scope
        if saved.state == "done" and saved.result:
            engine.table[job.id] = job
            job.task = asyncio.ensure_future(_publish_saved(engine, job, saved.result))
        else:
            if saved.state == "spawning":
                found = jobstate.find_writer(
                    Path(engine.store.output_paths(job.id, saved.run)[0]))
                if found:
                    saved.state, saved.pid = "running", found
                    saved.start_ticks = process.proc_start_ticks(found)
                    saved.start_max = 0
            engine.start(job, saved)
        n += 1
        log.info("adopted job %s (%s, pid %s)", job.id, saved.state, saved.pid)
    return n


async def _publish_saved(engine: JobEngine, job: Job, text: str) -> None:
    await retry_forever("result", engine.bus.publish,
                        [Publish(job.id, text, job.raw, job.processing, "owned")])
    engine.remember(job.id, text, job.role, job.scope)
    engine.store.remove(job.id, job.run)
    engine.forget(job.id)
