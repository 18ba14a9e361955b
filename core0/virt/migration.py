"""The source's side of a live migration (``kvm.migrate``; the destination's is
:mod:`core0.virt.incoming`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    try:
        await v.conn.call(lambda c: vm.dom.migrateToURI3(desturi, params, flags))
    except Exception as e:
        rec.pop("migrating", None)
        v._save_record(uuid, rec)
        raise lv_error(e, f"migration of {uuid} to {desturi}") from None
    rec.pop("migrating", None)
    rec["migrated"] = desturi
    v._save_record(uuid, rec)
    await v.cleanup(uuid)
