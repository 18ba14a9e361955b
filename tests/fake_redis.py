"""A fake Redis-speaking TCP server for client tests: it answers each command with whatever
bytes a scenario says (a hostile or broken server). The client is the thing under test; the
fake only speaks RESP framing (parsed with hiredis, independently of the client's parser)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

import hiredis

#: a reply: raw bytes, None (never answer), or ("drip", bytes) sent a byte every 0.2 s
Reply = bytes | None | tuple[str, bytes]
Handler = Callable[[list[bytes]], Reply]

HELLO_OK = b"*4\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n"


class FakeRedis:
    """``FakeRedis(handler)``: ``handler(argv)`` gives the reply to each command."""

    def __init__(self, handler: Handler):
        self.handler = handler
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/"
        self.commands: list[list[bytes]] = []
        self.conns: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = hiredis.Reader()
        with contextlib.suppress(OSError):
            while not self.stopping.is_set():
                data = conn.recv(65536)
                if not data:
                    return
                reader.feed(data)
                while (cmd := reader.gets()) is not False:
                    self.commands.append(cmd)
                    reply = self.handler(cmd)
                    if reply is None:
                        continue
                    if isinstance(reply, tuple):
                        for i in range(len(reply[1])):
                            if self.stopping.is_set():
                                return
                            conn.sendall(reply[1][i : i + 1])
                            time.sleep(0.2)
                        continue
                    conn.sendall(reply)

    def cut(self) -> None:
        """Cut every open connection (as a restarting server does)."""
        for c in list(self.conns):
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        with contextlib.suppress(OSError):
            self.sock.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                c.close()
        self.thread.join(5)

    def __enter__(self) -> FakeRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bulk(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)


def scripted(replies: dict[bytes, Reply | Callable[[list[bytes]], Reply]]) -> Handler:
    """A handler: HELLO answers like Redis, RPUSH/EXISTS with 1, TTL with -1, others from
    ``replies`` (by upper-case command name; a callable gets the argv)."""
    defaults: dict[bytes, Reply] = {b"HELLO": HELLO_OK, b"RPUSH": b":1\r\n",
                                    b"EXISTS": b":1\r\n", b"TTL": b":-1\r\n"}

    def handle(argv: list[bytes]) -> Reply:
        name = argv[0].upper()
        r = replies.get(name, defaults.get(name, b"-ERR unknown command\r\n"))
        return r(argv) if callable(r) else r

    return handle
