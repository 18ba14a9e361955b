"""Spawning processes and the dispatcher's one reaper.

Rules (design.md section 4): every child is started through core0.proc.spawn in its own session
(so its process group can be signalled as a whole), with default signal dispositions and an
empty signal mask; nothing else in the process calls ``wait``. The reaper runs on
SIGCHLD in the event loop (read from a signalfd), peeks at every exited child with
``waitid(WNOWAIT)``, runs its exit hook, reaps it and routes its status to the future
registered for that pid. Orphans re-parented to us (we are a child subreaper) are reaped too.

There is no ``subprocess``, no ``asyncio.create_subprocess_*`` and no shell anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core0 import cancel
from core0.proc.spawn import (
    block_sigchld,
    exited_children,
    reap_zombie,
    sigchld_fd,
    spawn_program,
)

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_CHILD_SUBREAPER = 36


def set_child_subreaper() -> None:
    """Orphaned descendants are re-parented to this process instead of PID 1."""
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def exit_code(status: int) -> tuple[int, int]:
    """A wait status → (exit status, signal). Exactly one of them is meaningful."""
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), 0
    if os.WIFSIGNALED(status):
        return -1, os.WTERMSIG(status)
    return -1, 0


#: (name, PATH) → (resolved path, monotonic time): PATH lookups cost a stat per directory
_WHICH: dict[tuple[str, str], tuple[str, float]] = {}
_WHICH_TTL = 2.0


def find_executable(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """Resolve ``name`` like execvp would, with the PATH of ``env``.

    A hit is remembered for two seconds (and re-checked with one ``access``), so a job that
    names its program costs one lookup, not one per directory of PATH each time."""
    if "/" in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    path = (env or os.environ).get("PATH", os.defpath)
    key = (name, path)
    hit = _WHICH.get(key)
    now = time.monotonic()
    if hit is not None and now - hit[1] < _WHICH_TTL and os.access(hit[0], os.X_OK):
        return hit[0]
    found = shutil.which(name, path=path)
    if found is None:
        _WHICH.pop(key, None)
        return None
    if len(_WHICH) > 256:
        _WHICH.clear()
    _WHICH[key] = (found, now)
    return found


class Reaper:
    """The one reaper of a process: routes every child's wait status by pid."""

    def __init__(self) -> None:
        self._waiters: dict[int, asyncio.Future[int]] = {}
        self._early: dict[int, int] = {}
        self._before: dict[int, Callable[[int], None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._own_handler = False
        self._sigfd = -1
        self.orphans_reaped = 0
        #: called after each pass that reaped a watched child, in the same turn of the loop
        #: (the job engine writes the results of the jobs that ended there)
        self.after_pass: list[Callable[[], None]] = []

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Reap on every SIGCHLD, in ``loop``.

        The signal is blocked in this thread (and so in every thread started later) and read
        from a ``signalfd`` the loop watches like any descriptor: an exit costs the loop one
        readable fd, instead of a signal delivery, its handler and the wake-up of the loop
        (docs/performance.md, "Fifth pass"). A handler stays installed for a SIGCHLD that
        reaches a thread started before, or comes while a spawn clears the mask."""
        self._loop = loop
        try:
            loop.add_signal_handler(signal.SIGCHLD, self.reap)
            self._own_handler = False
        except RuntimeError:
            # uvloop keeps SIGCHLD for its own subprocesses (core0 starts none through it):
            # a plain handler that hands the reap to the loop, the signal-safe way
            signal.signal(signal.SIGCHLD, lambda _sig, _frame: loop.call_soon_threadsafe(self.reap))
            self._own_handler = True
        try:
            self._sigfd = sigchld_fd()
        except OSError as e:
            log.warning("no signalfd (%s): reaping on the signal handler", e)
        else:
            block_sigchld(True)
            loop.add_reader(self._sigfd, self._on_signalfd)
        # children that exited before the handler was installed
        self.reap()

    def _on_signalfd(self) -> None:
        try:
            os.read(self._sigfd, 4096)  # one record: a blocked SIGCHLD is pending once
        except BlockingIOError:
            pass
        self.reap()

    def uninstall(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                if self._sigfd >= 0:
                    self._loop.remove_reader(self._sigfd)
                    os.close(self._sigfd)
                    self._sigfd = -1
                    block_sigchld(False)
                if self._own_handler:
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                else:
                    self._loop.remove_signal_handler(signal.SIGCHLD)

    def watch(self, pid: int,
              before_reap: Callable[[int], None] | None = None) -> asyncio.Future[int]:
        """A future resolved with ``pid``'s raw wait status.

        ``before_reap(status)`` runs while the child is still a zombie (so a crash before it
        returns leaves the zombie to the supervisor, which records the status): the job engine
        persists exit statuses there, so none is ever lost across a dispatcher crash."""
        assert self._loop is not None, "reaper not installed"
        fut: asyncio.Future[int] = self._loop.create_future()
        if pid in self._early:
            status = self._early.pop(pid)
            if before_reap is not None:
                before_reap(status)
            fut.set_result(status)
        else:
            self._waiters[pid] = fut
            if before_reap is not None:
                self._before[pid] = before_reap
        return fut

    def reap(self) -> None:
        watched = False
        # peeked: the child stays a zombie until its status is persisted (the hook)
        for pid, status in exited_children():
            hook = self._before.pop(pid, None)
            if hook is not None:
                try:
                    hook(status)
                except Exception:
                    log.exception("exit hook of pid %d failed", pid)
            reap_zombie(pid)
            fut = self._waiters.pop(pid, None)
            if fut is not None:
                watched = True
                if not fut.done():
                    fut.set_result(status)
            else:
                # an orphan we inherited, or a child whose watch() comes a moment later
                self.orphans_reaped += 1
                self._early[pid] = status
                if len(self._early) > 4096:
                    self._early.pop(next(iter(self._early)))
        if watched:
            for cb in self.after_pass:
                try:
                    cb()
                except Exception:
                    log.exception("after-reap hook failed")


@dataclass(frozen=True)
class Spawned:
    pid: int
    #: process start time in clock ticks since boot (from /proc/<pid>/stat), 0 if unknown
    start_ticks: int


def proc_start_ticks(pid: int) -> int:
    """Start time of ``pid`` (field 22 of /proc/<pid>/stat), 0 when gone; guards pid reuse."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0
    rest = data[data.rfind(b")") + 2 :].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return 0


def boot_id() -> str:
    """The kernel's id of this boot ("" when unreadable): what outlives a reboot in a state
    dir on a disk is keyed with it."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stdin: int,
    stdout: int,
    stderr: int,
    exe: str | None = None,
    start_ticks: bool = True,
    keep_fds: Sequence[int] = (),
) -> Spawned:
    """Start ``argv`` in a new session (see core0.proc.spawn). ``stdin``/``stdout``/``stderr`` are
    open fds; ``keep_fds`` stay open in the child under their numbers. The executable is ``exe``
    if given (already resolved by the caller), else
    resolved with the PATH of ``env``; FileNotFoundError if
    missing, NotADirectoryError if ``cwd`` is not a directory. ``start_ticks=False`` skips
    reading the child's start time (``Spawned.start_ticks`` is 0): reading /proc/<pid>/stat
    of a child that is still exec'ing waits for the exec, and a caller that brackets the
    spawn with :func:`boot_ticks` knows the start time well enough."""
    if env is None:
        env = dict(os.environ)
    path = exe or find_executable(argv[0], env)
    if path is None:
        raise FileNotFoundError(errno.ENOENT, f"executable not found: {argv[0]}")
    if cwd is not None and not os.path.isdir(cwd):
        raise NotADirectoryError(errno.ENOTDIR, f"not a directory: {cwd}")
    pid = spawn_program(path, argv, env, (stdin, stdout, stderr), cwd, keep_fds)
    return Spawned(pid, proc_start_ticks(pid) if start_ticks else 0)


def killpg(pid: int, sig: int) -> bool:
    """Signal the process group led by ``pid`` (our children lead their own). False if gone."""
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


async def terminate_group(
    pid: int, done: asyncio.Future[int], grace: float = 2.0, sig: int = signal.SIGTERM
) -> None:
    """TERM the group, wait ``grace`` seconds for ``done``, then KILL the group."""
    killpg(pid, sig)
    if sig == signal.SIGKILL:
        return
    try:
        await asyncio.wait_for(asyncio.shield(done), grace)
    except TimeoutError:
        killpg(pid, signal.SIGKILL)


# ---------------------------------------------------------------- run a tool


@dataclass(frozen=True)
class RunResult:
    argv: list[str]
    status: int  #: exit status, or -signal
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.status == 0


_reaper: Reaper | None = None


def set_reaper(reaper: Reaper) -> None:
    global _reaper
    _reaper = reaper


def get_reaper() -> Reaper:
    if _reaper is None:
        raise RuntimeError("no reaper installed in this process")
    return _reaper


async def read_all(fd: int, limit: int) -> bytes:
    """Read a non-blocking pipe until EOF, keeping at most ``limit`` trailing bytes."""
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    size = 0
    ev = asyncio.Event()
    loop.add_reader(fd, ev.set)
    try:
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                ev.clear()
                await ev.wait()
                continue
            if not data:
                break
            chunks.append(data)
            size += len(data)
            while size > limit and len(chunks) > 1:
                size -= len(chunks.pop(0))
    finally:
        loop.remove_reader(fd)
    return b"".join(chunks)[-limit:]


async def _write_all(fd: int, data: bytes, closed: list[int]) -> None:
    """Write ``data`` to the non-blocking pipe ``fd``, then close it (the tool sees EOF) and
    note that in ``closed``."""
    loop = asyncio.get_running_loop()
    ev = asyncio.Event()
    loop.add_writer(fd, ev.set)
    try:
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
                view = view[n:]
            except BlockingIOError:
                ev.clear()
                await ev.wait()
            except BrokenPipeError:
                return
    finally:
        loop.remove_writer(fd)
        os.close(fd)
        closed.append(fd)


async def ended(futs: Sequence[asyncio.Future[Any]]) -> None:
    """Cancel ``futs`` (the readers and writers of a tool's pipes) and wait until each has
    ended, a further cancel of the caller notwithstanding (it is delivered after).

    A reader takes its fd off the event loop in its own clean-up, which must run before the
    fd is closed: closed first, the fd's number is handed to the next socket or file opened
    while the loop still watches it — uvloop then aborts the whole process (libuv's
    ``epoll_ctl`` fails on it), and asyncio's own loop takes the new owner's reader away when
    the old reader's clean-up runs."""
    for f in futs:
        f.cancel()
    if futs:  # (a task, not a coroutine: atomic would not begin it under a pending cancel)
        await cancel.atomic(asyncio.ensure_future(asyncio.wait(futs)))


async def run(
    argv: Sequence[str],
    *,
    stdin: bytes | int | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout: float | None = None,
    limit: int = 16 << 20,
    keep_fds: Sequence[int] = (),
    stop: tuple[int, float] | None = None,
) -> RunResult:
    """Run a tool to completion and capture its output (pipes; for short-lived helpers).

    ``stdin`` is bytes to feed, an fd to hand over, or None (/dev/null); ``keep_fds`` are
    inherited under their own numbers (the tool names them ``/proc/self/fd/N``). On timeout or
    cancellation the process group is killed and the exception propagates; with ``stop``
    (signal, grace) the tool is first sent that signal and given up to ``grace`` seconds to
    end (restic removes its repository lock on SIGINT), the caller waiting meanwhile.
    """
    reaper = get_reaper()
    argv = [str(a) for a in argv]
    out_r, out_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    in_w: int | None = None
    if isinstance(stdin, bytes):
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(in_w, False)
    elif isinstance(stdin, int):
        in_r = os.dup(stdin)
    else:
        in_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.set_blocking(out_w, True)
        os.set_blocking(err_w, True)
        sp = spawn(argv, env=env, cwd=cwd, stdin=in_r, stdout=out_w, stderr=err_w,
                   keep_fds=keep_fds)
    except BaseException:
        for fd in (out_r, err_r) + ((in_w,) if in_w is not None else ()):
            os.close(fd)
        raise
    finally:
        for fd in (out_w, err_w, in_r):
            os.close(fd)
    done = reaper.watch(sp.pid)
    tasks = [
        asyncio.ensure_future(read_all(out_r, limit)),
        asyncio.ensure_future(read_all(err_r, limit)),
    ]
    writer = None
    closed: list[int] = []
    if in_w is not None and isinstance(stdin, bytes):
        writer = asyncio.ensure_future(_write_all(in_w, stdin, closed))
    try:
        async with asyncio.timeout(timeout):
            status = await asyncio.shield(done)
            out, err = await asyncio.gather(*tasks)
            if writer is not None:
                await writer
    except BaseException:
        if stop is not None and not done.done():
            killpg(sp.pid, stop[0])
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(done), stop[1])
        killpg(sp.pid, signal.SIGKILL)
        # the pipes are closed below only once no reader or writer watches them
        await ended(tasks + ([writer] if writer else []))
        raise
    finally:
        os.close(out_r)
        os.close(err_r)
        if writer is not None and not closed:  # cancelled before it began
            os.close(in_w)  # type: ignore[arg-type]
    code, sig = exit_code(status)
    return RunResult(
        argv,
        code if sig == 0 else -sig,
        out.decode("utf-8", "replace"),
        err.decode("utf-8", "replace"),
    )
