"""Containers as the API shows them: 0-core's entries (corex.list/get/find), the
arguments a viewer may see, cgroup figures (memory, OOM kills, CPU time) for them and for
the metrics endpoint. Used by :mod:`.manager` (which re-exports these names)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core0.errors import NotFound
from core0.registry import Role
from core0.sandbox import runtime, userns
from core0.sandbox.store import Record, Store

if TYPE_CHECKING:
    from core0.context import Context



def _cgroup_file(cg_path: str, controller: str, name: str) -> str | None:
    for base in (f"/sys/fs/cgroup/{controller}", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        p = f"{base}{cg_path}/{name}"
        with contextlib.suppress(OSError):
            with open(p) as f:
                return f.read()
    return None


def usage(rec: Record) -> dict[str, Any]:
    """Memory use and OOM kills of the container's cgroup (v1 or v2)."""
    out: dict[str, Any] = {"rss": 0, "oom_kills": 0}
    text = _cgroup_file(rec.cgroups_path, "memory", "memory.usage_in_bytes") \
        or _cgroup_file(rec.cgroups_path, "memory", "memory.current")
    if text and text.strip().isdigit():
        out["rss"] = int(text)
    for name in ("memory.oom_control", "memory.events"):
        text = _cgroup_file(rec.cgroups_path, "memory", name)
        if text:
            for line in text.splitlines():
                k, _, val = line.partition(" ")
                if k == "oom_kill" and val.strip().isdigit():
                    out["oom_kills"] = int(val)
            break
    return out


def _nic_arg(n: Any) -> dict[str, Any]:
    """A nic as 0-core listed it in a container's arguments: {type, id, name, hwaddr, config,
    state}."""
    return {"type": n.type, "id": n.id, "name": n.name or n.inner, "hwaddr": n.hwaddr,
            "config": n.config, "state": n.state}


#: arguments that may hold secrets (``identity``: a zerotier private key, ``storage``: a URL
#: with credentials in 0-core); redacted for viewers who may not see the creator's jobs
SECRET_ARGS = ("env", "identity", "storage", "command")
REDACTED = "<redacted>"


def visible_args(rec: Record, viewer: Role, scope: str | None) -> dict[str, Any]:
    """The container's arguments as ``viewer`` (a role, a private-queue scope) may see them:
    as given when it may see the creating queue's jobs (job.list's rule: at least the
    creator's role, and below admin the same private queue), else with the values of
    :data:`SECRET_ARGS` (each env variable's value) replaced by ``<redacted>``."""
    args = dict(rec.arguments)
    if viewer.sees(scope, Role(rec.role), rec.scope or None):
        return args
    for k in SECRET_ARGS:
        if k == "env" and isinstance(args.get(k), dict):
            args[k] = {name: REDACTED for name in args[k]}
        elif args.get(k) is not None:
            args[k] = REDACTED
    return args


def describe(rec: Record, state: runtime.State | None, viewer: Role = Role.ADMIN,
             scope: str | None = None, cdir: Path | None = None) -> dict[str, Any]:
    """0-core's container entry: {cpu, rss, vms, swap, container: {arguments, root, pid, …}}
    as ``viewer`` may see it (:func:`visible_args`); ``startup``: its ``/.startup.toml``
    services (:func:`.startup.describe`, read from ``cdir``, the container's dir)."""
    from core0.sandbox import startup

    u = usage(rec)
    status = state.status if state is not None else ("creating" if rec.state == "creating"
                                                     else "gone")
    return {
        "cpu": 0.0, "rss": u["rss"], "vms": 0, "swap": 0,
        "container": {
            "id": rec.id, "name": rec.name, "tags": rec.tags, "root": rec.root,
            "image": rec.image, "hostname": rec.hostname,
            # 0-core kept the job's tags and the nics (with their state) in the arguments
            "arguments": {**visible_args(rec, viewer, scope), "tags": rec.tags,
                          "nics": [_nic_arg(n) for n in rec.nics]},
            "pid": state.pid if state is not None and status != "stopped" else 0,
            "status": status, "oom_kills": u["oom_kills"],
            "nics": [n.__dict__ for n in rec.nics], "ports": rec.ports,
            "host_network": rec.host_network, "privileged": rec.privileged,
            "created": rec.created, "persistent": bool(rec.spec_hash),
            "service": rec.service,
            # the host ids its uid/gid 0..size-1 are (0: no user namespace)
            "userns": {"uid": rec.userns_base, "gid": rec.userns_base,
                       "size": userns.SIZE} if rec.userns_base else None,
            "startup": startup.describe(cdir, viewer.sees(scope, Role(rec.role),
                                                          rec.scope or None))
            if cdir is not None else None,
        },
    }


async def list_all(ctx: Context) -> dict[str, dict[str, Any]]:
    recs = Store(ctx.config.state_dir).all()
    if not recs:
        return {}
    rt = await runtime.choose(ctx.config.state_dir)
    states = {s.id: s for s in await rt.list_all()}
    st = Store(ctx.config.state_dir)
    return {str(r.id): describe(r, states.get(r.runtime_id), ctx.job.role, ctx.scope,
                                st.dir(r.id)) for r in recs}


def find_record(ctx: Context, query: int | str) -> Record:
    st = Store(ctx.config.state_dir)
    if isinstance(query, int) or (query.isascii() and query.isdigit()):
        # (isascii: str.isdigit() also takes '²', which int() refuses)
        return st.load(int(query))
    for r in st.all():
        if r.name == query:
            return r
    raise NotFound(f"no container named {query}")


def monitor(state_dir: Path) -> list[tuple[str, str, str, dict[str, str], float]]:
    """Every container's cgroup figures for the metrics endpoint (core0/fleet/metrics.py):
    memory in use, CPU time, OOM kills."""
    out: list[tuple[str, str, str, dict[str, str], float]] = []
    for rec in Store(state_dir).all():
        labels = {"container": str(rec.id), "name": rec.name or ""}
        u = usage(rec)
        out.append(("core0_container_memory_bytes", "Memory in use by a container's cgroup",
                    "gauge", labels, float(u["rss"])))
        out.append(("core0_container_oom_kills", "OOM kills in a container's cgroup",
                    "counter", labels, float(u["oom_kills"])))
        cpu = _cpu_seconds(rec.cgroups_path)
        if cpu is not None:
            out.append(("core0_container_cpu_seconds", "CPU time of a container's cgroup",
                        "counter", labels, cpu))
    return out


def _cpu_seconds(cg_path: str) -> float | None:
    text = _cgroup_file(cg_path, "cpu", "cpu.stat")  # v2: usage_usec
    for line in (text or "").splitlines():
        k, _, val = line.partition(" ")
        if k == "usage_usec" and val.strip().isdigit():
            return int(val) / 1e6
    text = _cgroup_file(cg_path, "cpuacct", "cpuacct.usage")  # v1: nanoseconds
    if text and text.strip().isdigit():
        return int(text) / 1e9
    return None
