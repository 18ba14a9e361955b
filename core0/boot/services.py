"""Boot services: phases init → net → boot, dependencies, readiness, drift and live reload.

Every ``[startup.<id>]`` table (see core0.boot.spec and docs/config.md) becomes one ordinary
job of the engine, ``svc:<id>``, run through ``engine.submit_internal``: visible in job.list,
killable, adopted across dispatcher restarts. The manager adds ordering and readiness:

* **Phases.** A service's phase is the latest phase among its dependencies (``after`` names
  phases or services; none at all = boot). Each phase's services start at once, each one
  waiting for its own dependencies to be *running*; the next phase starts when every service of
  the current one is settled (running, done, failed…), bounded by ``services.phase_timeout``.
  Between init and net the boot waits for the node's network (under ``core0 init``: its
  ``net.json`` leaves "waiting", bounded by ``net.wait``; under ``core0 dev``: no wait).
* **Readiness.** ``running_match`` (a regex on output lines) wins; else ``running_delay``:
  negative = oneshot (running means "exited 0"), 0 = alive ``services.ready_delay`` (2) s,
  N = alive N s. A command that ends successfully is ready too (builtins). A dependency that
  fails, is skipped by its condition, stopped or invalid fails its dependents (not started).
* **State.** Per service: hash, status (pending, starting, running, done, failed, skipped,
  stopped, error), pid, starts, last exit, message — kept in ``<state_dir>/services.json``
  (atomic writes). A restarted dispatcher re-attaches to the adopted service jobs (same ids,
  same pids), finishes a boot in progress and never re-runs finished oneshots. The file
  belongs to one boot: it carries a token of the kernel boot and the supervisor process.
* **Drift.** ``reload(cfg)`` (core.reload, SIGHUP) restarts exactly the services whose hash
  changed, starts new ones, stops removed ones; a config with an invalid service or a cycle is
  refused as a whole and nothing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Awaitable
from functools import partial
from typing import Any

from core0_client.protocol import Code, Command, Level, Result, State

from core0.backoff import PERMANENT_EXIT
from core0.boot import cloudconfig
from core0.boot.node import boot_token, on_node
from core0.boot.service import BAD, READY, RESULT_MAX, SETTLED, STATE_FILE, Service
from core0.boot.spec import JOB_PREFIX, PHASES, Plan, ServiceSpec, plan
from core0.config import Config
from core0.errors import BadRequest, CommandError, Conflict, NotFound, PreconditionFailed
from core0.jobs.engine import JobEngine
from core0.jobs.job import Job
from core0.proc.output import Message

log = logging.getLogger(__name__)

async def _first(*aws: Awaitable[Any], timeout: float | None = None) -> bool:
    """Wait until one of ``aws`` completes (True) or ``timeout`` passes (False)."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        return bool(done)
    finally:
        for t in tasks:
            t.cancel()


