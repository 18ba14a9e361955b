"""One startup service's state: its spec, status, runs and what ``service.get`` shows."""

from __future__ import annotations

import asyncio
from typing import Any

from core0.boot.spec import JOB_PREFIX, PHASES, ServiceSpec
from core0.jobs.job import Job

STATE_FILE = "services.json"
READY = frozenset({"running", "done"})
BAD = frozenset({"failed", "skipped", "stopped", "error"})
SETTLED = READY | BAD
#: largest builtin result kept in a service's state (bytes of JSON)
RESULT_MAX = 16384


class Service:
    """The runtime state of one declared service."""

    def __init__(self, sid: str, spec: ServiceSpec | None, source: str = "",
                 job_prefix: str = JOB_PREFIX):
        self.id = sid
        #: its job id is this prefix + its id (the node's: ``svc:``; a container's
        #: ``/.startup.toml`` services: core0/commands/container_startup.py)
        self.job_prefix = job_prefix
        self.spec = spec
        self.source = spec.source if spec is not None else source
        self.hash = spec.hash if spec is not None else ""
        self.phase = len(PHASES) - 1
        self.deps: list[str] = []
        self.status = "pending"
        self.message = ""
        self.pid: int | None = None
        self.starts = 0
        self.last_exit: int | None = None
        self.last_state = ""
        self.result: Any = None
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.ended_at: float | None = None
        # runtime only
        self.job: Job | None = None
        self.task: asyncio.Task[None] | None = None
        self.watch: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()
        self.run_over = asyncio.Event()
        self.run_ready = False
        self.base = 0
        self.stopping = ""

    @property
    def job_id(self) -> str:
        return self.job_prefix + self.id

    @property
    def active(self) -> bool:
        return self.job is not None or (self.task is not None and not self.task.done())

    def to_state(self) -> dict[str, Any]:
        return {
            "id": self.id, "spec": self.spec.to_dict() if self.spec else None,
            "source": self.source, "hash": self.hash, "phase": self.phase, "deps": self.deps,
            "status": self.status, "message": self.message, "pid": self.pid,
            "starts": self.starts, "last_exit": self.last_exit, "last_state": self.last_state,
            "result": self.result, "started_at": self.started_at, "ready_at": self.ready_at,
            "ended_at": self.ended_at,
        }

    @classmethod
    def from_state(cls, d: dict[str, Any], job_prefix: str = JOB_PREFIX) -> Service:
        spec = ServiceSpec.from_dict(d["spec"]) if d.get("spec") else None
        svc = cls(d["id"], spec, d.get("source", ""), job_prefix)
        svc.hash = d.get("hash", svc.hash)
        svc.phase = int(d.get("phase", len(PHASES) - 1))
        svc.deps = list(d.get("deps") or [])
        svc.status = d.get("status", "pending")
        svc.message = d.get("message", "")
        svc.pid = d.get("pid")
        svc.starts = int(d.get("starts") or 0)
        svc.last_exit = d.get("last_exit")
        svc.last_state = d.get("last_state", "")
        svc.result = d.get("result")
        svc.started_at = d.get("started_at")
        svc.ready_at = d.get("ready_at")
        svc.ended_at = d.get("ended_at")
        return svc

    def describe(self, full: bool = False) -> dict[str, Any]:
        spec = self.spec
        d: dict[str, Any] = {
            "id": self.id, "status": self.status, "message": self.message,
            "phase": PHASES[self.phase], "job": self.job_id, "pid": self.pid or 0,
            "starts": self.starts, "last_exit": self.last_exit, "hash": self.hash,
            "command": spec.name if spec else "", "oneshot": bool(spec and spec.oneshot),
            "protected": bool(spec and spec.protected), "deps": self.deps,
            "source": self.source,
        }
        if full:
            d.update({
                "spec": spec.to_dict() if spec else None, "last_state": self.last_state,
                "result": self.result, "started_at": self.started_at,
                "ready_at": self.ready_at, "ended_at": self.ended_at,
            })
        return d
