"""The front: 0-core's redis-proxy in core0's place (``core0 front``, supervised by the shim).

0-core served its clients through a small proxy on port 6379: TLS, and the ledis-era command
names ``LKEYEXISTS``/``LTTL`` renamed to Redis's ``EXISTS``/``TTL``. PyPI's ``0-core-client``
(1.1.0a8) still needs both: it connects with ``ssl=True`` and reads results with those names.
redis-server cannot alias a command (``rename-command`` renames, it does not add a second
name) and a module needs ``redismodule.h``, which no Debian package ships, so the front is a
proxy, as 0-core's was — but a thin one:

* one upstream connection to the node's Redis (its unix socket) per client connection, so
  the client's own ``AUTH`` reaches Redis and the ACL users apply exactly as to a direct
  client (the front holds no credential and has no privilege of its own);
* requests are parsed with hiredis' RESP reader (arrays of bulk strings, what every client
  sends); only a request named ``LKEYEXISTS`` or ``LTTL`` is re-encoded, every other request
  and every reply passes through as the bytes received (pipelining, blocking commands and
  RESP3 need nothing special);
* a request larger than ``max_request`` bytes (declared or buffered), an inline command or
  anything that is not an array of bulk strings is refused with a Redis-style error and the
  connection is closed; at most ``max_clients`` connections;
* until a client has authenticated (where Redis's ``default`` user needs a password), its
  requests are held to Redis's own limits for unauthenticated clients (10 arguments of
  16 KiB, CVE-2021-32675) by a strict parser of their own, nothing after an ``AUTH`` is read
  before Redis has answered it, and a client that has not authenticated within
  ``AUTH_TIMEOUT`` is disconnected: a proxy that buffered 8 MiB for anyone would undo that
  protection (40 such connections cost the front 700 MB before);
* while the node is *closed* (no credential: Redis's ``default`` user has no password) it
  serves loopback only, as redis-server does (docs/security.md); it follows live changes of
  the ACL file (``core0 user add``/``remove``) by re-binding.

Nothing a client sends is logged (``AUTH`` carries passwords): only connection counts and
errors without payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import ssl
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hiredis

if TYPE_CHECKING:
    from core0.config import Config

log = logging.getLogger("core0.front")

#: request names of 0-core's ledis era → Redis's names
RENAMED = {b"LKEYEXISTS": b"EXISTS", b"LTTL": b"TTL"}
MAX_REQUEST = 8 << 20
MAX_CLIENTS = 1000
HANDSHAKE_TIMEOUT = 10.0
LOOPBACK = "127.0.0.1"
CHUNK = 65536
PROTOCOL = "Protocol error: the front takes RESP arrays of bulk strings only (no inline commands)"
#: Redis's limits for a client that has not authenticated (networking.c, CVE-2021-32675)
PREAUTH_ARGS = 10
PREAUTH_BULK = 16384
#: seconds a client has to authenticate (where a password is needed) before it is disconnected
AUTH_TIMEOUT = 10.0
#: Redis's own bound on a request's argument count ("invalid multibulk length")
MAX_ARGS = 1024 * 1024


class Refused(Exception):
    """A request the front does not forward; the text is sent as ``-ERR <text>``.
    ``before``: the complete requests that came before it (forwarded, as Redis would run
    them)."""

    def __init__(self, text: str, before: bytes = b""):
        super().__init__(text)
        self.before = before


def _encode(args: list[bytes]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def declared_size(buf: bytes | bytearray, start: int, limit: int) -> int:
    """The size a partial request at ``buf[start:]`` announces so far (its header and every
    bulk header seen): lets a huge ``$<n>`` be refused before its data arrives."""
    end = buf.find(b"\r\n", start)
    if end < 0 or end - start > 21 or buf[start:start + 1] != b"*":
        return len(buf) - start
    try:
        count = int(buf[start + 1:end])
    except ValueError:
        return len(buf) - start
    pos, size = end + 2, end + 2 - start
    for _ in range(max(count, 0)):
        end = buf.find(b"\r\n", pos, pos + 24)
        if end < 0 or buf[pos:pos + 1] != b"$":
            break
        try:
            n = int(buf[pos + 1:end])
        except ValueError:
            break
        size += end + 2 - pos + max(n, 0) + 2
        if size > limit:
            break
        pos = end + 2 + max(n, 0) + 2
    return max(size, len(buf) - start)


def _header(buf: bytes | bytearray, pos: int, mark: bytes) -> tuple[int, int] | None:
    """The header line ``<mark><n>\\r\\n`` at ``buf[pos:]``: (n, where its line ends), None
    while incomplete; :class:`Refused` unless ``n`` is a canonical non-negative integer (no
    sign, no leading zero, as hiredis and Redis read them)."""
    end = buf.find(b"\r\n", pos, pos + 24)
    if end < 0:
        if len(buf) - pos >= 24 or buf[pos:pos + 1] not in (mark, b""):
            raise Refused(PROTOCOL)
        return None
    digits = bytes(buf[pos + 1:end])
    if (buf[pos:pos + 1] != mark or not digits.isdigit()
            or (len(digits) > 1 and digits[0:1] == b"0")):
        raise Refused(PROTOCOL)
    return int(digits), end + 2


def preauth_request(buf: bytes | bytearray, pos: int) -> tuple[list[bytes], int] | None:
    """The request of a client that has not authenticated at ``buf[pos:]``: its arguments
    and where it ends, or None while it is incomplete. Strict RESP (an array of at most
    ``PREAUTH_ARGS`` bulk strings of at most ``PREAUTH_BULK`` bytes each), as Redis holds such
    a client; anything else raises :class:`Refused` before more of it is buffered."""
    if (head := _header(buf, pos, b"*")) is None:
        return None
    count, at = head
    if count < 1:
        raise Refused(PROTOCOL)
    if count > PREAUTH_ARGS:
        raise Refused("Protocol error: unauthenticated multibulk length (the front, as Redis, "
                      f"takes at most {PREAUTH_ARGS} arguments before AUTH)")
    args: list[bytes] = []
    for _ in range(count):
        if (head := _header(buf, at, b"$")) is None:
            return None
        size, at = head
        if size > PREAUTH_BULK:
            raise Refused("Protocol error: unauthenticated bulk length (the front, as Redis, "
                          f"takes at most {PREAUTH_BULK} bytes per argument before AUTH)")
        if len(buf) < at + size + 2:
            return None
        if buf[at + size:at + size + 2] != b"\r\n":
            raise Refused(PROTOCOL)
        args.append(bytes(buf[at:at + size]))
        at += size + 2
    return args, at


def _is_auth(args: list[bytes]) -> bool:
    """``AUTH …`` or ``HELLO <ver> … AUTH user pass …``: a request that may authenticate."""
    name = args[0].upper()
    return name == b"AUTH" or (name == b"HELLO" and any(a.upper() == b"AUTH" for a in args[2:]))


class RequestStream:
    """Client bytes in, the bytes to send to Redis out (requests renamed where needed).

    ``authed=False`` (Redis's ``default`` user needs a password): until Redis has accepted an
    ``AUTH`` (or ``HELLO … AUTH``) of this client, requests are parsed by
    :func:`preauth_request` under Redis's unauthenticated limits, the replies to them are
    read too (:meth:`replies`), and nothing after an ``AUTH`` is parsed before its reply is in
    (:attr:`waiting`; :meth:`resume` then goes on). Afterwards hiredis' reader takes over."""

    def __init__(self, max_request: int = MAX_REQUEST, authed: bool = True):
        self.reader = hiredis.Reader()
        self.max_request = max_request
        #: bytes fed to the reader and not yet forwarded (the start of a partial request)
        self.pending = bytearray()
        self.requests = 0
        self.renamed = 0
        self.authed = authed
        #: before authentication: bytes received and not yet forwarded
        self.held = bytearray()
        #: before authentication: the requests forwarded and not yet answered (True: an AUTH)
        self.inflight: deque[bool] = deque()
        self._replies: hiredis.Reader | None = None if authed else hiredis.Reader()

    @property
    def waiting(self) -> bool:
        """An ``AUTH`` of an unauthenticated client is in flight: read nothing more."""
        return not self.authed and any(self.inflight)

    def feed(self, data: bytes) -> bytes:
        """Take ``data`` from the client; return what to forward (complete requests only)."""
        if not self.authed:
            self.held += data
            return self.resume()
        return self._feed(data)

    def resume(self) -> bytes:
        """What can be forwarded of the held bytes now (after an ``AUTH`` was answered)."""
        if self.authed:
            data, self.held = bytes(self.held), bytearray()
            return self._feed(data) if data else b""
        held, pos, out = self.held, 0, []
        try:
            while not self.waiting and (got := preauth_request(held, pos)) is not None:
                args, end = got
                new = RENAMED.get(args[0].upper())
                out.append(_encode([new, *args[1:]]) if new else bytes(held[pos:end]))
                self.renamed += new is not None
                self.inflight.append(_is_auth(args))
                self.requests += 1
                pos = end
        except Refused as e:
            raise Refused(str(e), b"".join(out)) from None
        del held[:pos]
        return b"".join(out)

    def replies(self, data: bytes) -> bool:
        """Redis's replies to this client (passed on as they are): True when one of them
        answered an ``AUTH`` (accepted or not), so that :meth:`resume` may go on."""
        if self.authed or self._replies is None:
            return False
        self._replies.feed(data)
        settled = False
        while self.inflight and (reply := self._replies.gets()) is not False:
            if self.inflight.popleft():
                settled = True
                if not isinstance(reply, hiredis.ReplyError):
                    self.authed = True
                    self.inflight.clear()
                    self._replies = None
                    break
        return settled

    def _feed(self, data: bytes) -> bytes:
        pending = self.pending
        pending += data
        out: list[bytes | bytearray] = []
        pos = done = 0  # end of the parsed requests; end of what is already in ``out``
        gets = self.reader.gets
        try:
            self.reader.feed(data)
            while (req := gets()) is not False:
                if type(req) is not list or not req:
                    raise Refused(PROTOCOL, b"".join([*out, pending[done:pos]]))
                # its size on the wire: hiredis accepts only canonical lengths (no sign, no
                # leading zero), so this is exactly the bytes it consumed
                n = 3 + len(str(len(req)))
                for a in req:
                    if type(a) is not bytes:
                        raise Refused(PROTOCOL, b"".join([*out, pending[done:pos]]))
                    n += 5 + len(str(len(a))) + len(a)
                first = req[0]
                if len(first) in (4, 10) and (new := RENAMED.get(first.upper())) is not None:
                    out += (pending[done:pos], _encode([new, *req[1:]]))
                    done = pos + n
                    self.renamed += 1
                pos += n
                self.requests += 1
        except hiredis.ProtocolError:
            raise Refused(PROTOCOL, b"".join([*out, pending[done:pos]])) from None
        except MemoryError:  # hiredis makes a list of the announced length at once
            raise Refused(f"request larger than {self.max_request} bytes refused by the front",
                          b"".join([*out, pending[done:pos]])) from None
        out.append(pending[done:pos])
        del pending[:pos]
        if pending and declared_size(pending, 0, self.max_request) > self.max_request:
            raise Refused(f"request larger than {self.max_request} bytes refused by the front",
                          b"".join(out))
        return b"".join(out)


def ssl_context(cert: str, key: str, ca: str = "", auth_clients: bool = False) -> ssl.SSLContext:
    """The server context: the same files and client-certificate rule as redis-server's."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if auth_clients:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(ca or None)
    return ctx


def _passwordless(aclfile: Path) -> bool | None:
    """Whether Redis's ``default`` user is on without a password, read from the ACL file
    redis-server enforces (None: no such file, or no ``default`` user in it yet)."""
    try:
        text = aclfile.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        words = line.split()
        if words[:2] == ["user", "default"]:
            return "on" in words and "nopass" in words
    return None


def node_closed(aclfile: Path, protected_mode: bool = True) -> bool:
    """True while the node is closed: Redis's ``default`` user needs no password (or the ACL
    file is not there yet)."""
    return protected_mode and _passwordless(aclfile) is not False


def default_needs_auth(aclfile: Path) -> bool:
    """True unless Redis's ``default`` user is on without a password (then every client is
    authenticated from the start, and the front has no reason to hold it to the limits of an
    unauthenticated one); also True while the ACL file cannot tell."""
    return _passwordless(aclfile) is not True


def _loopback(peer: Any) -> bool:
    if not isinstance(peer, tuple) or not peer:
        return True  # a unix socket
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(str(peer[0]).split("%")[0]).is_loopback
    return False


class Front:
    """The listener: accepts clients, pairs each with its own Redis connection."""

    def __init__(self, upstream: str, *, tls: ssl.SSLContext | None = None,
                 max_request: int = MAX_REQUEST, max_clients: int = MAX_CLIENTS,
                 closed: Callable[[], bool] = lambda: False,
                 needs_auth: Callable[[], bool] = lambda: False,
                 auth_timeout: float = AUTH_TIMEOUT):
        self.upstream = upstream
        self.tls = tls
        self.max_request = max_request
        self.max_clients = max_clients
        #: True: only loopback clients are served (the node has no credential)
        self.closed = closed
        #: True: a client must authenticate to Redis (its requests are held to Redis's
        #: unauthenticated limits until it has, and it has ``auth_timeout`` seconds to)
        self.needs_auth = needs_auth
        self.auth_timeout = auth_timeout
        self.clients: set[asyncio.Task[None]] = set()
        self.served = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection (the callback of ``asyncio.start_server``)."""
        task = asyncio.current_task()
        assert task is not None
        self.clients.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError) as e:
            log.debug("client connection ended: %s", type(e).__name__)
        finally:
            self.clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _refuse(self, writer: asyncio.StreamWriter, text: str) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            writer.write(b"-ERR " + text.encode() + b"\r\n")
            await asyncio.wait_for(writer.drain(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if not _loopback(peer) and self.closed():
            return  # closed node: not even a handshake for a remote client
        if self.tls is not None:
            await writer.start_tls(self.tls, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        if len(self.clients) > self.max_clients:
            await self._refuse(writer, "max number of clients reached (front)")
            return
        try:
            up_r, up_w = await asyncio.open_unix_connection(self.upstream)
        except OSError as e:
            log.warning("the node's Redis is not reachable: %s", e.strerror or e)
            await self._refuse(writer, "the node's Redis is not reachable")
            return
        self.served += 1
        stream = RequestStream(self.max_request, authed=not self.needs_auth())
        settled = asyncio.Event()  # an AUTH in flight was answered
        try:
            pipes = [asyncio.create_task(self._requests(reader, writer, up_w, stream, settled)),
                     asyncio.create_task(self._replies(up_r, writer, stream, settled))]
            if not stream.authed:
                pipes.append(asyncio.create_task(self._auth_deadline(writer, stream)))
            done, rest = await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            if pipes[0] in done and pipes[0].exception() is None and pipes[1] in rest:
                # the client finished sending (EOF): let Redis answer what it has, then end
                await asyncio.wait([pipes[1]], timeout=5)
            for t in pipes:
                t.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            up_w.close()
            with contextlib.suppress(Exception):
                await up_w.wait_closed()

    async def _auth_deadline(self, writer: asyncio.StreamWriter, stream: RequestStream) -> None:
        """End a connection that has not authenticated in time (returns only then)."""
        await asyncio.sleep(self.auth_timeout)
        if not stream.authed:
            await self._refuse(writer, "authentication timeout: AUTH first (front)")
            return
        await asyncio.get_running_loop().create_future()  # authenticated: nothing to end

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        up: asyncio.StreamWriter, stream: RequestStream,
                        settled: asyncio.Event) -> None:
        while True:
            if stream.waiting:  # an unauthenticated client's AUTH is in flight
                await settled.wait()
                settled.clear()
                data = b""
            else:
                data = await reader.read(CHUNK)
                if not data:
                    with contextlib.suppress(OSError):
                        if up.can_write_eof():
                            up.write_eof()
                    return
            try:
                out = stream.feed(data) if data else stream.resume()
            except Refused as e:
                # the requests before it run (as Redis would run them); its error may overtake
                # their replies; nothing more goes upstream and the connection ends
                if e.before:
                    up.write(e.before)
                    await up.drain()
                await self._refuse(writer, str(e))
                raise ConnectionAbortedError("refused") from None
            if out:
                up.write(out)
                await up.drain()

    async def _replies(self, up: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       stream: RequestStream, settled: asyncio.Event) -> None:
        while True:
            data = await up.read(CHUNK)
            if not data:
                return
            writer.write(data)
            if stream.replies(data):
                settled.set()
            await writer.drain()

    async def close(self) -> None:
        """End every client connection (each closes its Redis connection)."""
        for t in list(self.clients):
            t.cancel()
        await asyncio.gather(*self.clients, return_exceptions=True)


def _hosts(bind: str) -> list[str]:
    return bind.split() or [LOOPBACK]


async def serve(cfg: Config, stop: asyncio.Event, watch: float = 2.0) -> None:
    """Serve ``cfg``'s front until ``stop`` is set; re-bind when the node opens or closes."""
    r = cfg.redis
    tls = ssl_context(r.tls_cert, r.tls_key, r.tls_ca, r.tls_auth_clients) if r.front_tls else None
    aclfile = cfg.state_dir / "users.acl"
    front = Front(cfg.redis_socket, tls=tls,
                  max_request=max(MAX_REQUEST, 4 * cfg.bus.max_command_bytes),
                  closed=lambda: node_closed(aclfile, r.protected_mode),
                  needs_auth=lambda: default_needs_auth(aclfile))

    def wanted() -> list[str]:
        return [LOOPBACK] if front.closed() else _hosts(r.bind)

    hosts = wanted()
    server = await asyncio.start_server(front.handle, hosts, r.front_port, reuse_address=True,
                                        limit=CHUNK)
    log.info("front: %s on %s port %d for the node's Redis (%s)", "TLS" if tls else "plain TCP",
             " ".join(hosts), r.front_port,
             "closed: loopback only until a credential exists" if hosts == [LOOPBACK] and
             _hosts(r.bind) != [LOOPBACK] else "clients authenticate to Redis")
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), watch)
            now = wanted()
            if now != hosts and not stop.is_set():
                server.close()
                server = await asyncio.start_server(front.handle, now, r.front_port,
                                                    reuse_address=True, limit=CHUNK)
                log.info("front: node %s: now on %s port %d",
                         "closed" if now == [LOOPBACK] else "open", " ".join(now), r.front_port)
                hosts = now
    finally:
        server.close()
        await front.close()
        log.info("front: stopped after %d connections", front.served)


def main(cfg: Config) -> int:
    """``core0 front``: run until SIGTERM/SIGINT."""
    if not cfg.redis.front_port:
        log.error("front: redis.front_port is 0 (off)")
        return 125

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(cfg, stop)

    try:
        asyncio.run(run())
    except (OSError, ssl.SSLError) as e:
        log.error("front: cannot serve: %s", e)
        return 1
    return 0
