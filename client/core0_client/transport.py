"""Connections to a node's Redis, sync flavour, and what both flavours share.

Every request carries an absolute deadline (``time.monotonic()``): connecting, the TLS
handshake, sending and each read are cut to the time left, so nothing waits past it.
Replies go through the bounded RESP parser. A connection that saw any error (timeout,
protocol error, reset) is closed, never reused.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any

from core0_client.errors import (
    AuthError,
    ConnectionError,
    Core0Error,
    ProtocolError,
    TimeoutError,
)
from core0_client.resp import Arg, ErrorReply, Parser, pack
from core0_client.url import Endpoint

builtins_timeout = socket.timeout  # the builtin TimeoutError (ours subclasses it)

#: idle connections kept per client
MAX_IDLE = 16
_AUTH_KINDS = {"WRONGPASS", "NOAUTH", "NOPERM", "AUTH"}


def clean(text: str, limit: int = 200) -> str:
    """A server's message made safe for one line of output."""
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text if len(text) <= limit else text[:limit] + "…"


def ssl_context(ep: Endpoint) -> ssl.SSLContext:
    """TLS client context: verify against ``ep.ca`` (or the system CAs) unless insecure."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ep.ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not ep.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if ep.cert:
        ctx.load_cert_chain(ep.cert, ep.key)
    return ctx


def hello(ep: Endpoint) -> list[Arg]:
    """The handshake: ``HELLO 2`` (a Redis >= 6 speaking RESP2), with AUTH when configured.
    HELLO is allowed to every ACL user, like AUTH."""
    cmd: list[Arg] = ["HELLO", "2"]
    if ep.username or ep.password:
        cmd += ["AUTH", ep.username or "default", ep.password or ""]
    return cmd


def check_hello(reply: Any) -> None:
    if isinstance(reply, ErrorReply):
        kind = reply.split(" ", 1)[0]
        if kind in _AUTH_KINDS or "password" in reply.lower():
            raise AuthError(f"authentication refused: {clean(reply)}")
        raise ProtocolError(f"HELLO refused: {clean(reply)}")
    if not isinstance(reply, list) or len(reply) % 2:
        raise ProtocolError("HELLO: the server's answer is not a Redis handshake")


def left(deadline: float) -> float:
    """Seconds until ``deadline``; TimeoutError when it has passed."""
    t = deadline - time.monotonic()
    if t <= 0:
        raise TimeoutError("deadline reached")
    return t


def where(ep: Endpoint) -> str:
    return ep.display()


def _connect(family: int, addr: Any, deadline: float) -> socket.socket:
    timeout = left(deadline)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(addr)
    except BaseException:
        sock.close()
        raise
    return sock


def _resolve(host: str, port: int, deadline: float) -> list[tuple[int, Any]]:
    """getaddrinfo, bounded by the deadline (it runs in a daemon thread: a stuck resolver
    is left behind, not waited for)."""
    try:  # an address needs no resolver
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return [(socket.AF_INET6 if ":" in host else socket.AF_INET, (host, port))]
    except OSError:
        pass
    out: list[Any] = []
    done = threading.Event()

    def run() -> None:
        try:
            out.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as e:
            out.append(e)
        done.set()

    threading.Thread(target=run, daemon=True, name="core0-client-resolve").start()
    if not done.wait(left(deadline)):
        raise TimeoutError(f"resolving {host}: timed out")
    if isinstance(out[0], OSError):
        raise out[0]
    return [(family, addr) for family, _, _, _, addr in out[0]]


def _connect_tcp(host: str, port: int, deadline: float) -> socket.socket:
    error: OSError | None = None
    for family, addr in _resolve(host, port, deadline):
        try:
            return _connect(family, addr, deadline)
        except builtins_timeout:
            raise
        except OSError as e:
            error = e
    raise error or OSError(f"no address for {host}")


class Connection:
    """One blocking connection (TCP, TLS or unix socket)."""

    def __init__(self, ep: Endpoint, max_bulk: int):
        self.ep = ep
        self.parser = Parser(max_bulk)
        self.sock: socket.socket | None = None

    def open(self, deadline: float) -> None:
        ep = self.ep
        try:
            if ep.unix_socket_path is not None:
                sock = _connect(socket.AF_UNIX, ep.unix_socket_path, deadline)
            else:
                sock = _connect_tcp(ep.host, ep.port, deadline)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                if ep.tls:
                    try:
                        sock.settimeout(left(deadline))
                        sock = ssl_context(ep).wrap_socket(
                            sock, server_hostname=ep.server_name or ep.host)
                    except BaseException:
                        sock.close()
                        raise
        except Core0Error:
            raise
        except builtins_timeout as e:
            raise TimeoutError(f"connecting to {where(ep)}: timed out") from e
        except ssl.SSLError as e:
            raise ConnectionError(f"TLS with {where(ep)} failed: {clean(str(e))}") from None
        except OSError as e:
            raise ConnectionError(f"cannot connect to {where(ep)}: {e.strerror or e}") from None
        self.sock = sock
        try:
            check_hello(self.request([hello(ep)], deadline)[0])
        except BaseException:
            self.close()
            raise

    def request(self, cmds: Sequence[Sequence[Arg]], deadline: float) -> list[Any]:
        """Send ``cmds`` in one write and read one reply per command."""
        sock = self.sock
        if sock is None:
            raise ConnectionError("connection closed")
        try:
            sock.settimeout(left(deadline))
            sock.sendall(b"".join(pack(c) for c in cmds))
            out: list[Any] = []
            while len(out) < len(cmds):
                ok, reply = self.parser.get()
                if ok:
                    out.append(reply)
                    continue
                sock.settimeout(left(deadline))
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise ConnectionError(f"{where(self.ep)} closed the connection")
                self.parser.feed(chunk)
            if self.parser.pending():
                raise ProtocolError("the server sent more than the replies asked for")
            return out
        except Core0Error:
            raise
        except builtins_timeout:
            raise TimeoutError(f"{where(self.ep)} did not answer in time") from None
        except OSError as e:
            raise ConnectionError(f"connection to {where(self.ep)} lost: "
                                  f"{clean(e.strerror or str(e))}") from None

    def stale(self) -> bool:
        """An idle connection that must not be reused: closed by the server, or holding
        data nobody asked for."""
        sock = self.sock
        if sock is None or self.parser.pending():
            return True
        if isinstance(sock, ssl.SSLSocket):
            return sock.pending() > 0  # (TLS session tickets make the raw socket readable)
        try:
            sock.settimeout(0)
            sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return True  # unsolicited data, or the end of the stream

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None



class Pool:
    """Idle connections of a sync client (thread-safe; a connection per concurrent call)."""

    def __init__(self, ep: Endpoint, max_bulk: int, connect_timeout: float):
        self.ep = ep
        self.max_bulk = max_bulk
        self.connect_timeout = connect_timeout
        self.idle: list[Connection] = []
        self.lock = threading.Lock()
        #: a connection succeeded once: later failures are worth retrying (the node restarts)
        self.connected_once = False
        self.closed = False

    def execute(self, cmds: Sequence[Sequence[Arg]], deadline: float) -> list[Any]:
        with self.lock:
            conn = self.idle.pop() if self.idle else None
        if conn is not None and conn.stale():
            # the server closed it (restarted?): drop every idle connection and say so, so
            # that a waiting call checks its job is still known
            conn.close()
            self.drop_idle()
            raise ConnectionError(f"{where(self.ep)} closed the connection")
        if conn is None:
            conn = Connection(self.ep, self.max_bulk)
            conn.open(min(deadline, time.monotonic() + self.connect_timeout))
            self.connected_once = True
        try:
            replies = conn.request(cmds, deadline)
        except BaseException:
            conn.close()
            raise
        with self.lock:
            if not self.closed and len(self.idle) < MAX_IDLE:
                self.idle.append(conn)
                return replies
        conn.close()
        return replies

    def drop_idle(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for c in idle:
            c.close()

    def close(self) -> None:
        self.closed = True
        self.drop_idle()
