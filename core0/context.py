"""What a command handler gets: its job, the node's services, and safe ways to do work."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from core0 import cancel
from core0.errors import PreconditionFailed, ToolError, Unavailable
from core0.proc import process
from core0.proc.output import Message

if TYPE_CHECKING:
    from core0.boot.services import ServiceManager
    from core0.config import Config
    from core0.fleet.aggregator import Aggregator
    from core0.jobs.engine import JobEngine
    from core0.jobs.job import Job
    from core0.registry import Role

T = TypeVar("T")

#: threads for blocking libraries (libvirt, netlink batches); never for child processes
_THREADS = asyncio.Semaphore(8)


class Node(Protocol):
    """The running node as handlers see it (the dispatcher implements it)."""

    services: ServiceManager
    #: level-10 statistics of jobs (core0.fleet.aggregator)
    aggregator: Aggregator

    async def reload(self) -> dict[str, Any]:
        """Re-read the configuration and apply service changes."""
        ...


@dataclass(frozen=True)
class ProcessSpec:
    """Returned by a handler to make the job a process job (output, kill, adoption).

    The job engine spawns ``argv`` in its own session with output to files, enforces
    ``max_time`` on the process group and reports ``1000 + exit status``.
    """

    argv: list[str]
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    stdin: bytes = b""
    #: a label for job.list (defaults to argv)
    label: str = ""
    #: ``argv[0]`` already resolved by the handler (else the engine looks it up in PATH)
    exe: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Context:
    """The handler's view of its job and of the node."""

    def __init__(self, engine: JobEngine, job: Job):
        self.engine = engine
        self.job = job
        self.config: Config = engine.cfg
        self.started = time.monotonic()
        #: the only named network namespaces the command may use, by name and identity, when
        #: its caller fixed them (an ``ip.*`` command run inside a container: its netns);
        #: None: the role's rule (core0/commands/ip.py ``owned_netns``)
        self.netns_only: dict[str, int] | None = None

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def role(self) -> Role:
        """The role of the queue this command arrived on (never from the payload)."""
        return self.job.role

    @property
    def scope(self) -> str | None:
        """The id prefix of the private queue this command arrived on (None: not private);
        below admin, such a caller sees and acts only on its own queue's jobs."""
        return getattr(self.job, "scope", None)

    def may_act_for(self, owner: Role, owner_scope: str | None) -> bool:
        """May this command act on what a queue of role ``owner`` and private-queue scope
        ``owner_scope`` made (a container, a port forward's owner)? The rule of jobs
        (:meth:`Role.sees`); core0's own jobs (not from the bus) act on everything."""
        if getattr(self.job, "internal", False):
            return True
        return self.job.role.sees(self.scope, owner, owner_scope or None)

    @property
    def tags(self) -> list[str]:
        return list(self.job.cmd.tags or [])

    @property
    def node(self) -> Node:
        """The running node (503 when the job runs outside a dispatcher)."""
        node = self.engine.node
        if node is None:
            raise Unavailable("the dispatcher is not running")
        return node

    @property
    def services(self) -> ServiceManager:
        """The node's startup services."""
        return self.node.services

    def emit(self, level: int, text: str) -> None:
        """Send an output message (streamed to ``log:<id>``, and ``stream:<id>`` if asked)."""
        self.job.output.add([Message(level, text)])

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | int | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        check: bool = True,
        keep_fds: Sequence[int] = (),
    ) -> process.RunResult:
        """Run a tool (argv list, never a shell) and capture its output.

        ``check`` raises ToolError on a non-zero status. A missing binary raises
        PreconditionFailed (412) naming it. ``keep_fds`` are inherited by the tool.
        """
        try:
            res = await process.run(argv, stdin=stdin, env=env, cwd=cwd, timeout=timeout,
                                    keep_fds=keep_fds)
        except FileNotFoundError:
            raise PreconditionFailed(f"{argv[0]} is not installed on this node") from None
        if check and res.status != 0:
            raise ToolError(list(res.argv), res.status, res.stderr, res.stdout)
        return res

    async def to_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking library call in a bounded thread pool. When the job is cancelled
        (killed, past its max_time, the dispatcher stopping), the work's
        :func:`core0.cancel.check` calls stop it at its next step (core0/cancel.py)."""
        async with _THREADS:
            return await cancel.in_thread(fn, *args)

    async def long_work(self, fn: Callable[..., T], *args: Any, wait: bool = False) -> T:
        """Run long blocking work (a download, an image unpacked, a tree chowned) in a
        thread of its own pool, so that slow transfers never hold up the short library calls
        of :meth:`to_thread` (``ip.*``, ``info.*``…); cancelled as :meth:`to_thread`'s
        (``wait``: the cancelled job waits for the thread to stop, e.g. before it removes
        what the thread writes into)."""
        return await cancel.long_work(fn, *args, wait=wait)
