"""Startup service specs: strict parsing, conditions, ``{var}`` substitution, ordering, hashes.

Pure functions over ``Config.startup`` (``[startup.<id>]`` tables) and the kernel command line;
the runtime (core0.boot.services) uses what they return. Nothing here touches the node.

A spec names a registered command (``name``, default ``core.system``) and its ``args``. The
effective spec is what runs: conditional argument keys (``"cond|key" = value``, 0-core's rule)
kept only when their condition holds, ``{var}`` replaced by kernel command-line values, the
arguments checked against the command's schema. Its hash (sha256 of the canonical JSON of what
runs) is the drift detector of ``core.reload``.
"""

from __future__ import annotations

import graphlib
import hashlib
import heapq
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from core0.errors import CommandError
from core0.schema import Len, Pattern, Range, Schema

PHASES = ("init", "net", "boot")
#: service ids: also the suffix of their job id ``svc:<id>``
SERVICE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
#: a service id or a phase name (the phases match it too), in ``after`` and ``before``
_ID = Annotated[str, Pattern(SERVICE_ID.pattern, what="a service id")]
JOB_PREFIX = "svc:"
#: ids core0 declares itself (cloud-config stages)
RESERVED = {"cloudconfig", "cloudconfig-runcmd"}


@dataclass(frozen=True)
class StartupTable(Schema):
    """One ``[startup.<id>]`` table as written (docs/config.md), checked strictly."""

    __unknown__ = "key"

    name: Annotated[str, Len(1)] = "core.system"
    args: dict[str, Any] = field(default_factory=dict)
    after: list[_ID] | _ID = field(default_factory=list)
    before: list[_ID] | _ID = field(default_factory=list)
    condition: str = ""
    running_delay: float = 0.0
    running_match: str = ""
    protected: bool = False
    recurring_period: Annotated[int, Range(0)] = 0
    max_restart: Annotated[int, Range(0)] = 0
    max_time: Annotated[int, Range(0)] = 0
    tags: list[str] = field(default_factory=list)
    #: a boot service as a container: ``container.run``'s arguments (root, command, …)
    container: dict[str, Any] | None = None


class SpecError(ValueError):
    """A service spec cannot be used; the message names the file, the service and the key."""


# ---------------------------------------------------------------- conditions

_TOKEN = re.compile(r"\s*(?:(?P<p>[(),])|(?P<w>[^\s(),]+))")


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise SpecError(f"bad condition {text!r} at {pos}")
        out.append(m.group("p") or m.group("w"))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def check_condition(text: str) -> None:
    """Raise SpecError when ``text`` is not a valid condition."""
    evaluate(text, {})


def evaluate(text: str, flags: Mapping[str, str]) -> bool:
    """0-core's condition syntax over kernel command-line flags.

    ``flag`` (present, with or without a value), ``flag=value`` (present with that value),
    ``not(x)``, ``and(a, b, …)``, ``or(a, b, …)``; the empty condition is true.
    """
    toks = _tokens(text)
    if not toks:
        return True
    pos = 0

    def expr() -> bool:
        nonlocal pos
        if pos >= len(toks):
            raise SpecError(f"bad condition {text!r}: unexpected end")
        tok = toks[pos]
        pos += 1
        if tok in "(),":
            raise SpecError(f"bad condition {text!r}: unexpected {tok!r}")
        if pos < len(toks) and toks[pos] == "(":
            op = tok.lower()
            if op not in ("and", "or", "not"):
                raise SpecError(f"bad condition {text!r}: unknown operator {tok!r}")
            pos += 1
            args = [expr()]
            while pos < len(toks) and toks[pos] == ",":
                pos += 1
                args.append(expr())
            if pos >= len(toks) or toks[pos] != ")":
                raise SpecError(f"bad condition {text!r}: missing ')'")
            pos += 1
            if op == "not":
                if len(args) != 1:
                    raise SpecError(f"bad condition {text!r}: not() takes one argument")
                return not args[0]
            return all(args) if op == "and" else any(args)
        key, sep, value = tok.partition("=")
        if not key:
            raise SpecError(f"bad condition {text!r}: empty flag name")
        if sep:
            return flags.get(key) == value
        return key in flags

    result = expr()
    if pos != len(toks):
        raise SpecError(f"bad condition {text!r}: unexpected {toks[pos]!r}")
    return result


