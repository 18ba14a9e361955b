"""A job: one accepted command and its runs (what the engine tracks, what job.list shows)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psutil
from core0_client.protocol import Command, Result, now_ms

from core0.backoff import Backoff
from core0.bus.store import Publish
from core0.jobs.output import Final, JobOutput
from core0.jobs.result import TERMINATING
from core0.registry import CommandSpec, Role
from core0.schema import Schema

if TYPE_CHECKING:
    from core0.config import Config
    from core0.jobs.engine import JobEngine


class Job:
    """One accepted command and its runs."""

    def __init__(
        self,
        engine: JobEngine,
        cmd: Command,
        spec: CommandSpec,
        args: Schema,
        role: Role,
        raw: bytes,
        processing: str,
    ):
        self.cmd = cmd
        self.spec = spec
        self.args = args
        self.role = role
        self.raw = raw
        self.processing = processing
        #: the id prefix of the private queue it came from (None: not private)
        self.scope = queue_scope(engine.cfg, processing)
        self.state = "queued"
        self.run = 0
        self.restarts = 0
        self.pid: int | None = None
        #: the process's start time (clock ticks since boot): at or after ``start_ticks``, at or
        #: before ``start_max`` (0: exactly ``start_ticks``)
        self.start_ticks = 0
        self.start_max = 0
        self.starttime = now_ms()
        self.created = self.starttime
        self.label = cmd.command
        self.process = False
        self.kill_signal: int | None = None
        self.unscheduled = False
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.output = JobOutput(engine, self)
        self.ps: psutil.Process | None = None
        self.next_run: float | None = None
        #: restarted forever with backoff (services); exit 125 stops it
        self.protected = False
        #: the process name (/proc/<pid>/comm) of the current run
        self.comm = ""
        #: the container the job runs in (corex.dispatch; 0 = the host): set on its results
        self.container = 0
        #: not from the bus: no result is published (services started by core0 itself)
        self.internal = not processing
        #: restart delays when protected (the supervisor's rule)
        self.backoff = Backoff()
        #: the first run's handler outcome (a ProcessSpec or the error it raised), built
        #: while the pickup was in flight (:meth:`JobEngine.prebuild`)
        self.prebuilt: Any = None
        #: its first run's process, spawned in the turn that started the job
        #: (:meth:`JobEngine.start`): the exit's future and the output files' fds
        self.launched: tuple[asyncio.Future[int], int, int] | None = None
        #: the first run was begun by :meth:`JobEngine.start` (its number is counted)
        self.eager = False
        #: the wait status of the current run's process, once the reaper saw its exit
        self.exit_status: int | None = None
        #: the task waits for the process's exit (its output followed, nothing else to do)
        self.awaiting_exit = False
        #: the result made and sent in the reaper's turn (JobEngine._results_now)
        self.ended: Ended | None = None
        #: called after every run with its result (service managers watch these)
        self.run_end: list[Callable[[Job, Result], None]] = []
        #: set when the job is over; ``final`` holds its last result
        self.done = asyncio.Event()
        self.final: Result | None = None
        #: the process was spawned (for readiness by delay)
        self.spawned = asyncio.Event()

    @property
    def id(self) -> str:
        return self.cmd.id

    @property
    def killed(self) -> bool:
        return self.kill_signal in TERMINATING

    def describe(self, viewer: Role = Role.ADMIN, scope: str | None = None) -> dict[str, Any]:
        """The job as job.list shows it. A viewer of a lower role than the job's, or below
        admin and outside the job's private queue, sees no arguments, stdin, environment or
        label (they may hold secrets)."""
        cmd = self.cmd.to_dict()
        redacted = not visible_to(self, viewer, scope)
        if redacted:
            cmd["arguments"] = {}
        d: dict[str, Any] = {
            "id": self.id,
            "command": self.cmd.command,
            "cmd": cmd,
            "role": self.role.label,
            "redacted": redacted,
            "label": self.cmd.command if redacted else self.label,
            "state": self.state,
            "run": self.run,
            "starttime": self.starttime,
            "pid": self.pid or 0,
            "queue": self.cmd.queue,
            "tags": self.cmd.tags,
            "cpu": 0.0,
            "rss": 0,
            "vms": 0,
            "swap": 0,
        }
        if self.pid and self.state == "running":
            try:
                if self.ps is None or self.ps.pid != self.pid:
                    self.ps = psutil.Process(self.pid)
                    self.ps.cpu_percent(None)
                with self.ps.oneshot():
                    mem = self.ps.memory_info()
                    d["cpu"] = self.ps.cpu_percent(None)
                    d["rss"] = mem.rss
                    d["vms"] = mem.vms
            except psutil.Error:
                pass
        return d


@dataclass(slots=True)
class Ended:
    """A job's last result, made and queued for Redis in the turn its process's exit was
    seen; the job's task awaits ``sent`` and does the rest."""

    result: Result
    text: str
    final: Final
    pub: Publish
    sent: asyncio.Future[list[Any]]


class InlineJob:
    """A stand-in job for inline commands (no task, no output, never a process)."""

    def __init__(self, cmd: Command, spec: CommandSpec, role: Role, scope: str | None = None):
        self.cmd = cmd
        self.spec = spec
        self.role = role
        #: the id prefix of the private queue it came from (None: not private)
        self.scope = scope
        self.starttime = now_ms()

    @property
    def id(self) -> str:
        return self.cmd.id


def visible_to(job: Job | InlineJob, viewer: Role, scope: str | None) -> bool:
    """May a caller of role ``viewer`` from a queue with id scope ``scope`` see (and act on)
    ``job``? Its role must be at least the job's; below admin, a job of a private queue is
    visible only from that queue, and a caller on a private queue sees only its own jobs."""
    return viewer.sees(scope, job.role, job.scope)


def queue_scope(cfg: Config, processing: str) -> str | None:
    """The id prefix of the private queue whose processing list this is (or None)."""
    head = f"{cfg.bus.prefix}core:"
    if not processing.startswith(head) or not processing.endswith(":processing"):
        return None
    return cfg.bus.private_prefix(processing[len(head):-len(":processing")])


async def prebuild(engine: JobEngine, job: Job) -> None:
    """Run a ``builds_process`` handler ahead of the job, while its pickup is in flight (no
    side effect: its ProcessSpec, or its error, is kept for the first run)."""
    if job.spec.builds_process and not job.cmd.max_time:
        from core0.context import Context

        try:
            job.prebuilt = await job.spec.handler(Context(engine, job), job.args)  # type: ignore[arg-type]
        except Exception as e:
            job.prebuilt = e
