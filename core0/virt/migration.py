"""The source's side of a live migration (``kvm.migrate``; the destination's is
:mod:`core0.virt.incoming`)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from core0.virt.conn import libvirt_module
from core0.virt.manager import lv_error

if TYPE_CHECKING:
    from core0.virt.access import VM


async def migrate(vm: VM, desturi: str, shared_storage: bool) -> None:
    """Live-migrate a VM to another libvirtd (peer to peer, tunnelled through libvirt's
    connection). The VM's forwards and lease here are released; its files stay (with
    shared storage the destination runs on them)."""
    lv = libvirt_module()
    v, uuid = vm.v, vm.uuid
    rec = v.record(uuid) or {"uuid": uuid}
    rec["migrating"] = desturi
    v._save_record(uuid, rec)
    flags = lv.VIR_MIGRATE_LIVE | lv.VIR_MIGRATE_PEER2PEER | lv.VIR_MIGRATE_TUNNELLED
    flags |= lv.VIR_MIGRATE_UNSAFE if shared_storage else lv.VIR_MIGRATE_NON_SHARED_INC
    params = {lv.VIR_MIGRATE_PARAM_BANDWIDTH: 10 * 1024}  # MiB/s, 0-core's 10 GB/s cap
    # (the pool of long libvirt calls: other kvm.* commands answer while it runs)
    fut = asyncio.ensure_future(v.conn.call(
        lambda c: vm.dom.migrateToURI3(desturi, params, flags), long=True))
    try:
        await asyncio.shield(fut)
    except asyncio.CancelledError:
        # job.kill, max_time, the dispatcher stopping: the migration is aborted, and waited
        # for, so that the record says where the VM is (the files of a VM that did move
        # must stay: its destination may run on them)
        while not fut.done():
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await v.conn.call(lambda c: vm.dom.abortJob())
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({fut}, timeout=0.5)
        if not fut.cancelled() and fut.exception() is None:
            await _moved(vm, rec, desturi)
        else:
            rec.pop("migrating", None)
            v._save_record(uuid, rec)
        raise
    except Exception as e:
        rec.pop("migrating", None)
        v._save_record(uuid, rec)
        raise lv_error(e, f"migration of {uuid} to {desturi}") from None
    await _moved(vm, rec, desturi)


async def _moved(vm: VM, rec: dict[str, Any], desturi: str) -> None:
    """The VM runs at ``desturi`` now: recorded, and its network here released."""
    rec.pop("migrating", None)
    rec["migrated"] = desturi
    vm.v._save_record(vm.uuid, rec)
    await vm.v.cleanup(vm.uuid)
