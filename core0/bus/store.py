"""The Redis transport: reliable pop, pickup flag, results, output records, dead letters.

Every multi-key step is one Lua script, so it is atomic and costs one round trip:

* ``pop``: BLMOVE one command from the queue into ``<queue>:processing``, then move up to
  ``batch - 1`` more in one script call (batched pops).
* ``pickup``: set ``result:<id>:flag`` unless it exists (a duplicate id never runs twice).
* ``publish``: write the result, give result and flag their TTL and LREM the command from the
  processing list, all at once, and only if no result exists yet (exactly one result per id).
  For inline commands the pickup and the publish are one script call.

Every key core0 writes has a TTL or a bound (LTRIM / MAXLEN), except a running job's flag, which
0-core's clients read as "running" while its TTL is -1; it gets the result's TTL when the job
ends, and the processing-list reconcile at start repairs what a crash left.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core0_client.protocol import Keys, LogRecord
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core0.backoff import Backoff
from core0.bus.endpoint import make_client
from core0.bus.resp import RespError, Script, SharedConnection
from core0.config import Config

log = logging.getLogger(__name__)

# KEYS: queue, processing   ARGV: n
_POP_MORE = """
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local v = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not v then break end
  out[#out + 1] = v
end
return out
"""

# KEYS: flag, processing   ARGV: raw   → 1 picked up, 0 duplicate (dropped)
_PICKUP = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('LREM', KEYS[2], 1, ARGV[1])
  return 0
end
redis.call('RPUSH', KEYS[1], '')
return 1
"""

# KEYS: flag, result, processing   ARGV: result, ttl, raw ('' = none), mode ('new'|'owned'|'drop')
# → 1 written, 0 not written (duplicate id, or a result exists already; 'drop': release only)
_PUBLISH = """
if ARGV[4] == 'drop' then
  redis.call('LREM', KEYS[3], 1, ARGV[3])
  return 0
end
if ARGV[4] == 'new' then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    if ARGV[3] ~= '' then redis.call('LREM', KEYS[3], 1, ARGV[3]) end
    return 0
  end
  redis.call('RPUSH', KEYS[1], '')
else
  if redis.call('EXISTS', KEYS[2]) == 1 then
    -- a result is there already: ours from an earlier delivery stands (exactly one result);
    -- anything else (written by a client, or moved there from another job's key with
    -- BRPOPLPUSH, which ACLs cannot stop) is replaced by the real one
    local ok, cur = pcall(cjson.decode, redis.call('LINDEX', KEYS[2], 0) or '')
    local ok2, new = pcall(cjson.decode, ARGV[1])
    if ok and ok2 and type(cur) == 'table' and type(new) == 'table'
        and cur['id'] ~= nil and cur['id'] == new['id'] then
      if redis.call('TTL', KEYS[2]) == -1 then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
      if redis.call('TTL', KEYS[1]) == -1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
      if ARGV[3] ~= '' then redis.call('LREM', KEYS[3], 1, ARGV[3]) end
      return 0
    end
    redis.call('DEL', KEYS[2])
  end
  if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('RPUSH', KEYS[1], '') end
end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('LREM', KEYS[3], 1, ARGV[3]) end
return 1
"""

# KEYS: dead list, stats   ARGV: entry, max, ttl, counter
_DEAD = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('HINCRBY', KEYS[2], ARGV[4], 1)
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""


@dataclass(slots=True)
class Publish:
    """One result to write (see :meth:`Bus.publish`)."""

    job_id: str
    result_json: str
    raw: bytes | None  #: the popped command, removed from ``processing``
    processing: str
    #: "new": also the pickup (duplicate check on the flag); "owned": after pickup;
    #: "drop": a duplicate of a running job, only released from ``processing``
    mode: str


POP_MORE = Script(_POP_MORE)
PICKUP = Script(_PICKUP)
PUBLISH = Script(_PUBLISH)


class PopLink:
    """The pop loop's own connection (core0.bus.resp): one write per batch of work."""

    def __init__(self, cfg: Config, keys: Keys):
        self.cfg = cfg
        self.keys = keys
        self.conn = SharedConnection(cfg, [POP_MORE, PICKUP, PUBLISH])

    async def connect(self) -> None:
        await self.conn.connect()

    def close(self) -> None:
        self.conn.close()

    def _publish_cmd(self, p: Publish) -> list[Any]:
        return PUBLISH.call(
            [self.keys.flag(p.job_id), self.keys.result(p.job_id), p.processing],
            [p.result_json, self.cfg.bus.result_ttl, p.raw if p.raw is not None else b"", p.mode])

    async def run(self, commands: list[list[Any]], timeout: float = 10.0) -> list[Any]:
        """Send ``commands`` now (connecting first if the link dropped); their replies."""
        return self._check(await self.conn.execute(commands, timeout, now=True))

    def submit(self, commands: list[list[Any]], timeout: float = 10.0,
               on_reply: Callable[[list[Any]], None] | None = None
               ) -> asyncio.Future[list[Any]]:
        """Queue commands for the next write (see :meth:`replies`), answered within
        ``timeout`` seconds or the link is dropped (``on_reply``: see
        :meth:`SharedConnection.submit`)."""
        return self.conn.submit(commands, timeout, on_reply=on_reply)

    def flush(self) -> None:
        """Write what is queued now (not at the next turn of the event loop)."""
        self.conn.flush()

    async def replies(self, fut: asyncio.Future[list[Any]]) -> list[Any]:
        """The replies of a :meth:`submit`."""
        return self._check(await fut)

    def publish_cmds(self, pubs: Sequence[Publish]) -> list[list[Any]]:
        return [self._publish_cmd(p) for p in pubs]

    def pickup_cmds(self, items: Sequence[tuple[str, str, bytes]]) -> list[list[Any]]:
        return [PICKUP.call([self.keys.flag(jid), processing], [raw])
                for jid, processing, raw in items]

    def pop_cmd(self, blocking: bool, queue: str, processing: str, n: int) -> list[Any]:
        """BLMOVE of one command (``blocking``) or a batched pop of up to ``n``."""
        if blocking:
            return ["BLMOVE", queue, processing, "LEFT", "RIGHT", self.cfg.bus.block_timeout]
        return POP_MORE.call([queue, processing], [n])

    def _check(self, replies: list[Any]) -> list[Any]:
        for r in replies:
            if isinstance(r, RespError):
                if str(r).startswith("NOSCRIPT"):
                    self.conn.close()
                    raise ConnectionError(f"redis lost core0's scripts: {r}")
                raise RedisError(str(r))
        return replies

    async def publish_and_pop(self, pubs: Sequence[Publish], queue: str, processing: str,
                              n: int) -> tuple[list[bool], list[bytes]]:
        """Write results (if any) and take up to ``n`` waiting commands, in one round trip."""
        cmds = [self._publish_cmd(p) for p in pubs]
        if n > 0:
            cmds.append(POP_MORE.call([queue, processing], [n]))
        replies = await self.run(cmds)
        written = [bool(x) for x in replies[: len(pubs)]]
        return written, (list(replies[-1]) if n > 0 else [])

    async def publish_and_block(self, pubs: Sequence[Publish], queue: str,
                                processing: str) -> tuple[list[bool], bytes | None]:
        """Write results (if any), then wait for the next command (BLMOVE), in one write."""
        t = self.cfg.bus.block_timeout
        cmds = [self._publish_cmd(p) for p in pubs]
        cmds.append(["BLMOVE", queue, processing, "LEFT", "RIGHT", t])
        replies = await self.run(cmds, timeout=t + 5)
        return [bool(x) for x in replies[:-1]], replies[-1]

    async def pickup_many(self, items: Sequence[tuple[str, str, bytes]]) -> list[bool]:
        cmds = [PICKUP.call([self.keys.flag(jid), processing], [raw])
                for jid, processing, raw in items]
        return [bool(x) for x in await self.run(cmds)]


class Bus:
    """core0's side of the wire protocol."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.keys = Keys(cfg.bus.prefix)
        self.r = make_client(cfg)
        self._pop_more = self.r.register_script(_POP_MORE)
        self._pickup = self.r.register_script(_PICKUP)
        self._publish = self.r.register_script(_PUBLISH)
        self._dead = self.r.register_script(_DEAD)
        self.ttl = cfg.bus.result_ttl
        #: the job hot path's link (results and output records of jobs)
        self.link = SharedConnection(cfg, [PUBLISH])

    async def close(self) -> None:
        self.link.close()
        await self.r.aclose()

    def blocking_client(self) -> Any:
        """A client of its own for one blocking pop loop."""
        return make_client(self.cfg, single=True)

    # ------------------------------------------------------------ queue

    async def pop(self, conn: Any, queue: str, processing: str, batch: int) -> list[bytes]:
        """Wait for commands and move up to ``batch`` of them into ``processing``."""
        first = await conn.blmove(queue, processing, self.cfg.bus.block_timeout, "LEFT", "RIGHT")
        if first is None:
            return []
        if batch <= 1:
            return [first]
        more = await self._pop_more(keys=[queue, processing], args=[batch - 1])
        return [first, *more]

    async def pickup(self, job_id: str, processing: str, raw: bytes, *,
                     listed: bool = False) -> bool:
        """Set ``job_id``'s pickup flag (False: it was set already). ``listed``: put ``raw``
        into ``processing`` first, in the same write (a command core0 made itself, such as a
        container's inner builtin job, which no pop listed): a dispatcher that dies after
        the write leaves both, so the next one's reconcile finds the command; a refused
        pickup removes it again."""
        if not listed:
            return bool(
                await self._pickup(keys=[self.keys.flag(job_id), processing], args=[raw])
            )
        pipe = self.r.pipeline(transaction=False)
        pipe.rpush(processing, raw)
        await self._pickup(keys=[self.keys.flag(job_id), processing], args=[raw], client=pipe)
        return bool((await pipe.execute())[1])

    async def pickup_many(self, items: Sequence[tuple[str, str, bytes]]) -> list[bool]:
        """Pickups of (job id, processing, raw) in one round trip."""
        if len(items) == 1:
            return [await self.pickup(*items[0])]
        pipe = self.r.pipeline(transaction=False)
        for job_id, processing, raw in items:
            await self._pickup(keys=[self.keys.flag(job_id), processing], args=[raw],
                               client=pipe)
        return [bool(x) for x in await pipe.execute()]

    async def publish(self, items: Sequence[Publish]) -> list[bool]:
        """Write results (one round trip for all). True where a result was written."""
        if not items:
            return []
        if len(items) == 1:
            p = items[0]
            return [bool(await self._publish(keys=self._pkeys(p), args=self._pargs(p)))]
        pipe = self.r.pipeline(transaction=False)
        for p in items:
            await self._publish(keys=self._pkeys(p), args=self._pargs(p), client=pipe)
        return [bool(x) for x in await pipe.execute()]

    def _pkeys(self, p: Publish) -> list[str]:
        return [self.keys.flag(p.job_id), self.keys.result(p.job_id), p.processing]

    def _pargs(self, p: Publish) -> list[Any]:
        return [p.result_json, self.ttl, p.raw if p.raw is not None else b"", p.mode]

    async def publish_run(self, job_id: str, run: int, result_json: str) -> None:
        """A per-run result of a recurring or restarting job: ``result:<id>:<run>``."""
        key = self.keys.run_result(job_id, run)
        pipe = self.r.pipeline(transaction=False)
        pipe.delete(key)
        pipe.rpush(key, result_json)
        pipe.expire(key, self.ttl)
        await pipe.execute()

    async def release(self, processing: str, raw: bytes) -> None:
        await self.r.lrem(processing, 1, raw)

    async def requeue(self, queue: str, processing: str, raw: bytes) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.lpush(queue, raw)
        pipe.lrem(processing, 1, raw)
        await pipe.execute()

    async def processing_items(self, processing: str) -> list[bytes]:
        return list(await self.r.lrange(processing, 0, -1))

    # ------------------------------------------------------------ output records

    async def finish(self, job_id: str, records: Sequence[LogRecord], stream: bool,
                     pub: Publish, now: bool = False) -> bool:
        """A job's last output records and its result, in one round trip (shared with every
        other job that ends in the same turn of the event loop; ``now``: no other is about
        to end, write at once). True if the result was written."""
        if not self.link.connected:
            await self.link.connect()
        return await self.finished(self.submit_finish(job_id, records, stream, pub, now))

    def submit_finish(self, job_id: str, records: Sequence[LogRecord], stream: bool,
                      pub: Publish, now: bool = False) -> asyncio.Future[list[Any]]:
        """:meth:`finish` queued from outside a coroutine (see :meth:`finished`); a link
        that is down gives a future that fails with ConnectionError."""
        cmds = self._record_cmds(job_id, records, stream) if records else []
        cmds.append(PUBLISH.call(self._pkeys(pub), self._pargs(pub)))
        return self.link.submit(cmds, now=now)

    async def finished(self, fut: asyncio.Future[list[Any]]) -> bool:
        """The outcome of a :meth:`submit_finish`: True if the result was written."""
        return bool(self._checked(await fut)[-1])

    async def records(self, job_id: str, records: Sequence[LogRecord], stream: bool) -> None:
        """Append output records to ``log:<id>`` (always) and ``stream:<id>`` (if asked)."""
        if not records:
            return
        await self._fast(self._record_cmds(job_id, records, stream))

    async def _fast(self, cmds: list[list[Any]], now: bool = False) -> list[Any]:
        """Commands of the job hot path over core0's own pipelined RESP link (cheaper than
        redis-py's pipelines, which also ask SCRIPT EXISTS before every script call);
        ``now``: written at once, else at the end of this turn of the event loop."""
        return self._checked(await self.link.execute(cmds, now=now))

    def _checked(self, replies: list[Any]) -> list[Any]:
        for r in replies:
            if isinstance(r, RespError):
                if str(r).startswith("NOSCRIPT"):
                    self.link.close("redis lost core0's scripts")
                    raise ConnectionError(f"redis lost core0's scripts: {r}")
                if str(r).startswith(("MOVED", "ASK", "READONLY", "CLUSTERDOWN", "MASTERDOWN")):
                    # the slot moved (failover, resharding): reconnect, which looks up the
                    # slot's master again
                    self.link.close(f"redis: {r}")
                raise RedisError(str(r))
        return replies

    def _record_cmds(self, job_id: str, records: Sequence[LogRecord],
                     stream: bool) -> list[list[Any]]:
        log_key = self.keys.log(job_id)
        maxlen = self.cfg.bus.log_max
        cmds: list[list[Any]] = [
            ["XADD", log_key, "MAXLEN", "~", maxlen, "*", "record", rec.to_json()]
            for rec in records
        ]
        cmds.append(["EXPIRE", log_key, self.ttl])
        if stream:
            skey = self.keys.stream(job_id)
            cmds.append(["RPUSH", skey, *[r.to_json() for r in records]])
            cmds.append(["LTRIM", skey, -self.cfg.bus.stream_max, -1])
            cmds.append(["EXPIRE", skey, self.cfg.bus.stream_ttl])
        return cmds

    # ------------------------------------------------------------ dead letters, stats

    async def dead_letter(self, queue: str, raw: bytes, reason: str, job_id: str | None) -> None:
        """Keep an unanswerable command (bounded list with TTL) and count it."""
        try:
            text = raw[:4096].decode("utf-8")
            body: dict[str, Any] = {"raw": text}
        except UnicodeDecodeError:
            body = {"raw_b64": base64.b64encode(raw[:4096]).decode()}
        entry = json.dumps(
            {
                "reason": reason,
                "id": job_id,
                "queue": queue,
                "time": time.time(),
                "size": len(raw),
                **body,
            }
        )
        await self._dead(
            keys=[self.keys.dead(queue), self.keys.stats()],
            args=[entry, self.cfg.bus.dead_letter_max, self.cfg.bus.dead_letter_ttl,
                  "dead_letters"],
        )

    async def deliveries(self, job_id: str) -> int:
        """Count one more delivery of a command found in flight at start."""
        key = self.keys.deliveries()
        pipe = self.r.pipeline(transaction=True)
        pipe.hincrby(key, job_id, 1)
        pipe.expire(key, self.cfg.bus.dead_letter_ttl)
        n, _ = await pipe.execute()
        return int(n)

    async def forget_deliveries(self, job_id: str) -> None:
        await self.r.hdel(self.keys.deliveries(), job_id)

    async def exists(self, key: str) -> bool:
        return bool(await self.r.exists(key))

    async def ping(self) -> bool:
        return bool(await self.r.ping())


TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, TimeoutError)
#: error replies of a Redis that will take the write later (full, ACL changed live, a cluster
#: failing over or resharding, loading): retried like a lost connection
RETRY_REPLIES = ("OOM", "NOPERM", "CLUSTERDOWN", "MOVED", "ASK", "TRYAGAIN", "MASTERDOWN",
                 "READONLY", "LOADING", "BUSY")


#: the same, as redis-py raises them (it strips the reply's first word from the message)
RETRY_ERRORS = (OutOfMemoryError, NoPermissionError, ClusterDownError, MovedError, AskError,
                TryAgainError, MasterDownError, ReadOnlyError, BusyLoadingError)


def retryable(e: RedisError) -> bool:
    """The error is one Redis will stop answering (see RETRY_REPLIES)."""
    return isinstance(e, RETRY_ERRORS) or str(e).split(" ", 1)[0] in RETRY_REPLIES


async def retry_forever(what: str, fn: Any, *args: Any, stop: asyncio.Event | None = None) -> Any:
    """Call ``fn(*args)`` until it succeeds, backing off 0.1 s → 5 s on Redis connection errors
    and on the error replies of :data:`RETRY_REPLIES`."""
    backoff = Backoff.retrying(0.1, 5.0)
    while True:
        try:
            return await fn(*args)
        except TRANSIENT as e:
            if stop is not None and stop.is_set():
                raise
            delay = backoff.next()
            log.warning("%s: redis unavailable (%s); retrying in %.1fs", what, e, delay)
            await asyncio.sleep(delay)
        except RedisError as e:
            if not retryable(e) or (stop is not None and stop.is_set()):
                raise
            delay = backoff.next()
            log.warning("%s: redis refused (%s); retrying in %.1fs", what, e, delay)
            await asyncio.sleep(delay)
