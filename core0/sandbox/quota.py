"""Per-role container caps: ``[containers] role_max`` (the pattern of ``[bus] role_max_jobs``).

A role below admin may have at most its cap of containers, whichever of its queues (private
or not) made them: every record of the role counts, running, being created or stopped and
not yet terminated (each holds a root clone, a netns, nics). One more ``corex.create`` is
refused with 503 (``Unavailable``: "limit reached", as the job caps) and leaves nothing
behind. Admin is bounded by the node's ``MAX_CONTAINERS`` only, so a lower role never takes
all of it.

The cap is per role, not per private queue: it is what bounds the share of the node a role
may take, and a cap per private queue would multiply it by their number (enough private
queues would again reach the node's limit and starve admin).

Race-free: :func:`admitted` counts under the store's lock, and the create allocates its id
and writes its first record (with its role) before the lock is let go, with no await in
between, so concurrent creates (jobs of one asyncio loop, or another process) are counted
one after the other, each seeing the reservations before it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from core0.errors import Unavailable
from core0.sandbox.store import Store

if TYPE_CHECKING:
    from core0.context import Context




def check(ctx: Context, st: Store) -> None:
    """503 when the queue's role has its cap of containers already (no lock: callers that
    reserve use :func:`admitted`; without it, an early refusal before anything is made)."""
    role = ctx.job.role
    cap = ctx.config.containers.role_cap(role)
    if cap is None:
        return
    used = sum(1 for r in st.all() if r.role == int(role))
    if used >= cap:
        raise Unavailable(f"limit reached: {cap} containers for role {role.label} "
                      "(containers.role_max)")


@contextlib.contextmanager
def admitted(ctx: Context, st: Store) -> Iterator[None]:
    """Under the store's lock, 503 when the role's cap is reached; the block reserves the id
    and writes its first record (no await in it: see :meth:`Store.locked`)."""
    with st.locked():
        check(ctx, st)
        yield
