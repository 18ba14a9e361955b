"""The one restart backoff of supervised things (design.md section 4), shared by the shim's
supervisor (redis-server, the dispatcher, NIC DHCP clients) and the job engine (protected
services: boot services, dnsmasq…), and the retry loops of the bus (the pop loop's reconnects,
``retry_forever``), of libvirt's reconnect and of busy storage tools (:meth:`Backoff.retrying`).

The rule: the first restart waits ``first`` (1 s), each further one twice as long up to ``cap``
(60 s); a run that lasted ``healthy`` (10 s) or more resets the delay. A process that exits
:data:`PERMANENT_EXIT` (125) is a permanent failure: not restarted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: exit status of a supervised process meaning "do not restart me"
PERMANENT_EXIT = 125


@dataclass
class Backoff:
    """Restart delays of one supervised thing. Call :meth:`started` when it starts and
    :meth:`next` when it ended: the seconds to wait before starting it again. ``clock`` is a
    monotonic clock (injected by tests)."""

    first: float = 1.0
    cap: float = 60.0
    healthy: float = 10.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    #: the delay the next restart waits
    delay: float = field(init=False)
    _started: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.delay = self.first

    @classmethod
    def retrying(cls, first: float, cap: float,
                 clock: Callable[[], float] = time.monotonic) -> Backoff:
        """The delays of a retry loop (a reconnect, a busy tool): ``first``, doubling up to
        ``cap``. Nothing "runs healthy" there: only :meth:`reset` (after a success) starts
        over."""
        return cls(first=first, cap=cap, healthy=math.inf, clock=clock)

    def started(self) -> None:
        """It starts (now, by ``clock``)."""
        self._started = self.clock()

    def next(self, ran_for: float | None = None) -> float:
        """It ended after ``ran_for`` seconds (default: since :meth:`started`); returns the
        delay before the next start and doubles the one after."""
        if ran_for is None:
            ran_for = self.clock() - self._started if self._started is not None else 0.0
        if ran_for >= self.healthy:
            self.delay = self.first
        delay = self.delay
        self.delay = min(self.delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        """Back to the first delay (e.g. after a manual restart)."""
        self.delay = self.first
