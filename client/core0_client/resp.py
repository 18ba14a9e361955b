"""RESP2, the Redis wire format, for the client: packing requests and a bounded parser.

The parser is sans-I/O (``feed`` bytes, ``get`` replies) and refuses anything a Redis
server does not send, before it allocates for it: an unknown type byte, a malformed length
(``$-5``), a bulk string over ``max_bulk`` bytes (``$99999999999`` fails at once), more than
``max_items`` elements, nesting deeper than ``max_depth``, a line without its CRLF. Each
raises ``ProtocolError``; error replies are returned as ``ErrorReply`` values.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from core0_client.errors import ProtocolError

Arg = bytes | str | int | float

#: default bound of one bulk reply (a result holds at most 2 MiB of output tails + its data)
DEFAULT_MAX_BULK = 64 << 20
MAX_ITEMS = 1 << 16  # XREAD asks for 1000 entries; a HELLO map has ~14
MAX_DEPTH = 8
MAX_LINE = 64 << 10

_INT = re.compile(rb"-?[0-9]{1,19}")


class ErrorReply(str):
    """A ``-ERR …`` reply (a value, not raised: pipelines see every reply)."""


class _Incomplete(Exception):
    pass


def pack(args: Sequence[Arg]) -> bytes:
    """One command in RESP's multi-bulk form."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, bytes):
            b = a
        elif isinstance(a, str):
            b = a.encode("utf-8", errors="surrogatepass")
        elif isinstance(a, int | float):
            b = repr(a).encode()
        else:
            raise TypeError(f"cannot send a {type(a).__name__} to Redis")
        out.append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(out)


class Parser:
    """Incremental RESP2 reply parser with hard bounds."""

    def __init__(self, max_bulk: int = DEFAULT_MAX_BULK):
        self.max_bulk = max_bulk
        self.buf = bytearray()
        self.pos = 0

    def feed(self, data: bytes) -> None:
        self.buf += data

    def pending(self) -> bool:
        """Bytes are buffered beyond the replies taken."""
        return len(self.buf) > self.pos

    def get(self) -> tuple[bool, Any]:
        """``(True, reply)`` when a whole reply is buffered, else ``(False, None)``."""
        start = self.pos
        try:
            reply = self._parse(0)
        except _Incomplete:
            self.pos = start
            self._check_pending()
            return False, None
        if self.pos > 65536 or self.pos == len(self.buf):
            del self.buf[: self.pos]
            self.pos = 0
        return True, reply

    def _check_pending(self) -> None:
        # a line that never ends is refused once it exceeds any real header
        if b"\r\n" not in self.buf[self.pos : self.pos + MAX_LINE + 2] and (
            len(self.buf) - self.pos > MAX_LINE
        ):
            raise ProtocolError(f"RESP line longer than {MAX_LINE} bytes")

    def _line(self) -> bytes:
        end = self.buf.find(b"\r\n", self.pos, self.pos + MAX_LINE + 2)
        if end < 0:
            if len(self.buf) - self.pos > MAX_LINE:
                raise ProtocolError(f"RESP line longer than {MAX_LINE} bytes")
            raise _Incomplete
        line = bytes(self.buf[self.pos : end])
        self.pos = end + 2
        return line

    def _int(self, text: bytes, what: str) -> int:
        if not _INT.fullmatch(text):
            raise ProtocolError(f"RESP: malformed {what} {text[:32]!r}")
        return int(text)

    def _parse(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise ProtocolError(f"RESP: replies nested deeper than {MAX_DEPTH}")
        line = self._line()
        if not line:
            raise ProtocolError("RESP: empty line where a reply was expected")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return _text(rest)
        if kind == b"-":
            return ErrorReply(_text(rest))
        if kind == b":":
            return self._int(rest, "integer")
        if kind == b"$":
            n = self._int(rest, "bulk length")
            if n == -1:
                return None
            if n < 0:
                raise ProtocolError(f"RESP: negative bulk length {n}")
            if n > self.max_bulk:
                raise ProtocolError(f"RESP: bulk reply of {n} bytes, over the "
                                    f"{self.max_bulk} byte limit")
            if len(self.buf) - self.pos < n + 2:
                raise _Incomplete
            data = bytes(self.buf[self.pos : self.pos + n])
            if self.buf[self.pos + n : self.pos + n + 2] != b"\r\n":
                raise ProtocolError("RESP: bulk string not followed by CRLF")
            self.pos += n + 2
            return data
        if kind == b"*":
            n = self._int(rest, "array length")
            if n == -1:
                return None
            if n < 0:
                raise ProtocolError(f"RESP: negative array length {n}")
            if n > MAX_ITEMS:
                raise ProtocolError(f"RESP: array of {n} elements, over {MAX_ITEMS}")
            return [self._parse(depth + 1) for _ in range(n)]
        raise ProtocolError(f"RESP: unknown reply type {kind!r}")


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("RESP: status line is not valid UTF-8") from None
