"""Running storage tools: stderr → typed errors, and a tool whose stdout goes to a file.

Both go through core0's own spawner and its one reaper (``ctx.run`` / ``core0.process``):
no shell, no ``subprocess``.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Awaitable, Callable, Sequence

from core0 import cancel
from core0.backoff import Backoff
from core0.context import Context
from core0.errors import (
    BadRequest,
    CommandError,
    Conflict,
    NotFound,
    PreconditionFailed,
    ToolError,
)
from core0.proc import process
from core0.proc.process import RunResult

#: (stderr pattern, error class), first match wins
Rule = tuple[str, type[CommandError]]

RULES: list[Rule] = [
    (r"Function not implemented|not supported|Operation not supported|"
     r"modules are not loaded|unsupported|unknown filesystem type", PreconditionFailed),
    (r"already exists|exists already|is part of (active|exported) pool|"
     r"already mounted|is mounted|mountpoint is busy|"
     r"busy|in use|has children|dependent clones|snapshot is cloned|more recent snapshots|"
     r"has been modified|contains a filesystem|Read-only file system|"
     r"already in (a|the) pool|is already|holds? .* exists|overlaps|"
     r"partition.*(being used|in use)", Conflict),
    (r"does not exist|no such pool|no such device|No such file or directory|"
     r"not found|No such partition|no such dataset|not a btrfs|not mounted|"
     r"[Nn]ot a (valid )?(btrfs )?subvolume|no pools available", NotFound),
    (r"invalid|[Bb]ad property|must be one of|not a valid|Invalid argument|usage:|"
     r"unrecognized|unknown|too small|too large|[Ee]xpecting|can't have|"
     r"must be|cannot be|out of range|is not a block device|is reserved", BadRequest),
]


def classify(stderr: str, rules: Sequence[Rule] = RULES) -> type[CommandError] | None:
    for pattern, cls in rules:
        if re.search(pattern, stderr):
            return cls
    return None


def tool_error(res: RunResult, rules: Sequence[Rule] = RULES) -> CommandError:
    """The typed error for a failed tool run (ToolError/500 when nothing matches)."""
    text = (res.stderr.strip() or res.stdout.strip())[-2000:]
    cls = classify(text, rules)
    if cls is None:
        return ToolError(list(res.argv), res.status, res.stderr, res.stdout)
    return cls(f"{os.path.basename(res.argv[0])}: {text}")


async def run(
    ctx: Context,
    argv: Sequence[str],
    *,
    stdin: bytes | int | None = None,
    timeout: float | None = None,
    rules: Sequence[Rule] = RULES,
    check: bool = True,
) -> RunResult:
    """``ctx.run`` with failures turned into 404/409/412/400 by the tool's stderr."""
    res = await ctx.run(argv, stdin=stdin, timeout=timeout, check=False)
    if check and res.status != 0:
        raise tool_error(res, rules)
    return res


async def retry_busy(
    ctx: Context,
    argv: Sequence[str],
    *,
    budget: float = 30.0,
    delay: float = 0.05,
    busy: str = r"busy",
    rules: Sequence[Rule] = RULES,
    done: Callable[[Sequence[str]], Awaitable[None]] | None = None,
) -> RunResult:
    """Run ``argv``; while it fails with a "busy" stderr, wait (doubling, at most 1 s) and
    retry, for at most ``budget`` seconds. A target still busy then gives 409. ``done`` is
    awaited after the run that succeeded, within its step (the fault tests' hold).

    zfs-fuse answers "dataset is busy" to a destroy/rename of a dataset that was mounted a
    moment ago, or whose snapshot's clone was, for up to tens of seconds after the unmount,
    while no process uses it (callers check that first); it then succeeds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    # each run to its end (a kill is raised after it, or in the wait between two runs): a
    # killed zfs CLI has handed its destroy/rename/export to the daemon, which finishes it;
    # a kill held back by an earlier step is raised before the first run
    async def once() -> RunResult:
        ran = await ctx.run(argv, check=False)
        if ran.status == 0 and done is not None:
            await done(argv)
        return ran
    await asyncio.sleep(0)
    res = await cancel.atomic(once())
    told = False
    backoff = Backoff.retrying(delay, 1.0)
    while res.status != 0 and re.search(busy, res.stderr) and loop.time() < deadline:
        wait = backoff.next()
        if not told and wait >= 0.4:
            ctx.emit(4, f"{os.path.basename(argv[0])} reports busy; retrying")
            told = True
        await asyncio.sleep(wait)
        res = await cancel.atomic(once())
    if res.status != 0:
        raise tool_error(res, rules)
    return res


async def run_fds(
    argv: Sequence[str],
    *,
    stdin: int | None,
    stdout: int | None,
    progress: Callable[[], None] | None = None,
    interval: float = 1.0,
) -> RunResult:
    """Run a tool with its stdin and/or stdout on given fds (a stream file), capturing
    stderr. ``progress`` is called every ``interval`` seconds while it runs.

    Why not ``ctx.run``: it captures stdout in memory, and a ``zfs send`` stream must go to a
    file. Spawned with core0's spawner and awaited through the one reaper; on cancellation
    (job.kill, max_time) the tool's process group is killed.
    """
    reaper = process.get_reaper()
    err_r, err_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    os.set_blocking(err_w, True)
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        try:
            sp = process.spawn(
                list(argv),
                stdin=null if stdin is None else stdin,
                stdout=null if stdout is None else stdout,
                stderr=err_w,
            )
        except FileNotFoundError:
            os.close(err_r)
            raise PreconditionFailed(f"{argv[0]} is not installed on this node") from None
    finally:
        os.close(err_w)
        os.close(null)
    done = reaper.watch(sp.pid)
    reader = asyncio.ensure_future(process.read_all(err_r, 1 << 16))
    try:
        while True:
            try:
                status = await asyncio.wait_for(asyncio.shield(done), interval)
                break
            except TimeoutError:
                if progress is not None:
                    progress()
        err = await reader
    except BaseException:
        process.killpg(sp.pid, signal.SIGKILL)
        await process.ended([reader])  # off the event loop before its pipe is closed
        raise
    finally:
        os.close(err_r)
    code, sig = process.exit_code(status)
    return RunResult(list(argv), code if sig == 0 else -sig, "", err.decode("utf-8", "replace"))
