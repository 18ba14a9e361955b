"""service.*: the node's startup services; core.reload: apply a changed configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from core0.context import Context
from core0.registry import Role, command
from core0.schema import Doc, NoArgs, Pattern, Schema

_SERVICE_ID = Pattern(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")


@dataclass(frozen=True)
class ServiceId(Schema):
    id: Annotated[str, Doc("service id (the <id> of [startup.<id>])"), _SERVICE_ID]


@command("service.list", role=Role.READ_ONLY, inline=True)
async def service_list(ctx: Context, args: NoArgs) -> list[dict[str, Any]]:
    """Every declared service in start order: ``id``, ``status`` (pending, starting, running,
    done, failed, skipped, stopped, error), ``message`` (why), ``phase`` (init, net, boot),
    ``job`` (its job id, ``svc:<id>``), ``pid`` (0 when not running), ``starts`` (runs so far,
    restarts included), ``last_exit`` (the last run's result code), ``hash`` (of the effective
    spec: what runs), ``command``, ``oneshot``, ``protected``, ``deps`` (services it waits
    for) and ``source`` (the file that declared it)."""
    return ctx.services.describe_all()


@command("service.get", ServiceId, role=Role.READ_ONLY, inline=True)
async def service_get(ctx: Context, args: ServiceId) -> dict[str, Any]:
    """One service as in service.list, plus its effective ``spec`` (after conditional
    arguments and ``{var}`` substitution), ``last_state``, ``result`` (the data a builtin
    command returned, e.g. cloud-config's per-step outcome) and ``started_at``, ``ready_at``,
    ``ended_at`` (epoch seconds). 404 for an unknown id."""
    return ctx.services.get(args.id).describe(full=True)


@command("service.start", ServiceId, role=Role.OPERATOR)
async def service_start(ctx: Context, args: ServiceId) -> dict[str, Any]:
    """Start a service that is not running (stopped, done, failed): it waits for its
    dependencies to be running, as at boot. 409 when it runs or waits already; 412 when it is
    invalid or its condition is false on this node. Returns the service (service.get)."""
    return await ctx.services.start(args.id)


@command("service.stop", ServiceId, role=Role.OPERATOR)
async def service_stop(ctx: Context, args: ServiceId) -> dict[str, Any]:
    """Stop a service: SIGTERM to its process group, SIGKILL after ``services.stop_timeout``;
    a protected service is not restarted. Its status becomes ``stopped`` until service.start,
    service.restart or a reload that changes it. Stopping a service that does not run changes
    nothing. Services that depend on it keep running."""
    return await ctx.services.stop(args.id)


@command("service.restart", ServiceId, role=Role.OPERATOR)
async def service_restart(ctx: Context, args: ServiceId) -> dict[str, Any]:
    """Stop the service if it runs, then start it again (waiting for its dependencies).
    412 when it is invalid or its condition is false. Returns the service (service.get)."""
    return await ctx.services.restart(args.id)


@command("core.reload", role=Role.ADMIN)
async def reload(ctx: Context, args: NoArgs) -> dict[str, Any]:
    """Re-read the configuration (same files, kernel command line and environment as at start;
    SIGHUP does the same) and apply it to the startup services without a reboot: services whose
    spec hash changed are restarted, new ones started, removed ones stopped, the others keep
    running untouched (same pids). Returns ``{"started", "restarted", "stopped", "unchanged",
    "skipped"}`` (lists of ids; ``skipped``: declared but their condition is false). A
    configuration with an invalid service or a dependency cycle is refused as a whole: 400 and
    nothing changes. 409 while the boot services have not passed their net phase."""
    from core0.config import ConfigError
    from core0.errors import BadRequest

    try:
        return await ctx.node.reload()
    except ConfigError as e:
        raise BadRequest(f"configuration refused, nothing changed: {e}") from None
