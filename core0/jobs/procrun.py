"""A process job's run: its files, the spawn, its output followed, its exit (the job engine's
process half; core0/jobs/engine.py decides when runs happen and what their results become)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core0_client.protocol import Level, Result, now_ms

from core0.jobs import adopt
from core0.jobs import state as jobstate
from core0.jobs.result import process_result
from core0.proc import process
from core0.proc.output import FileFollower, OutputParser
from core0.proc.process import find_executable
from core0.proc.spawn import boot_ticks, devnull_fd

if TYPE_CHECKING:
    from core0.context import ProcessSpec
    from core0.jobs.engine import JobEngine
    from core0.jobs.job import Job

#: fault tests only: the dispatcher dies right after spawning a program of this name
_CRASH_AFTER_SPAWN = os.environ.get("CORE0_TEST_CRASH_AFTER_SPAWN", "")
#: fault tests only: the dispatcher dies once (per state dir) between writing ``spawning``
#: down and spawning a program of one of these names (comma-separated)
_CRASH_BEFORE_SPAWN = set(filter(None, os.environ.get("CORE0_TEST_CRASH_BEFORE_SPAWN",
                                                      "").split(",")))

#: seconds between a group's TERM and its KILL (max_time, kill)
GRACE = 2.0


def spawn(engine: JobEngine, job: Job, ps: ProcessSpec) -> tuple[asyncio.Future[int], int, int]:
    """A process run's start: its files, the ``spawning`` step, the spawn, the ``running``
    step. Returns the future of its exit status and the output files' fds."""
    job.label = ps.label or " ".join(ps.argv)
    job.exit_status = None
    engine.store.new_run(job.id, job.run, bool(ps.stdin))
    # the very open files the child writes are the followers' (below): its exit
    # closes nothing of ours, so it wakes no watcher
    fo, fe = engine.store.open_outputs(job.id, job.run)
    fi = engine.store.open_stdin(job.id, job.run, ps.stdin) if ps.stdin else devnull_fd()
    job.state = "running"
    exe = ps.exe or find_executable(ps.argv[0], ps.env)
    job.comm = os.path.basename(exe or ps.argv[0])[:15]
    job.start_ticks = boot_ticks()  # "spawned at or after": see adopt.adopted_exit
    job.start_max = 0
    engine.store.save(job, state="spawning")
    if _CRASH_BEFORE_SPAWN and job.comm in _CRASH_BEFORE_SPAWN:
        _crash_once(engine)
    try:
        sp = process.spawn(ps.argv, env=ps.env, cwd=ps.cwd, stdin=fi, stdout=fo, stderr=fe,
                           exe=exe, start_ticks=False)
    except BaseException:
        os.close(fo)
        os.close(fe)
        raise
    finally:
        if ps.stdin:
            os.close(fi)
    if _CRASH_AFTER_SPAWN and job.comm == _CRASH_AFTER_SPAWN:
        os._exit(70)  # fault tests: die in the instant between spawn and bookkeeping
    # the child was forked between the two readings of the boot clock: that bracket
    # tells it from a later process that reuses its pid (no read of /proc/<pid>/stat)
    job.pid, job.start_max = sp.pid, boot_ticks()
    engine.store.save(job, state="running")
    job.spawned.set()
    done = engine.reaper.watch(sp.pid, lambda status: engine.exited(job, status))
    return done, fo, fe


def _crash_once(engine: JobEngine) -> None:
    """Fault tests: die here the first time only (the job is then started again by the next
    dispatcher, which must not die in the same place)."""
    mark = Path(engine.store.root) / "test-crashed-before-spawn"
    if not mark.exists():
        mark.touch()
        os._exit(70)


async def run(
    engine: JobEngine, job: Job, ps: ProcessSpec | None, resume: jobstate.Saved | None
) -> Result:
    """One run of a process job: spawned now (``ps``), begun by :meth:`JobEngine.start`
    (``job.launched``) or adopted from an earlier dispatcher (``resume``); its output followed
    from its files until it exits (``max_time`` kills its group); its result."""
    out_path, err_path = engine.store.output_paths(job.id, job.run)
    done: asyncio.Future[Any]
    offsets = (0, 0)
    if resume is None:
        if job.launched is not None:
            (done, fo, fe), job.launched = job.launched, None
        else:
            assert ps is not None
            done, fo, fe = spawn(engine, job, ps)
    else:
        job.label = resume.label
        job.pid, job.start_ticks = resume.pid, resume.start_ticks
        job.start_max = resume.start_max
        job.state = "running"
        job.spawned.set()
        offsets = (jobstate.data_start(Path(out_path)), jobstate.data_start(Path(err_path)))
        done = asyncio.ensure_future(adopt.adopted_exit(engine, job, resume))
    backlog = engine.cfg.bus.output_backlog_bytes
    fds = (fo, fe) if resume is None else (None, None)
    followers = [
        FileFollower(path, OutputParser(level), job.output.add, offset,
                     full=job.output.full, backlog_max=backlog, fd=fd)
        for path, level, offset, fd in ((out_path, Level.STDOUT, offsets[0], fds[0]),
                                        (err_path, Level.STDERR, offsets[1], fds[1]))
    ]
    job.output.followers = followers
    for f in followers:
        f.start(engine.inotify, fresh=resume is None)
    timed_out = False
    try:
        remaining = None
        if job.cmd.max_time:
            remaining = max(0.0, job.cmd.max_time - (now_ms() - job.starttime) / 1000)
        try:
            if remaining is None and resume is None:  # no layers: a loop turn each
                engine.store.sweep()  # while the process runs
                job.awaiting_exit = True
                try:
                    status = await done  # (a cancel: the reaper still records the exit)
                finally:
                    job.awaiting_exit = False
                if job.ended is not None:  # made in the reaper's turn
                    return job.ended.result
            else:
                status = await asyncio.wait_for(asyncio.shield(done), remaining)
        except TimeoutError:
            timed_out = True
            assert job.pid is not None
            await process.terminate_group(job.pid, done, GRACE)  # type: ignore[arg-type]
            status = await done
    except asyncio.CancelledError:
        # the dispatcher is stopping: leave the process running for the next one
        for f in followers:
            f.stop()
        job.output.followers = []
        raise
    return ended(job, status, timed_out)


def ended(job: Job, status: int, timed_out: bool) -> Result:
    """The run's end: the rest of its output read (it goes with the result), its result."""
    job.output.ending = True
    for f in job.output.followers:
        f.finish()
    job.output.followers = []
    job.pid = None
    return process_result(job, status, timed_out)
