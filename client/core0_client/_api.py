"""The one definition of the client API, shared by ``Client`` and ``AsyncClient``.

Every public method is written once, as a generator that yields I/O operations (``Call``:
Redis requests in one round trip; ``Sleep``; ``Blocking``: local file work) and receives
their outcome. ``Client`` drives the generator with blocking sockets and returns the value;
``AsyncClient`` drives the same generator with asyncio and returns an awaitable. The two
therefore cannot drift: they have the same methods, arguments, deadlines, retries and
checks (``tests/unit/test_client_api.py`` asserts the public sets are equal).
"""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

from core0_client._base import DEFAULT_TIMEOUT, WAIT_CHUNK, build, check, decode_json, system_args
from core0_client.errors import (
    AuthError,
    ConnectionError,
    JobNotFoundError,
    ProtocolError,
    ServerError,
    TimeoutError,
)
from core0_client.managers import MANAGERS
from core0_client.protocol import Command, Keys, Level, new_id
from core0_client.replies import parse_record, parse_result
from core0_client.resp import DEFAULT_MAX_BULK, Arg, ErrorReply
from core0_client.transport import clean
from core0_client.url import Endpoint, URLError, parse_url

StreamCallback = Callable[[int, str, int], None]

#: time allowed past a blocking command's own timeout for its (empty) answer to arrive
GRACE = 0.5
#: longest pause between two reads of a result key when the user may not BLMOVE it
POLL_MAX = 0.2
#: seconds to open a connection (TCP + TLS + HELLO), at most
CONNECT_TIMEOUT = 5.0
#: seconds for a non-blocking request (RPUSH, EXISTS…) to be answered, at most
REQUEST_TIMEOUT = 5.0
_AUTH_KINDS = {"NOAUTH", "WRONGPASS", "NOPERM"}
#: error replies of a Redis that will answer soon (retried like a lost connection)
_TRANSIENT_KINDS = {"LOADING", "TRYAGAIN", "MASTERDOWN"}


@dataclass(slots=True)
class Call:
    """Send ``cmds`` in one write, read a reply each, all before ``deadline``."""

    cmds: list[list[Arg]]
    deadline: float


@dataclass(slots=True)
class Sleep:
    seconds: float


