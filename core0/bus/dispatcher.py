"""The dispatcher: pop → decode → validate → route → run → publish.

Every command whose id can be recovered gets exactly one result (built by the job engine's
``exception_result``, the one place where exceptions become results): a bad shape, wrong types
or unknown arguments give an ERROR 400 naming the field, an unknown command UNKNOWN_CMD, a
command its queue's role does not allow ERROR 403. Commands without a recoverable id go to the
queue's dead-letter list (bounded, with a TTL) and are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from core0_client.protocol import (
    RESERVED_ID_PREFIXES,
    Command,
    Keys,
    ProtocolError,
    decode_command,
    recover_id,
)
from redis.exceptions import RedisError

from core0 import declared, registry
from core0.backoff import Backoff
from core0.boot import extensions
from core0.boot.services import ServiceManager
from core0.bus.batch import Accepted, Picked, colliding_id
from core0.bus.endpoint import make_client
from core0.bus.reconcile import interrupted, reconcile, runs_again
from core0.bus.resp import RespError
from core0.bus.store import TRANSIENT, Bus, PopLink, Publish, retry_forever
from core0.config import Config
from core0.errors import (
    BadRequest,
    CommandError,
    Conflict,
    Forbidden,
    Unavailable,
    UnknownCommand,
)
from core0.fleet.aggregator import Aggregator
from core0.fleet.metrics import NodeMetrics, service_samples
from core0.fleet.registry import NodeRegistry
from core0.jobs import state as jobstate
from core0.jobs.engine import JobEngine
from core0.jobs.job import Job, prebuild
from core0.jobs.result import exception_result
from core0.proc import process, shimlink
from core0.proc.output import Inotify
from core0.proc.shimlink import ShimLink
from core0.proc.spawn import reset_ignored_signals
from core0.registry import CommandSpec, Role
from core0.sandbox.dispatch import adopted_spec, requeued

log = logging.getLogger(__name__)


#: commands taken one by one (BLMOVE) before a batched pop probes for a backlog again
PROBE_EVERY = 16

class Dispatcher:
    """The node's consumer of the bus, one pop loop per queue (``bus.queues``).

    It owns the parts of the running node: the :class:`~core0.bus.store.Bus`, the one
    :class:`~core0.proc.process.Reaper`, inotify, the shim link, the
    :class:`~core0.jobs.engine.JobEngine` and the
    :class:`~core0.boot.services.ServiceManager`, and hands them to handlers as the engine's
    ``node`` (``Context.node``). It decodes and validates commands, answers inline commands
    itself and starts the others as jobs, reconciles ``processing`` lists after a crash, and
    reloads the configuration on ``core.reload`` / SIGHUP.
    """

    def __init__(self, cfg: Config, reload_config: Callable[[], Config] | None = None):
        registry.load_all()
        extensions.install(cfg)  # before the boot services, which may name one
        if os.environ.get("CORE0_TEST_BALLAST_MB"):  # bench/spawn.py: a big dispatcher
            self._ballast = bytearray(int(os.environ["CORE0_TEST_BALLAST_MB"]) << 20)
            for i in range(0, len(self._ballast), 4096):
                self._ballast[i] = 1
        if os.environ.get("CORE0_TEST_POISON") == "1":
            import core0.commands._testhooks  # noqa: F401  (fault tests only)
        self.cfg = cfg
        self.roles = cfg.bus.queue_roles()
        #: queue key → the id prefix its commands must carry (private queues)
        self.private = {Keys(cfg.bus.prefix).queue(name): p for name in self.roles
                        if (p := cfg.bus.private_prefix(name)) is not None}
        #: core0's own id prefixes behind a private queue's (refused, like the bare ones)
        self.reserved = tuple(p + r for p in self.private.values() for r in RESERVED_ID_PREFIXES)
        self.bus = Bus(cfg)
        self.reaper = process.Reaper()
        self.inotify = Inotify()
        self.shim = ShimLink(shimlink.socket_path(cfg.state_dir))
        self.engine = JobEngine(cfg, self.bus, self.reaper, self.inotify, None)
        self.stop_event = asyncio.Event()
        #: re-reads the configuration from the same sources (core.reload, SIGHUP)
        self.reload_config = reload_config or (lambda: cfg)
        self.services = ServiceManager(cfg, self.engine)
        self.engine.node = self
        self.started = time.time()
        self.stats = {"accepted": 0, "inline": 0, "errors": 0, "dead_letters": 0, "duplicates": 0,
                      "redis_errors": 0}
        self._loops: list[asyncio.Task[None]] = []
        #: this node's entry in the fleet's registry (nodes:<id>), when node.registry
        self.node_registry: NodeRegistry | None = None
        queues = {self.bus.keys.queue(q): (self.bus.keys.processing(self.bus.keys.queue(q)),
                                           self.bus.keys.dead(self.bus.keys.queue(q)))
                  for q in self.roles}
        self.metrics = NodeMetrics(cfg, self.stats, lambda: len(self.engine.table), queues,
                                   lambda: self.engine.store.sync.synced)
        self.engine.on_result = self.metrics.result
        #: level-10 statistics of jobs (aggregator.query)
        self.aggregator = Aggregator()
        self.engine.on_stats = self.aggregator.feed_line

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        process.set_child_subreaper()
        self.reaper.install(loop)
        process.set_reaper(self.reaper)
        self.inotify.start(loop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self._sighup()))
        if await self.shim.connect():
            self.engine.shim = self.shim
        await retry_forever("connect", self.bus.ping)
        adopted = self.engine.adopt_all(self._parse_saved)
        if self.cfg.main.persistent_device:  # init mounts it meanwhile (core0/init/persistent.py)
            self._loops.append(asyncio.ensure_future(self._restore_declared(wait=True)))
        else:
            await self._restore_declared()
        log.info("dispatcher up (pid %d); adopted %d job(s); queues %s", os.getpid(), adopted,
                 {q: r.label for q, r in self.roles.items()})
        for name, role in self.roles.items():
            self._loops.append(asyncio.ensure_future(self._pop_loop(name, role)))
        self.metrics.serve()
        self.metrics.samplers += [self._containers_sample, self._vms_sample,
                                  self._supervisor_sample]
        self._loops.append(asyncio.ensure_future(
            self.metrics.watch_queues(self.bus.r, self.stop_event)))
        if self.cfg.node.registry == "yes" or (self.cfg.node.registry == "auto"
                                               and not self.cfg.redis.embedded):
            r = make_client(self.cfg, cluster_wide=True) if self.cfg.redis.cluster else self.bus.r
            self.node_registry = NodeRegistry(self.cfg, r, lambda: len(self.engine.table))
            self._loops.append(asyncio.ensure_future(self.node_registry.run(self.stop_event)))
        if self.cfg.metrics.monitor_period:  # 0-core's monitor: core0/fleet/monitor.py
            from core0.fleet import monitor
            from core0.net.netlink import link_kinds
            from core0.virt import stats

            self._loops.append(asyncio.ensure_future(monitor.run(
                self.aggregator.feed, self.cfg.metrics.monitor_period, self.stop_event,
                link_kinds, stats.if_connected)))
        # boot services start while the bus already answers (core.ping, service.list…)
        self._loops.append(asyncio.ensure_future(self.services.boot()))
        await self.stop_event.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop popping, leave process jobs running for the next dispatcher, requeue the rest."""
        log.info("dispatcher stopping")
        for t in self._loops:
            t.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self.node_registry is not None:
            await self.node_registry.remove()
        requeue = await self.engine.stop(self.cfg.bus.stop_grace,
                                         lambda job: not runs_again(job.cmd, job.spec))
        for job in requeue:
            if job.state == "running" and not runs_again(job.cmd, job.spec):
                # cut short, and it may not run twice: its one result says so
                with contextlib.suppress(Exception):
                    await self.bus.publish([interrupted(job.id, job.cmd, job.spec, job.raw,
                                                        job.processing)])
                continue
            if job.container:  # an inner builtin: left in processing, re-run inside
                continue
            with contextlib.suppress(Exception):
                await self.bus.r.delete(self.bus.keys.flag(job.id))
                queue = job.processing.removesuffix(":processing")
                await self.bus.requeue(queue, job.processing, job.raw)
        await self.engine.feed.close()
        self.metrics.close()
        await self.shim.close()
        await self.bus.close()
        self.reaper.uninstall()

    async def reload(self) -> dict[str, Any]:
        """Re-read the configuration, install its extensions and apply service changes (no
        reboot): services whose spec hash changed are restarted, new ones started, removed
        ones stopped."""
        return await extensions.reloaded(self.reload_config(), self.services.reload)

    async def _sighup(self) -> None:
        try:
            log.info("SIGHUP: reloading the configuration")
            log.info("reload: %s", await self.reload())
        except Exception:
            log.exception("reload failed")

    # ------------------------------------------------------------ pop loop

    async def _pop_loop(self, name: str, role: Role) -> None:
        """Take commands from one queue. Results of inline commands ride along with the next
        pop: one write per batch of work. Under load, pops are batched (up to ``bus.batch``
        commands per round trip); when the queue runs dry the loop switches to a blocking
        BLMOVE sent together with the last results, and probes for a backlog every PROBE_EVERY
        commands so that a burst switches it back to batching. The pickups of new jobs go out
        in the same write as the next pop (no round trip of their own)."""
        queue = self.bus.keys.queue(name)
        processing = self.bus.keys.processing(queue)
        link = PopLink(self.cfg, self.bus.keys)
        pending: list[Publish] = []
        connected = False
        backoff = Backoff.retrying(0.1, 5.0)
        idle = False  # the last batched pop found the queue empty
        streak = 0  # commands taken by BLMOVE since the last batched pop
        #: a pop sent with the last pickups: (blocking, its replies)
        sent: tuple[bool, asyncio.Future[list[Any]]] | None = None
        block_wait = self.cfg.bus.block_timeout + 5
        try:
            while not self.stop_event.is_set():
                try:
                    if not connected:
                        await link.connect()
                        connected = True
                        await reconcile(self, queue, processing, role)
                    if sent is not None:
                        blocking, fut = sent
                        sent = None
                        reply = (await link.replies(fut))[0]
                        raws = ([reply] if reply is not None else []) if blocking \
                            else list(reply)
                    else:
                        room = self.engine.free_slots(role)
                        if room == 0:
                            if pending:
                                written, _ = await link.publish_and_pop(pending, queue,
                                                                        processing, 0)
                                self._settle(written)
                                pending = []
                            await self.engine.wait_room(role)
                            continue
                        blocking = idle and streak < PROBE_EVERY
                        if blocking:
                            written, item = await link.publish_and_block(pending, queue,
                                                                         processing)
                            raws = [item] if item is not None else []
                        else:
                            n = min(self.cfg.bus.batch, room)
                            written, raws = await link.publish_and_pop(pending, queue,
                                                                       processing, n)
                        pending = []
                        self._settle(written)
                    if blocking:
                        if not raws:
                            streak = 0
                            continue
                        streak += 1
                    else:
                        streak = 0
                        idle = not raws
                        if idle:
                            continue
                    backoff.reset()
                    pending, starts = await self.prepare(raws, queue, processing, role)
                    if not starts:
                        continue
                    # the pickups, with the results so far and (room permitting) the next pop
                    picked = Picked(len(pending), starts, processing, role)
                    call = link.submit(link.publish_cmds(pending) + link.pickup_cmds(
                        [(a.cmd.id, processing, a.raw) for a in starts]),
                        on_reply=functools.partial(self._on_picked, picked))
                    room = self.engine.free_slots(role) - len(starts)
                    if room > 0:
                        blocking = idle and streak < PROBE_EVERY
                        sent = (blocking, link.submit([link.pop_cmd(
                            blocking, queue, processing, min(self.cfg.bus.batch, room))],
                            block_wait if blocking else 10.0))
                    # out now; the programs' specs are built while Redis answers
                    link.flush()
                    jobs = [Job(self.engine, a.cmd, a.spec, a.args, role, a.raw, processing)
                            for a in starts]
                    for job in jobs:
                        await prebuild(self.engine, job)
                    picked.jobs = jobs
                    replies = await link.replies(call)
                    pending = []
                    if not picked.done:  # the replies came before the jobs were built
                        self._start_picked(picked, replies)
                    late = picked.late
                    if late:  # rare (recurring limits): never held behind a blocking pop
                        await self.bus.publish(late)
                except (*TRANSIENT, RedisError) as e:
                    # any error reply too (MOVED/ASK after a failover or resharding,
                    # CLUSTERDOWN, OOM, NOPERM, LOADING…): the loop never ends on one. The link
                    # is dropped, so the reconnect re-resolves the slot owner of a cluster.
                    kind = "redis unavailable" if isinstance(e, TRANSIENT) else "redis error"
                    delay = backoff.next()
                    log.warning("queue %s: %s (%s); retry in %.1fs", queue, kind,
                                str(e) or type(e).__name__, delay)
                    self.stats["redis_errors"] += 1
                    link.close()
                    connected = False
                    sent = None
                    await asyncio.sleep(delay)
                    # unsent results are not lost: their commands are still in `processing`
                    # and reconcile answers them again (from the recent-results cache)
                    pending = []
        finally:
            link.close()

    async def _restore_declared(self, wait: bool = False) -> None:
        """Declared containers and VMs (main.persistent_dir) come back; ``wait``: first for
        init's word on the persistent disk (it is mounted after the drivers load)."""
        try:  # containers a backup froze when the last dispatcher died: thawed first
            from core0.sandbox import backup

            await backup.thaw_left(self.cfg.state_dir)
        except Exception:
            log.exception("containers frozen by a backup not resumed")
        if wait:
            for _ in range(900):  # 3 minutes
                if declared.persistent_state(self.cfg) is not None:
                    break
                await asyncio.sleep(0.2)
            if not declared.persistent_ready(self.cfg):
                log.error("persistent disk %s not mounted: declared containers and VMs stay "
                          "down", self.cfg.main.persistent_device)
                return
        terminates: list[Any] = []
        try:  # what a killed dispatcher left
            from core0.boot import leftovers

            terminates = await leftovers.sweep(self.engine, self.cfg, self.started)
        except Exception:
            log.exception("leftovers of a killed dispatcher not removed")
        try:  # declared containers come back (after those): core0/sandbox/persist.py
            from core0.sandbox import persist

            persist.restore(self.engine, self.cfg, after=terminates)
        except Exception:
            log.exception("declared containers not restored")
        try:  # and declared VMs: core0/virt/persist.py
            from core0.virt import persist as vm_persist

            vm_persist.restore(self.engine, self.cfg)
        except Exception:
            log.exception("declared VMs not restored")

    async def _containers_sample(self) -> list[Any]:
        """The containers' cgroup figures for the metrics endpoint (core0/sandbox)."""
        from core0.sandbox import manager

        return await asyncio.to_thread(manager.monitor, self.cfg.state_dir)

    async def _vms_sample(self) -> list[Any]:
        """The VMs' figures for the metrics endpoint, once kvm.* is in use (core0/virt)."""
        from core0.virt import manager as vms

        virt = vms.current()
        return await virt.monitor() if virt is not None else []

    async def _supervisor_sample(self) -> list[Any]:
        """Starts and ends of what the supervisor runs, for the metrics endpoint."""
        return service_samples(await self.shim.services())

    def _settle(self, written: list[bool]) -> None:
        self.stats["duplicates"] += written.count(False)

    # ------------------------------------------------------------ one batch

    async def handle(
        self,
        raws: list[bytes],
        queue: str,
        processing: str,
        role: Role,
        pickup: Callable[[Sequence[tuple[str, str, bytes]]], Awaitable[list[bool]]],
        *,
        owned: bool = False,
    ) -> list[Publish]:
        """Handle popped commands; return the results to write (the caller sends them).

        ``owned``: their flags were set by an earlier delivery (reconcile)."""
        pubs, starts = await self.prepare(raws, queue, processing, role, owned=owned)
        if starts:
            if owned:
                oks = [True] * len(starts)
            else:
                oks = await pickup([(a.cmd.id, processing, a.raw) for a in starts])
            pubs += self.launch(starts, oks, processing, role)
        return pubs

    async def prepare(
        self, raws: list[bytes], queue: str, processing: str, role: Role, *, owned: bool = False
    ) -> tuple[list[Publish], list[Accepted]]:
        """Decode and answer what can be answered now (errors, inline commands, repeats);
        return those results and the commands to start once picked up."""
        pubs: list[Publish] = []
        starts: list[Accepted] = []
        mode = "owned" if owned else "new"
        scope = self.private.get(queue)
        engine = self.engine
        for raw in raws:
            acc = await self._accept(raw, queue, processing, role, pubs, owned)
            if acc is None:
                continue
            cmd, spec = acc.cmd, acc.spec
            if cmd.id in engine.table:  # a copy of a job running here
                self.stats["duplicates"] += 1
                pubs.append(Publish(cmd.id, "", raw, processing, "drop"))
                continue
            cached = engine.recent.get(cmd.id)
            if cached is not None:  # finished here; re-answer if Redis lost the result
                owner = engine.role_of(cmd.id)
                if owner is not None and owner != role:
                    # another role's job had this id: never hand its result to this queue
                    self._error(pubs, cmd.id, cmd.command, Conflict(
                        f"id {cmd.id} is taken by another job"), raw, processing, cmd)
                else:
                    pubs.append(Publish(cmd.id, cached, raw, processing, mode))
                continue
            if spec.inline and cmd.is_plain and not cmd.max_time:
                result = await engine.run_inline(cmd, spec, acc.args, role, scope)
                engine.remember(cmd.id, result, role, scope)
                self.stats["inline"] += 1
                pubs.append(Publish(cmd.id, result, raw, processing, mode))
            else:
                starts.append(acc)
        return pubs, starts

    def _on_picked(self, picked: Picked, replies: list[Any]) -> None:
        """The pickups' replies, as the link parses them: jobs already built start in this
        turn of the event loop, not in the pop loop's next one (docs/performance.md)."""
        if picked.jobs is None or picked.done or any(isinstance(r, RespError) for r in replies):
            return  # not built yet, or an error reply: the pop loop takes it
        try:
            self._start_picked(picked, replies)
        except Exception:
            log.exception("starting picked-up jobs failed")

    def _start_picked(self, picked: Picked, replies: list[Any]) -> None:
        picked.done = True
        n = picked.results
        self._settle([bool(x) for x in replies[:n]])
        picked.late = self.launch(picked.starts, [bool(x) for x in replies[n:]],
                                  picked.processing, picked.role, picked.jobs)

    def launch(self, starts: list[Accepted], oks: list[bool], processing: str,
               role: Role, jobs: list[Job] | None = None) -> list[Publish]:
        """Start the picked-up commands (``oks``: the pickup of each; ``jobs``: their Job
        objects if already made); returns the results of those refused at start."""
        pubs: list[Publish] = []
        for i, (acc, ok) in enumerate(zip(starts, oks, strict=True)):
            if not ok:
                self.stats["duplicates"] += 1
                continue
            limit = self._recurring_limit(acc.cmd, role)
            if limit is not None:
                self._error(pubs, acc.cmd.id, acc.cmd.command, limit, acc.raw, processing,
                            acc.cmd, mode="owned")
                continue
            self.stats["accepted"] += 1
            job = jobs[i] if jobs is not None else Job(self.engine, acc.cmd, acc.spec,
                                                       acc.args, role, acc.raw, processing)
            self.engine.start(job)
        return pubs

    async def _accept(
        self, raw: bytes, queue: str, processing: str, role: Role, pubs: list[Publish],
        owned: bool = False,
    ) -> Accepted | None:
        try:
            cmd = decode_command(raw, self.cfg.bus.max_command_bytes)
        except ProtocolError as e:
            # a big command is searched in a thread: the loop keeps serving
            job_id = (recover_id(raw) if len(raw) < (1 << 20)
                      else await asyncio.to_thread(recover_id, raw))
            if job_id is not None and not self._id_allowed(queue, job_id):
                job_id = None
            if job_id is None:
                self.stats["dead_letters"] += 1
                log.warning("dead letter on %s: %s", queue, e)
                await self.bus.dead_letter(queue, raw, str(e), None)
                await self.bus.release(processing, raw)
                return None
            self._error(pubs, job_id, "", BadRequest(str(e), code=e.code), raw, processing)
            return None
        reason = None
        if colliding_id(cmd.id):
            # its result key would be another job's flag or run result: answering would
            # hijack that job, so it is refused like a command without an id
            reason = "id names another job's keys"
        elif cmd.id.startswith(self.reserved):
            self._error(pubs, cmd.id, cmd.command, BadRequest(
                "id: the prefixes of core0's own jobs are reserved behind a private queue's "
                "prefix too", field="id"), raw, processing, cmd)
            return None
        elif not self._id_allowed(queue, cmd.id):
            # a private queue's ids carry its name: the result would land where its users
            # cannot read it (and others could), so it is not answered
            reason = f"id must start with {self.private[queue]!r} on this private queue"
        if reason is not None:
            self.stats["dead_letters"] += 1
            log.warning("dead letter on %s: id %r: %s", queue, cmd.id, reason)
            await self.bus.dead_letter(queue, raw, reason, None)
            await self.bus.release(processing, raw)
            return None
        bad = self._check_limits(cmd)
        if bad is not None:
            self._error(pubs, cmd.id, cmd.command, bad, raw, processing, cmd)
            return None
        spec = registry.get(cmd.command)
        if spec is None and owned and (inner := requeued(cmd)) is not None:
            cmd, spec = inner  # a container's builtin inner job, cut short: inside again
        if spec is None or spec.internal:
            self._error(pubs, cmd.id, cmd.command,
                        UnknownCommand(f"unknown command {cmd.command!r}"), raw, processing, cmd)
            return None
        if role < spec.role:
            self._error(pubs, cmd.id, cmd.command, Forbidden(
                f"{cmd.command} is not permitted for this queue (role {role.label}, "
                f"needs {spec.role.label})"), raw, processing, cmd)
            return None
        try:
            args = spec.args.parse(cmd.arguments)
        except CommandError as e:
            self._error(pubs, cmd.id, cmd.command, e, raw, processing, cmd)
            return None
        return Accepted(cmd, spec, args, raw)

    def _id_allowed(self, queue: str, job_id: str) -> bool:
        prefix = self.private.get(queue)
        return prefix is None or (job_id.startswith(prefix) and len(job_id) > len(prefix))

    def _check_limits(self, cmd: Command) -> CommandError | None:
        """Refuse out-of-range options."""
        if cmd.recurring_period and cmd.recurring_period > self.cfg.bus.max_recurring_period:
            return BadRequest(f"recurring_period: at most {self.cfg.bus.max_recurring_period}"
                              " seconds", field="recurring_period")
        return None

    def _recurring_limit(self, cmd: Command, role: Role) -> CommandError | None:
        if not cmd.recurring_period:
            return None
        cap = self.cfg.bus.role_recurring_cap(role)
        if cap is not None and self.engine.recurring_count(role) >= cap:
            return Unavailable(f"limit reached: {cap} recurring jobs for role {role.label}")
        return None

    def _error(self, pubs: list[Publish], job_id: str, command: str, exc: CommandError,
               raw: bytes, processing: str, cmd: Command | None = None,
               mode: str = "new") -> None:
        self.stats["errors"] += 1
        res = exception_result(job_id, command, exc, tags=cmd.tags if cmd else None)
        self.metrics.result(command, res.state.value, 0.0)
        pubs.append(Publish(job_id, res.to_json(), raw, processing, mode))

    def _parse_saved(self, saved: jobstate.Saved) -> tuple[Command, CommandSpec, Any, Role]:
        """A saved job as the engine adopts it (a container's inner one: ``adopted_spec``)."""
        cmd = decode_command(saved.raw, self.cfg.bus.max_command_bytes, internal=True)
        spec = registry.get(cmd.command)
        if spec is None:
            raise ValueError(f"unknown command {cmd.command}")
        if saved.container:
            spec = adopted_spec(spec, saved.container)
        return cmd, spec, spec.args.parse(cmd.arguments), Role.parse(saved.role)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The dispatcher's event loop: uvloop's (libuv) when it is installed, asyncio's own when
    not or when ``CORE0_EVENT_LOOP=asyncio``. On uvloop a ``core.ping`` costs the dispatcher
    about 12 % less CPU and its round trip up to 12 % less time (docs/performance.md, "The
    event loop: uvloop"); nothing in core0 depends on which one runs."""
    if os.environ.get("CORE0_EVENT_LOOP", "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def main(cfg: Config, reload_config: Callable[[], Config] | None = None) -> None:
    os.chdir("/")
    reset_ignored_signals()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(Dispatcher(cfg, reload_config).run())
