"""The synchronous client (redis-py)."""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core0_client._base import (
    DEFAULT_TIMEOUT,
    WAIT_CHUNK,
    ClientBase,
    build,
    check,
    decode_json,
    system_args,
)
from core0_client.errors import JobNotFoundError, TimeoutError
from core0_client.protocol import Command, Level, LogRecord, Result

_TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError)

StreamCallback = Callable[[int, str, int], None]


def default_callback(level: int, message: str, flags: int) -> None:
    if level == Level.STDOUT:
        sys.stdout.write(message + "\n")
        sys.stdout.flush()
    elif level == Level.STDERR:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()


class Response:
    """A handle on a job: wait for its result, follow its output."""

    def __init__(self, client: Client, id: str, command: Command | None = None):
        self.client = client
        self.id = id
        #: the command, when this client submitted it (resubmitted after a connection loss)
        self.command = command

    def __repr__(self) -> str:
        return f"<Response {self.id}>"

    @property
    def exists(self) -> bool:
        """The job is known: picked up (its flag exists) or finished (result readable)."""
        k = self.client.keys
        return bool(self.client._do(lambda r: r.exists(k.flag(self.id), k.result(self.id))))

    @property
    def running(self) -> bool:
        """Picked up and not finished (0-core's rule: the flag has no TTL yet)."""
        return self.client._do(lambda r: r.ttl(self.client.keys.flag(self.id))) == -1

    def get(self, timeout: float | None = None) -> Result:
        """Wait for the result (re-readable: it is not consumed). Honours sub-second timeouts.

        Raises TimeoutError at the deadline, JobNotFoundError if the job is unknown to the
        node (and was not submitted by this client)."""
        c = self.client
        timeout = c.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        key = c.keys.result(self.id)
        checked = self.command is not None
        while True:
            try:
                if not checked:
                    if not c.redis.exists(c.keys.flag(self.id), key):
                        raise JobNotFoundError(f"no such job: {self.id}")
                    checked = True
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"job {self.id}: no result within {timeout:g}s")
                chunk = max(0.01, min(left, WAIT_CHUNK))
                raw = c.redis.blmove(key, key, chunk, "RIGHT", "RIGHT")  # type: ignore[arg-type]
                if raw is not None:
                    return Result.from_json(raw)
            except _TRANSIENT:
                c._reconnected(deadline)
                self._after_reconnect()

    def _after_reconnect(self) -> None:
        """After a lost connection: if the node knows nothing of the job, submit it again
        with the same id (duplicates never run twice)."""
        c = self.client
        if self.command is None:
            return
        known = c._do(lambda r: r.exists(c.keys.flag(self.id), c.keys.result(self.id)))
        if not known:
            c._push(self.command)

    def stream(self, callback: StreamCallback | None = None, timeout: float | None = None) -> None:
        """Call ``callback(level, message, flags)`` for each output record, from the start,
        until the job ends (any number of readers may do this at once)."""
        c = self.client
        cb = callback or default_callback
        deadline = time.monotonic() + (c.timeout if timeout is None else timeout)
        log_key = c.keys.log(self.id)
        last = "0-0"
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {self.id}: output did not end within the timeout")
            try:
                resp: Any = c.redis.xread({log_key: last}, count=1000,
                                     block=int(max(10, min(left, 2.0) * 1000)))
            except _TRANSIENT:
                c._reconnected(deadline)
                continue
            if not resp:
                if c._do(lambda r: r.exists(c.keys.result(self.id))) and not c._do(
                    lambda r: r.exists(log_key)
                ):
                    return
                continue
            for _key, entries in resp:
                for entry_id, fields in entries:
                    last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    rec = LogRecord.from_json(fields[b"record"])
                    if rec.eof:
                        return
                    cb(rec.level, rec.message, rec.flags)


class JSONResponse(Response):
    def get(self, timeout: float | None = None) -> Any:  # type: ignore[override]
        return decode_json(super().get(timeout))


