"""The job engine: jobs, named sequential queues, max_time, restarts, recurrence, kill.

A job is one accepted command. Its task runs the handler once per run; a handler either
returns a value (a builtin: level-20 JSON data) or a :class:`ProcessSpec` (a process job: its
output goes to files the engine follows, ``max_time`` kills its process group, its result code
is ``1000 + exit status``). Process jobs are written to the state dir (``jobs.state``) so a new
dispatcher adopts them after a restart: same pids, nothing started twice.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from core0_client.protocol import Code, Command, Result, State, now_ms

from core0 import cancel, registry
from core0.backoff import PERMANENT_EXIT
from core0.bus.store import Bus, Publish, retry_forever
from core0.context import Context, ProcessSpec
from core0.errors import Conflict, Killed, NotFound, Timeout
from core0.jobs import adopt, procrun
from core0.jobs import state as jobstate
from core0.jobs.env import SERVICE_COMMAND
from core0.jobs.job import Ended, InlineJob, Job, visible_to
from core0.jobs.logfeed import LogFeed
from core0.jobs.output import Final, QueueSlots
from core0.jobs.recent import RecentResults
from core0.jobs.result import (
    TERMINATING,
    builtin_result,
    derivable,
    exception_result,
)
from core0.proc import process
from core0.proc.spawn import boot_ticks
from core0.registry import CommandSpec, Role
from core0.schema import Schema

if TYPE_CHECKING:
    from core0.config import Config
    from core0.context import Node
    from core0.proc.output import Inotify
    from core0.proc.shimlink import ShimLink

log = logging.getLogger(__name__)

#: seconds after which published jobs' files are removed at the latest (JobStore.sweep)
SWEEP_AFTER = 0.05


class JobEngine:
    """Runs jobs: the one place where a command's run becomes a result.

    ``start(job)`` gives a job its task: it waits for its named queue, runs the handler under
    ``max_time`` (a builtin's value → SUCCESS; a :class:`ProcessSpec` → a process run with its
    output followed from files and ``1000 + status``), turns every exception into a result
    (:func:`~core0.jobs.result.exception_result`), then decides the next run (recurring,
    ``max_restart``, protected restarts with :class:`~core0.backoff.Backoff`) and publishes.
    Process jobs are persisted (:class:`~core0.jobs.state.JobStore`) and adopted by the next
    dispatcher. ``kill``/``unschedule``/``killall`` control jobs; ``start_service`` runs
    core0's own long-lived processes; ``free_slots``/``wait_room`` hold ``bus.max_jobs``.
    """

    def __init__(
        self,
        cfg: Config,
        bus: Bus,
        reaper: process.Reaper,
        inotify: Inotify,
        shim: ShimLink | None,
    ):
        self.cfg = cfg
        self.bus = bus
        self.reaper = reaper
        reaper.after_pass.append(self._results_now)
        self.inotify = inotify
        self.shim = shim
        self.table: dict[str, Job] = {}
        self.queues = QueueSlots()
        #: results (and owners) of recently finished jobs: re-answers resubmissions after
        #: Redis lost them; bounded by count and by bytes, known for the result TTL
        self.recent = RecentResults(cfg.bus.result_cache_bytes, ttl=cfg.bus.result_ttl)
        #: jobs in flight per role (bus jobs only; services are core0's own)
        self.by_role: dict[Role, int] = {r: 0 for r in Role}
        self.store = jobstate.JobStore(cfg.state_dir / "jobs", sync=cfg.redis.appendfsync)
        inotify.watch_dir(str(self.store.out))  # every job's output files: one watch
        self._room = asyncio.Event()
        self._room.set()
        self.started_total = 0
        #: called with (command, state, seconds) for each result written (the node's metrics)
        self.on_result: Callable[[str, str, float], None] = lambda command, state, seconds: None
        #: logger.subscribe's lists, fed with every job's output records
        self.feed = LogFeed(cfg, bus)
        #: called with the text of each level-10 (statistics) message of a job (aggregator)
        self.on_stats: Callable[[str], None] = lambda text: None
        self.stopping = False
        #: the running node, for handlers (Context.node); set by the dispatcher
        self.node: Node | None = None
        #: pids of the jobs adopted at start (never the process of a job lost while spawning)
        self.adopted_pids: set[int] = set()
        #: when this dispatcher started (boot ticks): no earlier job's process started later
        self.started_ticks = boot_ticks()
        #: jobs lost while spawning → the processes that may be theirs (see _run_once)
        self.candidates: dict[str, list[list[Any]]] = {}
        self._sweep_timer: asyncio.TimerHandle | None = None
        #: process jobs whose exit was seen and whose result is not written yet: the last of
        #: them writes the results of all at once, with no turn of the event loop in between
        self._ending: set[str] = set()

    # ------------------------------------------------------------ capacity

    def free_slots(self, role: Role = Role.ADMIN) -> int:
        """Jobs a queue of ``role`` may still start: lower roles are held to their own cap and
        never take the slots reserved for admin queues, so a flood from a read-only or
        operator queue cannot stop the node from serving its admin."""
        room = self.cfg.bus.max_jobs - len(self.table)
        if role < Role.ADMIN:
            room -= min(self.cfg.bus.admin_reserve, self.cfg.bus.max_jobs // 2)
            cap = self.cfg.bus.role_cap(role)
            if cap is not None:
                room = min(room, cap - self.by_role[role])
        return max(0, room)

    async def wait_room(self, role: Role = Role.ADMIN) -> None:
        while self.free_slots(role) == 0:
            self._room.clear()
            await self._room.wait()

    def recurring_count(self, role: Role) -> int:
        """Recurring jobs of ``role`` in the table."""
        return sum(1 for j in self.table.values()
                   if j.role == role and j.cmd.recurring_period and not j.internal)

    # ------------------------------------------------------------ start

    def new_job(self, cmd: Command, spec: CommandSpec, args: Schema, role: Role, raw: bytes,
                processing: str) -> Job:
        """A job of this engine (for machinery below the engine: it never imports ``Job``)."""
        return Job(self, cmd, spec, args, role, raw, processing)

    def start(self, job: Job, resume: jobstate.Saved | None = None) -> None:
        """Give a job its task. A picked-up job whose program was built while its pickup was
        in flight (:func:`~core0.jobs.job.prebuild`) and that waits for no named queue has
        its process spawned here, in this turn of the event loop: the task's first turn
        comes after the spawn instead of before it (docs/performance.md)."""
        self.table[job.id] = job
        if not job.internal:
            self.by_role[job.role] += 1
        self.started_total += 1
        if resume is None and isinstance(job.prebuilt, ProcessSpec) and not job.cmd.queue:
            ps, job.prebuilt = job.prebuilt, None
            job.run, job.eager, job.process = 1, True, True
            job.starttime = now_ms()
            try:
                job.launched = procrun.spawn(self, job, ps)
            except Exception as e:  # the run's result, made by the task like any other
                job.prebuilt = e
        job.task = asyncio.ensure_future(self._main(job, resume))

    def remember(self, job_id: str, result_json: str, role: Role | None = None,
                 scope: str | None = None) -> None:
        """Keep a finished job's result (and owner) to re-answer a resubmission."""
        self.recent.add(job_id, result_json, role, scope)

    def role_of(self, job_id: str) -> Role | None:
        """The role of a running or recently finished job (None: unknown)."""
        job = self.table.get(job_id)
        return job.role if job is not None else self.recent.role(job_id)

    def may_access(self, job_id: str, viewer: Role, scope: str | None) -> bool | None:
        """May a caller (role, private-queue scope) see/act on this running or recently
        finished job? None when the job is unknown."""
        job = self.table.get(job_id)
        return visible_to(job, viewer, scope) if job else self.recent.visible(job_id, viewer,
                                                                               scope)

    async def _main(self, job: Job, resume: jobstate.Saved | None) -> None:
        result: Result | None = None
        slot = False
        try:
            if job.cmd.queue:
                await self.queues.acquire(self._queue_name(job))
                slot = True
            while True:
                if resume is not None and resume.state == "scheduled":
                    job.run = resume.run
                    await self._sleep(job, max(0.0, resume.next_run - time.time()))
                    resume = None
                    if job.unscheduled or job.killed:
                        break
                if job.eager:
                    job.eager = False
                elif resume is None:
                    job.run += 1
                result = await self._run_once(job, resume)
                task = job.task
                if task is not None and task.cancelling() and cancel.deferred(task):
                    # a kill that a step held back until its end (cancel.atomic) is taken
                    # here, in this try: a handler that returned right after that step left
                    # it for the writing of its result below, which it cut (no result)
                    await asyncio.sleep(0)
                resume = None
                for cb in job.run_end:
                    try:
                        cb(job, result)
                    except Exception:
                        log.exception("run_end hook of %s failed", job.id)
                if job.killed or job.unscheduled:
                    break
                delay = self._next_delay(job, result)
                if delay is None:
                    break
                job.output.run_over()
                result.run = job.run
                if not job.internal:
                    await retry_forever("run result", self.bus.publish_run, job.id, job.run,
                                        result.to_json())
                job.state = "scheduled"
                job.next_run = time.time() + delay
                if job.process:
                    self.store.save(job, state="scheduled")
                await self._sleep(job, delay)
                if job.killed or job.unscheduled:
                    break
        except asyncio.CancelledError:
            if self.stopping:
                # the dispatcher stops: the job is adopted or requeued by the next one
                if slot and job.cmd.queue:
                    self.queues.release(self._queue_name(job))
                raise
            # killed while queued, sleeping, or running a builtin
            if result is None or job.killed:
                result = self._error(job, Killed("job killed"))
        except Exception as e:  # a bug in the engine itself (handlers' are results): answer
            log.exception("job %s failed in the engine", job.id)
            result = self._error(job, e)
        if slot and job.cmd.queue:
            self.queues.release(self._queue_name(job))
        assert result is not None
        job.state = "done"
        await self._finish(job, result)

    @staticmethod
    def _queue_name(job: Job) -> str:
        """Named queues are per role: a lower role can never hold up a higher role's queue."""
        return f"{job.role.label}/{job.cmd.queue}"

    def _next_delay(self, job: Job, result: Result) -> float | None:
        """Seconds until the next run, or None when the job is over."""
        if job.protected:
            if result.code == Code.PROCESS + PERMANENT_EXIT:
                log.error("service %s exited %d: permanent failure, not restarted",
                          job.id, PERMANENT_EXIT)
                return None
            delay = job.backoff.next(result.time / 1000)
            log.warning("service %s ended (%s, code %d); restart in %.0fs",
                        job.id, result.state.value, result.code, delay)
            return delay
        if job.cmd.recurring_period:
            return float(job.cmd.recurring_period)
        if (job.cmd.max_restart and result.state is not State.SUCCESS
                and job.restarts < job.cmd.max_restart):
            job.restarts += 1
            return 1.0
        return None

    async def _sleep(self, job: Job, delay: float) -> None:
        job.wake.clear()
        try:
            await asyncio.wait_for(job.wake.wait(), delay)
        except TimeoutError:
            pass

    async def _finish(self, job: Job, result: Result) -> None:
        self._ending.discard(job.id)
        ended, job.ended = job.ended, None
        if job.run > 1 or job.cmd.recurring_period:
            result.run = job.run
        if job.internal:
            try:
                await job.output.close(result.state is State.SUCCESS)
            except Exception:
                log.exception("job %s: EOF record lost", job.id)
            log.info("service %s stopped (%s)", job.id, result.state.value)
        else:
            if ended is not None:
                text, final, pub, sent = ended.text, ended.final, ended.pub, ended.sent
            else:
                await job.output.settle()
                (text, final, pub), sent = self._final(job, result), None
            try:
                # the last output records, the EOF record and the result: one round trip
                await self._write_result(job, final, pub, sent)
            except Exception:
                log.exception("job %s: result not written", job.id)
            if final.late_eof is not None:  # a job that wrote nothing: its EOF just after
                try:
                    await retry_forever("output", self.bus.records, job.id, [final.late_eof],
                                        False)
                except Exception:
                    log.exception("job %s: EOF record lost", job.id)
            self.remember(job.id, text, job.role, job.scope)
            self.on_result(job.cmd.command, result.state.value, result.time / 1000)
        if job.process:
            self.store.remove_later(job.id, job.run)
            if self._sweep_timer is None:
                self._sweep_timer = asyncio.get_running_loop().call_later(SWEEP_AFTER,
                                                                          self._sweep)
        if self.table.pop(job.id, None) is not None and not job.internal:
            self.by_role[job.role] -= 1
        self._room.set()
        job.final = result
        job.done.set()

    def _final(self, job: Job, result: Result) -> tuple[str, Final, Publish]:
        """A bus job's result as written: its JSON, what its output leaves, its publish (and
        the ``done`` step, where the next dispatcher could not make the same result)."""
        text = result.to_json()
        final = job.output.final_records(result.state is State.SUCCESS)
        if job.process and not derivable(job, result):
            self.store.save(job, state="done", result=text)
        return text, final, Publish(job.id, text, job.raw, job.processing, "owned")

    async def _write_result(self, job: Job, final: Final, pub: Publish,
                            sent: asyncio.Future[list[Any]] | None) -> None:
        """The job's last records and its result (``sent``: already queued by the reaper's
        turn), at once when no other job is about to end. An output write still in flight
        went out on the same link before them; should this write fail, that one is waited
        for before the result is written again, so a result never comes before its
        output."""
        args = (job.id, final.records, job.cmd.stream, pub, not self._ending)
        if sent is not None or final.writing is not None:
            try:
                if sent is not None:
                    await self.bus.finished(sent)
                else:
                    await self.bus.finish(*args)
                return
            except Exception:
                if final.writing is not None:
                    await asyncio.shield(final.writing)
        await retry_forever("result", self.bus.finish, *args)

    # ------------------------------------------------------------ one run

    async def _run_once(self, job: Job, resume: jobstate.Saved | None) -> Result:
        job.output.reset()
        if resume is not None and resume.state == "spawning":
            found = await adopt.spawn_candidates(self, resume)
            if found == []:
                # its dispatcher died between writing "spawning" down and the spawn: it never
                # started, so it starts now (at least once; never twice: a process of its
                # would be a candidate, alive or reaped by the shim)
                log.warning("job %s: never spawned (its dispatcher died first): starting it",
                            job.id)
                resume = None
            elif found is not None:
                self.candidates[job.id] = found
        if resume is not None and resume.state in ("spawning", "running", "exited"):
            job.process = True
            job.starttime = resume.starttime
            return await procrun.run(self, job, None, resume)
        if job.launched is not None:  # spawned by start()
            return await procrun.run(self, job, None, None)
        job.state = "running"
        job.starttime = now_ms()
        ctx = Context(self, job)
        deadline = asyncio.timeout(job.cmd.max_time)
        try:
            async with deadline:
                value, job.prebuilt = job.prebuilt, None
                if value is None:
                    value = await job.spec.handler(ctx, job.args)
                elif isinstance(value, BaseException):
                    raise value
            if isinstance(value, ProcessSpec):
                job.process = True
                return await procrun.run(self, job, value, None)
            return builtin_result(job, value)
        except TimeoutError as e:
            if deadline.expired():  # max_time, not a timeout of the handler's own
                return self._error(job, Timeout(f"max_time of {job.cmd.max_time}s reached"))
            return self._error(job, e)
        except Exception as e:  # typed errors, and handler bugs (500): a result like any other
            return self._error(job, e)

    def _error(self, job: Job, exc: BaseException) -> Result:
        return exception_result(job.id, job.cmd.command, exc, job.starttime, job.cmd.tags)

    async def run_inline(self, cmd: Command, spec: CommandSpec, args: Schema, role: Role,
                         scope: str | None = None) -> str:
        """Run an inline command (quick, side-effect free, no max_time) right away; returns
        its result JSON. ``scope``: the id prefix of the private queue it came from."""
        job = InlineJob(cmd, spec, role, scope)
        try:
            value = await spec.handler(Context(self, job), args)  # type: ignore[arg-type]
            res = builtin_result(job, value)
        except Exception as e:
            res = exception_result(cmd.id, cmd.command, e, job.starttime, cmd.tags)
        self.on_result(cmd.command, res.state.value, res.time / 1000)
        return res.to_json()

    def exited(self, job: Job, status: int) -> None:
        """The reaper's hook for a job's process, still a zombie: its exit written down."""
        self.store.save(job, state="exited", status=status)
        job.exit_status = status
        self._ending.add(job.id)

    def _results_now(self) -> None:
        """After a pass of the reaper: the results of the jobs that ended in it and have no
        further run (no recurrence, restart, max_time or run hooks) are made and sent in
        this turn of the event loop, in one write; their tasks, woken in the next turn,
        await the replies and do the rest (docs/performance.md)."""
        sent = False
        for job_id in list(self._ending):
            job = self.table.get(job_id)
            if (job is None or not job.awaiting_exit or job.exit_status is None
                    or job.internal or job.protected or job.run_end or job.cmd.max_time
                    or job.cmd.recurring_period or job.cmd.max_restart
                    or job.output.retrying):
                continue
            self._ending.discard(job_id)
            result = procrun.ended(job, job.exit_status, False)
            text, final, pub = self._final(job, result)
            job.ended = Ended(result, text, final, pub, self.bus.submit_finish(
                job.id, final.records, job.cmd.stream, pub))
            sent = True
        if sent:
            self.bus.link.flush()

    # ------------------------------------------------------------ control

    def kill(self, job_id: str, sig: int = signal.SIGTERM) -> bool:
        job = self.table.get(job_id)
        if job is None:
            return False
        job.kill_signal = sig
        if job.pid and job.state == "running":
            process.killpg(job.pid, sig)
            if sig in TERMINATING and sig != signal.SIGKILL:
                asyncio.get_running_loop().call_later(procrun.GRACE * 5, self._force_kill, job)
        elif sig in TERMINATING and job.task is not None:
            # once: a second cancel would cut short the clean-up the first one started
            if (job.state in ("queued", "scheduled") or not job.process) \
                    and not job.task.cancelling():
                job.task.cancel()
        return True

    def _force_kill(self, job: Job) -> None:
        if job.pid and job.state == "running" and job.kill_signal is not None:
            process.killpg(job.pid, signal.SIGKILL)

    def unschedule(self, job_id: str) -> bool:
        job = self.table.get(job_id)
        if job is None:
            return False
        job.unscheduled = True
        job.wake.set()
        return True

    def killall(self, sig: int = signal.SIGTERM, exclude: set[str] | None = None,
                role: Role = Role.ADMIN, scope: str | None = None) -> int:
        """Signal every job the caller (``role``, private-queue ``scope``) may act on (never
        core0's own services, never subscribers); returns how many."""
        n = 0
        for job_id in list(self.table):
            job = self.table[job_id]
            if job.spec.name == "core.subscribe" or (exclude and job_id in exclude):
                continue
            if job.internal or not visible_to(job, role, scope):
                continue
            if self.kill(job_id, sig):
                n += 1
        return n

    def describe_all(self, job_id: str | None = None, viewer: Role = Role.ADMIN,
                     scope: str | None = None) -> list[dict[str, Any]]:
        jobs = [self.table[job_id]] if job_id and job_id in self.table else (
            [] if job_id else list(self.table.values()))
        return [j.describe(viewer, scope) for j in jobs]

    # ------------------------------------------------------------ services

    def submit_internal(self, cmd: Command, *, protected: bool = False,
                        role: Role = Role.ADMIN, scope: str | None = None) -> Job:
        """Run any registered command as a job of core0's own (boot services, cloud-config…):
        same engine, options and adoption as bus jobs, but no result is written to Redis
        (watch ``job.run_end`` / ``job.done``). ``role``, ``scope``: the role and private-queue
        scope it runs with (admin, none; a declaration made by a lower role or a private
        queue is restored with theirs). BadRequest on bad arguments, NotFound for an unknown
        command, Conflict if the id is taken."""
        spec = registry.get(cmd.command)
        if spec is None:
            raise NotFound(f"unknown command {cmd.command!r}")
        if cmd.id in self.table:
            raise Conflict(f"a job named {cmd.id} is running already")
        args = spec.args.parse(cmd.arguments)
        job = Job(self, cmd, spec, args, role, cmd.to_json().encode(), "")
        job.scope = scope or None
        job.protected = protected
        self.start(job)
        return job

    def start_service(self, service_id: str, spec: ProcessSpec, *, protected: bool = True,
                      tags: list[str] | None = None) -> Job:
        """Run a long-lived process owned by core0 itself (dnsmasq, boot services…).

        ``protected`` restarts it forever with backoff (≥ 1 s doubling to 60 s, reset after
        10 s healthy; exit 125 = permanent). It survives dispatcher restarts like every
        process job; no result is published. Conflict if the id is taken.
        """
        if service_id in self.table:
            raise Conflict(f"a job named {service_id} is running already")
        args = {"argv": list(spec.argv), "env": dict(spec.env) if spec.env is not None else None,
                "cwd": spec.cwd, "stdin": spec.stdin.decode(), "label": spec.label,
                "protected": protected}
        return self.submit_internal(
            Command(command=SERVICE_COMMAND, arguments=args, id=service_id, tags=tags),
            protected=protected)

    async def stop_service(self, service_id: str, timeout: float = 10.0) -> bool:
        """Stop a service (TERM its process group, KILL after ``timeout``). False if absent."""
        job = self.table.get(service_id)
        if job is None:
            return False
        job.unscheduled = True
        self.kill(service_id, signal.SIGTERM)
        task = job.task
        if task is not None:
            done, _ = await asyncio.wait([task], timeout=timeout)
            if not done:
                self.kill(service_id, signal.SIGKILL)
                await asyncio.wait([task], timeout=5)
        return True

    # ------------------------------------------------------------ adoption

    def adopt_all(self, parse: Any) -> int:
        """Re-create the jobs a previous dispatcher left in the state dir. Returns how many."""
        return adopt.adopt_all(self, parse)

    def forget(self, job_id: str) -> None:
        """A job that took no slot of the table's count is over (adoption's republish)."""
        self.table.pop(job_id, None)
        self._room.set()

    def _sweep(self) -> None:
        self._sweep_timer = None
        self.store.sweep()

    async def stop(self, grace: float = 0.0,
                   finish: Callable[[Job], bool] | None = None) -> list[Job]:
        """Dispatcher shutdown: process jobs keep running (adopted by the next dispatcher);
        builtins running for which ``finish`` says so (those that may not run twice) are
        given up to ``grace`` seconds to end and answer; the other jobs are cancelled and
        returned so their commands can be requeued or answered."""
        if grace > 0 and finish is not None:
            ending = [j.task for j in self.table.values()
                      if j.task is not None and not j.task.done() and not j.process
                      and not j.internal and j.state == "running" and finish(j)]
            if ending:
                log.info("stopping: up to %.0f s for %d running command(s) to end", grace,
                         len(ending))
                await asyncio.wait(ending, timeout=grace)
        self.stopping = True
        requeue: list[Job] = []
        for job in list(self.table.values()):
            if job.task is None or job.task.done():
                continue
            if job.process:
                if job.state == "scheduled":
                    self.store.save(job, state="scheduled")
            elif not job.internal:  # core0's own builtin jobs are re-created, not requeued
                requeue.append(job)
            job.task.cancel()
        tasks = [j.task for j in self.table.values() if j.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        self.store.sweep()
        self.store.sync.close()  # what the last second wrote, on the disk before we go
        return requeue
