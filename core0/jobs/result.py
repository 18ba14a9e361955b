"""Building results: a builtin's value, a typed error, a process's exit."""

from __future__ import annotations

import errno
import json
import logging
import signal
from typing import TYPE_CHECKING, Any

from core0_client.protocol import Code, Level, Result, State, now_ms

from core0.errors import CommandError, Internal, TimedOut, Unavailable
from core0.proc import process

if TYPE_CHECKING:
    from core0.jobs.job import InlineJob, Job

log = logging.getLogger(__name__)

#: builtins' values: anything not JSON-native as its str() (one encoder, built once)
_LENIENT = json.JSONEncoder(default=str)

#: signals after which a job counts as KILLED rather than failed
TERMINATING = {signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP}
#: commands whose error text is also the result's stderr (0-core's client raises with it)
_STDERR_ERRORS = ("disk.", "btrfs.", "zerotier.", "rtinfo.")
#: a full filesystem or an exhausted table: a condition of the node, not a handler's bug
_EXHAUSTED = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.ENOMEM})


def builtin_result(job: Job | InlineJob, value: Any) -> Result:
    """A builtin's return value: SUCCESS with level-20 JSON data."""
    return Result(
        id=job.id,
        command=job.cmd.command,
        state=State.SUCCESS,
        code=0,
        data=_LENIENT.encode(value),
        level=Level.RESULT_JSON,
        streams=["", ""],
        starttime=job.starttime,
        time=now_ms() - job.starttime,
        tags=job.cmd.tags,
    )


def error_result(cmd_id: str, command: str, exc: CommandError, starttime: int | None = None,
                 tags: list[str] | None = None) -> Result:
    """A typed error: its state and code, its message in ``data`` (JSON) and ``critical``."""
    start = starttime or now_ms()
    return Result(
        id=cmd_id,
        command=command,
        state=exc.state,
        code=int(exc.code),
        data=json.dumps(exc.message),
        level=Level.RESULT_JSON,
        critical=exc.message,
        # 0-core's disk.*/btrfs.*/zerotier.*/rtinfo.* were tools: its client reads their
        # failure from stderr
        streams=["", exc.message] if command.startswith(_STDERR_ERRORS) else ["", ""],
        starttime=start,
        time=now_ms() - start,
        tags=tags,
    )


def derivable(job: Job, result: Result) -> bool:
    """Whether a next dispatcher would make the same result from the job's "exited" record and
    its output files (a plain exit of a one-shot job): then no "done" record is written."""
    return (result.state in (State.SUCCESS, State.ERROR) and job.run == 1 and not job.protected
            and not job.cmd.recurring_period and not job.cmd.max_restart)


def process_result(job: Job, status: int | None, timed_out: bool) -> Result:
    """A process's exit: ``1000 + status`` (``1128 + N`` by signal N), TIMEOUT or KILLED."""
    out = job.output
    if status is None:
        state, code = State.ERROR, int(Code.INTERNAL)
        critical = out.critical or (
            "exit status unknown: the process ended while no dispatcher watched")
    else:
        exit_status, sig = process.exit_code(status)
        code = 0 if exit_status == 0 else Code.PROCESS + (exit_status if sig == 0 else 128 + sig)
        state = State.SUCCESS if code == 0 else State.ERROR
        critical = out.critical
        if timed_out:
            state = State.TIMEOUT
            critical = critical or f"max_time of {job.cmd.max_time}s reached"
        elif job.killed:
            state = State.KILLED
        elif sig:
            critical = critical or f"killed by signal {signal.Signals(sig).name}"
    return Result(
        id=job.id,
        command=job.cmd.command,
        state=state,
        code=int(code),
        data=out.data,
        level=out.level,
        streams=[out.tails[0].text(), out.tails[1].text()],
        critical=critical,
        starttime=job.starttime,
        time=now_ms() - job.starttime,
        tags=job.cmd.tags,
        container=job.container,
    )


def exception_result(cmd_id: str, command: str, exc: BaseException, starttime: int | None = None,
                     tags: list[str] | None = None) -> Result:
    """The one mapping of an exception to a result: a typed error keeps its state and code; a
    ``TimeoutError`` that is not the engine's ``max_time`` is a 504 (:class:`TimedOut`);
    an ``OSError`` that says the node ran out of something (a full state dir or disk, no file
    descriptor or memory left) is a 503 (:class:`Unavailable`: it passes once space or fds are
    freed); anything else is a handler bug: 500, logged with its traceback."""
    if isinstance(exc, CommandError):
        err = exc
    elif isinstance(exc, TimeoutError):
        err = TimedOut(f"timed out: {exc}" if str(exc) else "timed out waiting inside the command")
    elif isinstance(exc, OSError) and exc.errno in _EXHAUSTED:
        where = f": {exc.filename}" if exc.filename else ""
        log.warning("%s (%s): %s%s", command or "command", cmd_id, exc.strerror, where)
        err = Unavailable(f"the node is out of resources: {exc.strerror}{where}")
    else:
        log.error("%s (%s) failed", command or "command", cmd_id, exc_info=exc)
        err = Internal(f"internal error: {exc!r}")
    return error_result(cmd_id, command, err, starttime, tags)
