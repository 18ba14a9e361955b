"""A job's output: tails and data for its result, records for log:<id> and stream:<id>."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from core0_client.protocol import FLAG_EOF_ERROR, FLAG_EOF_SUCCESS, Level, LogRecord

from core0.bus.store import retry_forever
from core0.proc.output import FileFollower, Message, Tail

if TYPE_CHECKING:
    from core0.jobs.engine import JobEngine
    from core0.jobs.job import Job

log = logging.getLogger(__name__)


class Final(NamedTuple):
    """What a job's end leaves to write (:meth:`JobOutput.final_records`)."""

    #: written with the result, before it
    records: list[LogRecord]
    #: an EOF record written just after the result (a process job that wrote nothing)
    late_eof: LogRecord | None
    #: the output write still in flight, queued on the same link before these: a result
    #: that must be written again waits for it, so that it never comes before the output
    writing: asyncio.Task[None] | None


class JobOutput:
    """Messages of one job: tails for the result, records for log:<id> and stream:<id>."""

    def __init__(self, engine: JobEngine, job: Job):
        self.engine = engine
        self.job = job
        self.reset()
        self._pending: list[LogRecord] = []
        self._pending_bytes = 0
        self._flusher: asyncio.Task[None] | None = None
        #: the flusher's batch is on its way to Redis (its first write, not a retry)
        self._writing = False
        #: the flusher's batch waits to be written again (Redis away): what comes after it
        #: waits for it (:meth:`settle`)
        self.retrying = False
        #: the job's output files; paused while too much waits for Redis (backpressure)
        self.followers: list[FileFollower] = []
        self.wrote = False
        #: the job's process ended: what is read now goes out with the result
        #: (:meth:`final_records`), not in a write of its own before it
        self.ending = False
        #: called with every message (readiness checks of services: running_match)
        self.watchers: list[Callable[[Message], None]] = []

    def reset(self) -> None:
        self.ending = False
        self.tails = (Tail(), Tail())
        self.data = ""
        self.level = 0
        self.critical = ""

    def add(self, msgs: list[Message]) -> None:
        now = time.time_ns()
        first = len(self._pending)
        for m in msgs:
            if m.level in (Level.STDOUT, Level.STDERR):
                self.tails[m.level - 1].add(m.text, m.nl)
            elif Level.RESULT_JSON <= m.level <= Level.RESULT_HRD:
                self.data, self.level = m.text, m.level
            elif m.level == Level.CRITICAL:
                self.critical = m.text
            elif m.level == Level.STATSD:
                self.engine.on_stats(m.text)
            self._pending.append(LogRecord(self.job.id, m.level, m.text, 0, now))
            self._pending_bytes += len(m.text) + 64
            for w in self.watchers:
                try:
                    w(m)
                except Exception:
                    log.exception("output watcher of %s failed", self.job.id)
        self.engine.feed.offer(self.job, self._pending[first:])
        limit = self.engine.cfg.bus.output_pending_bytes
        if len(self._pending) > 10000 or self._pending_bytes > 2 * limit:
            # Redis is away and the output does not come from files that could wait:
            # keep the newest (Redis keeps only the newest records anyway)
            keep: list[LogRecord] = []
            size = 0
            for rec in reversed(self._pending):
                size += len(rec.message) + 64
                if size > limit or len(keep) >= 10000:
                    break
                keep.append(rec)
            keep.reverse()
            self._pending, self._pending_bytes = keep, size
        if not self.ending:
            self._kick()

    def run_over(self) -> None:
        """A run ended and another follows: what the end of this one left is written now."""
        self.ending = False
        self._kick()

    def _kick(self) -> None:
        if self._pending and self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                self._pending_bytes = 0
                self.wrote = self._writing = True
                try:  # first write: queued on the link ahead of anything submitted later
                    await self.engine.bus.records(self.job.id, batch, self.job.cmd.stream)
                except Exception:
                    self._writing, self.retrying = False, True
                    await retry_forever("output", self.engine.bus.records, self.job.id, batch,
                                        self.job.cmd.stream)
                finally:
                    self._writing = self.retrying = False
                for f in self.followers:  # room again: read on
                    f.resume()
        except Exception:
            log.exception("job %s: output lost", self.job.id)
        finally:
            self._flusher = None

    def full(self) -> bool:
        """Too much output waits for Redis: stop reading the job's output files."""
        return self._pending_bytes >= self.engine.cfg.bus.output_pending_bytes

    async def settle(self) -> None:
        """Wait for an output write that Redis refused until it is written again (so that
        nothing written later overtakes it); a first write in flight is not waited for."""
        if self._flusher is not None and self.retrying:
            await asyncio.shield(self._flusher)

    def final_records(self, ok: bool) -> Final:
        """What is left to write when the job ends (see :class:`Final`): the last output and
        the EOF record (0-core's meta flags 0x2 / 0x4), written by the caller with the
        result. The EOF record of a process job that wrote nothing goes one write after the
        result instead: its ``log:<id>`` does not exist yet, and creating a stream is most of
        what that write costs Redis (about 15 µs, 30–40 µs of a sequential ``core.system``
        round trip: docs/performance.md). A reader that sees the result finds every output
        record already written. Call :meth:`settle` first."""
        records, self._pending, self._pending_bytes = self._pending, [], 0
        # a flusher that has not taken its batch yet finds nothing left
        writing = self._flusher if self._writing else None
        eof = LogRecord(self.job.id, 0, "", FLAG_EOF_SUCCESS if ok else FLAG_EOF_ERROR,
                        time.time_ns())
        self.engine.feed.offer(self.job, [eof])
        if records or self.wrote or self.job.cmd.stream:
            return Final([*records, eof], None, writing)
        return Final(records, eof if self.job.process else None, writing)

    async def close(self, ok: bool) -> None:
        """Flush, then send the EOF record (0-core's meta flags 0x2 / 0x4)."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self.wrote or self.job.cmd.stream or self.job.process:
            flag = FLAG_EOF_SUCCESS if ok else FLAG_EOF_ERROR
            eof = LogRecord(self.job.id, 0, "", flag, time.time_ns())
            self.engine.feed.offer(self.job, [eof])
            self._pending.append(eof)
            await self._flush()


class QueueSlots:
    """Named sequential queues: jobs with the same ``queue`` run one at a time, FIFO."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[asyncio.Future[None]]] = {}

    async def acquire(self, name: str) -> None:
        q = self._queues.get(name)
        if q is None:
            self._queues[name] = deque()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        q.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut in q:
                q.remove(fut)
            elif fut.done() and not fut.cancelled():
                self.release(name)  # we were handed the slot while being cancelled
            raise

    def release(self, name: str) -> None:
        q = self._queues.get(name)
        if q is None:
            return
        while q:
            fut = q.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        del self._queues[name]

    def depth(self) -> dict[str, int]:
        return {k: len(v) for k, v in self._queues.items()}
