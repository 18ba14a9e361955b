"""core.*: ping, process execution, state, the command reference, subscriptions."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any

import psutil
from core0_client.protocol import LogRecord
from redis.exceptions import ResponseError

from core0 import __version__, registry
from core0.bus.store import TRANSIENT
from core0.context import Context, ProcessSpec
from core0.errors import BadRequest, Forbidden, NotFound
from core0.jobs.env import SERVICE_COMMAND, check_env, job_env, program
from core0.proc.process import find_executable
from core0.registry import Role, command
from core0.schema import ID, Doc, Len, NoArgs, Pattern, Schema

_NO_NUL = Pattern(r"[^\x00]*")


@command("core.ping", role=Role.READ_ONLY, inline=True)
async def ping(ctx: Context, args: NoArgs) -> str:
    """Answer ``"PONG <version>"``: the node is up and its dispatcher is taking commands."""
    return f"PONG {__version__}"


@dataclass(frozen=True)
class SystemArgs(Schema):
    name: Annotated[str, Doc("program to run (looked up in PATH)"), Len(1, 4096), _NO_NUL]
    args: Annotated[list[Annotated[str, _NO_NUL]], Doc("its arguments, one per item")] = field(
        default_factory=list
    )
    dir: Annotated[str, Doc("working directory ('' = /)"), _NO_NUL] = ""
    env: Annotated[dict[str, str] | None, Doc("variables added to the node's environment")] = None
    stdin: Annotated[str, Doc("text fed to the program's standard input")] = ""


@command("core.system", SystemArgs, role=Role.ADMIN, builds_process=True)
async def system(ctx: Context, args: SystemArgs) -> ProcessSpec:
    """Run a program (no shell). The result's ``streams`` hold the tails of stdout and stderr,
    ``code`` is ``1000 + exit status`` (0 on success); output lines ``20:::`` … ``:::`` become
    level-20 data. A program that is not found gives 404."""
    check_env(args.env)
    env = job_env(args.env)
    exe = program(args.name, env, args.dir)
    return ProcessSpec(
        [args.name, *args.args], env=env, cwd=args.dir or None, stdin=args.stdin.encode(),
        exe=exe,
    )


@dataclass(frozen=True)
class BashArgs(Schema):
    script: Annotated[str, Doc("shell script"), _NO_NUL]
    stdin: Annotated[str, Doc("text fed to the script's standard input")] = ""


@command("bash", BashArgs, role=Role.ADMIN, builds_process=True)
async def bash(ctx: Context, args: BashArgs) -> ProcessSpec:
    """Run a shell script with ``bash -c`` (``sh -c`` where bash is missing). Admin queues only:
    this is the one command that runs a shell, on purpose."""
    env = job_env(None)
    bash = find_executable("bash", env)  # remembered: not a stat per PATH entry per job
    shell = bash or "sh"
    return ProcessSpec([shell, "-c", args.script], env=env, stdin=args.stdin.encode(),
                       label=f"bash: {args.script[:80]}", exe=bash)


@command("core.state", role=Role.READ_ONLY, inline=True)
async def state(ctx: Context, args: NoArgs) -> dict[str, Any]:
    """Summed cpu (%), rss, vms and swap of all running jobs plus core0 itself, and the
    number of jobs."""
    total = {"cpu": 0.0, "rss": 0, "vms": 0, "swap": 0}
    jobs = ctx.engine.describe_all()
    for j in jobs:
        for k in total:
            total[k] += j.get(k, 0)
    me = psutil.Process()
    with me.oneshot():
        mem = me.memory_info()
        total["rss"] += mem.rss
        total["vms"] += mem.vms
        total["cpu"] += me.cpu_percent(None)
    total["jobs"] = len(jobs)
    return total


@command("core.commands", role=Role.READ_ONLY, inline=True)
async def commands(ctx: Context, args: NoArgs) -> list[dict[str, Any]]:
    """Every command of this node: name, least role, argument JSON Schema and reference text."""
    return [spec.describe() for spec in registry.all_commands()]


@dataclass(frozen=True)
class ServiceArgs(Schema):
    argv: Annotated[list[Annotated[str, _NO_NUL]], Len(1)]
    env: dict[str, str] | None = None
    cwd: str | None = None
    stdin: str = ""
    label: str = ""
    protected: bool = True


@command(SERVICE_COMMAND, ServiceArgs, role=Role.ADMIN, internal=True)
async def service(ctx: Context, args: ServiceArgs) -> ProcessSpec:
    """A long-lived process run by core0 itself (dnsmasq of a bridge, boot services…),
    restarted with backoff when ``protected``. Internal: not accepted from the bus."""
    return ProcessSpec(list(args.argv), env=args.env, cwd=args.cwd, stdin=args.stdin.encode(),
                       label=args.label)


@dataclass(frozen=True)
class SubscribeArgs(Schema):
    id: Annotated[str, Doc("job to follow"), ID]


@command("core.subscribe", SubscribeArgs, role=Role.READ_ONLY)
async def subscribe(ctx: Context, args: SubscribeArgs) -> dict[str, Any]:
    """Relay another job's output (from the start of its ``log:<id>``) as this job's output,
    until that job ends. Run it with ``stream: true`` to read it from ``stream:<this id>``, as
    0-core's subscribers did; any number of subscribers may follow one job."""
    if args.id == ctx.id:
        raise BadRequest("a job cannot subscribe to itself", field="id")
    target = ctx.engine.table.get(args.id)
    if target is not None and target.spec.name == "core.subscribe":
        raise BadRequest("cannot subscribe to a subscriber", field="id")
    bus = ctx.engine.bus
    key = bus.keys.log(args.id)
    if not await bus.exists(key) and args.id not in ctx.engine.table:
        raise NotFound(f"no such job output: {args.id}")
    # a role reads only the output of its own jobs and of lower roles' (unknown: admin only)
    access = ctx.engine.may_access(args.id, ctx.role, ctx.scope)
    if not access and (access is False or ctx.role < Role.ADMIN):
        raise Forbidden(f"the output of {args.id} is not readable from this queue")
    conn = bus.blocking_client()
    last = "0-0"
    relayed = 0
    try:
        while True:
            try:
                resp = await conn.xread({key: last}, count=500, block=2000)
            except ResponseError:
                break
            except TRANSIENT:
                continue
            if not resp:
                if args.id not in ctx.engine.table and not await bus.exists(key):
                    break
                if await bus.exists(bus.keys.result(args.id)) and args.id not in ctx.engine.table:
                    break
                continue
            for _key, entries in resp:
                for entry_id, fields in entries:
                    last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    raw = fields.get(b"record") or fields.get("record")
                    rec = LogRecord.from_json(raw)
                    if rec.eof:
                        return {"id": args.id, "relayed": relayed, "eof": rec.flags}
                    ctx.emit(rec.level, rec.message)
                    relayed += 1
    finally:
        await conn.aclose()
    return {"id": args.id, "relayed": relayed, "eof": 0}


@command("config.get", role=Role.READ_ONLY, inline=True)
async def config_get(ctx: Context, args: NoArgs) -> dict[str, Any]:
    """The configuration in force (secrets redacted) and the files it was read from."""
    d = ctx.config.to_dict(redact=True)
    d["startup"] = {k: {kk: vv for kk, vv in v.items() if kk != "__source__"}
                    for k, v in d["startup"].items()}
    return json.loads(json.dumps(d, default=str))
