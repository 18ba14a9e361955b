"""cgroup.*: 0-core's named cpuset and memory groups, on cgroup v2 or v1.

Groups live under a ``core0`` group of each hierarchy (``<root>/core0/<name>``), never at the
root, so they cannot collide with what else the machine runs. Each controller is taken from
the unified (v2) hierarchy when it is enabled there, else from its v1 hierarchy (hosts with
only v1, and hybrid hosts where cpuset and memory are bound to v1); 412 when neither exists.
On v2 one group serves both controllers; it is listed under each controller enabled on it.
Memory limits are reported in bytes, 0 meaning "no limit".
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Annotated, Literal

from core0 import mountinfo
from core0.context import Context
from core0.errors import BadRequest, CommandError, Conflict, NotFound, PreconditionFailed
from core0.registry import Role, command
from core0.schema import NAME, Doc, NoArgs, Range, Schema

PARENT = "core0"
Subsystem = Literal["cpuset", "memory"]
#: v1 "unlimited" (PAGE_COUNTER_MAX pages on 4 KiB pages) and above counts as no limit
UNLIMITED = 1 << 62


@dataclass(frozen=True)
class Hierarchy:
    root: str
    v2: bool

    def base(self) -> str:
        return f"{self.root}/{PARENT}"

    def path(self, name: str) -> str:
        return f"{self.base()}/{name}"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _write(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        what = f"{os.path.basename(path)} = {value!r:.40}"
        if e.errno == errno.ESRCH:
            raise NotFound(f"no such process: {value}") from None
        if e.errno in (errno.EINVAL, errno.ERANGE):
            raise BadRequest(f"{what}: {e.strerror}") from None
        if e.errno == errno.EBUSY:
            raise Conflict(f"{what}: {e.strerror}") from None
        raise CommandError(f"{what}: {e.strerror}") from None


def hierarchy(subsystem: str) -> Hierarchy:
    """Where ``subsystem``'s groups live (412 if the machine has no such controller)."""
    mounts = mountinfo.read()
    for m in mounts:
        if m.fstype == "cgroup2":
            try:
                if subsystem in _read(f"{m.mountpoint}/cgroup.controllers").split():
                    return Hierarchy(m.mountpoint, True)
            except OSError:
                continue
    for m in mounts:
        if m.fstype == "cgroup" and subsystem in m.super_options:
            return Hierarchy(m.mountpoint, False)
    raise PreconditionFailed(f"this machine has no {subsystem} cgroup controller")


def _exists(h: Hierarchy, subsystem: str, name: str) -> bool:
    p = h.path(name)
    if not os.path.isdir(p):
        return False
    if h.v2:
        try:
            return subsystem in _read(f"{p}/cgroup.controllers").split()
        except OSError:
            return False
    return True


def _get(subsystem: str, name: str) -> Hierarchy:
    h = hierarchy(subsystem)
    if not _exists(h, subsystem, name):
        raise NotFound(f"no {subsystem} cgroup {name}")
    return h


def _copy_cpuset(parent: str, child: str) -> None:
    for f in ("cpuset.cpus", "cpuset.mems"):
        if not _read(f"{child}/{f}"):
            _write(f"{child}/{f}", _read(f"{parent}/{f}"))


def _mkdir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:  # a control file of that name (tasks, cgroup.procs...)
        raise BadRequest(f"{os.path.basename(path)}: a reserved cgroup name") from None
    except OSError as e:
        raise CommandError(f"cannot create cgroup {path}: {e.strerror}") from None


def _ensure(subsystem: str, name: str) -> Hierarchy:
    h = hierarchy(subsystem)
    if h.v2:
        _write(f"{h.root}/cgroup.subtree_control", f"+{subsystem}")
        _mkdir(h.base())
        _write(f"{h.base()}/cgroup.subtree_control", f"+{subsystem}")
        _mkdir(h.path(name))
        return h
    if not os.path.isdir(h.base()):
        _mkdir(h.base())
        if subsystem == "cpuset":
            _copy_cpuset(h.root, h.base())
    if not os.path.isdir(h.path(name)):
        _mkdir(h.path(name))
        _reset(h, subsystem, name)
    return h


