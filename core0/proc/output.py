"""Job output: 0-core's level-prefixed message protocol, tails, and file following.

A job's stdout and stderr go to files in its state directory (not pipes), so a job keeps
running, and its output is kept, while the dispatcher restarts; the dispatcher follows the
files with inotify (no polling). Each line is a message: ``N::text`` is a message at level N,
``N:::`` starts a block that ends with a line ``:::``; other lines are level 1 (stdout) or
2 (stderr). A level-20 block (``20:::`` JSON ``:::``) becomes the result's data.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import re
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from core0_client.protocol import Level

log = logging.getLogger(__name__)

_PREFIX = re.compile(rb"^(\d{1,3})::(:?)(.*)$", re.S)
MAX_MESSAGE = 64 * 1024
TAIL_BYTES = 1 << 20


@dataclass(frozen=True)
class Message:
    level: int
    text: str
    #: the line ended with a newline (False for a last line without one)
    nl: bool = True


class OutputParser:
    """Splits a byte stream into level-tagged messages (0-core's ``N::`` / ``N:::`` rules)."""

    def __init__(self, default_level: int):
        self.default_level = default_level
        self._buf = b""
        self._block_level: int | None = None
        self._block: list[bytes] = []
        self._block_size = 0

    def feed(self, data: bytes) -> list[Message]:
        out: list[Message] = []
        self._buf += data
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_MESSAGE:  # a huge line: flush it in pieces
                    piece, self._buf = self._buf[:MAX_MESSAGE], self._buf[MAX_MESSAGE:]
                    self._line(piece, out, partial=True)
                    continue
                break
            line, self._buf = self._buf[:nl], self._buf[nl + 1 :]
            self._line(line, out, partial=False)
        return out

    def close(self) -> list[Message]:
        out: list[Message] = []
        if self._buf:
            line, self._buf = self._buf, b""
            self._line(line, out, partial=True)
        if self._block_level is not None:
            out.append(self._end_block())
        return out

    def _end_block(self) -> Message:
        level = self._block_level or self.default_level
        text = b"\n".join(self._block).decode("utf-8", "replace")
        self._block_level = None
        self._block = []
        self._block_size = 0
        return Message(level, text)

    def _line(self, line: bytes, out: list[Message], partial: bool) -> None:
        if self._block_level is not None:
            if line == b":::":
                out.append(self._end_block())
                return
            if self._block_size < 16 * MAX_MESSAGE:
                self._block.append(line)
                self._block_size += len(line)
            return
        m = _PREFIX.match(line)
        if m:
            level = int(m.group(1))
            if m.group(2):  # N::: block start; text after it on the same line is kept
                self._block_level = level
                rest = m.group(3)
                if rest:
                    self._block.append(rest)
                return
            out.append(Message(level, m.group(3).decode("utf-8", "replace")))
            return
        out.append(Message(self.default_level, line.decode("utf-8", "replace"), not partial))


class Tail:
    """The last ``limit`` bytes of a stream's default-level text."""

    def __init__(self, limit: int = TAIL_BYTES):
        self.limit = limit
        self._parts: deque[str] = deque()
        self._size = 0

    def add(self, text: str, newline: bool = True) -> None:
        s = text + "\n" if newline else text
        self._parts.append(s)
        self._size += len(s)
        while self._size > self.limit and len(self._parts) > 1:
            self._size -= len(self._parts.popleft())

    def text(self) -> str:
        s = "".join(self._parts)
        return s[-self.limit :]


# ---------------------------------------------------------------- inotify follower

_libc = ctypes.CDLL(None, use_errno=True)
IN_MODIFY = 0x00000002
IN_Q_OVERFLOW = 0x00004000
#: what wakes a follower: a write. Not IN_CLOSE_WRITE: a close adds no data (and the files'
#: last close is the follower's own, at the end, or the exited child's, whose output is
#: drained at its exit anyway)
_WATCH = IN_MODIFY
IN_IGNORED = 0x00008000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")


class Inotify:
    """One inotify instance for the dispatcher; calls a callback per modified watch.

    Besides watches of single files (:meth:`add`), one directory can be watched once for all
    the files in it (:meth:`watch_dir`, then :meth:`add_name` per file): its events carry the
    file's name, so following a file there costs no ``inotify_add_watch``/``rm_watch``."""

    def __init__(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.fd = fd
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        #: the directory watched once, its watch, and its files followed (name → callback)
        self.dir = ""
        self._dir_wd = -1
        self._names: dict[bytes, Callable[[], None]] = {}

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.fd, self._read)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.fd)
        os.close(self.fd)

    def add(self, path: str, callback: Callable[[], None]) -> int:
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), _WATCH)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        self._callbacks[wd] = callback
        return int(wd)

    def remove(self, wd: int) -> None:
        if self._callbacks.pop(wd, None) is not None:
            _libc.inotify_rm_watch(self.fd, wd)

    def watch_dir(self, path: str) -> None:
        """Watch the files in directory ``path`` (one watch for all of them)."""
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), _WATCH)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        self.dir, self._dir_wd = path, int(wd)

    def add_name(self, name: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the file ``name`` in the watched directory is written."""
        self._names[os.fsencode(name)] = callback

    def remove_name(self, name: str) -> None:
        self._names.pop(os.fsencode(name), None)

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        fired: set[int] = set()
        names: set[bytes] = set()
        off = 0
        while off + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, off)
            start = off + _EVENT.size
            off = start + length
            if mask & IN_Q_OVERFLOW:  # events were lost: every follower reads on
                fired.update(self._callbacks)
                names.update(self._names)
                continue
            if wd == self._dir_wd:
                if length:
                    names.add(data[start:off].rstrip(b"\0"))
                continue
            if mask & IN_IGNORED:
                self._callbacks.pop(wd, None)
                continue
            fired.add(wd)
        cbs = [self._callbacks.get(wd) for wd in fired]
        cbs += [self._names.get(name) for name in names]
        for cb in cbs:
            if cb is not None:
                try:
                    cb()
                except Exception:  # a follower bug must not stop the others
                    log.exception("output follower failed")


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def punch_hole(fd: int, length: int) -> bool:
    """Free the first ``length`` bytes of a file without moving its end (tmpfs, ext4, btrfs)."""
    r = _libc.fallocate(
        fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, ctypes.c_long(0), ctypes.c_long(length)
    )
    return bool(r == 0)


class FileFollower:
    """Reads a growing output file from ``offset`` as it is written, into a parser."""

    #: consumed bytes beyond which the consumed part of the file is freed
    PUNCH_AFTER = 1 << 20

    #: bytes read per pump call before the event loop gets a turn
    CHUNK = 1 << 20

    def __init__(
        self,
        path: str,
        parser: OutputParser,
        sink: Callable[[list[Message]], None],
        offset: int = 0,
        *,
        full: Callable[[], bool] | None = None,
        backlog_max: int = 0,
        fd: int | None = None,
    ):
        self.path = path
        self.parser = parser
        self.sink = sink
        self.offset = offset
        self.punched = offset
        #: backpressure: while ``full()`` is true the file is not read further (the writer's
        #: output waits in the file); ``resume()`` goes on
        self.full = full
        #: unread bytes beyond which the backlog is skipped (0 = never)
        self.backlog_max = backlog_max
        self.skipped = 0
        self._again = False
        #: read-write (holes are punched); ``fd`` (taken over) when the caller has it open
        self._fd = fd if fd is not None else os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self._wd: int | None = None
        self._name: str | None = None
        self._inotify: Inotify | None = None

    def start(self, inotify: Inotify, *, fresh: bool = False) -> None:
        """Follow the file. ``fresh``: this dispatcher made it empty, in the directory
        ``inotify`` watches, so every write to it so far has its event waiting in the inotify
        queue (read only by the event loop): nothing is read now."""
        self._inotify = inotify
        where, name = os.path.split(self.path)
        if inotify.dir and where == inotify.dir:
            self._name = name
            inotify.add_name(name, self.pump)
            if fresh:
                return
        else:
            self._wd = inotify.add(self.path, self.pump)
        self.pump()  # what was written before the watch

    def pump(self, *, drain: bool = False) -> None:
        """Read what was written since the last call, at most ``CHUNK`` bytes unless
        ``drain`` (the rest is read on a later turn of the event loop)."""
        if self._fd < 0:
            return
        budget = self.CHUNK
        while drain or budget > 0:
            if not drain and self.full is not None and self.full():
                self._skip_backlog()
                break
            data = os.pread(self._fd, 65536, self.offset)
            if not data:
                break
            budget -= len(data)
            self.offset += len(data)
            msgs = self.parser.feed(data)
            if msgs:
                self.sink(msgs)
        else:
            self._schedule()
        if self.offset - self.punched >= self.PUNCH_AFTER and punch_hole(self._fd, self.offset):
            self.punched = self.offset

    def resume(self) -> None:
        """The sink has room again: read on."""
        self.pump()

    def _schedule(self) -> None:
        if self._again:
            return
        self._again = True

        def again() -> None:
            self._again = False
            self.pump()

        try:
            asyncio.get_running_loop().call_soon(again)
        except RuntimeError:
            self._again = False

    def _skip_backlog(self) -> None:
        """When the reader cannot keep up, skip what exceeds ``backlog_max`` (and say so),
        so neither core0's memory nor the state dir's grows without bound."""
        if not self.backlog_max:
            return
        size = os.fstat(self._fd).st_size
        if size - self.offset <= self.backlog_max:
            return
        skip = size - self.offset
        self.offset = size
        self.skipped += skip
        msgs = self.parser.close()
        msgs.append(Message(Level.STDERR, f"core0: {skip} bytes of output skipped (readers too "
                                          "slow)"))
        self.sink(msgs)

    def finish(self) -> None:
        """Drain what is left, flush the parser and stop following."""
        if self._fd >= 0 and os.pread(self._fd, 1, self.offset):  # anything left unread
            self._skip_backlog()
            self.pump(drain=True)
        msgs = self.parser.close()
        if msgs:
            self.sink(msgs)
        self.stop()

    def stop(self) -> None:
        if self._inotify is not None and self._wd is not None:
            self._inotify.remove(self._wd)
            self._wd = None
        if self._inotify is not None and self._name is not None:
            self._inotify.remove_name(self._name)
            self._name = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