@dataclass(slots=True)
class Blocking:
    """Local blocking work (reading or writing a local file)."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]


Op = Call | Sleep | Blocking
Gen = Generator[Op, Any, Any]


def abandon(gen: Gen) -> None:
    """Close a generator whose call was cancelled (its ``finally`` blocks may not do I/O
    any more: their attempt is dropped)."""
    try:
        gen.close()
    except RuntimeError:
        pass


def default_callback(level: int, message: str, flags: int) -> None:
    """Print stdout records to stdout and stderr records to stderr."""
    if level == Level.STDOUT:
        sys.stdout.write(message + "\n")
        sys.stdout.flush()
    elif level == Level.STDERR:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()


def _reply_error(reply: ErrorReply) -> ServerError:
    kind = reply.split(" ", 1)[0]
    cls = AuthError if kind in _AUTH_KINDS else ServerError
    return cls(clean(reply))


def _int(reply: Any, what: str) -> int:
    if isinstance(reply, bool) or not isinstance(reply, int):
        raise ProtocolError(f"{what}: expected an integer reply, got {type(reply).__name__}")
    return reply


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write_file(path: str, data: bytes) -> int:
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def endpoint(host: str, port: int, password: str | None, unix_socket_path: str | None,
             ssl: bool, url: str | None, username: str | None, ssl_ca_certs: str | None,
             ssl_certfile: str | None, ssl_keyfile: str | None,
             ssl_verify: bool) -> Endpoint:
    """The Endpoint of the constructor's arguments: ``url`` first, then the keywords
    (``username``/``password`` given as keywords override the URL's)."""
    if url is not None:
        ep = parse_url(url)
        if username is not None or password is not None:
            ep = Endpoint(**{**ep.__dict__, "username": username or ep.username,
                             "password": password or ep.password})
        return ep
    if not isinstance(port, int) or isinstance(port, bool):
        raise URLError(f"port: expected an integer, got {type(port).__name__}")
    return Endpoint(host=host, port=port, unix_socket_path=unix_socket_path, username=username,
                    password=password, tls=ssl, ca=ssl_ca_certs, cert=ssl_certfile,
                    key=ssl_keyfile, verify=ssl_verify)


class ResponseAPI:
    """A handle on a job: wait for its result, follow its output. ``exists`` and ``running``
    are properties (awaitable on ``AsyncResponse``)."""

    def __init__(self, client: ClientAPI, id: str, command: Command | None = None):
        self.client = client
        self.id = id
        #: the command, when this client submitted it (resubmitted after a connection loss)
        self.command = command

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id}>"

    def _drive(self, gen: Gen) -> Any:
        return self.client._drive(gen)

    @property
    def exists(self) -> Any:
        """The job is known: picked up (its flag exists) or finished (result readable)."""
        return self._drive(self._g_exists())

    @property
    def running(self) -> Any:
        """Picked up and not finished (0-core's rule: the flag has no TTL yet)."""
        return self._drive(self._g_running())

    def get(self, timeout: float | None = None) -> Any:
        """Wait for the result (re-readable: it is not consumed). Honours sub-second timeouts.

        Raises TimeoutError at the deadline, JobNotFoundError if the job is unknown to the
        node (and was not submitted by this client), ProtocolError if the node's answer is
        not a valid result."""
        return self._drive(self._g_get(timeout))

    def stream(self, callback: StreamCallback | None = None, timeout: float | None = None) -> Any:
        """Call ``callback(level, message, flags)`` for each output record, from the start,
        until the job ends (any number of readers may do this at once)."""
        return self._drive(self._g_stream(callback, timeout))

    # ------------------------------------------------------------ generators

    def _g_exists(self) -> Gen:
        k = self.client.keys
        n = yield from self.client._one(["EXISTS", k.flag(self.id), k.result(self.id)])
        return bool(_int(n, "EXISTS"))

    def _g_running(self) -> Gen:
        ttl = yield from self.client._one(["TTL", self.client.keys.flag(self.id)])
        return _int(ttl, "TTL") == -1

    def _g_get(self, timeout: float | None) -> Gen:
        c = self.client
        timeout = c.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        key = c.keys.result(self.id)
        checked = self.command is not None
        lost = False
        delay = 0.05
        poll = 0.01
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {self.id}: no result within {timeout:g}s")
            try:
                if not checked:
                    if not (yield from self._g_exists_by(deadline)):
                        raise JobNotFoundError(f"no such job: {self.id}")
                    checked = True
                if lost and self.command is not None:
                    # the node may have lost the command with its Redis: resubmit (same id,
                    # a duplicate never runs twice)
                    if not (yield from self._g_exists_by(deadline)):
                        yield from c._one(["RPUSH", c.queue_key, self.command.to_json()],
                                          deadline)
                lost = False
                if c._read_only_results:
                    raw = yield from c._one(["LINDEX", key, -1], deadline, retry=False)
                    if raw is None:
                        yield Sleep(min(poll, max(0.0, deadline - time.monotonic())))
                        poll = min(poll * 2, POLL_MAX)
                        continue
                else:
                    chunk = max(0.01, min(left, WAIT_CHUNK))
                    raw = yield from c._one(
                        ["BLMOVE", key, key, "RIGHT", "RIGHT", round(chunk, 3)],
                        time.monotonic() + chunk + GRACE, blocking=True, retry=False)
            except AuthError as e:
                if c._read_only_results or e.kind != "NOPERM":
                    raise
                # an ACL user that may only read result keys: poll (LINDEX) instead of the
                # blocking BLMOVE onto itself, which writes
                c._read_only_results = True
                continue
            except TimeoutError:
                continue  # the loop's own check raises once the caller's deadline is reached
            except ConnectionError:
                if not c._may_retry(deadline, delay):
                    raise
                yield Sleep(delay)
                delay = min(delay * 2, 2.0)
                lost = True
                continue
            if raw is not None:
                return parse_result(raw, self.id)

    def _g_exists_by(self, deadline: float) -> Gen:
        k = self.client.keys
        n = yield from self.client._one(["EXISTS", k.flag(self.id), k.result(self.id)], deadline)
        return bool(_int(n, "EXISTS"))

    def _g_stream(self, callback: StreamCallback | None, timeout: float | None) -> Gen:
        c = self.client
        cb = callback or default_callback
        deadline = time.monotonic() + (c.timeout if timeout is None else timeout)
        log_key = c.keys.log(self.id)
        last = "0-0"
        delay = 0.05
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {self.id}: output did not end within the timeout")
            block = min(left, 2.0)
            try:
                resp = yield from c._one(
                    ["XREAD", "COUNT", 1000, "BLOCK", int(max(10, block * 1000)), "STREAMS",
                     log_key, last], time.monotonic() + block + GRACE, blocking=True,
                    retry=False)
                if resp is None:
                    ended = yield from c._pipe([["EXISTS", c.keys.result(self.id)],
                                                ["EXISTS", log_key]], deadline)
                    if _int(ended[0], "EXISTS") and not _int(ended[1], "EXISTS"):
                        return None
                    continue
            except TimeoutError:
                continue
            except ConnectionError:
                if not c._may_retry(deadline, delay):
                    raise
                yield Sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            for entry_id, fields in _xread_entries(resp):
                last = entry_id
                rec = parse_record(fields.get(b"record"))
                if rec.eof:
                    return None
                cb(rec.level, rec.message, rec.flags)


