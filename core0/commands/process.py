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
        try:
            nfd = p.num_fds()
        except psutil.Error:
            nfd = 0
        return {
            "pid": p.pid,
            "ppid": p.ppid(),
            "name": p.name(),
            "cmdline": p.cmdline(),
            "createtime": int(p.create_time() * 1000),
            "status": p.status(),
            "cpu": {"user": times.user, "system": times.system,
                    "children_user": times.children_user,
                    "children_system": times.children_system},
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
    """Processes: pid, ppid, name, cmdline, createtime (ms), status, cpu times, rss, vms,
    swap, threads, open fds. 404 when ``pid`` is given and does not exist."""
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
