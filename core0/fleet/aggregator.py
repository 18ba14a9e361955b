"""0-core's statistics aggregator: level-10 lines from jobs, in 300 s and 3600 s windows.

Any job may print ``10::<key>:<value>|<op>[|<tags>]``: ``op`` ``A`` averages the values of each
window, ``D`` (a counter) averages its rate per second; ``tags`` are ``k=v`` pairs separated
by commas (``id=x`` names the instance: the metric is reported as ``<key>/<x>``). Each
(key, tags) pair keeps 0-core's state: ``{op, last_value, last_time, tags, current: {300:
sample, 3600: sample}, history: {300: [≤5 samples], 3600: [≤5 samples]}}``, a sample being
``{avg, total, max, count, start}`` (``start``: the window's first second). ``aggregator.query
{key?, tags?}`` returns ``{"key[/id]": state}`` as 0-core's did.

Bounded, unlike 0-core's: states live in the dispatcher's memory (not Redis; a restarted
dispatcher starts afresh), at most :data:`MAX_STATES` of them, and one untouched for an hour
is dropped; no ``statistics:<period>`` lists are written (use the Prometheus endpoint).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

#: 0-core's windows (seconds) and the closed samples kept per window
PERIODS = (300, 3600)
HISTORY = 5
#: states kept at most (least recently fed dropped first), and their idle lifetime (seconds)
MAX_STATES = 10000
IDLE = 3600.0
#: longest key and tags text accepted
MAX_TEXT = 512


class StatsLineError(ValueError):
    """A level-10 line that is not ``key:value|op[|tags]``."""


def parse_line(text: str) -> tuple[str, float, str, list[tuple[str, str]]]:
    """``key:value|A|k=v,id=x`` → (key, value, op, tags)."""
    if len(text) > MAX_TEXT:
        raise StatsLineError("too long")
    head, _, rest = text.partition("|")
    key, sep, raw = head.rpartition(":")
    if not sep or not key:
        raise StatsLineError("expected key:value")
    try:
        value = float(raw)
    except ValueError:
        raise StatsLineError(f"not a number: {raw!r}") from None
    op, _, tagtext = rest.partition("|")
    op = op.strip().upper() or "A"
    if op not in ("A", "D"):
        raise StatsLineError(f"unknown operation {op!r}")
    tags = []
    for item in tagtext.split(","):
        k, sep, v = item.partition("=")
        if sep and k.strip():
            tags.append((k.strip(), v.strip()))
    return key.strip(), value, op, sorted(tags)


@dataclass
class Sample:
    """One window's aggregate (0-core's field names)."""

    avg: float = 0.0
    total: float = 0.0
    max: float = 0.0
    count: int = 0
    start: int = 0

    def feed(self, value: float, now: int, duration: int) -> Sample | None:
        """Add a value; returns the closed sample when ``now`` starts a new window."""
        period = now // duration * duration
        if period and self.start < period and self.count:
            closed = Sample(self.avg, self.total, self.max, self.count, self.start)
            self.avg = self.total = self.max = value
            self.count, self.start = 1, period
            return closed
        if not self.start:
            self.start = period
        self.total += value
        self.count += 1
        self.avg = self.total / self.count
        self.max = value if self.count == 1 else max(self.max, value)
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"avg": self.avg, "total": self.total, "max": self.max, "count": self.count,
                "start": self.start}


@dataclass
class State:
    """The aggregation state of one (key, tags)."""

    key: str
    op: str
    tags: list[tuple[str, str]]
    last_value: float = 0.0
    last_time: int = -1
    current: dict[int, Sample] = field(default_factory=lambda: {p: Sample() for p in PERIODS})
    history: dict[int, list[Sample]] = field(default_factory=dict)
    touched: float = 0.0

    def feed(self, value: float, now: int) -> None:
        first = self.last_time == -1
        if not first and now <= self.last_time:
            self.last_value = value  # a second value within one second: kept as the last only
            return
        raw = value
        if self.op == "D":
            if first:
                self.last_value, self.last_time = raw, now
                return
            value = (value - self.last_value) / (now - self.last_time)
        self.last_value, self.last_time = raw, now
        if math.isnan(value) or math.isinf(value):
            return
        for period, s in self.current.items():
            closed = s.feed(value, now, period)
            if closed is not None:
                hist = self.history.setdefault(period, [])
                hist.append(closed)
                del hist[:-HISTORY]

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "last_value": self.last_value,
            "last_time": self.last_time,
            "tags": [{"Key": k, "Value": v} for k, v in self.tags] or None,
            "current": {str(p): s.to_dict() for p, s in self.current.items()},
            "history": {str(p): [s.to_dict() for s in h] for p, h in self.history.items()},
        }


class Aggregator:
    """The node's statistics: fed with level-10 texts, queried by ``aggregator.query``."""

    def __init__(self, clock: Any = time.time):
        self.clock = clock
        self.states: OrderedDict[tuple[str, tuple[tuple[str, str], ...]], State] = OrderedDict()
        self.rejected = 0

    def feed_line(self, text: str) -> None:
        """One level-10 message (malformed ones are counted and dropped)."""
        try:
            key, value, op, tags = parse_line(text)
        except StatsLineError:
            self.rejected += 1
            return
        self.feed(key, value, op, tags)

    def feed(self, key: str, value: float, op: str, tags: list[tuple[str, str]]) -> None:
        now = self.clock()
        ident = (key, tuple(tags))
        st = self.states.get(ident)
        if st is None or st.op != op:
            st = State(key, op, list(tags))
            self.states[ident] = st
        self.states.move_to_end(ident)
        st.touched = now
        st.feed(value, int(now))
        self._evict(now)

    def _evict(self, now: float) -> None:
        while self.states and (len(self.states) > MAX_STATES
                               or next(iter(self.states.values())).touched < now - IDLE):
            self.states.popitem(last=False)

    def query(self, key: str = "", tags: dict[str, str] | None = None) -> dict[str, Any]:
        """0-core's result: ``{"key[/id]": state}``, filtered by key and tags (all must
        match)."""
        self._evict(self.clock())
        out: dict[str, Any] = {}
        for (k, tagt), st in self.states.items():
            if key and k != key:
                continue
            have = dict(tagt)
            if any(have.get(tk) != tv for tk, tv in (tags or {}).items()):
                continue
            name = f"{k}/{have['id']}" if "id" in have else k
            out[name] = st.to_dict()
        return out
