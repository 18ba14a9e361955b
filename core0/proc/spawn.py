"""The one way core0 starts a program (used by the dispatcher and by the supervisor).

Every child starts in a new session (its own process group, so a job is killed as a group),
with default signal dispositions, an empty signal mask, only fds 0-2 open, and optionally a
working directory. No shell is involved.

Why not ``os.posix_spawn``: glibc's posix_spawn leaves its two internal signals (32 and 33)
*ignored* in the child, and an ignored disposition survives ``execve``, so every job would start
with ``SigIgn`` ≠ 0 (checked in tests against ``/proc/<pid>/status``, as tini does); it also has
no chdir action before Python 3.13. CPython's own child code (``_posixsubprocess.fork_exec``,
vfork-based, what ``subprocess`` uses) has neither problem, so we call it directly — without
``Popen`` and its ``waitpid``, which would race our one reaper. posix_spawn stays as a fallback
for other Python versions.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

_ALL_SIGNALS = {s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)}

try:
    import _posixsubprocess

    _FORK_EXEC = sys.version_info[:2] == (3, 11)
except ImportError:  # pragma: no cover
    _FORK_EXEC = False


#: ``KEY=value`` entries already encoded (the same node environment goes to every job)
_ENTRIES: dict[tuple[str, str], bytes] = {}


def _env_entry(key: str, value: str) -> bytes:
    entry = _ENTRIES.get((key, value))
    if entry is None:
        entry = os.fsencode(key) + b"=" + os.fsencode(value)
        if len(_ENTRIES) >= 2048:
            _ENTRIES.clear()
        _ENTRIES[(key, value)] = entry
    return entry


#: the last environment spawned with, and its entries: jobs mostly share one
_LAST_ENV: tuple[dict[str, str], list[bytes]] | None = None


def _env_list(env: Mapping[str, str]) -> list[bytes]:
    """``env`` as execve's ``KEY=value`` entries (the last list again when ``env`` equals
    the last one: one dict comparison in C instead of an entry per variable)."""
    global _LAST_ENV
    last = _LAST_ENV
    if last is not None and last[0] == env:
        return last[1]
    entries = [_env_entry(k, v) for k, v in env.items()]
    _LAST_ENV = (dict(env), entries)
    return entries


_DEVNULL = -1

#: SIGCHLD is blocked in this process (see :func:`block_sigchld`)
_SIGCHLD_BLOCKED = False
_SigSet = ctypes.c_uint64 * 16  # glibc's sigset_t: 1024 bits
_CHLD_SET = _SigSet(1 << (signal.SIGCHLD - 1))
_libc = ctypes.CDLL(None, use_errno=True)


def _sigmask(how: int, old: ctypes.Array[ctypes.c_uint64] | None = None) -> bool:
    """``pthread_sigmask(how, {SIGCHLD}, old)`` through ctypes (``signal.pthread_sigmask``
    builds a set of every signal it returns); True on success."""
    return bool(_libc.pthread_sigmask(how, ctypes.byref(_CHLD_SET),
                                      None if old is None else ctypes.byref(old)) == 0)


def sigchld_fd() -> int:
    """A new non-blocking ``signalfd`` for SIGCHLD (read it once :func:`block_sigchld` holds
    the signal back)."""
    fd = _libc.signalfd(-1, ctypes.byref(_CHLD_SET), os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(fd)


def block_sigchld(block: bool) -> None:
    """Block SIGCHLD in this thread and those it starts from now on (the dispatcher's reaper
    reads it from a signalfd); the spawns of this process unblock it for their children."""
    global _SIGCHLD_BLOCKED
    _sigmask(signal.SIG_BLOCK if block else signal.SIG_UNBLOCK)
    _SIGCHLD_BLOCKED = block


def devnull_fd() -> int:
    """A read-only ``/dev/null`` opened once (close-on-exec), the stdin of jobs without one."""
    global _DEVNULL
    if _DEVNULL < 0:
        _DEVNULL = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return _DEVNULL


def spawn_program(
    path: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    fds: tuple[int, int, int],
    cwd: str | None = None,
    keep: Sequence[int] = (),
) -> int:
    """Start ``path`` with ``argv`` in a new session; ``fds`` become its stdin, stdout, stderr;
    the descriptors in ``keep`` stay open in it under their own numbers (all others close).

    Raises OSError (e.g. FileNotFoundError, PermissionError) if the exec fails.
    """
    if not _FORK_EXEC:
        if cwd is not None:
            raise OSError(errno.ENOTSUP, "cwd needs CPython 3.11's fork_exec")
        actions = [(os.POSIX_SPAWN_DUP2, fd, i) for i, fd in enumerate(fds)]
        actions += [(os.POSIX_SPAWN_DUP2, fd, fd) for fd in keep]  # (clears close-on-exec)
        return os.posix_spawn(path, list(argv), dict(env), file_actions=actions,
                              setsid=True, setsigmask=(), setsigdef=_ALL_SIGNALS)
    env_list = _env_list(env)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    # the child inherits the signal mask: SIGCHLD, which the dispatcher's reaper blocks to read
    # it from a signalfd, is unblocked around the spawn
    mask = _SigSet() if _SIGCHLD_BLOCKED else None
    if mask is not None and not _sigmask(signal.SIG_UNBLOCK, mask):
        mask = None
    try:
        fork_exec: Any = _posixsubprocess.fork_exec
        pid = fork_exec(
            [os.fsencode(a) for a in argv], [os.fsencode(path)],
            True, tuple(sorted({err_w, *keep})) if keep else (err_w,),  # close_fds, to keep
            cwd, env_list,
            fds[0], -1, -1, fds[1],      # p2cread, p2cwrite, c2pread, c2pwrite
            -1, fds[2],                  # errread, errwrite
            err_r, err_w,
            True, True, -1,              # restore_signals, setsid, process_group
            None, None, None, -1,        # gid, extra_groups, uid, umask
            None, True,                  # preexec_fn, allow_vfork
        )
    finally:
        if mask is not None:  # this thread's mask as it was
            _libc.pthread_sigmask(signal.SIG_SETMASK, ctypes.byref(mask), None)
        os.close(err_w)
    try:
        data = b""
        while True:
            chunk = os.read(err_r, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(err_r)
    if data:
        # the child failed before or at exec: "OSError:<hex errno>:<where>"; reap it here
        # (it exited already; the pid is ours and no other code waits for it yet)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        kind, _, rest = data.partition(b":")
        hex_errno, _, where = rest.partition(b":")
        try:
            num = int(hex_errno, 16)
        except ValueError:
            num = errno.EIO
        msg = os.strerror(num) if num else data.decode(errors="replace")
        if where == b"noexec:chdir":
            raise NotADirectoryError(num, f"{msg}: {cwd}")
        raise OSError(num, f"{msg}: {path}")
    return int(pid)


#: glibc's own real-time signals (SIGCANCEL, SIGSETXID): no Python API can set them, yet an
#: ignored disposition of theirs is inherited like any other
_RESERVED = (32, 33)
_SYS_RT_SIGACTION = 13  # x86_64


class _KSigaction(ctypes.Structure):
    _fields_ = [("handler", ctypes.c_void_p), ("flags", ctypes.c_ulong),
                ("restorer", ctypes.c_void_p), ("mask", ctypes.c_uint64)]


def _reset_raw(sig: int) -> bool:
    """SIG_IGN → SIG_DFL for one of glibc's reserved signals, by the raw syscall."""
    if platform.machine() != "x86_64":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    old = _KSigaction()
    if libc.syscall(_SYS_RT_SIGACTION, sig, None, ctypes.byref(old), 8) != 0:
        return False
    if old.handler != 1:  # SIG_IGN
        return False
    new = _KSigaction()  # SIG_DFL, no flags, empty mask
    return bool(libc.syscall(_SYS_RT_SIGACTION, sig, ctypes.byref(new), None, 8) == 0)


