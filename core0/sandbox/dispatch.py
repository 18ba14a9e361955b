"""``corex.dispatch``: a command run inside a container, as a job of its own.

The inner command is checked like one from the bus (protocol rules, its schema) and against
the *outer* queue's role. It becomes a process job of the engine whose process is the
runtime's ``exec`` into the container (same namespaces, capabilities, seccomp filter and
cgroup as the container's init): output, ``max_time``, kill and adoption after a dispatcher
restart work as for host jobs. Its pickup flag is set at once, so 0-core's clients waiting on
``result:<inner id>`` see it running; its result carries ``container: <id>``.

Supported inside: ``core.system`` and ``bash`` (``sh -c`` in the container's root), run by the
runtime's exec; ``filesystem.*``, run by the dispatcher with ``main.filesystem_root`` set to the
container's root clone (paths resolved fd by fd inside it, symlinks included: a symlink swapped
in by the container cannot lead outside). Mounts made inside the container are not seen. In a
container with a user namespace, what they create belongs to the container's root (the
range's first host uid/gid, never host root) and ``filesystem.chown`` takes the container's
ids and names (:mod:`.fsowner`).

``info.*`` is answered for the container (its cpuset, memory cgroup, netns, mounts; see
:mod:`core0.sandbox.info`).

``ip.*`` (links, addresses, routes; 0-core's ``ip.bridge.*`` and ``ip.bond.*``) runs the node's
handler in the container's network namespace, and in no other: its ``netns`` is set to the
container's (named now if it was still anonymous) and the command may use that namespace
only (``Context.netns_only``); a ``netns``, ``peer_netns`` or ``move_to`` given is refused
(400), as is ``ip.netns.*`` (the node's namespaces) and any ``ip.*`` in a container that shares
the node's network (412). The container's own capabilities (no ``CAP_NET_ADMIN`` by
default) do not apply: the queue that may dispatch into the container is the one acting.

``job.list``/``job.kill`` inside see and signal only the container's own inner jobs, and
``process.list``/``process.kill`` only the processes in its cgroup (listed by host pid).

Three rules keep an inner command from ever running on the host: ``recurring_period`` and
``max_restart`` are refused (a re-run after a dispatcher restart would call the host's
handler); a builtin job's (``filesystem.*``, ``info.*``, ``ip.*``, ``job.*``, ``process.*``,
``core.*``) stored form names no registered command (``container.inside:<id>:<command>``); and
an inner process job adopted by the next dispatcher is given :func:`adopted_spec`, so the one
case where adoption calls a handler again — its dispatcher died after writing ``spawning`` and
before the spawn, so it never started — runs it inside its container again (or answers 409 when
the container is gone), never with the host's handler.

A builtin inner job is not on disk (it holds no process); its stored form is put in the outer
queue's ``processing`` list with its pickup flag, in one write, and taken out with its result.
A dispatcher killed (or stopped) while one runs leaves it there; the next one's reconcile
re-runs it inside its container (:func:`requeued`) when it may run twice, as it re-runs a
host builtin cut short (a command that changes something is answered 503 "interrupted"
instead: :attr:`CommandSpec.rerun`) — only from that list: the stored form pushed on a queue
by a client is an unknown command.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core0_client.protocol import Command, ProtocolError, Result, State, decode_command

from core0 import cancel, registry
from core0.context import ProcessSpec
from core0.errors import (
    BadRequest,
    CommandError,
    Conflict,
    Forbidden,
    NotFound,
    PreconditionFailed,
    Unavailable,
)
from core0.registry import CommandSpec, Role
from core0.sandbox import fsowner, runtime
from core0.sandbox.store import Store

if TYPE_CHECKING:
    from core0.context import Context
    from core0.jobs.job import Job

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SUPPORTED = ("core.system", "bash", "filesystem.*", "info.*", "ip.*", "job.list", "job.kill",
             "process.list", "process.kill", "core.ping", "core.subscribe")
#: arguments of ip.* naming a namespace: inside a container, only its own is used
_NETNS_FIELDS = ("netns", "peer_netns", "move_to")
#: the info.* commands answered for a container
INFO = ("info.cpu", "info.mem", "info.nic", "info.disk", "info.os", "info.port", "info.version")
#: answered by the node's own handler (0-core's coreX answered these inside): the node's
#: version and following a job's output
NODE_FACTS = ("core.ping", "core.subscribe")
#: the stored (requeue) name of filesystem.* jobs run inside a container: never registered
INSIDE_ONLY = "container.inside:"
#: namespace of the inner job ids made from a ``corex.dispatch``'s own id (when none is given)
_INNER_IDS = uuid.UUID("5b0c6f0e-9a43-4c55-8a55-3f1e0c0de0d1")


async def _exec_handler(ctx: Context, rec: Any, name: str, args: Any, job_id: str) -> Any:
    argv, env, cwd, stdin = _argv(name, args)
    rt = await runtime.choose(ctx.config.state_dir)
    exec_argv = rt.exec_argv(rec.runtime_id, argv, env=env, cwd=cwd,
                             pid_file=str(exec_pid_file(ctx.config.state_dir, rec.id, job_id)))

    async def run_inside(_ctx: Context, _args: Any) -> ProcessSpec:
        return ProcessSpec(exec_argv, stdin=stdin,
                           label=f"container {rec.id}: {' '.join(argv)}"[:200])

    return run_inside


def adopted_spec(spec: CommandSpec, cid: int) -> CommandSpec:
    """The spec of an inner process job of container ``cid`` adopted from the state dir
    (``spec``: the registry's, for ``core.system`` or ``bash``): its handler is called only
    when the job never spawned, and builds the runtime's exec into the container as
    :func:`dispatch` did; 409 if the container is no longer running."""
    async def run_again_inside(ctx: Context, args: Any) -> Any:
        rec = _running(ctx, cid)
        if rec is None:
            raise Conflict(f"container {cid} is not running: {spec.name} did not run")
        handler = await _exec_handler(ctx, rec, spec.name, args, ctx.job.id)
        return await handler(ctx, args)

    return CommandSpec(spec.name, run_again_inside, spec.args, spec.role, False, spec.doc,
                       rerun=spec.rerun)


def exec_pid_file(state_dir: Path, cid: int, job_id: str) -> Path:
    """Where the runtime's exec of inner job ``job_id`` writes its program's host pid."""
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:24]
    return Store(state_dir).dir(cid) / f"exec-{digest}.pid"


def _end_exec(state_dir: Path, rec: Any, job_id: str) -> Any:
    """The end of an inner process job's run: when it was killed (``job.kill``, ``max_time``)
    what is left of its program inside is killed too — its process group, as a job's on the
    node. The engine signals the runtime's ``exec``, which passes TERM on to the program
    only: a program that ignored it ran on inside after the engine's KILL of the ``exec``
    (and the job's KILLED answer), and so did its children, held by no job."""
    pid_file = exec_pid_file(state_dir, rec.id, job_id)

    def ended(job: Job, result: Result) -> None:
        try:
            pid = int(pid_file.read_text().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        pid_file.unlink(missing_ok=True)
        if pid and (job.killed or result.state in (State.KILLED, State.TIMEOUT)):
            kill_group_inside(pid, rec.cgroups_path)

    return ended


def kill_group_inside(pid: int, cgroups_path: str) -> None:
    """SIGKILL the process group ``pid`` leads (the runtime's exec makes its program a
    session and group leader) if a process of that group is still in the container whose
    cgroup is ``cgroups_path``: its children too once the program itself has ended (the
    group's number is not reused while a member lives)."""
    for member in cgroup_pids(cgroups_path):
        try:
            with open(f"/proc/{member}/stat", "rb") as f:
                data = f.read()
            if int(data[data.rfind(b")") + 2:].split()[2]) == pid:
                os.killpg(pid, signal.SIGKILL)
                return
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile


def reattach(engine: Any, state_dir: Path) -> None:
    """Dispatcher start: :func:`_end_exec` again on each adopted inner process job."""
    for job in list(engine.table.values()):
        if not job.container:
            continue
        try:
            rec = Store(state_dir).load(job.container)
        except NotFound:
            continue
        if exec_pid_file(state_dir, rec.id, job.id).exists():
            job.run_end.append(_end_exec(state_dir, rec, job.id))


def _fs_handler(ctx: Context, rec: Any, spec: CommandSpec) -> Any:
    cfg = ctx.config
    rootfs = Store(cfg.state_dir).dir(rec.id) / "rootfs"
    inside = dataclasses.replace(cfg, main=dataclasses.replace(cfg.main,
                                                               filesystem_root=str(rootfs)))
    base = rec.userns_base

    async def run_fs(c: Context, a: Any) -> Any:
        c.config = inside
        if base and spec.name == "filesystem.chown":
            a = await c.to_thread(fsowner.chown_args, rootfs, a, base)
        out = await spec.handler(c, a)
        if base and spec.name in ("filesystem.open", "filesystem.mkdir"):
            await c.to_thread(fsowner.created, spec.name, a, rootfs, base)
        return out

    return run_fs


def _job_handler(cid: int, name: str) -> Any:
    """job.list / job.kill limited to the container's own inner jobs, with the host
    commands' rules on top: jobs of a higher role (or, below admin, of another private
    queue) are listed redacted and may not be killed (403)."""
    async def run_job(c: Context, a: Any) -> Any:
        # the container's own inner jobs (Job.container: kept across dispatcher restarts)
        mine = {jid for jid, j in c.engine.table.items() if j.container == cid}
        if a.id and a.id not in mine:
            raise NotFound(f"no such job: {a.id}")
        if name == "job.list":
            return [d for d in c.engine.describe_all(a.id, c.role, c.scope) if d["id"] in mine]
        if c.engine.may_access(a.id, c.role, c.scope) is False:
            raise Forbidden(f"job {a.id} is not this queue's to act on")
        return c.engine.kill(a.id, a.signal)

    return run_job


def cgroup_pids(cg_path: str) -> set[int]:
    """Host pids of the processes in a container's cgroup (v1 pids controller, or v2)."""
    for base in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        try:
            with open(f"{base}{cg_path}/cgroup.procs") as f:
                return {int(x) for x in f.read().split()}
        except OSError:
            continue
    return set()


def _process_handler(cg_path: str, spec: CommandSpec) -> Any:
    """process.list / process.kill limited to the container's processes (host pids)."""
    async def run_proc(c: Context, a: Any) -> Any:
        mine = cgroup_pids(cg_path)
        if a.pid and a.pid not in mine:
            raise NotFound(f"no such process: {a.pid}")
        out = await spec.handler(c, a)
        if spec.name == "process.list":
            return [p for p in out if p.get("pid") in mine]
        return out

    return run_proc


def _info_handler(ctx: Context, rec: Any, spec: CommandSpec) -> Any:
    """info.* answered for the container (see :mod:`core0.sandbox.info`)."""
    from core0.sandbox import info
    from core0.sandbox.manager import init_pid

    cdir = Store(ctx.config.state_dir).dir(rec.id)

    async def run_info(c: Context, a: Any) -> Any:
        host = None
        if spec.name in info.FROM_HOST or (spec.name == "info.nic" and rec.host_network):
            host = await spec.handler(c, a)
        return await c.to_thread(info.answer, spec.name, rec, init_pid(cdir, rec),
                                 cdir / "rootfs", host)

    return run_info


def _ip_handler(rec: Any, spec: CommandSpec) -> Any:
    """ip.* in the container's network namespace only (module docstring)."""
    from core0.net import netlink as nl
    from core0.sandbox import netsetup

    async def run_ip(c: Context, a: Any) -> Any:
        for where in _netns_fields(a, "command.arguments"):
            raise BadRequest(f"{where}: inside a container ip.* acts in its own network "
                             "namespace only", field=where)
        cur = _running(c, rec.id)
        if cur is None:
            raise Conflict(f"container {rec.id} is not running")
        if cur.host_network:
            raise PreconditionFailed(f"container {rec.id} shares the node's network: use "
                                     f"{spec.name} on the node")
        await netsetup.pin_init_netns(c, cur)  # (a container made without nics)
        ident = await c.to_thread(nl.netns_id, cur.netns)
        if ident is None:
            raise Conflict(f"container {rec.id} has no network namespace")
        c.netns_only = {cur.netns: ident}
        return await spec.handler(c, dataclasses.replace(a, netns=cur.netns))

    return run_ip


def _netns_fields(a: Any, path: str) -> Iterator[str]:
    """Where parsed arguments ``a`` name a network namespace (``links[i].peer_netns``…)."""
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            val = getattr(a, f.name)
            if f.name in _NETNS_FIELDS and val is not None:
                yield f"{path}.{f.name}"
            else:
                yield from _netns_fields(val, f"{path}.{f.name}")
    elif isinstance(a, list):
        for i, x in enumerate(a):
            yield from _netns_fields(x, f"{path}[{i}]")


def _is_ip(name: str) -> bool:
    return name.startswith("ip.") and not name.startswith("ip.netns.")


def _builtin(ctx: Context, rec: Any, spec: CommandSpec) -> Any:
    """The handler of a builtin inner command (None: it runs as the runtime's exec)."""
    name = spec.name
    if name.startswith("filesystem."):
        return _fs_handler(ctx, rec, spec)
    if name in ("job.list", "job.kill"):
        return _job_handler(rec.id, name)
    if name in ("process.list", "process.kill"):
        return _process_handler(rec.cgroups_path, spec)
    if name in INFO:
        return _info_handler(ctx, rec, spec)
    if _is_ip(name):
        return _ip_handler(rec, spec)
    if name in NODE_FACTS:
        return spec.handler
    return None


def _running(ctx: Context, cid: int) -> Any:
    """Container ``cid``'s record if it is running, else None."""
    from core0.sandbox.manager import init_pid

    st = Store(ctx.config.state_dir)
    try:
        rec = st.load(cid)
    except NotFound:
        return None
    if rec.state != "running" or not runtime.alive(init_pid(st.dir(cid), rec)):
        return None
    return rec


def _mark(cid: int) -> Any:
    def mark(_job: Job, result: Result) -> None:
        result.container = cid  # builtin results too

    return mark


def requeued(cmd: Command) -> tuple[Command, CommandSpec] | None:
    """A builtin inner job found in a ``processing`` list by reconcile (its dispatcher died
    or stopped while it ran): the command under its own name and a spec that runs it inside
    its container again (409 when the container is not running any more). None: not a
    stored form this module wrote."""
    cid_s, _, name = cmd.command.removeprefix(INSIDE_ONLY).partition(":")
    spec = registry.get(name)
    if (not cmd.command.startswith(INSIDE_ONLY) or not cid_s.isdigit() or spec is None
            or spec.internal or not _is_builtin(name)):
        return None
    cid = int(cid_s)

    async def run_again_inside(ctx: Context, args: Any) -> Any:
        ctx.job.container = cid
        ctx.job.run_end.append(_mark(cid))
        rec = _running(ctx, cid)
        if rec is None:
            raise Conflict(f"container {cid} is not running: {name} did not run again")
        return await _builtin(ctx, rec, spec)(ctx, args)

    return (dataclasses.replace(cmd, command=name),
            CommandSpec(name, run_again_inside, spec.args, spec.role, False, spec.doc,
                        rerun=spec.rerun))


def _is_builtin(name: str) -> bool:
    return (name.startswith("filesystem.") or name in INFO or _is_ip(name)
            or name in ("job.list", "job.kill", "process.list", "process.kill", *NODE_FACTS))


def _argv(name: str, args: Any) -> tuple[list[str], dict[str, str], str, bytes]:
    """(argv inside, env additions, cwd, stdin) of a supported inner command."""
    if name == "core.system":
        return [args.name, *args.args], dict(args.env or {}), args.dir, args.stdin.encode()
    return ["sh", "-c", args.script], {}, "", args.stdin.encode()


def refusal(name: str, role: Role) -> CommandError | None:
    """Why command ``name`` may not run inside a container for a queue of ``role`` (None:
    it may): not a command, not one served inside, or above the role."""
    spec = registry.get(name)
    if spec is None or spec.internal:
        return BadRequest(f"command.command: unknown command {name!r}", field="command.command")
    if name not in SUPPORTED and not _is_builtin(name):
        return PreconditionFailed(f"{name} cannot run inside a container yet "
                                  f"(supported: {', '.join(SUPPORTED)})")
    if spec.role > role:
        return Forbidden(f"{name} is not permitted for this queue")
    return None


def checked(cmd: Command, role: Role) -> tuple[CommandSpec, Any, bool]:
    """An inner command's spec, parsed arguments and whether it is a builtin (else it runs
    as the runtime's exec), checked for a queue of ``role`` (typed errors otherwise)."""
    why = refusal(cmd.command, role)
    if why is not None:
        raise why
    spec = registry.get(cmd.command)
    assert spec is not None
    args: Any = spec.args.parse(cmd.arguments, "command.arguments")
    if cmd.command == "core.system":
        for k, val in (args.env or {}).items():
            if not _ENV_NAME.fullmatch(k) or "\0" in val:
                raise BadRequest(f"command.arguments.env.{k}: not a valid variable",
                                 field="command.arguments.env")
    return spec, args, _is_builtin(cmd.command)


def start_internal(ctx: Context, cid: int, cmd: Command, protected: bool) -> Job:
    """Start ``cmd`` inside container ``cid`` as a job of core0's own (a container's
    ``/.startup.toml`` services, :mod:`.startup`): checked as :func:`dispatch` checks a
    command, for the role of ``ctx.job`` (the creating queue's), with its private-queue
    scope; no pickup and no result, its output in ``log:<id>``. ``protected``,
    ``recurring_period`` and ``max_restart`` are the engine's: a process job's every run,
    also after its adoption by a new dispatcher, is the runtime's exec into the container
    (:func:`adopted_spec`; 409 once it is not running). Typed errors when it cannot start."""
    spec, args, builtin = checked(cmd, ctx.job.role)
    engine = ctx.engine
    if cmd.id in engine.table:
        raise Conflict(f"a job with id {cmd.id} exists already")
    if not _room(engine, ctx.job.role):
        raise Unavailable(f"limit reached: jobs in flight for role {ctx.job.role.label}")
    rec = _running(ctx, cid)
    if rec is None:
        raise Conflict(f"container {cid} is not running")
    inner_spec = (CommandSpec(cmd.command, _builtin(ctx, rec, spec), spec.args, spec.role,
                              False, spec.doc, rerun=spec.rerun)
                  if builtin else adopted_spec(spec, cid))
    job: Job = engine.new_job(cmd, inner_spec, args, ctx.job.role, cmd.to_json().encode(), "")
    job.scope = ctx.job.scope
    job.protected = protected
    job.container = cid
    job.run_end.append(_mark(cid))
    if not builtin:
        job.run_end.append(_end_exec(ctx.config.state_dir, rec, cmd.id))
    engine.start(job)
    return job


def _room(engine: Any, role: Role) -> bool:
    """May one more job of core0's own run inside a container for a queue of ``role``? They
    count against the role's jobs in flight (``bus.role_max_jobs``) with its bus jobs, and
    never take the slots kept for admin queues: a container's ``/.startup.toml`` cannot
    fill the node's job table."""
    if engine.free_slots(role) == 0:
        return False
    cap = engine.cfg.bus.role_cap(role)
    if cap is None:
        return True
    inside = sum(1 for j in engine.table.values()
                 if j.internal and j.container and j.role == role)
    return bool(engine.by_role[role] + inside < cap)


async def dispatch(ctx: Context, cid: int, inner: dict[str, Any]) -> str:
    """Start ``inner`` inside container ``cid``; returns the inner job id."""
    rec = Store(ctx.config.state_dir).load(cid)
    inner.setdefault("arguments", {})
    # on a private queue the inner job's id carries the queue's prefix too, as every id
    # of that queue must: its result, stream and log keys are then where the caller (and
    # only the caller) may read them
    prefix = ctx.scope or ""
    derived = "id" not in inner
    if derived:
        # a function of this command's id: a dispatch run again after its dispatcher
        # stopped (before answering) finds the job the first run started, not a second one
        inner["id"] = prefix + str(uuid.uuid5(_INNER_IDS, f"{ctx.job.id}/{cid}"))
    if prefix and not str(inner["id"]).startswith(prefix):
        raise BadRequest(f"command.id: must start with {prefix!r} on this private queue",
                         field="command.id")
    try:
        cmd = decode_command(json.dumps(inner), ctx.config.bus.max_command_bytes)
    except ProtocolError as e:
        raise BadRequest(f"command: {e}", field="command") from None
    if cmd.recurring_period or cmd.max_restart:
        raise BadRequest("command: recurring_period and max_restart are not supported inside "
                         "containers", field="command")
    spec, args, builtin = checked(cmd, ctx.job.role)
    rec = _running(ctx, cid)
    if rec is None:
        raise Conflict(f"container {cid} is not running")
    handler = (_builtin(ctx, rec, spec) if builtin
               else await _exec_handler(ctx, rec, cmd.command, args, cmd.id))
    inner_spec = CommandSpec(cmd.command, handler, spec.args, spec.role, False, spec.doc,
                             rerun=spec.rerun)
    raw = cmd.to_json().encode()
    if builtin:  # kept in ``processing`` until its result; re-run only inside (requeued)
        raw = json.dumps({**cmd.to_dict(),
                          "command": f"{INSIDE_ONLY}{cid}:{cmd.command}"}).encode()
    # the pickup write and the start of the job it announces are one step, never cut in
    # half (a kill or max_time meanwhile is dropped: this dispatch answers the inner id).
    # Cut short after the write, it answered KILLED and left the inner id's flag set (no
    # TTL: "running" for good, and a caller that chose the id waited forever) and a builtin's
    # stored form in ``processing`` (run inside at the next dispatcher's start)
    return await cancel.atomic(_start(ctx, rec, cmd, inner_spec, args, raw, builtin,
                                      derived), defer=False)


async def _start(ctx: Context, rec: Any, cmd: Command, inner_spec: CommandSpec, args: Any,
                 raw: bytes, builtin: bool, derived: bool) -> str:
    """The inner job's pickup and start in container ``rec`` (:func:`dispatch`'s last
    step); returns its id."""
    cid = rec.id
    engine = ctx.engine
    processing = ctx.job.processing
    handler = inner_spec.handler
    if cmd.id in engine.table or not await engine.bus.pickup(cmd.id, processing, raw,
                                                             listed=builtin):
        same = engine.table.get(cmd.id)
        if derived or (same is not None and same.raw == raw and same.container == cid):
            return cmd.id  # this dispatch's first run started it: the same answer again
        raise Conflict(f"a job with id {cmd.id} exists already")
    job: Job = engine.new_job(cmd, inner_spec, args, ctx.job.role, raw, processing)
    job.container = cid  # persisted with the job: an adopting dispatcher sets it too
    job.run_end.append(_mark(cid))
    if not builtin:
        job.run_end.append(_end_exec(ctx.config.state_dir, rec, cmd.id))
        # spawned by engine.start in this turn, so its ``spawning`` step is written before
        # this command's result, which hands out the inner id, can reach anyone: a
        # dispatcher killed right after it still finds the job to adopt (a turn later, the
        # job could be lost with its flag set and no result ever)
        job.prebuilt = await handler(ctx, args)
    engine.start(job)
    return cmd.id
