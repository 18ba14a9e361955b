"""Results of recently finished jobs, kept to re-answer a resubmission after Redis lost them,
and who owned each job (role, private-queue scope), bounded by count and by bytes.

A result is known for the bus's result TTL (``bus.result_ttl``), as its key and flag in Redis
are: past it, the id is unknown here too, so a client that sends the same id again gets a new
run, whichever of Redis and this cache it meets (docs/protocol.md, "ids")."""

from __future__ import annotations

import time
from collections import OrderedDict

from core0.registry import Role


class RecentResults:
    """id → result JSON of recently finished jobs, and id → (role, scope)."""

    def __init__(self, max_bytes: int, max_count: int = 20000, ttl: float = 0.0):
        self.max_bytes = max_bytes
        self.max_count = max_count
        #: seconds a result is known (0: until pushed out by count or bytes)
        self.ttl = ttl
        #: id → (result JSON, when it was kept: time.monotonic()), oldest first
        self.results: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.bytes = 0
        self.owners: OrderedDict[str, tuple[Role, str | None]] = OrderedDict()

    def __contains__(self, job_id: str) -> bool:
        return self.get(job_id) is not None

    def get(self, job_id: str) -> str | None:
        """The result of ``job_id`` if it finished here within the TTL."""
        kept = self.results.get(job_id)
        if kept is None or (self.ttl and time.monotonic() - kept[1] > self.ttl):
            return None
        return kept[0]

    def add(self, job_id: str, result_json: str, role: Role | None = None,
            scope: str | None = None) -> None:
        """Keep a result (the oldest go first past ``max_count`` or ``max_bytes``, and
        those older than the TTL)."""
        now = time.monotonic()
        old = self.results.pop(job_id, None)
        if old is not None:
            self.bytes -= len(old[0])
        self.results[job_id] = (result_json, now)
        self.bytes += len(result_json)
        results = self.results
        while results:
            first = next(iter(results.values()))
            if not (len(results) > self.max_count or self.bytes > self.max_bytes
                    or (self.ttl and now - first[1] > self.ttl)):
                break
            _, dropped = results.popitem(last=False)
            self.bytes -= len(dropped[0])
        if role is not None:
            self.owners[job_id] = (role, scope)
            self.owners.move_to_end(job_id)
            while len(self.owners) > self.max_count:
                self.owners.popitem(last=False)

    def owner(self, job_id: str) -> tuple[Role, str | None] | None:
        return self.owners.get(job_id)

    def role(self, job_id: str) -> Role | None:
        known = self.owners.get(job_id)
        return known[0] if known else None

    def visible(self, job_id: str, viewer: Role, scope: str | None) -> bool | None:
        """The rule of ``job.visible_to`` for a finished job (None: unknown)."""
        known = self.owners.get(job_id)
        if known is None:
            return None
        role, job_scope = known
        return viewer.sees(scope, role, job_scope)