def reset_ignored_signals() -> list[int]:
    """Give every signal core0 inherited as *ignored* its default disposition again.

    An ignored disposition survives ``execve``: a core0 started from a shell's background job
    (which ignores SIGINT and SIGQUIT), by nohup (SIGHUP) or by a careless init would pass
    that on to every job. ``fork_exec`` restores only Python's own SIGPIPE/SIGXFSZ, so the
    supervisor and the dispatcher call this at start. Returns the signals reset.
    """
    reset = [sig for sig in _RESERVED if _reset_raw(sig)]
    for sig in _ALL_SIGNALS:
        if sig in (signal.SIGPIPE, signal.SIGXFSZ):
            continue  # Python ignores these itself; children get them back by restore_signals
        try:
            if signal.getsignal(sig) == signal.SIG_IGN:
                signal.signal(sig, signal.SIG_DFL)
                reset.append(int(sig))
        except (OSError, ValueError):
            continue
    return reset


def exited_children() -> Iterator[tuple[int, int]]:
    """Every exited child as (pid, wait status), *peeked* (``WNOWAIT``): each is still a
    zombie when yielded, so its caller can read or persist what it needs before reaping it
    (``os.waitpid(pid, 0)``, which it must do before asking for the next). The one loop of
    both reapers (the shim's and the dispatcher's)."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        except InterruptedError:
            continue
        if info is None or info.si_pid == 0:
            return
        yield info.si_pid, wait_status(info)


def reap_zombie(pid: int) -> None:
    """Reap a child already known to have exited (returns at once)."""
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def wait_status(info: os.waitid_result) -> int:
    """A waitid() result as the raw status waitpid() would have returned."""
    if info.si_code == os.CLD_EXITED:
        return (info.si_status & 0xFF) << 8
    core = 0x80 if info.si_code == os.CLD_DUMPED else 0
    return (info.si_status & 0x7F) | core


def boot_ticks() -> int:
    """Now, in the clock ticks since boot that /proc/<pid>/stat's start time uses."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK"))
