"""Who may act on a container: the rule of jobs (:meth:`core0.registry.Role.sees`).

Every record keeps the role and private-queue scope of the queue that created it
(:attr:`.store.Record.role`, ``scope``; a declared container is restored with its declaring
role). A queue may act on a container — terminate it, dispatch into it, add or remove its
nics and port forwards, replace it by a persistent create of its name — only when it may see
and act on the creating queue's jobs: at least the creator's role, and below admin a private
queue's containers only from that queue (a private queue only its own). Otherwise 403 before
anything is touched. Every command that acts on one container loads it through
:func:`acting_record` (or checks one it holds with :func:`check`): this is the one place of
the rule. Listing and getting stay open to every role, with the same rule redacting secret
arguments (:func:`.manager.visible_args`). core0's own jobs (``submit_internal``: the
teardown of a service's container, the re-declaration of a declared container, which runs
with the declaring role but no private queue) act on every container.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core0.errors import Forbidden
from core0.registry import Role
from core0.sandbox.store import Record, Store

if TYPE_CHECKING:
    from core0.context import Context


def owner_role(rec: Record) -> Role:
    """The creating queue's role (admin for a record whose value is out of range)."""
    try:
        return Role(rec.role)
    except ValueError:
        return Role.ADMIN


def may_act(ctx: Context, rec: Record) -> bool:
    return may_act_as(ctx, owner_role(rec), rec.scope)


def may_act_as(ctx: Context, owner: Role, owner_scope: str) -> bool:
    """May this queue act on what a queue of role ``owner`` and private-queue scope
    ``owner_scope`` made (a container, a declaration)?"""
    return ctx.may_act_for(owner, owner_scope)


def check(ctx: Context, rec: Record) -> None:
    """403 when this queue may not act on ``rec`` (see the module docstring)."""
    if may_act(ctx, rec):
        return
    owner = owner_role(rec)
    if ctx.job.role < owner:
        why = f"it was created by a queue of role {owner.label}"
    elif ctx.scope:
        why = "a private queue acts only on the containers it created"
    else:
        why = "it was created by a private queue"
    raise Forbidden(f"container {rec.id}: this queue may not act on it ({why})",
                    field="container")


def acting_record(ctx: Context, cid: int) -> Record:
    """Container ``cid``'s record, for a command that acts on it: 404 when there is none,
    403 when this queue may not act on it."""
    rec = Store(ctx.config.state_dir).load(cid)
    check(ctx, rec)
    return rec
