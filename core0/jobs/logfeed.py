"""0-core's aggregated log (``logger.subscribe``): the output records of every job a
subscriber may see, pushed to a Redis list of its own.

A subscription is a list ``logger:<name>`` (with the bus prefix) fed with the records of the
jobs its queue's role may see (``Role.sees``: below admin, a private queue's own jobs only),
as 0-core's ``LogRecord`` JSON (``{"core", "command", "message": {"message", "epoch",
"meta"}}``, ``core`` the container id), filtered by ``levels`` when given (the EOF records
always pass, as in 0-core). A new subscription first receives the recent records kept in
memory (the last :data:`BACKLOG_MAX`, at most :data:`BACKLOG_BYTES`), as 0-core flushed its
buffer. Each list keeps its newest :data:`MAX_LIST` records (0-core's bound) and expires
``bus.result_ttl`` seconds after its last record, so an abandoned list does not stay.

Unlike 0-core's (in memory only), subscriptions are kept in the state dir and survive a
dispatcher restart; each role (and private queue) holds at most :data:`MAX_SUBS` of them.
Feeding is off the jobs' path: records are handed over in memory and written by a task of
this feed, in one pipeline per batch; with no subscription only the backlog is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
from collections import deque
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from core0_client.protocol import LogRecord

from core0.errors import Conflict, Unavailable
from core0.registry import Role

if TYPE_CHECKING:
    from core0.config import Config
    from core0.jobs.job import Job

log = logging.getLogger(__name__)

#: records kept per logger:<name> list (0-core's MaxRedisQueueSize)
MAX_LIST = 1000
#: recent records replayed to a new subscription
BACKLOG_MAX = 1000
BACKLOG_BYTES = 4 << 20
#: records waiting for Redis (the oldest dropped beyond)
PENDING_MAX = 10 * MAX_LIST
#: subscriptions per role (per private queue below admin)
MAX_SUBS = 16


@dataclass(frozen=True)
class Subscription:
    """One subscriber's list: its key, level filter and the queue that made it."""

    key: str
    levels: tuple[int, ...]
    role: int
    scope: str | None

    def wants(self, rec: LogRecord) -> bool:
        return not self.levels or rec.level in self.levels or rec.eof


@dataclass(frozen=True)
class _Rec:
    role: Role
    scope: str | None
    core: int
    rec: LogRecord

    def to_json(self) -> str:
        return dataclasses.replace(self.rec, core=self.core).to_json()


class LogFeed:
    """The node's subscriptions to the aggregated job log, and the task that feeds them."""

    def __init__(self, cfg: Config, bus: Any):
        self.cfg = cfg
        self.bus = bus
        self.path = cfg.state_dir / "logger-subscriptions.json"
        self.subs: dict[str, Subscription] = {}
        self._backlog: deque[_Rec] = deque()
        self._backlog_bytes = 0
        self._pending: list[tuple[Subscription | None, _Rec]] = []
        self._task: asyncio.Task[None] | None = None
        self._load()

    # ------------------------------------------------------------ the jobs' side

    def offer(self, job: Job, records: list[LogRecord]) -> None:
        """A job's new output records (called by its output; costs a few appends)."""
        for rec in records:
            item = _Rec(job.role, job.scope, job.container or 0, rec)
            self._backlog.append(item)
            self._backlog_bytes += len(rec.message) + 64
            if self.subs:
                self._pending.append((None, item))
        while self._backlog and (len(self._backlog) > BACKLOG_MAX
                                 or self._backlog_bytes > BACKLOG_BYTES):
            self._backlog_bytes -= len(self._backlog.popleft().rec.message) + 64
        if self._pending:
            if len(self._pending) > PENDING_MAX:  # Redis away: a list keeps its newest anyway
                del self._pending[:-PENDING_MAX]
            self._kick()

    # ------------------------------------------------------------ subscriptions

    def key_of(self, name: str) -> str:
        """The list's key for a name given with or without ``logger:`` and the bus prefix."""
        bare = name.removeprefix(self.cfg.bus.prefix).removeprefix("logger:")
        return f"{self.cfg.bus.prefix}logger:{bare}"

    def subscribe(self, name: str, levels: list[int], role: Role, scope: str | None) -> str:
        """Start feeding ``logger:<name>`` and return its key.
        Subscribing to a list one already feeds changes nothing (0-core); 409 when another
        queue's subscription has the name and this one does not see its maker, 503 when the
        caller's role (or private queue) holds :data:`MAX_SUBS` already."""
        key = self.key_of(name)
        old = self.subs.get(key)
        if old is not None:
            if role.sees(scope, Role(old.role), old.scope):
                return key
            raise Conflict(f"{key} is another queue's subscription")
        if self.count(role, scope) >= MAX_SUBS:
            raise Unavailable(f"limit reached: {MAX_SUBS} logger subscriptions for this "
                              "queue's role")
        sub = Subscription(key, tuple(sorted(set(levels))), int(role), scope)
        self.subs[key] = sub
        self._save()
        self._pending.extend((sub, item) for item in self._backlog)
        self._kick()
        return key

    def owner(self, name: str) -> Subscription | None:
        """The subscription of that name (with or without ``logger:`` and the prefix)."""
        return self.subs.get(self.key_of(name))

    def unsubscribe(self, name: str) -> bool:
        """Stop feeding the list (what it holds stays until it expires)."""
        if self.subs.pop(self.key_of(name), None) is None:
            return False
        self._save()
        return True

    def count(self, role: Role, scope: str | None) -> int:
        """Subscriptions made by queues of ``role`` (and private queue ``scope``)."""
        return sum(1 for s in self.subs.values() if s.role == role and s.scope == scope)

    # ------------------------------------------------------------ writing

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        ttl = int(self.cfg.bus.result_ttl)
        while self._pending:
            batch, self._pending = self._pending, []
            lists: dict[str, list[str]] = {}
            for target, item in batch:
                subs = [target] if target is not None else list(self.subs.values())
                text: str | None = None
                for sub in subs:
                    if sub.key in self.subs and sub.wants(item.rec) \
                            and Role(sub.role).sees(sub.scope, item.role, item.scope):
                        text = text or item.to_json()
                        lists.setdefault(sub.key, []).append(text)
            if not lists:
                continue
            pipe = self.bus.r.pipeline(transaction=False)
            for key, texts in lists.items():
                pipe.rpush(key, *texts[-MAX_LIST:])
                pipe.ltrim(key, -MAX_LIST, -1)
                pipe.expire(key, ttl)
            try:
                await pipe.execute()
            except Exception as e:  # bounded and best effort, as 0-core's: never a job's
                log.warning("logger subscriptions: %d record(s) not written: %s",
                            len(batch), e)

    async def close(self) -> None:
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._task), 2)

    # ------------------------------------------------------------ the state dir

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
            self.subs = {d["key"]: Subscription(d["key"], tuple(d["levels"]), int(d["role"]),
                                                d["scope"]) for d in data}
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError) as e:
            log.error("%s: unreadable, subscriptions dropped: %s", self.path, e)

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps([asdict(s) for s in self.subs.values()]))
        os.replace(tmp, self.path)