def _reset(h: Hierarchy, subsystem: str, name: str) -> None:
    p = h.path(name)
    if subsystem == "cpuset":
        for f in ("cpuset.cpus", "cpuset.mems"):
            parent = h.base() if not h.v2 else h.root
            src = f"{parent}/{f}" if not h.v2 else f"{parent}/{f}.effective"
            _write(f"{p}/{f}", _read(src) if os.path.exists(src) else "")
        return
    if h.v2:
        _write(f"{p}/memory.max", "max")
        if os.path.exists(f"{p}/memory.swap.max"):
            _write(f"{p}/memory.swap.max", "max")
        return
    if os.path.exists(f"{p}/memory.memsw.limit_in_bytes"):
        _write(f"{p}/memory.memsw.limit_in_bytes", "-1")
    _write(f"{p}/memory.limit_in_bytes", "-1")


def _pids(path: str) -> list[int]:
    return [int(x) for x in _read(f"{path}/cgroup.procs").split()]


@command("cgroup.list", role=Role.READ_ONLY)
async def list_(ctx: Context, args: NoArgs) -> dict[str, list[str]]:
    """Groups by controller: ``{"cpuset": [names], "memory": [names]}`` (a controller this
    machine lacks is left out)."""
    out: dict[str, list[str]] = {}
    for sub in ("cpuset", "memory"):
        try:
            h = hierarchy(sub)
        except PreconditionFailed:
            continue
        try:
            names = sorted(e.name for e in os.scandir(h.base()) if e.is_dir())
        except FileNotFoundError:
            names = []
        out[sub] = [n for n in names if _exists(h, sub, n)]
    return out


@dataclass(frozen=True)
class GroupArgs(Schema):
    subsystem: Annotated[Subsystem, Doc("controller: cpuset or memory")]
    name: Annotated[str, Doc("group name"), NAME]


@command("cgroup.ensure", GroupArgs)
async def ensure(ctx: Context, args: GroupArgs) -> None:
    """Create the group if it does not exist (a new cpuset group gets its parent's CPUs and
    memory nodes; a new memory group no limit)."""
    _ensure(args.subsystem, args.name)


@command("cgroup.remove", GroupArgs)
async def remove(ctx: Context, args: GroupArgs) -> None:
    """Remove the group; its processes move to the hierarchy's root first. Nothing to do if
    it does not exist (as 0-core)."""
    h = hierarchy(args.subsystem)
    p = h.path(args.name)
    if not os.path.isdir(p):
        return
    for pid in _pids(p):
        try:
            _write(f"{h.root}/cgroup.procs", str(pid))
        except NotFound:
            continue
    try:
        os.rmdir(p)
    except OSError as e:
        raise Conflict(f"cannot remove cgroup {args.name}: {e.strerror}") from None


@command("cgroup.reset", GroupArgs)
async def reset(ctx: Context, args: GroupArgs) -> None:
    """Lift the group's limits: a cpuset gets its parent's CPUs and nodes again, a memory
    group no limit. 404 if missing."""
    _reset(_get(args.subsystem, args.name), args.subsystem, args.name)


@command("cgroup.tasks", GroupArgs, role=Role.READ_ONLY)
async def tasks(ctx: Context, args: GroupArgs) -> list[int]:
    """The pids in the group. 404 if missing."""
    return _pids(_get(args.subsystem, args.name).path(args.name))


@dataclass(frozen=True)
class TaskArgs(Schema):
    subsystem: Annotated[Subsystem, Doc("controller: cpuset or memory")]
    name: Annotated[str, Doc("group name"), NAME]
    pid: Annotated[int, Doc("process id"), Range(1)]