class Client(ClientBase):
    """A node's command bus. ``Client(host, port, password=None, unix_socket_path=None,
    ssl=False)``; ``prefix`` and ``queue`` select a node and queue on a shared Redis."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        password: str | None = None,
        unix_socket_path: str | None = None,
        ssl: bool = False,
        *,
        username: str | None = None,
        ssl_ca_certs: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        ssl_verify: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        prefix: str = "",
        queue: str = "default",
        retries: int = 20,
    ):
        self.timeout = timeout
        self.retries = retries
        self._init_common(prefix, queue)
        kw = self._connection_kwargs(host, port, password, username, unix_socket_path, ssl,
                                     ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_verify, 5.0)
        self.redis = redis.Redis(**kw)

    def close(self) -> None:
        self.redis.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ plumbing

    def _reconnected(self, deadline: float | None = None) -> None:
        """Wait (backing off) until Redis answers again."""
        delay = 0.05
        for _ in range(self.retries * 4):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("redis unreachable until the deadline")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            try:
                self.redis.ping()
                return
            except _TRANSIENT:
                continue
        raise ConnectionError("redis unreachable")

    def _do(self, fn: Callable[[redis.Redis], Any]) -> Any:
        for attempt in range(self.retries):
            try:
                return fn(self.redis)
            except _TRANSIENT:
                if attempt == self.retries - 1:
                    raise
                self._reconnected()
        return None

    def _push(self, cmd: Command) -> None:
        data = cmd.to_json()
        self._do(lambda r: r.rpush(self.queue_key, data))

    # ------------------------------------------------------------ API

    def raw(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        queue: str | None = None,
        max_time: int | None = None,
        stream: bool = False,
        tags: Sequence[str] | None = None,
        id: str | None = None,
        recurring_period: int | None = None,
        max_restart: int | None = None,
    ) -> Response:
        """Submit a command; returns its Response at once."""
        cmd = build(command, arguments, queue=queue, max_time=max_time, max_restart=max_restart,
                    recurring_period=recurring_period, stream=stream, tags=tags, id=id)
        self._push(cmd)
        return Response(self, cmd.id, cmd)

    def submit_many(self, commands: Sequence[Command]) -> list[Response]:
        """Submit many commands in one round trip (pipelined)."""
        def go(r: redis.Redis) -> None:
            pipe = r.pipeline(transaction=False)
            for c in commands:
                pipe.rpush(self.queue_key, c.to_json())
            pipe.execute()
        self._do(go)
        return [Response(self, c.id, c) for c in commands]

    def response_for(self, id: str) -> Response:
        """A handle on a job submitted elsewhere (e.g. before a restart)."""
        return Response(self, id)

    def sync(self, command: str, arguments: dict[str, Any] | None = None,
             timeout: float | None = None, **kw: Any) -> Result:
        """Submit and wait; raise ResultError unless SUCCESS."""
        return check(self.raw(command, arguments, **kw).get(timeout))

    def json(self, command: str, arguments: dict[str, Any] | None = None,
             timeout: float | None = None, **kw: Any) -> Any:
        """Submit, wait, and return the decoded level-20 data."""
        return decode_json(self.raw(command, arguments, **kw).get(timeout))

    def ping(self) -> str:
        return str(self.json("core.ping"))

    def system(self, cmdline: str | Sequence[str], dir: str = "", stdin: str = "",
               env: dict[str, str] | None = None, **kw: Any) -> Response:
        """Run a program (the command line is split with shlex; no shell runs it)."""
        return self.raw("core.system", system_args(cmdline, dir, stdin, env), **kw)

    def bash(self, script: str, stdin: str = "", **kw: Any) -> Response:
        """Run a shell script (admin queues only)."""
        return self.raw("bash", {"script": script, "stdin": stdin}, **kw)

    def subscribe(self, job_id: str, id: str | None = None) -> Response:
        """A job relaying another job's output (read it with ``.stream()``)."""
        return self.raw("core.subscribe", {"id": job_id}, id=id, stream=True)

    def commands(self) -> Any:
        return self.json("core.commands")

    def upload(self, remote: str, data: bytes, mode: str = "w") -> int:
        """Write ``data`` to a file on the node (512 KiB blocks)."""
        fd = self.json("filesystem.open", {"file": remote, "mode": mode})
        try:
            for off in range(0, len(data), 512 * 1024):
                block = base64.b64encode(data[off : off + 512 * 1024]).decode()
                self.json("filesystem.write", {"fd": fd, "block": block})
        finally:
            self.json("filesystem.close", {"fd": fd})
        return len(data)

    def download(self, remote: str) -> bytes:
        """Read a whole file from the node."""
        fd = self.json("filesystem.open", {"file": remote, "mode": "r"})
        parts = []
        try:
            while True:
                block = base64.b64decode(self.json("filesystem.read", {"fd": fd}))
                if not block:
                    break
                parts.append(block)
        finally:
            self.json("filesystem.close", {"fd": fd})
        return b"".join(parts)

    def upload_file(self, remote: str, local: str) -> int:
        with open(local, "rb") as f:
            return self.upload(remote, f.read())

    def download_file(self, remote: str, local: str) -> int:
        data = self.download(remote)
        with open(local, "wb") as f:
            f.write(data)
        return len(data)
