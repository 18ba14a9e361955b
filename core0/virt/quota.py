"""Per-role caps on VMs: how many a role below admin may have, and their memory together.

``[virt] role_max_vms`` and ``role_max_memory_mib`` (the pattern of ``[bus] role_max_jobs``)
count every VM libvirt runs now whose owner (:mod:`core0.virt.owner`) has the role, whichever
of the role's queues made it. A ``kvm.create`` that would pass a cap is refused with 503
(``Unavailable``: "limit reached", as the job caps) before anything is made. The check runs
under the manager's create lock, which every creation holds until its domain runs or is
undone, so concurrent creates (jobs of one asyncio loop) are counted one after the other,
each seeing the ones before it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core0.errors import Unavailable
from core0.virt.owner import Owner, live_vms

if TYPE_CHECKING:
    from core0.virt.conn import Conn
    from core0.virtconfig import VirtConfig




async def check(conn: Conn, cfg: VirtConfig, owner: Owner, memory: int) -> None:
    """503 when one more VM of ``memory`` MiB for ``owner``'s role would pass a cap."""
    max_vms, max_mib = cfg.role_vms_cap(owner.role), cfg.role_memory_cap(owner.role)
    if max_vms is None and max_mib is None:
        return
    vms, _ = await live_vms(conn)
    mine = [vm for vm in vms if vm.owner.role == owner.role]
    label = owner.role.label
    if max_vms is not None and len(mine) + 1 > max_vms:
        raise Unavailable(f"limit reached: {max_vms} VMs for role {label} "
                      "(virt.role_max_vms)")
    used = sum(vm.memory for vm in mine)
    if max_mib is not None and used + memory > max_mib:
        raise Unavailable(f"limit reached: {used} of {max_mib} MiB of VM memory for role {label} "
                      f"in use, {memory} more asked (virt.role_max_memory_mib)",
                      field="memory")
