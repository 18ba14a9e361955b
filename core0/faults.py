"""Pauses for core0's fault tests: a step named in an environment variable waits there.

A fault test reaches an instant no timing can hit (a path swapped between core0's check and
qemu's open, a kill while libvirt or a syscall works) by holding the step: the variable reads
``<name>[,<name>…]:<dir>``; a step of one of those names makes ``<dir>/held`` and waits (up
to 30 s) for ``<dir>/go``. Unset — always, on a node — every call returns at once.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

WAIT = 30.0


class Hold:
    """The pauses named by environment variable ``var``; ``match(want, step)`` says whether
    the step ``step`` is the wanted name ``want`` (default: equal)."""

    def __init__(self, var: str, match: Callable[[str, str], bool] | None = None):
        want, _, self.where = os.environ.get(var, "").partition(":")
        self.names = [n for n in want.split(",") if n]
        self.match = match or (lambda w, step: w == step)

    def wanted(self, step: str) -> str | None:
        """The hold directory when ``step`` is to be held, else None."""
        if not self.names:
            return None
        return self.where if any(self.match(w, step) for w in self.names) else None

    def _held(self, step: str) -> Path | None:
        """``<dir>/held`` made for a held ``step``; its ``<dir>/go`` (None: not held)."""
        where = self.wanted(step)
        if where is None:
            return None
        Path(where, "held").touch()
        return Path(where, "go")

    def wait(self, step: str) -> None:
        """Hold ``step`` in a worker thread (blocks)."""
        go, deadline = self._held(step), time.monotonic() + WAIT
        while go is not None and not go.exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    async def wait_async(self, step: str) -> None:
        """Hold ``step`` on the event loop."""
        go, deadline = self._held(step), time.monotonic() + WAIT
        while go is not None and not go.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