def _xread_entries(resp: Any) -> list[tuple[str, dict[bytes, Any]]]:
    """The entries of an XREAD reply on one stream, shape-checked."""
    bad = ProtocolError("XREAD: malformed reply")
    if not isinstance(resp, list) or len(resp) != 1:
        raise bad
    stream = resp[0]
    if not isinstance(stream, list) or len(stream) != 2 or not isinstance(stream[1], list):
        raise bad
    out = []
    for entry in stream[1]:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], bytes)
                and isinstance(entry[1], list) and len(entry[1]) % 2 == 0):
            raise bad
        try:
            eid = entry[0].decode("ascii")
        except UnicodeDecodeError:
            raise bad from None
        flat = entry[1]
        out.append((eid, dict(zip(flat[::2], flat[1::2], strict=True))))
    return out


class CommandAPI:
    """The command-level API shared by a node's client and a container's client
    (``c.container.client(id)``): ``raw``, ``sync``, ``json``, ``system``, ``bash``,
    ``upload``/``download``. A subclass supplies ``_g_raw`` (how a command is submitted)
    and ``_drive``."""

    def _drive(self, gen: Gen) -> Any:
        raise NotImplementedError

    def _g_raw(self, command: str, arguments: dict[str, Any] | None = None,
               **kw: Any) -> Gen:
        raise NotImplementedError
        yield  # pragma: no cover - a generator


    def _g_json(self, command: str, arguments: dict[str, Any] | None = None,
                timeout: float | None = None, **kw: Any) -> Gen:
        resp = yield from self._g_raw(command, arguments, **kw)
        return decode_json((yield from resp._g_get(timeout)))

    def _g_sync(self, command: str, arguments: dict[str, Any] | None, timeout: float | None,
                **kw: Any) -> Gen:
        resp = yield from self._g_raw(command, arguments, **kw)
        return check((yield from resp._g_get(timeout)))

    def _g_upload(self, remote: str, data: bytes, mode: str) -> Gen:
        fd = yield from self._g_json("filesystem.open", {"file": remote, "mode": mode})
        try:
            for off in range(0, len(data), 512 * 1024):
                block = base64.b64encode(data[off : off + 512 * 1024]).decode()
                yield from self._g_json("filesystem.write", {"fd": fd, "block": block})
        finally:
            yield from self._g_json("filesystem.close", {"fd": fd})
        return len(data)

    def _g_download(self, remote: str) -> Gen:
        fd = yield from self._g_json("filesystem.open", {"file": remote, "mode": "r"})
        parts = []
        try:
            while True:
                block = yield from self._g_json("filesystem.read", {"fd": fd})
                if not isinstance(block, str):
                    raise ProtocolError("filesystem.read: expected a base64 string")
                try:
                    raw = base64.b64decode(block, validate=True)
                except ValueError:
                    raise ProtocolError("filesystem.read: invalid base64") from None
                if not raw:
                    break
                parts.append(raw)
        finally:
            yield from self._g_json("filesystem.close", {"fd": fd})
        return b"".join(parts)

    def _g_upload_file(self, remote: str, local: str) -> Gen:
        data = yield Blocking(_read_file, (local,))
        return (yield from self._g_upload(remote, data, "w"))

    def _g_download_file(self, remote: str, local: str) -> Gen:
        data = yield from self._g_download(remote)
        return (yield Blocking(_write_file, (local, data)))

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
    ) -> Any:
        """Submit a command; returns its Response at once."""
        return self._drive(self._g_raw(
            command, arguments, queue=queue, max_time=max_time, stream=stream, tags=tags, id=id,
            recurring_period=recurring_period, max_restart=max_restart))

    def sync(self, command: str, arguments: dict[str, Any] | None = None,
             timeout: float | None = None, **kw: Any) -> Any:
        """Submit and wait; raise ResultError unless SUCCESS."""
        return self._drive(self._g_sync(command, arguments, timeout, **kw))

    def json(self, command: str, arguments: dict[str, Any] | None = None,
             timeout: float | None = None, **kw: Any) -> Any:
        """Submit, wait, and return the decoded level-20 data."""
        return self._drive(self._g_json(command, arguments, timeout, **kw))

    def system(self, cmdline: str | Sequence[str], dir: str = "", stdin: str = "",
               env: dict[str, str] | None = None, **kw: Any) -> Any:
        """Run a program (the command line is split with shlex; no shell runs it)."""
        return self.raw("core.system", system_args(cmdline, dir, stdin, env), **kw)

    def bash(self, script: str, stdin: str = "", **kw: Any) -> Any:
        """Run a shell script (admin queues only)."""
        return self.raw("bash", {"script": script, "stdin": stdin}, **kw)

    def upload(self, remote: str, data: bytes, mode: str = "w") -> Any:
        """Write ``data`` to a file on the node (512 KiB blocks)."""
        return self._drive(self._g_upload(remote, bytes(data), mode))

    def download(self, remote: str) -> Any:
        """Read a whole file from the node."""
        return self._drive(self._g_download(remote))

    def upload_file(self, remote: str, local: str) -> Any:
        """Copy a local file to the node."""
        return self._drive(self._g_upload_file(remote, local))

    def download_file(self, remote: str, local: str) -> Any:
        """Copy a file of the node to a local file."""
        return self._drive(self._g_download_file(remote, local))


