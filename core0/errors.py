"""Typed errors of command handlers. The job engine turns each into a result state + code
(``core0.jobs.result.exception_result``, the one place where exceptions become results).

Handlers raise these; a ``TimeoutError`` of their own (a tool's or a socket's timeout) becomes
:class:`TimedOut` (504, state ERROR); anything else that escapes a handler becomes a 500 result
(logged with its traceback) and, like every error, does not stop a recurring or restarting job.
:class:`Timeout` and :class:`Killed` are the engine's own: ``max_time`` and ``job.kill``.
No exception ever leaves the job engine.
"""

from __future__ import annotations

from core0_client.protocol import Code, State


class CommandError(Exception):
    """Base of every error that becomes an ERROR result with an HTTP-like code."""

    code: int = Code.INTERNAL
    state: State = State.ERROR

    def __init__(self, message: str, *, field: str | None = None, code: int | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code


class BadRequest(CommandError):
    """Arguments that do not fit the command's schema or domain rules (400)."""

    code = Code.BAD_REQUEST


class Forbidden(CommandError):
    """The queue the command arrived on does not allow it (403)."""

    code = Code.FORBIDDEN


class NotFound(CommandError):
    """The object (job, file, disk, link…) does not exist (404)."""

    code = Code.NOT_FOUND


class NotAcceptable(CommandError):
    code = Code.NOT_ACCEPTABLE


class Conflict(CommandError):
    """The object exists already, or is busy/in use (409)."""

    code = Code.CONFLICT


class PreconditionFailed(CommandError):
    """The node lacks what the command needs (a kernel feature, a tool, a zvol…) (412)."""

    code = Code.PRECONDITION_FAILED


class TooLarge(CommandError):
    code = Code.TOO_LARGE


class Unavailable(CommandError):
    """A limit is reached or a backing service is down (503)."""

    code = Code.UNAVAILABLE


class Interrupted(CommandError):
    """The dispatcher stopped (killed, crashed or restarted) while a command that changes the
    node ran: it is answered with this rather than run a second time."""

    code = Code.UNAVAILABLE


class UnknownCommand(CommandError):
    code = Code.NOT_FOUND
    state = State.UNKNOWN_CMD


class Internal(CommandError):
    code = Code.INTERNAL


class Timeout(CommandError):
    """The job's ``max_time`` was reached (408, state TIMEOUT). Raised by the job engine only."""

    code = Code.TIMEOUT
    state = State.TIMEOUT


class Killed(CommandError):
    """The job was killed (``job.kill``) before it ended (499, state KILLED)."""

    code = Code.KILLED
    state = State.KILLED


#: "gateway timeout": something the handler waited for did not answer in time
TIMED_OUT = 504


class TimedOut(CommandError):
    """Something the handler waited for timed out (a tool run with a timeout, a socket, a
    remote service): 504, state ERROR. Not ``max_time``, which is :class:`Timeout`."""

    code = TIMED_OUT


class ToolError(CommandError):
    """An external tool failed; carries its argv, exit status and stderr tail."""

    code = Code.INTERNAL

    def __init__(self, argv: list[str], status: int, stderr: str, stdout: str = ""):
        tail = stderr.strip()[-2000:] or stdout.strip()[-2000:]
        super().__init__(f"{argv[0]} exited with status {status}: {tail}")
        self.argv = argv
        self.status = status
        self.stderr = stderr
        self.stdout = stdout
