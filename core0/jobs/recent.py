"""Results of recently finished jobs, kept to re-answer a resubmission after Redis lost them,
and who owned each job (role, private-queue scope), bounded by count and by bytes."""

from __future__ import annotations

from collections import OrderedDict

from core0.registry import Role


class RecentResults:
    """id → result JSON of recently finished jobs, and id → (role, scope)."""

    def __init__(self, max_bytes: int, max_count: int = 20000):
        self.max_bytes = max_bytes
        self.max_count = max_count
        self.results: OrderedDict[str, str] = OrderedDict()
        self.bytes = 0
        self.owners: OrderedDict[str, tuple[Role, str | None]] = OrderedDict()

    def __contains__(self, job_id: str) -> bool:
        return job_id in self.results

    def get(self, job_id: str) -> str | None:
        return self.results.get(job_id)

    def add(self, job_id: str, result_json: str, role: Role | None = None,
            scope: str | None = None) -> None:
        """Keep a result (the oldest go first past ``max_count`` or ``max_bytes``)."""
        old = self.results.pop(job_id, None)
        if old is not None:
            self.bytes -= len(old)
        self.results[job_id] = result_json
        self.bytes += len(result_json)
        while self.results and (len(self.results) > self.max_count
                                or self.bytes > self.max_bytes):
            _, dropped = self.results.popitem(last=False)
            self.bytes -= len(dropped)
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