@command("cgroup.task-add", TaskArgs)
async def task_add(ctx: Context, args: TaskArgs) -> None:
    """Move process ``pid`` into the group. 404 if the group or the process is missing."""
    h = _get(args.subsystem, args.name)
    _write(f"{h.path(args.name)}/cgroup.procs", str(args.pid))


@command("cgroup.task-remove", TaskArgs)
async def task_remove(ctx: Context, args: TaskArgs) -> None:
    """Move process ``pid`` out of the group, to the hierarchy's root (as 0-core). 404 if the
    group is missing, 400 if the process is not in it."""
    h = _get(args.subsystem, args.name)
    if args.pid not in _pids(h.path(args.name)):
        raise BadRequest(f"process {args.pid} is not in {args.subsystem} cgroup {args.name}")
    _write(f"{h.root}/cgroup.procs", str(args.pid))


@dataclass(frozen=True)
class CpusetArgs(Schema):
    name: Annotated[str, Doc("cpuset group name"), NAME]
    cpus: Annotated[str | None, Doc("CPUs to allow, e.g. 0-1,3 (empty: unchanged)")] = None
    mems: Annotated[str | None, Doc("memory nodes to allow (empty: unchanged)")] = None


@command("cgroup.cpuset.spec", CpusetArgs)
async def cpuset_spec(ctx: Context, args: CpusetArgs) -> dict[str, str]:
    """Set the group's ``cpus`` and/or ``mems`` when given, and return both: {cpus, mems}.
    400 for a value the kernel refuses, 404 if the group is missing."""
    p = _get("cpuset", args.name).path(args.name)
    if args.cpus:
        _write(f"{p}/cpuset.cpus", args.cpus)
    if args.mems:
        _write(f"{p}/cpuset.mems", args.mems)
    return {"cpus": _read(f"{p}/cpuset.cpus"), "mems": _read(f"{p}/cpuset.mems")}


@dataclass(frozen=True)
class MemoryArgs(Schema):
    name: Annotated[str, Doc("memory group name"), NAME]
    mem: Annotated[int, Doc("memory limit in bytes (0: leave the limits unchanged)"),
                   Range(0)] = 0
    swap: Annotated[int, Doc("swap allowed beyond mem, in bytes (with mem)"), Range(0)] = 0


def _limit(value: str) -> int:
    if value == "max":
        return 0
    n = int(value)
    return 0 if n >= UNLIMITED else n


def _memory(h: Hierarchy, p: str, args: MemoryArgs) -> dict[str, int]:
    if h.v2:
        swap_file = f"{p}/memory.swap.max"
        if args.mem:
            _write(f"{p}/memory.max", str(args.mem))
            if os.path.exists(swap_file):
                _write(swap_file, str(args.swap))
        swap = _limit(_read(swap_file)) if os.path.exists(swap_file) else 0
        return {"mem": _limit(_read(f"{p}/memory.max")), "swap": swap}
    memsw = f"{p}/memory.memsw.limit_in_bytes"
    has_sw = os.path.exists(memsw)
    if args.mem:
        steps = [(f"{p}/memory.limit_in_bytes", args.mem)]
        if has_sw:
            steps.append((memsw, args.mem + args.swap))
        try:
            for f, val in steps:
                _write(f, str(val))
        except BadRequest:  # memsw must stay >= the limit: the other order
            for f, val in reversed(steps):
                _write(f, str(val))
    mem = _limit(_read(f"{p}/memory.limit_in_bytes"))
    total = _limit(_read(memsw)) if has_sw else 0
    return {"mem": mem, "swap": max(0, total - mem) if mem and total else 0}


@command("cgroup.memory.spec", MemoryArgs)
async def memory_spec(ctx: Context, args: MemoryArgs) -> dict[str, int]:
    """Set the group's memory limit (and the swap allowed beyond it) when ``mem`` is not 0,
    and return both: {mem, swap} in bytes, 0 = no limit. 404 if the group is missing."""
    h = _get("memory", args.name)
    return _memory(h, h.path(args.name), args)
