"""A job: one accepted command and its runs (what the engine tracks, what job.list shows)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psutil
from core0_client.protocol import Command, Result, now_ms

from core0.backoff import Backoff
from core0.jobs.output import JobOutput
from core0.jobs.result import TERMINATING
from core0.registry import CommandSpec, Role
from core0.schema import Schema

if TYPE_CHECKING:
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
        self.state = "queued"
        self.run = 0
        self.restarts = 0
        self.pid: int | None = None
        self.start_ticks = 0
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

    def describe(self, viewer: Role = Role.ADMIN) -> dict[str, Any]:
        """The job as job.list shows it. A viewer of a lower role than the job's sees no
        arguments, stdin, environment or label (they may hold secrets)."""
        cmd = self.cmd.to_dict()
        redacted = viewer < self.role
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


class InlineJob:
    """A stand-in job for inline commands (no task, no output, never a process)."""

    def __init__(self, cmd: Command, spec: CommandSpec, role: Role):
        self.cmd = cmd
        self.spec = spec
        self.role = role
        self.starttime = now_ms()

    @property
    def id(self) -> str:
        return self.cmd.id
