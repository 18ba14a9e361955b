"""process.*: every process of the node (not only jobs)."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Annotated, Any

import psutil

from core0.context import Context
from core0.errors import BadRequest, NotFound
from core0.registry import Role, command
from core0.schema import Doc, Range, Schema

#: Linux's RLIMIT_* numbers, CPU (0) to RTTIME (15): gopsutil's RlimitStat resource ids
_RLIMITS = range(16)


def _rlimits(p: psutil.Process) -> list[dict[str, int]]:
    """[{resource, soft, hard, used}] as gopsutil's RlimitStat (-1 = unlimited; used 0)."""
    out = []
    for r in _RLIMITS:
        try:
            soft, hard = p.rlimit(r)
        except (psutil.Error, OSError):
            return []
        out.append({"resource": r, "soft": soft, "hard": hard, "used": 0})
    return out


def _info(p: psutil.Process) -> dict[str, Any]:
    mem: Any
    with p.oneshot():
        try:
            mem = p.memory_full_info()
            swap = getattr(mem, "swap", 0)
        except psutil.AccessDenied:
            mem = p.memory_info()
            swap = 0
        times = p.cpu_times()
        argv = p.cmdline()
        try:
            nfd = p.num_fds()
        except psutil.Error:
            nfd = 0
        return {
            "pid": p.pid,
            "ppid": p.ppid(),
            "name": p.name(),
            # 0-core: the command line as one string; the argv list is ``argv``
            "cmdline": " ".join(argv),
            "argv": argv,
            "createtime": int(p.create_time() * 1000),
            "status": p.status(),
            "cpu": {"user": times.user, "system": times.system,
                    "iowait": getattr(times, "iowait", 0.0), "idle": 0.0, "nice": 0.0,
                    "irq": 0.0, "softirq": 0.0, "steal": 0.0, "stolen": 0.0,
                    "guestnice": 0.0, "children_user": times.children_user,
                    "children_system": times.children_system},
            "rlimit": _rlimits(p),
            "rss": mem.rss,
            "vms": mem.vms,
            "swap": swap,
            "threads": p.num_threads(),
            "ofd": nfd,
        }


@dataclass(frozen=True)
class ListArgs(Schema):
    pid: Annotated[int | None, Doc("only this process"), Range(1)] = None


@command("process.list", ListArgs, role=Role.READ_ONLY)
async def list_(ctx: Context, args: ListArgs) -> list[dict[str, Any]]:
    """Processes: pid, ppid, name, cmdline (one string, as 0-core), argv (the list), createtime
    (ms), status, cpu times (gopsutil's keys: user, system, iowait...), rss, vms, swap,
    threads, ofd (open fds) and rlimit ([{resource, soft, hard, used}], -1 = unlimited). 404
    when ``pid`` is given and does not exist."""
    def collect() -> list[dict[str, Any]]:
        if args.pid:
            try:
                return [_info(psutil.Process(args.pid))]
            except psutil.NoSuchProcess:
                raise NotFound(f"no such process: {args.pid}") from None
        out = []
        for p in psutil.process_iter():
            try:
                out.append(_info(p))
            except psutil.Error:
                continue
        return out

    return await ctx.to_thread(collect)


@dataclass(frozen=True)
class KillArgs(Schema):
    pid: Annotated[int, Doc("process id (> 1)"), Range(2)]
    signal: Annotated[int, Doc("signal number"), Range(1, 64)] = int(signal.SIGTERM)


@command("process.kill", KillArgs, role=Role.ADMIN)
async def kill(ctx: Context, args: KillArgs) -> None:
    """Send a signal to one process. PID 1 and core0's own processes are refused (400)."""
    protected = {1, os.getpid(), os.getppid()}
    if args.pid in protected:
        raise BadRequest(f"refusing to signal pid {args.pid} (init or core0)")
    try:
        os.kill(args.pid, args.signal)
    except ProcessLookupError:
        raise NotFound(f"no such process: {args.pid}") from None
