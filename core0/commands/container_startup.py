"""``container.startup`` (internal): a container's ``/.startup.toml`` services, run by the node's
own startup machinery.

0-core's coreX ran the ``[startup.<name>]`` services of its root's ``/.startup.toml`` at its
start. core0 reads the file from the node's side (:mod:`core0.sandbox.startup`: safely,
inside the root clone) and runs this command, a job of core0's own with the creating
queue's role and private-queue scope, for the container's life. It is the node's
:class:`~core0.boot.services.ServiceManager` over the container's tables — one parser
(:func:`core0.boot.spec.plan`: the strict ``[startup.<id>]`` schema, conditions, ``{var}``,
``after``/``before`` ordered with graphlib, cycles), one readiness and restart logic
(``running_delay``, ``running_match``, ``protected``, ``recurring_period``, ``max_restart``,
``max_time``) — with these differences:

* each service is an **inner job** of the container (:func:`core0.sandbox.dispatch.
  start_internal`), id ``[<private queue prefix>]startup:<container>:<name>``, checked as a
  ``corex.dispatch`` of it by the creating queue would be: a command not served inside a
  container, or above that queue's role (``core.system`` and ``bash`` need admin), is that
  service's ``error`` and never runs; the others run;
* the phases (``init``, ``net``, ``boot``) order the services as on the node, without waiting
  for a network (the container's is made before its init starts);
* the state is ``<container dir>/startup.json`` (``corex.get``'s ``startup`` entry);
* the init ending ends this job, after stopping the services; with a restart policy it waits
  for the keeper's new init, reads the file again and starts them all again (the container
  restarted, as a coreX would at its start);
* a dispatcher's start resumes it (``resume``): it re-attaches to the adopted jobs (same ids,
  same pids) and starts those still waiting for their dependencies; one whose job ended while
  no dispatcher watched it is never started again (:meth:`ContainerServices._lost`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Annotated, Any

from core0_client.protocol import Command

from core0 import registry
from core0.boot.node import boot_token
from core0.boot.service import Service
from core0.boot.services import ServiceManager
from core0.boot.spec import Plan, ServiceSpec, plan
from core0.config import Config
from core0.context import Context
from core0.errors import Forbidden, NotFound
from core0.jobs.job import Job
from core0.registry import Role, command
from core0.sandbox import dispatch as dsp
from core0.sandbox import runtime, startup
from core0.sandbox.manager import init_pid
from core0.sandbox.store import Record, Store
from core0.schema import Range, Schema

log = logging.getLogger(__name__)

#: the commands of a service run as the runtime's exec (a process inside)
PROCESS = ("core.system", "bash")
#: the longest job id (the protocol's)
ID_MAX = 128
#: seconds between looks for a restarted container's new init
POLL = 0.25


class ContainerServices(ServiceManager):
    """The startup services of one container (see the module docstring)."""

    stop_stale = False

    def __init__(self, ctx: Context, rec: Record, init: int,
                 tables: dict[str, dict[str, Any]]):
        super().__init__(dataclasses.replace(ctx.config, startup=tables), ctx.engine)
        self.ctx = ctx
        self.rec = rec
        self.init = init
        self.cdir = Store(ctx.config.state_dir).dir(rec.id)
        self.path = self.cdir / startup.STATE
        self.job_prefix = startup.job_prefix(rec)
        self.log_prefix = f"container {rec.id}: "
        #: no more state written (the container, and its dir, go)
        self.closed = False

    async def run(self, resume: bool) -> None:
        """Start the services afresh, or (``resume``) continue from the saved state."""
        self.token = boot_token()
        if not (resume and self._restore()):
            self._fresh()
        await self._run_phases()

    def _plan(self, cfg: Config) -> Plan:
        p = plan(cfg.startup, cfg.cmdline)
        role = Role(self.ctx.job.role)
        for sid, spec in p.specs.items():
            if sid in p.errors:
                continue
            why = dsp.refusal(spec.name, role)
            where = f"{startup.WHERE}: [startup.{sid}]"
            if isinstance(why, Forbidden):
                p.errors[sid] = (f"{where}.name: {spec.name} is not permitted for the role of "
                                 f"the queue that created the container ({role.label})")
            elif why is not None:
                p.errors[sid] = f"{where}.name: {why.message}"
            elif len(self.job_prefix + sid) > ID_MAX:
                p.errors[sid] = f"{where}: its job id {self.job_prefix + sid} is too long"
        return p

    async def _wait_net(self) -> None:
        return  # the container's network is made before its init starts

    def _submit(self, cmd: Command, spec: ServiceSpec) -> Job:
        return dsp.start_internal(self.ctx, self.rec.id, cmd, spec.protected)

    def _lost(self, svc: Service) -> None:
        """A service starting or running when the last dispatcher stopped whose job is not
        in the table: run again only when it never ran (it never spawned; a builtin that may
        run twice), never twice otherwise."""
        spec = svc.spec
        reg = registry.get(spec.name) if spec is not None else None
        if spec is None or (spec.name not in PROCESS and reg is not None and reg.rerun):
            super()._lost(svc)
        elif spec.name not in PROCESS:
            svc.status = "failed"
            svc.message = "cut short by a dispatcher restart; not run again (it changes state)"
        elif not svc.starts:
            svc.status = "pending"
            svc.message = "it had not started when the dispatcher stopped; starting it"
        elif svc.status == "running" and not (spec.protected or spec.recurring_period):
            svc.status = "done"
            svc.message = "ended while no dispatcher watched it; not run again"
        else:
            svc.status = "failed"
            svc.message = ("its job ended while no dispatcher watched it (outcome unknown); "
                           "not run again")

    def _persist(self) -> None:
        if self.closed:
            return
        data = {"token": self.token, "boot_phase": self.boot_phase, "booted": self.booted,
                "init": self.init, "prefix": self.job_prefix, "tables": self.cfg.startup,
                "services": [s.to_state() for s in self.services.values()]}
        try:
            startup.write_state(self.cdir, data)
        except OSError as e:
            log.warning("container %d: %s not written: %s", self.rec.id, startup.STATE, e)

    async def stop_all(self, reason: str) -> None:
        """Stop every service (their jobs: TERM, then KILL)."""
        await asyncio.gather(*(self._stop(s, reason) for s in self.services.values()),
                             return_exceptions=True)

    def close(self) -> None:
        """Stop following the services (their jobs run on: a dispatcher that stops leaves
        them to the next one, a terminate stops them itself)."""
        self._persist()
        self.closed = True
        for svc in self.services.values():
            for task in (svc.task, svc.watch):
                if task is not None and not task.done():
                    task.cancel()


@dataclass(frozen=True)
class StartupArgs(Schema):
    container: Annotated[int, Range(1, 65535)]
    resume: bool = False


@command(startup.COMMAND, StartupArgs, role=Role.OPERATOR, internal=True)
async def run_startup(ctx: Context, args: StartupArgs) -> None:
    """Run container ``container``'s ``/.startup.toml`` services for its life (core0 itself
    submits it when the container's init starts; ``resume``: at a dispatcher's start, for
    the services a previous one ran). Internal: never from the bus."""
    st = Store(ctx.config.state_dir)
    cdir = st.dir(args.container)
    rec = st.load(args.container)
    data = startup.load_state(cdir) or {}
    init = init_pid(cdir, rec)
    resume = args.resume and data.get("init") == init
    if args.resume and not resume:  # its init restarted while no dispatcher watched
        await _stop_left(ctx, rec)
        tables = _read(cdir, rec.id)
    else:
        tables = data.get("tables") or None
    while tables is not None:
        services = ContainerServices(ctx, rec, init, tables)
        try:
            await services.run(resume)
            await _ended(init)
        except BaseException:
            services.close()
            raise
        now = _record(st, rec.id)
        if now is None or not now.keeper:
            await services.stop_all("the container's init ended")
            services.close()
            return
        await services.stop_all("the container restarted")
        services.close()
        rec = now
        init = await _restarted(ctx, st, rec, init)
        if not init:
            return
        log.info("container %d restarted (init %d): its startup services start again",
                 rec.id, init)
        resume = False
        tables = _read(cdir, rec.id)


def _record(st: Store, cid: int) -> Record | None:
    """The container's record while it is not being torn down."""
    try:
        rec = st.load(cid)
    except NotFound:
        return None
    return rec if rec.state == "running" else None