class ServiceManager:
    """The node's startup services (``[startup.<id>]``, plus cloud-config's): their plan
    (phases init → net → boot, dependencies, conditions), their runs as ordinary jobs of the
    :class:`~core0.jobs.engine.JobEngine`, readiness (delay, output match, oneshot), the state
    kept across dispatcher restarts within one boot (``services.json``), and ``service.*`` /
    ``core.reload`` (apply a changed configuration by spec hash, no reboot). A container's
    ``/.startup.toml`` services are run by a subclass (core0/commands/container_startup.py:
    its own job ids, state file and plan, its jobs started inside the container)."""

    #: the services' job ids are this prefix + their ids
    job_prefix = JOB_PREFIX
    #: put before "service <id>" in the log ("" for the node's own)
    log_prefix = ""
    #: a job found under a service's id when it starts is a stale one of an earlier boot,
    #: stopped first (else its start fails: Conflict)
    stop_stale = True

    def __init__(self, cfg: Config, engine: JobEngine):
        self.cfg = cfg
        self.engine = engine
        self.services: dict[str, Service] = {}
        self.path = cfg.state_dir / STATE_FILE
        self.token = ""
        #: index of the last phase whose gate was passed (-1: none)
        self.boot_phase = -1
        self.booting = False
        self.booted = False
        self.lock = asyncio.Lock()

    # ------------------------------------------------------------ boot

    async def boot(self) -> None:
        """Start the declared services (once per boot), or continue a boot a previous
        dispatcher began. Must attach to adopted jobs before its first await."""
        self.token = boot_token()
        restored = self._restore()
        try:
            if not restored:
                self._fresh()
                await self._stop_stale()
            await self._run_phases()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("boot services failed")
            self.booting = False
            self.booted = True  # a reload may repair what is there

    def _fresh(self) -> None:
        p = self._plan(self.cfg)
        for sid in p.order:
            spec = p.specs.get(sid)
            raw = self.cfg.startup.get(sid, {})
            svc = Service(sid, spec, str(raw.get("__source__", "")), self.job_prefix)
            self._place(svc, p)
            if sid in p.errors:
                svc.status, svc.message = "error", p.errors[sid]
                log.error("%sservice %s refused: %s", self.log_prefix, sid, p.errors[sid])
            elif spec is not None and not spec.enabled:
                svc.status, svc.message = "skipped", f"condition {spec.condition!r} is false"
            self.services[sid] = svc
        self._persist()

    async def _stop_stale(self) -> None:
        """Service jobs adopted from an earlier boot's state dir (core0 dev reusing a dir) that
        no declared service owns: the engine would keep restarting protected ones."""
        prefix = self.job_prefix
        for job_id in [j for j in self.engine.table if j.startswith(prefix)]:
            if job_id[len(prefix):] not in self.services:
                log.warning("services: stopping %s, left by an earlier boot", job_id)
                await self.engine.stop_service(job_id, self.cfg.services.stop_timeout)

    def _restore(self) -> bool:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(data, dict) or data.get("token") != self.token:
            log.info("services: state of another boot found; starting afresh")
            return False
        for d in data.get("services", []):
            try:
                svc = Service.from_state(d, self.job_prefix)
            except (KeyError, TypeError, ValueError) as e:
                log.warning("services: bad saved entry %r: %s", d.get("id"), e)
                continue
            self.services[svc.id] = svc
        self.boot_phase = int(data.get("boot_phase", -1))
        self.booted = bool(data.get("booted"))
        for svc in self.services.values():
            if svc.status not in ("starting", "running"):
                continue
            job = self.engine.table.get(svc.job_id)
            if job is not None:
                svc.base = max(0, svc.starts - job.run)
                self._attach(svc, job)
                log.info("%sservice %s: re-attached to job %s (pid %s)", self.log_prefix, svc.id,
                         job.id, job.pid)
            else:
                self._lost(svc)
        log.info("services: continuing this boot (%d services)", len(self.services))
        return True

    def _lost(self, svc: Service) -> None:
        """A service that was starting or running when the last dispatcher stopped, whose job
        is not in the table now: started again."""
        svc.status = "pending"
        svc.message = "its job did not survive the dispatcher restart; starting again"

    async def _run_phases(self) -> None:
        self.booting = not self.booted
        last = len(PHASES) - 1
        for idx, name in enumerate(PHASES):
            members = [s for s in self.services.values() if s.phase == idx]
            for svc in members:
                if svc.status == "pending" and not svc.active:
                    svc.task = asyncio.ensure_future(self._launch(svc))
            if idx < last and idx > self.boot_phase:
                await self._gate(members, name)
                if name == "init":
                    await self._wait_net()
                self.boot_phase = idx
                self._persist()
        self.booting = False
        if not self.booted:
            self.booted = True
            self.boot_phase = last
            self._persist()
            log.info("%sboot services launched: %s", self.log_prefix, ", ".join(
                f"{s.id}={s.status}" for s in self.services.values()) or "none")

    async def _gate(self, members: list[Service], phase: str) -> None:
        async def settled() -> None:
            while True:
                waiting = [s for s in members if s.status not in SETTLED]
                if not waiting:
                    return
                await _first(*(s.changed.wait() for s in waiting))

        timeout = self.cfg.services.phase_timeout or None
        try:
            await asyncio.wait_for(settled(), timeout)
        except TimeoutError:
            log.warning("phase %s: %s not running after %.0fs; the boot goes on", phase,
                        ", ".join(s.id for s in members if s.status not in SETTLED), timeout)

    async def _wait_net(self) -> None:
        if not on_node():
            return  # core0 dev: the host's network is the host's business
        path = self.cfg.state_dir / "net.json"
        deadline = time.monotonic() + self.cfg.net.wait + 5
        while time.monotonic() < deadline:
            try:
                state = json.loads(path.read_text()).get("state")
            except (OSError, ValueError, AttributeError):
                state = None
            if state is not None and state != "waiting":
                log.info("services: network %s; net phase starts", state)
                return
            await asyncio.sleep(0.25)
        log.warning("services: no network state after %.0fs; net phase starts anyway",
                    self.cfg.net.wait)

    # ------------------------------------------------------------ one service

    async def _launch(self, svc: Service) -> None:
        """Wait for the dependencies to be running, then start the job."""
        me = asyncio.current_task()
        try:
            for dep_id in svc.deps:
                dep = self.services.get(dep_id)
                if dep is None:
                    self._set(svc, "failed", f"dependency {dep_id} is not declared")
                    return
                if not await self._wait_ready(dep):
                    why = f": {dep.message}" if dep.message else ""
                    self._set(svc, "failed", f"dependency {dep_id} {dep.status}{why}")
                    return
            await self._start_job(svc)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("%sservice %s: start failed", self.log_prefix, svc.id)
            self._set(svc, "error", f"cannot start: {e}")
        finally:
            if svc.task is me:
                svc.task = None

    async def _wait_ready(self, dep: Service) -> bool:
        while True:
            if dep.status in READY:
                return True
            if dep.status in BAD:
                return False
            await dep.changed.wait()

    async def _start_job(self, svc: Service) -> None:
        spec = svc.spec
        assert spec is not None
        if svc.job_id in self.engine.table and self.stop_stale:  # of an earlier boot
            log.warning("service %s: stopping stale job %s", svc.id, svc.job_id)
            await self.engine.stop_service(svc.job_id, self.cfg.services.stop_timeout)
        cmd = Command(command=spec.name, arguments=spec.args, id=svc.job_id,
                      max_time=spec.max_time or None, max_restart=spec.max_restart or None,
                      recurring_period=spec.recurring_period or None,
                      tags=list(spec.tags) or None)
        try:
            job = self._submit(cmd, spec)
        except CommandError as e:
            self._set(svc, "error", f"cannot start: {e.message}")
            return
        svc.base = svc.starts
        svc.started_at = time.time()
        svc.ready_at = svc.ended_at = None
        svc.stopping = ""
        svc.run_ready = False
        self._attach(svc, job)
        self._set(svc, "starting", "")

    def _submit(self, cmd: Command, spec: ServiceSpec) -> Job:
        """Start a service's job (CommandError: it cannot start)."""
        return self.engine.submit_internal(cmd, protected=spec.protected)

    def _attach(self, svc: Service, job: Job) -> None:
        spec = svc.spec
        assert spec is not None
        svc.job = job
        svc.run_ready = svc.status == "running"
        job.run_end.append(partial(self._on_run_end, svc))
        if spec.running_match:
            rx = re.compile(spec.running_match)
            job.output.watchers.append(partial(self._on_output, svc, job, rx))
        svc.watch = asyncio.ensure_future(self._watch(svc, job))

    def _on_output(self, svc: Service, job: Job, rx: re.Pattern[str], msg: Message) -> None:
        if svc.job is job and not svc.run_ready and rx.search(msg.text):
            self._ready(svc, f"output matched {rx.pattern!r}")

    def _ready(self, svc: Service, why: str) -> None:
        svc.run_ready = True
        svc.ready_at = time.time()
        self._set(svc, "running", why)

    async def _watch(self, svc: Service, job: Job) -> None:
        """Follow the runs of a service's job: pids, readiness by delay, the end."""
        spec = svc.spec
        assert spec is not None
        while not job.done.is_set():
            if not job.spawned.is_set():
                await _first(job.spawned.wait(), job.done.wait())
                continue
            svc.run_over.clear()
            svc.pid = job.pid
            svc.starts = svc.base + job.run
            if not svc.run_ready and svc.status != "starting":
                self._set(svc, "starting", svc.message)
            self._persist()
            if not svc.run_ready and not spec.running_match and not spec.oneshot:
                delay = spec.running_delay or self.cfg.services.ready_delay
                remaining = max(0.0, delay - (time.time() - job.starttime / 1000))
                ended = await _first(svc.run_over.wait(), job.done.wait(), timeout=remaining)
                if not ended and svc.job is job and job.spawned.is_set() and not svc.run_ready:
                    self._ready(svc, f"alive for {delay:g}s")
            await _first(svc.run_over.wait(), job.done.wait())
        self._finish(svc, job)

    def _on_run_end(self, svc: Service, job: Job, result: Result) -> None:
        if svc.job is not job:
            return
        spec = svc.spec
        assert spec is not None
        job.spawned.clear()
        svc.run_over.set()
        svc.pid = None
        svc.last_exit, svc.last_state = result.code, result.state.value
        svc.starts = svc.base + job.run
        svc.ended_at = time.time()
        if not job.process and result.level == Level.RESULT_JSON and result.data:
            if len(result.data) <= RESULT_MAX:
                with contextlib.suppress(ValueError):
                    svc.result = json.loads(result.data)
            else:
                svc.result = {"truncated": result.data[:RESULT_MAX]}
        ok = result.state is State.SUCCESS
        if ok and not svc.run_ready and (spec.oneshot or not spec.running_match):
            svc.run_ready = True
            svc.ready_at = time.time()
        if job.killed or job.unscheduled or svc.stopping:
            self._persist()
            return
        permanent = result.code == Code.PROCESS + PERMANENT_EXIT
        if spec.protected and not permanent:
            svc.run_ready = False
            self._set(svc, "starting", f"exited ({result.state.value}, code {result.code}); "
                                       f"restarting with backoff")
        elif spec.recurring_period:
            self._set(svc, "running" if svc.run_ready else "starting",
                      f"last run: {result.state.value}, code {result.code}")
        elif spec.max_restart and not ok and job.restarts < spec.max_restart:
            svc.run_ready = False
            self._set(svc, "starting", f"exited ({result.state.value}, code {result.code}); "
                                       f"retry {job.restarts + 1} of {spec.max_restart}")
        elif ok and svc.run_ready:
            self._set(svc, "done", "completed" if not job.process else "exited 0")
        else:
            self._persist()

    def _finish(self, svc: Service, job: Job) -> None:
        if svc.job is not job:
            return
        res = job.final
        svc.job = None
        svc.pid = None
        svc.ended_at = time.time()
        spec = svc.spec
        if svc.stopping:
            self._set(svc, "stopped", svc.stopping)
        elif res is None:
            self._set(svc, "failed", "its job ended without a result")
        elif res.state is State.SUCCESS and svc.run_ready:
            self._set(svc, "done", "completed" if not job.process else "exited 0")
        elif res.state is State.SUCCESS:
            self._set(svc, "failed", "exited 0 before its output matched running_match")
        elif spec is not None and spec.protected and res.code == Code.PROCESS + PERMANENT_EXIT:
            self._set(svc, "failed",
                      f"exit {PERMANENT_EXIT}: permanent failure, not restarted")
        else:
            detail = (res.critical or res.streams[1] or res.streams[0]).strip()[-500:]
            self._set(svc, "failed", f"{res.state.value} (code {res.code})"
                                     + (f": {detail}" if detail else ""))

    def _set(self, svc: Service, status: str, message: str) -> None:
        if (svc.status, svc.message) != (status, message):
            level = logging.WARNING if status in ("failed", "error") else logging.INFO
            log.log(level, "%sservice %s: %s%s", self.log_prefix, svc.id, status,
                    f" ({message})" if message else "")
        svc.status, svc.message = status, message
        old, svc.changed = svc.changed, asyncio.Event()
        old.set()
        self._persist()

    async def _stop(self, svc: Service, reason: str) -> None:
        task = svc.task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        svc.task = None
        if svc.job is not None:
            svc.stopping = reason
            job = svc.job
            await self.engine.stop_service(job.id, self.cfg.services.stop_timeout)
            if svc.watch is not None:
                await asyncio.wait([svc.watch], timeout=5)
            if svc.job is job:  # the watcher did not see the end
                self._finish(svc, job)
        elif svc.status in ("pending", "starting"):
            self._set(svc, "stopped", reason)

    # ------------------------------------------------------------ state

    def _persist(self) -> None:
        data = {"token": self.token, "boot_phase": self.boot_phase, "booted": self.booted,
                "services": [s.to_state() for s in self.services.values()]}
        tmp = self.path.with_name(STATE_FILE + ".tmp")
        try:
            with open(tmp, "w") as f:
                json.dump(data, f, default=str)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            log.error("services: cannot write %s: %s", self.path, e)

    def _plan(self, cfg: Config) -> Plan:
        return plan(cfg.startup, cfg.cmdline, extra=cloudconfig.boot_services(cfg))

    @staticmethod
    def _place(svc: Service, p: Plan) -> None:
        svc.phase = p.phase.get(svc.id, len(PHASES) - 1)
        svc.deps = list(p.deps.get(svc.id, []))

    # ------------------------------------------------------------ reload

    async def reload(self, cfg: Config) -> dict[str, Any]:
        """Apply a new configuration: restart the services whose hash changed, start new ones,
        stop removed ones. BadRequest (nothing changed) on an invalid service or a cycle;
        Conflict while the boot has not passed its net phase."""
        if not self.booted:
            raise Conflict("the boot services are still starting; reload once they are up")
        p = self._plan(cfg)
        if p.errors:
            raise BadRequest(f"configuration refused, nothing changed: {p.error_text()}")
        out: dict[str, list[str]] = {"started": [], "restarted": [], "stopped": [],
                                     "unchanged": [], "skipped": []}
        async with self.lock:
            for sid in [s for s in self.services if s not in p.specs]:
                svc = self.services[sid]
                await self._stop(svc, "removed from the configuration")
                self._set(svc, "stopped", "removed from the configuration")
                del self.services[sid]
                out["stopped"].append(sid)
            launch: list[Service] = []
            for sid in p.order:
                spec = p.specs[sid]
                old = self.services.get(sid)
                if old is None:
                    svc = self.services[sid] = Service(sid, spec, job_prefix=self.job_prefix)
                    self._place(svc, p)
                    if spec.enabled:
                        launch.append(svc)
                        out["started"].append(sid)
                    else:
                        self._set(svc, "skipped", f"condition {spec.condition!r} is false")
                        out["skipped"].append(sid)
                    continue
                svc = old
                self._place(svc, p)
                if svc.hash == spec.hash and svc.spec is not None and svc.status != "error":
                    svc.spec = spec
                    svc.source = spec.source
                    out["unchanged"].append(sid)
                    continue
                fresh = svc.status in ("error", "skipped")
                await self._stop(svc, "configuration changed")
                svc.spec, svc.hash, svc.source = spec, spec.hash, spec.source
                if spec.enabled:
                    launch.append(svc)
                    out["started" if fresh else "restarted"].append(sid)
                else:
                    self._set(svc, "skipped", f"condition {spec.condition!r} is false")
                    out["stopped" if not fresh else "skipped"].append(sid)
            self.cfg = cfg
            for svc in launch:
                self._set(svc, "pending", "")
                svc.task = asyncio.ensure_future(self._launch(svc))
            self._persist()
        log.info("reload: %s", {k: v for k, v in out.items() if v})
        return out

    # ------------------------------------------------------------ service.* commands

    def get(self, sid: str) -> Service:
        svc = self.services.get(sid)
        if svc is None:
            raise NotFound(f"no such service: {sid}")
        return svc

    def describe_all(self) -> list[dict[str, Any]]:
        return [s.describe() for s in self.services.values()]

    async def start(self, sid: str) -> dict[str, Any]:
        async with self.lock:
            svc = self.get(sid)
            self._check_startable(svc)
            self._set(svc, "pending", "started by service.start")
            svc.task = asyncio.ensure_future(self._launch(svc))
            await asyncio.sleep(0)
            return svc.describe(full=True)

    async def stop(self, sid: str) -> dict[str, Any]:
        async with self.lock:
            svc = self.get(sid)
            if svc.active or svc.status == "pending":
                await self._stop(svc, "stopped by service.stop")
            return svc.describe(full=True)

    async def restart(self, sid: str) -> dict[str, Any]:
        async with self.lock:
            svc = self.get(sid)
            if svc.active:
                await self._stop(svc, "restarting (service.restart)")
            self._check_startable(svc)
            self._set(svc, "pending", "restarted by service.restart")
            svc.task = asyncio.ensure_future(self._launch(svc))
            await asyncio.sleep(0)
            return svc.describe(full=True)

    def _check_startable(self, svc: Service) -> None:
        if svc.job is not None:
            raise Conflict(f"service {svc.id} is {svc.status} already (job {svc.job_id})")
        if svc.status == "pending" or (svc.task is not None and not svc.task.done()):
            raise Conflict(f"service {svc.id} is waiting for its phase or dependencies")
        if svc.spec is None or svc.status == "error":
            raise PreconditionFailed(f"service {svc.id} is invalid: {svc.message}")
        if not svc.spec.enabled:
            raise PreconditionFailed(
                f"service {svc.id}: condition {svc.spec.condition!r} is false on this node")
