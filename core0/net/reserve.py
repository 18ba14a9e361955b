"""Host ports held for a while for forwards to come (0-core's ``socat.reserve``).

An orchestrator asks for ``n`` free host ports, then makes forwards on them; between the two,
another caller must not be handed the same ports. A port is free when the node does not
listen on it (TCP or UDP, any address), no forward uses it as its source port, and nobody
holds it. It is held :data:`HOLD_SECONDS` (0-core's two minutes) or until a forward takes it.

The holds live in the dispatcher's memory, as 0-core's did: they are a courtesy between
callers, not a lock (a forward may take a held port; a restarted dispatcher holds nothing),
so they need no persistence. Bounded: at most :data:`MAX_HELD` at once (503 beyond).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from core0.errors import Unavailable

#: how long a reserved port is held (0-core: 2 min)
HOLD_SECONDS = 120.0
#: the lowest port handed out (0-core's: below it are the system's)
FIRST_PORT = 1024
#: ports held at once, all callers together
MAX_HELD = 4096


class Reservations:
    """The held ports of this dispatcher: port → when the hold ends (monotonic)."""

    def __init__(self) -> None:
        self._until: dict[int, float] = {}

    def held(self) -> set[int]:
        """The ports held now (expired holds dropped)."""
        now = time.monotonic()
        for port in [p for p, t in self._until.items() if t <= now]:
            del self._until[port]
        return set(self._until)

    def take(self, n: int, used: Iterable[int]) -> list[int]:
        """Hold and return the ``n`` lowest free ports from :data:`FIRST_PORT`: not in
        ``used`` and not held. 503 when fewer are free or the holds would pass
        :data:`MAX_HELD`."""
        busy = self.held() | set(used)
        if len(self._until) + n > MAX_HELD:
            raise Unavailable(f"too many reserved ports (at most {MAX_HELD} at once, each "
                              f"held {HOLD_SECONDS:.0f} s)")
        out: list[int] = []
        port = FIRST_PORT
        while len(out) < n:
            if port > 65535:
                raise Unavailable(f"only {len(out)} free ports are left to reserve")
            if port not in busy:
                out.append(port)
            port += 1
        until = time.monotonic() + HOLD_SECONDS
        self._until.update(dict.fromkeys(out, until))
        return out

    def release(self, ports: Iterable[int]) -> None:
        """A forward took these ports: they are no longer held."""
        for port in ports:
            self._until.pop(port, None)


#: the dispatcher's holds
RESERVED = Reservations()