def _read(cdir: Any, cid: int) -> dict[str, dict[str, Any]] | None:
    """The file's tables again (a restarted container: its root may have changed), its
    problem recorded (None) when it cannot be used."""
    from core0.errors import CommandError

    try:
        tables = startup.read_tables(startup.rootfs(cdir))
    except (CommandError, OSError) as e:
        msg = e.message if isinstance(e, CommandError) else f"{startup.WHERE}: {e}"
        log.warning("container %d: startup services not run: %s", cid, msg)
        with contextlib.suppress(OSError):
            startup.write_state(cdir, {"error": msg, "services": []})
        return None
    if not tables:
        with contextlib.suppress(OSError):
            (cdir / startup.STATE).unlink()
        return None
    return tables


async def _stop_left(ctx: Context, rec: Record) -> None:
    """The startup jobs of an earlier init of the container (they run in a dead one)."""
    jobs = startup.startup_jobs(ctx.engine, rec.id)
    await asyncio.gather(*(ctx.engine.stop_service(j.id, startup.STOP_TIMEOUT) for j in jobs),
                         return_exceptions=True)


async def _ended(pid: int) -> None:
    """Until process ``pid`` (the container's init) has ended (a pidfd)."""
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return
    loop = asyncio.get_running_loop()
    gone = loop.create_future()
    def readable() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(fd, readable)
    try:
        if runtime.alive(pid):  # (a zombie init is as good as gone)
            await gone
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def _restarted(ctx: Context, st: Store, rec: Record, old: int) -> int:
    """The new init of a container its keeper restarts; 0 once it is torn down or its
    keeper has given up."""
    while _record(st, rec.id) is not None and rec.keeper in ctx.engine.table:
        pid = init_pid(st.dir(rec.id), rec)
        if pid != old and runtime.alive(pid):
            return pid
        await asyncio.sleep(POLL)
    return 0
