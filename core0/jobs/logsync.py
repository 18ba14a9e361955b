"""When the job logs reach the disk: the policy of the node's Redis AOF (``redis.appendfsync``).

A job log and the Redis that holds the job's command, flag and result are one state; they are
made durable alike, so that one setting says what a power loss may cost:

* ``always``: a step that matters (``spawning``, ``exited``, ``done``, ``scheduled``) is
  fsync'd before the dispatcher goes on: the spawn waits for ``spawning``'s, the result for
  ``exited``'s. A power loss loses no recorded step.
* ``everysec`` (the default, as for the AOF): a step is written at once, so a dispatcher that
  crashes or is killed loses nothing (the kernel has it), and a thread of its own syncs the
  state dir's filesystem (``syncfs``) when steps were written since its last pass, at most once
  a second (the first step after a quiet second at once). A power loss loses at most about a
  second of steps, like the AOF's last second.
* ``no``: the kernel writes them back when it likes.

On a tmpfs (a node's ``/run``) nothing is synced: there is no disk behind it. The ``running``
step is never synced under any policy: after a power loss no pid means anything any more.

Why one ``syncfs`` per pass and not an ``fsync`` per log: every job has a log of its own, so a
thousand jobs a second would be a thousand descriptors to keep (or files to open again) and a
thousand syncs a second, each a hand-over of the interpreter's lock between this thread and
the dispatcher's — measured on the dispatcher's path. One ``syncfs`` is one system call a
second whatever the rate (a journalling filesystem commits once either way); it also writes
back whatever else is dirty on that filesystem (the AOF, when it lives there too).
docs/performance.md ("Job logs on a disk") has the figures.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: the longest a written step waits for its sync under ``everysec``, in seconds
INTERVAL = 1.0

POLICIES = ("always", "everysec", "no")

_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(fd: int) -> None:
    """``syncfs(2)``: write back the filesystem that holds ``fd`` (the interpreter's lock is
    released meanwhile)."""
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class LogSync:
    """Syncs the job logs under ``root`` by policy (see the module docstring). The job store
    calls :meth:`after_write` after each step that matters; :meth:`close` syncs what is left
    (dispatcher stop)."""

    def __init__(self, policy: str, root: Path):
        if policy not in POLICIES:
            raise ValueError(f"unknown sync policy {policy!r}")
        self.policy = policy
        self.root = root
        #: syncs done: fsyncs of a log (``always``), passes of the thread (``everysec``)
        self.synced = 0
        self._dirty = False  # a step written since the last pass began
        self._syncing = False
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = 0.0

    def after_write(self, fd: int) -> None:
        """A step was written to ``fd``: sync it now (``always``) or within :data:`INTERVAL`
        (``everysec``)."""
        if self.policy == "always" or (self.policy == "everysec" and self._closing.is_set()):
            os.fsync(fd)
            self.synced += 1
        elif self.policy == "everysec" and not self._dirty:
            self._dirty = True
            self._wake.set()
            if self._thread is None:
                # started at the first step (after the reaper blocked SIGCHLD in this thread,
                # so the new one inherits the mask and never takes the signal)
                self._thread = threading.Thread(target=self._run, name="core0-logsync",
                                                daemon=True)
                self._thread.start()

    def pending(self) -> bool:
        """Whether steps were written that are not synced yet."""
        return self._dirty or self._syncing

    def _run(self) -> None:
        # closing is checked before each wait: a pass may clear the wake-up close() set
        while not self._closing.is_set():
            self._wake.wait()
            if self._closing.is_set():
                return
            delay = self._last + INTERVAL - time.monotonic()
            if delay > 0 and self._closing.wait(delay):
                return
            self._pass()

    def _pass(self) -> None:
        self._syncing = True
        self._wake.clear()
        self._dirty = False  # a step written from here on is in this pass or marks the next
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                syncfs(fd)
            finally:
                os.close(fd)
            self.synced += 1
        except OSError as e:
            log.warning("job logs: could not sync %s to its disk: %s", self.root, e)
        finally:
            self._last = time.monotonic()
            self._syncing = False

    def close(self) -> None:
        """Stop the thread and sync what it had not (in the caller's thread); later steps
        are synced as they are written."""
        self._closing.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._dirty:
            self._pass()
