"""``kvm.forget-undeclared`` (internal): declared VMs whose declaration was removed while
core0 was down are destroyed at the next dispatcher start, as declared containers are
terminated (:func:`core0.sandbox.persist.restore`)."""

from __future__ import annotations

import logging
from typing import Any

from core0.context import Context
from core0.errors import NotFound
from core0.registry import Role, command
from core0.schema import NoArgs
from core0.virt import persist
from core0.virt.manager import of

log = logging.getLogger(__name__)


@command("kvm.forget-undeclared", NoArgs, role=Role.ADMIN, internal=True)
async def forget_undeclared(ctx: Context, args: NoArgs) -> list[str]:
    """Destroy every VM core0 created as declared (``persistent``) whose declaration is gone
    — removed from ``main.persistent_dir`` while the node or its dispatcher was down — with
    its overlays, lease and forwards, as ``kvm.destroy`` does. Submitted by each dispatcher
    start after the declarations are restored (retried while libvirtd is not up yet); a
    name being declared at that moment is left alone (its ``name_lock``). Returns the
    destroyed uuids."""
    v = await of(ctx).ready()
    doms = await v.conn.call(lambda c: c.listAllDomains(0))
    gone: list[str] = []
    for dom in doms:
        try:
            item: dict[str, Any] = await v.describe(dom)
        except NotFound:
            continue  # not core0's, or gone meanwhile
        name, uuid = str(item["name"]), str(item["uuid"])
        if not item["persistent"] or persist.declaration(ctx.config, name) is not None:
            continue
        async with persist.name_lock(name):
            if persist.declaration(ctx.config, name) is not None:
                continue  # declared again meanwhile
            try:
                await v.conn.call(lambda c, d=dom: d.destroy())
            except Exception as e:
                log.warning("undeclared VM %s (%s) not destroyed: %s", name, uuid, e)
                continue
            log.warning("declared VM %s (%s): no declaration any more, destroyed", name,
                        uuid)
            await v.cleanup(uuid)
        gone.append(uuid)
    return gone