# ---------------------------------------------------------------- arguments

_VAR = re.compile(r"\{([A-Za-z0-9_.:-]+)\}")


def substitute(value: Any, variables: Mapping[str, str]) -> Any:
    """Replace ``{var}`` in every string of ``value`` (recursively) by the kernel command-line
    value of ``var``; unknown names are left as they are."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: variables.get(m.group(1), m.group(0)), value)
    if isinstance(value, list):
        return [substitute(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, variables) for k, v in value.items()}
    return value


def conditional_args(args: dict[str, Any], flags: Mapping[str, str], where: str) -> dict[str, Any]:
    """Apply 0-core's conditional keys: ``"cond|key" = value`` sets ``key`` only when ``cond``
    holds (it then wins over a plain ``key``). Nested tables are processed the same way."""
    plain: dict[str, Any] = {}
    cond: list[tuple[str, Any]] = []
    for k, v in args.items():
        if isinstance(v, dict):
            v = conditional_args(v, flags, f"{where}.{k}")
        if "|" in k:
            c, _, key = k.partition("|")
            if not key:
                raise SpecError(f"{where}: conditional key {k!r} has no name after '|'")
            try:
                ok = evaluate(c, flags)
            except SpecError as e:
                raise SpecError(f"{where}.{k}: {e}") from None
            if ok:
                cond.append((key, v))
        else:
            plain[k] = v
    for key, v in cond:
        plain[key] = v
    return plain


# ---------------------------------------------------------------- one spec


@dataclass(frozen=True)
class ServiceSpec:
    """The effective spec of one service (what runs, and when)."""

    id: str
    source: str = ""
    name: str = "core.system"
    args: dict[str, Any] = field(default_factory=dict)
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    condition: str = ""
    #: the condition held on this node
    enabled: bool = True
    running_delay: float = 0.0
    running_match: str = ""
    protected: bool = False
    recurring_period: int = 0
    max_restart: int = 0
    max_time: int = 0
    tags: tuple[str, ...] = ()

    @property
    def oneshot(self) -> bool:
        """Negative ``running_delay``: running means "exited 0"."""
        return self.running_delay < 0

    @property
    def job_id(self) -> str:
        return JOB_PREFIX + self.id

    def runtime(self) -> dict[str, Any]:
        """What the process/command is: the fields whose change means a restart."""
        return {
            "name": self.name,
            "args": self.args,
            "enabled": self.enabled,
            "protected": self.protected,
            "recurring_period": self.recurring_period,
            "max_restart": self.max_restart,
            "max_time": self.max_time,
            "tags": list(self.tags),
        }

    @property
    def hash(self) -> str:
        text = json.dumps(self.runtime(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "source": self.source, "name": self.name, "args": self.args,
            "after": list(self.after), "before": list(self.before),
            "condition": self.condition, "enabled": self.enabled,
            "running_delay": self.running_delay, "running_match": self.running_match,
            "protected": self.protected, "recurring_period": self.recurring_period,
            "max_restart": self.max_restart, "max_time": self.max_time, "tags": list(self.tags),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServiceSpec:
        return cls(
            id=d["id"], source=d.get("source", ""), name=d.get("name", "core.system"),
            args=dict(d.get("args") or {}), after=tuple(d.get("after") or ()),
            before=tuple(d.get("before") or ()), condition=d.get("condition", ""),
            enabled=bool(d.get("enabled", True)),
            running_delay=float(d.get("running_delay", 0.0)),
            running_match=d.get("running_match", ""), protected=bool(d.get("protected")),
            recurring_period=int(d.get("recurring_period") or 0),
            max_restart=int(d.get("max_restart") or 0), max_time=int(d.get("max_time") or 0),
            tags=tuple(d.get("tags") or ()),
        )


def _names(raw: list[str] | str) -> tuple[str, ...]:
    """``after``/``before`` (checked by :class:`StartupTable`) as a tuple without repeats."""
    return tuple(dict.fromkeys([raw] if isinstance(raw, str) else raw))


def parse_spec(sid: str, raw: Mapping[str, Any], cmdline: Mapping[str, str],
               *, check_args: bool = True) -> ServiceSpec:
    """Check one ``[startup.<sid>]`` table (:class:`StartupTable`, then the rules between its
    keys) and build its effective spec (SpecError naming the file, the service and the key).
    ``check_args`` validates ``args`` against the command's schema (needs the registry)."""
    source = str(raw.get("__source__", "") or "")
    where = f"{source or 'config'}: [startup.{sid}]"
    if not SERVICE_ID.fullmatch(sid):
        raise SpecError(f"{where}: bad service id (letters, digits, '_', '.', '-'; ≤ 100)")
    if sid in PHASES:
        raise SpecError(f"{where}: {sid!r} is a phase name, not a service id")
    try:
        t = StartupTable.parse({k: v for k, v in raw.items() if k != "__source__"}, where)
    except CommandError as e:
        raise SpecError(e.message) from None
    try:
        enabled = evaluate(t.condition, cmdline)
    except SpecError as e:
        raise SpecError(f"{where}.condition: {e}") from None
    name, raw_args = t.name, t.args
    if t.container is not None:
        if t.name != "core.system" or t.args:
            raise SpecError(f"{where}.container: excludes name and args")
        name, raw_args = "container.run", t.container
    args = substitute(conditional_args(raw_args, cmdline, f"{where}.args"), cmdline)
    if t.running_match:
        try:
            re.compile(t.running_match)
        except re.error as e:
            raise SpecError(f"{where}.running_match: bad regex: {e}") from None
    after, before = _names(t.after), _names(t.before)
    for b in before:
        if b in PHASES:
            raise SpecError(f"{where}.before: {b!r} is a phase; use after = [...] to pick one")
    if sid in after or sid in before:
        raise SpecError(f"{where}: a service cannot depend on itself")
    spec = ServiceSpec(
        id=sid, source=source, name=name, args=args, after=after, before=before,
        condition=t.condition, enabled=enabled, running_delay=t.running_delay,
        running_match=t.running_match, protected=t.protected,
        recurring_period=t.recurring_period, max_restart=t.max_restart, max_time=t.max_time,
        tags=tuple(t.tags),
    )
    if spec.protected and spec.oneshot:
        raise SpecError(f"{where}: a oneshot (running_delay < 0) cannot be protected")
    if spec.protected and spec.recurring_period:
        raise SpecError(f"{where}: protected and recurring_period exclude each other")
    if check_args:
        _check_args(spec, where)
    return spec