class ClientAPI(CommandAPI):
    """A node's command bus, ``Client`` or ``AsyncClient``.

    ``Client(host, port, password=None, unix_socket_path=None, ssl=False, *, url=None,
    username=None, …)``; ``url`` is ``redis://user:pass@host:port/``, ``rediss://…?ca=…``
    or ``unix:///path`` (see ``core0_client.url``). Every call has a deadline: connecting
    takes at most ``connect_timeout``, a request at most ``request_timeout`` (both capped
    by ``timeout``), reconnecting after a lost connection at most ``timeout``, and ``get``
    waits its own timeout (default ``timeout``). ``prefix`` and ``queue`` select a node
    and queue on a shared Redis; ``max_reply_bytes`` bounds one reply."""

    keys: Keys
    queue_key: str
    endpoint: Endpoint
    _response_class: type[ResponseAPI] = ResponseAPI

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        password: str | None = None,
        unix_socket_path: str | None = None,
        ssl: bool = False,
        *,
        url: str | None = None,
        username: str | None = None,
        ssl_ca_certs: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        ssl_verify: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
        prefix: str = "",
        queue: str = "default",
        retries: int = 20,
        max_reply_bytes: int = DEFAULT_MAX_BULK,
        id_prefix: str | None = None,
    ):
        self.timeout = float(timeout)
        self.retries = retries
        self.request_timeout = min(float(request_timeout), self.timeout)
        self.endpoint = endpoint(host, port, password, unix_socket_path, ssl, url, username,
                                 ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_verify)
        self.keys = Keys(prefix)
        self.queue_key = self.keys.queue(queue)
        #: prefix of the ids this client makes: ``<queue>.`` on any queue but ``default``
        #: (a node's private queues require it; on other queues it is just part of the id)
        self.id_prefix = f"{queue}." if id_prefix is None and queue != "default" else (
            id_prefix or "")
        #: the ACL user may read result keys but not BLMOVE them: poll
        self._read_only_results = False
        self._open_pool(max_reply_bytes, min(connect_timeout, self.timeout))
        for name, cls in MANAGERS.items():
            setattr(self, name, cls(self))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.endpoint.display()} queue={self.queue_key!r}>"

    # ------------------------------------------------------------ driver hooks

    def _open_pool(self, max_bulk: int, connect_timeout: float) -> None:
        raise NotImplementedError

    def _drive(self, gen: Gen) -> Any:
        raise NotImplementedError

    def _connected_once(self) -> bool:
        raise NotImplementedError

    # ------------------------------------------------------------ request helpers

    def _may_retry(self, deadline: float, delay: float) -> bool:
        """After a lost connection: retry while the deadline allows, if the node was ever
        reached (a node that never answered is reported at once)."""
        return self._connected_once() and time.monotonic() + delay < deadline

    def _pipe(self, cmds: list[list[Arg]], deadline: float | None = None,
              blocking: bool = False, retry: bool = True) -> Gen:
        """Replies of ``cmds`` (one round trip), retried over lost connections until the
        deadline (default: ``timeout`` from now); each attempt is bounded by
        ``request_timeout`` unless ``blocking`` (then by the deadline, which the caller
        sets to the command's own timeout plus GRACE). An error reply raises
        ServerError/AuthError."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        delay = 0.05
        for attempt in range(self.retries + 1):
            attempt_deadline = deadline if blocking else min(
                deadline, time.monotonic() + self.request_timeout + len(cmds) / 1000)
            try:
                replies = yield Call(cmds, attempt_deadline)
                if not isinstance(replies, list) or len(replies) != len(cmds):
                    raise ProtocolError("wrong number of replies")
                busy = next((r for r in replies if isinstance(r, ErrorReply)
                             and r.split(" ", 1)[0] in _TRANSIENT_KINDS), None)
                if busy is not None:  # a restarted Redis loading its AOF: wait for it
                    raise ConnectionError(f"the node's Redis is not ready: {clean(busy)}")
                break
            except ConnectionError:
                if not retry or attempt == self.retries or not self._may_retry(deadline, delay):
                    raise
                yield Sleep(delay)
                delay = min(delay * 2, 2.0)
        for r in replies:
            if isinstance(r, ErrorReply):
                raise _reply_error(r)
        return replies

    def _one(self, cmd: list[Arg], deadline: float | None = None,
             blocking: bool = False, retry: bool = True) -> Gen:
        return (yield from self._pipe([cmd], deadline, blocking, retry))[0]

    def _g_push(self, cmds: Sequence[Command]) -> Gen:
        replies = yield from self._pipe([["RPUSH", self.queue_key, c.to_json()] for c in cmds])
        for r in replies:
            _int(r, "RPUSH")

    def _g_raw(self, command: str, arguments: dict[str, Any] | None = None,
               **kw: Any) -> Gen:
        if self.id_prefix and kw.get("id") is None:
            kw["id"] = self.id_prefix + new_id()
        cmd = build(command, arguments, **kw)
        yield from self._g_push([cmd])
        return self._response_class(self, cmd.id, cmd)

    def _g_submit_many(self, commands: Sequence[Command]) -> Gen:
        yield from self._g_push(commands)
        return [self._response_class(self, c.id, c) for c in commands]

    def _g_ping(self) -> Gen:
        return str((yield from self._g_json("core.ping")))

    # ------------------------------------------------------------ API

    def submit_many(self, commands: Sequence[Command]) -> Any:
        """Submit many commands in one round trip (pipelined); returns their Responses."""
        return self._drive(self._g_submit_many(list(commands)))

    def response_for(self, id: str) -> Any:
        """A handle on a job submitted elsewhere (e.g. before a restart)."""
        return self._response_class(self, id)

    def ping(self) -> Any:
        """``core.ping``: 'PONG <version>'."""
        return self._drive(self._g_ping())

    def subscribe(self, job_id: str, id: str | None = None) -> Any:
        """A job relaying another job's output (read it with ``.stream()``)."""
        return self.raw("core.subscribe", {"id": job_id}, id=id, stream=True)

    def commands(self) -> Any:
        """Every command of the node, with its role and argument schema."""
        return self.json("core.commands")
