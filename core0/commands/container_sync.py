"""``corex.create-sync`` (0-core's): a container created as ``corex.create`` makes it, held
by the job for its whole life.

0-core's boot configs start containers with it (``[startup.<id>] name =
"corex.create-sync"``, its docs' "Starting containers on boot"): the service's job lasts as
long as the container, so ``protected`` makes a new one after each end. core0's own form is
``[startup.<id>] container = {…}`` (``container.run``, which runs a command); this one takes
``corex.create``'s arguments unchanged and runs none: the container's init pauses, and
commands reach it through ``corex.dispatch``, as with ``corex.create``.
"""

from __future__ import annotations

from core0.commands.container import CreateArgs, aliases, in_foreground
from core0.context import Context, ProcessSpec
from core0.errors import BadRequest


@aliases("create-sync", CreateArgs)
async def create_sync(ctx: Context, args: CreateArgs) -> ProcessSpec:
    """Create a container as corex.create does (same arguments, same defaults and role) and
    keep this job running for as long as it lives: the job's process is the runtime's run of
    the container, whose init pauses (commands go in with corex.dispatch); the job ends —
    and the container is torn down — when the container is terminated (corex.terminate),
    the job killed (job.kill, a service stop) or the init dies. corex.list shows it, with
    ``service`` set to this job's id. 0-core's boot services start containers this way;
    ``persistent`` and ``restart`` are refused (400): the job is the supervision (a
    ``protected`` service makes a new container after each end), and so is a ``restic:``
    root (restore it with corex.restore, or create from its image)."""
    for name, given in (("persistent", args.persistent), ("restart", args.restart != "no"),
                        ("root", args.root.startswith("restic:"))):
        if given:
            raise BadRequest(f"{name}: not with corex.create-sync (the job holds the "
                             "container; see its reference)", field=name)
    tags = list(args.tags if args.tags is not None else ctx.tags)
    return await in_foreground(ctx, args, args.name or "", tags, [])