def _check_args(spec: ServiceSpec, where: str) -> None:
    from core0 import registry

    registry.load_all()
    cmd = registry.get(spec.name)
    if cmd is None or cmd.internal:
        # core0's own commands (core.service…) are not for declared services either
        raise SpecError(f"{where}.name: unknown command {spec.name!r}")
    try:
        cmd.args.parse(spec.args, "args")
    except CommandError as e:
        raise SpecError(f"{where}: {e.message}") from None


# ---------------------------------------------------------------- the whole set


@dataclass
class Plan:
    """Specs of every declared service, their order and what is wrong with some of them."""

    specs: dict[str, ServiceSpec]
    #: service → services it waits for (its ``after`` services + those naming it in ``before``)
    deps: dict[str, list[str]]
    #: service → index in PHASES
    phase: dict[str, int]
    #: service → why it cannot run (invalid spec, unknown dependency, cycle)
    errors: dict[str, str]
    #: services in a valid start order (phase, then dependencies)
    order: list[str]

    def error_text(self) -> str:
        return "; ".join(f"{k}: {v}" for k, v in sorted(self.errors.items()))


def plan(startup: Mapping[str, Mapping[str, Any]], cmdline: Mapping[str, str],
         *, check_args: bool = True, extra: Mapping[str, ServiceSpec] | None = None) -> Plan:
    """Parse every service and order them. Problems are collected per service (never raised):
    the boot refuses just those services, a reload refuses the whole config."""
    specs: dict[str, ServiceSpec] = dict(extra or {})
    errors: dict[str, str] = {}
    declared = set(startup) | set(specs)
    for sid, raw in startup.items():
        if sid in RESERVED:
            errors[sid] = f"{raw.get('__source__', 'config')}: [startup.{sid}]: reserved id"
            continue
        try:
            specs[sid] = parse_spec(sid, raw, cmdline, check_args=check_args)
        except SpecError as e:
            errors[sid] = str(e)
    deps: dict[str, list[str]] = {sid: [] for sid in declared}
    for sid, spec in specs.items():
        for d in spec.after:
            if d in PHASES:
                continue
            if d not in declared:
                errors.setdefault(sid, f"{spec.source or 'config'}: [startup.{sid}].after: "
                                       f"unknown service {d!r}")
            elif d not in deps[sid]:
                deps[sid].append(d)
        for b in spec.before:
            if b not in declared:
                errors.setdefault(sid, f"{spec.source or 'config'}: [startup.{sid}].before: "
                                       f"unknown service {b!r}")
            elif sid not in deps[b]:
                deps[b].append(sid)
    for cycle in find_cycles(deps):
        text = " → ".join([*cycle, cycle[0]])
        for sid in cycle:
            errors.setdefault(sid, f"dependency cycle: {text}")
    phase: dict[str, int] = {}

    def phase_of(sid: str, seen: frozenset[str]) -> int:
        if sid in phase:
            return phase[sid]
        spec = specs.get(sid)
        if spec is None:
            p = len(PHASES) - 1
        else:
            named = [PHASES.index(a) for a in spec.after if a in PHASES]
            p = max(named) if named else (len(PHASES) - 1 if not spec.after else 0)
        for d in deps.get(sid, []):
            if d not in seen and d not in errors:
                p = max(p, phase_of(d, seen | {sid}))
        phase[sid] = p
        return p

    for sid in sorted(declared):
        phase_of(sid, frozenset())
    order = topo_order(deps, phase)
    return Plan(specs, deps, phase, errors, order)


def find_cycles(deps: Mapping[str, list[str]]) -> list[list[str]]:
    """Dependency cycles, each as a list in dependency order (each member depends on the next,
    the last on the first), starting at its smallest id. graphlib names one cycle per
    :class:`graphlib.CycleError`: its members are set aside and the rest is checked again, so
    every independent cycle is reported (a service on two cycles that share members is reported
    with the first one)."""
    out: list[list[str]] = []
    removed: set[str] = set()
    while True:
        graph = {sid: [d for d in deps[sid] if d not in removed]
                 for sid in sorted(deps) if sid not in removed}
        try:
            graphlib.TopologicalSorter(graph).prepare()
            return out
        except graphlib.CycleError as e:
            # graphlib's list: each node precedes (is a dependency of) the next; first == last
            cycle = list(reversed(e.args[1][1:]))
            start = cycle.index(min(cycle))
            out.append(cycle[start:] + cycle[:start])
            removed.update(cycle)


def topo_order(deps: Mapping[str, list[str]], phase: Mapping[str, int]) -> list[str]:
    """Services by phase, each after its dependencies (graphlib); among those ready, the
    lowest (phase, id) first. Members of cycles, and what depends on them, come last."""
    def key(sid: str) -> tuple[int, str]:
        return phase.get(sid, 0), sid

    stuck = {sid for cycle in find_cycles(deps) for sid in cycle}
    stuck |= {sid for sid, ds in deps.items() if sid in ds}
    grew = True
    while grew:
        more = {sid for sid, ds in deps.items() if sid not in stuck and stuck.intersection(ds)}
        stuck |= more
        grew = bool(more)
    sorter = graphlib.TopologicalSorter({sid: ds for sid, ds in deps.items() if sid not in stuck})
    sorter.prepare()
    ready = [key(sid) for sid in sorter.get_ready()]
    heapq.heapify(ready)
    done: list[str] = []
    while ready:
        _, sid = heapq.heappop(ready)
        done.append(sid)
        sorter.done(sid)
        for nxt in sorter.get_ready():
            heapq.heappush(ready, key(nxt))
    return done + sorted(stuck, key=key)
