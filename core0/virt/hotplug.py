"""Devices plugged into and out of a running VM (kvm.attach_disk, detach_disk, remove_nic).

A hot-plugged disk is checked like a new VM's: qemu must hold open only the files core0
resolved (core0/virt/guard.py), so the guest is paused while the disk goes in and until that
check. The pause, the plug and the check run to their end even when the job is killed
meanwhile: killed in the pause, the guest stayed paused; killed in the plug, the disk stayed
in the guest without the check (a file swapped in behind core0's back reached the guest).

When the check fails the disk is taken out again. A virtio disk leaves only when the guest
lets it go, and a guest that does not (a hostile one, or one without an OS) would keep a file
core0 never checked, so the VM is then destroyed: the host file does not reach the guest.

A detach (:func:`unplug`) likewise runs to its end once libvirt is asked: the request, the
wait for the guest to let the device go, and the collection of a segment left without ports.
A guest may let a nic go only after that wait (:data:`DETACH_WAIT`; the job has answered):
libvirt's device-removed event then collects its segment (:func:`released`), not the VM's
stop as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from core0 import cancel
from core0.context import Context
from core0.errors import Conflict
from core0.virt import guard
from core0.virt.manager import lv_error

if TYPE_CHECKING:
    from core0.virt.access import VM
    from core0.virt.manager import Virt

log = logging.getLogger(__name__)

#: how long a detached device may take to leave the guest (libvirt's device-removed event)
DETACH_WAIT = 3.0
#: collections of segments started by device-removed events (referenced until they end)
_COLLECTING: set[asyncio.Task[None]] = set()


def released() -> None:
    """libvirt's device-removed event, for any VM of the node: collect the vlan/vxlan
    segments left without ports (a nic's guest let it go after ``kvm.remove_nic``'s wait).
    A segment still in use, or pinned by a nic being attached, stays
    (:func:`core0.net.segments.collect`)."""
    async def collect() -> None:
        from core0.net import segments

        try:
            removed = await asyncio.to_thread(segments.collect)
        except Exception as e:
            log.warning("virt: segments not collected after a device removal: %s", e)
            return
        if removed:
            log.info("virt: segments left without ports removed: %s", ", ".join(removed))

    task = asyncio.ensure_future(collect())
    _COLLECTING.add(task)
    task.add_done_callback(_COLLECTING.discard)


async def detach(v: Virt, dom: Any, xml: str, alias: str, what: str, name: str = "") -> bool:
    """Detach a device and wait up to :data:`DETACH_WAIT` s for libvirt's device-removed
    event; True when it came. (Fault tests: the step ``<name>/<what>`` holds libvirt's
    thread right after the request.)"""
    from core0.virt.conn import libvirt_module

    lv = libvirt_module()
    uuid = await v.conn.call(lambda c: dom.UUIDString())

    def request(_conn: Any) -> None:
        dom.detachDeviceFlags(xml, lv.VIR_DOMAIN_AFFECT_LIVE)
        guard.test_hold_sync(f"{name}/{what}")

    with v.conn.subscribe() as sub:
        try:
            await v.conn.call(request)
        except Exception as e:
            raise lv_error(e, what) from None
        try:
            async with asyncio.timeout(DETACH_WAIT):
                while True:
                    ev = await sub.get()
                    if (ev["event"] == "device_removed" and ev["uuid"] == uuid
                            and (not alias or ev["detail"] == alias)):
                        return True
        except TimeoutError:
            return False


async def unplug(vm: VM, xml: str, alias: str, what: str,
                 after: Callable[[], Awaitable[object]] | None = None) -> bool:
    """``kvm.detach_disk``/``remove_nic``: :func:`detach` the device, then ``after`` (a
    segment left without ports collected), to the end once begun: a kill that comes while
    libvirt detaches or the guest lets go is too late, the job answers with the outcome
    (before, it answered KILLED at once, the device left the guest after it, and a
    vlan/vxlan segment whose last port it was stayed). A kill before is taken here."""
    async def run() -> bool:
        gone = await detach(vm.v, vm.dom, xml, alias, what, vm.name)
        if after is not None:
            await after()
        return gone

    await asyncio.sleep(0)
    return await cancel.atomic(run(), defer=False)


async def plug_disk(ctx: Context, vm: VM, xml: str, path: str, ids: set[guard.Ident]) -> None:
    """Plug the disk ``xml`` (source ``path``, whose files are ``ids``) into ``vm``, paused
    meanwhile if it runs, then check qemu's open files (409 when they are not core0's)."""
    from core0.virt.conn import libvirt_module

    lv = libvirt_module()
    v, dom = vm.v, vm.dom
    held = await ctx.to_thread(guard.held_now, vm.uuid)
    state = await vm.call("attach_disk", lambda d: d.state()[0])
    paused = state == lv.VIR_DOMAIN_RUNNING

    def pause(d: Any) -> None:
        d.suspend()
        guard.test_hold_sync(f"{vm.name}/suspend")

    def plug(c: Any) -> None:
        guard.test_hold_sync(f"{vm.name}/attach")
        dom.attachDeviceFlags(xml, lv.VIR_DOMAIN_AFFECT_LIVE)

    async def plugged() -> None:
        try:
            await v.conn.call(plug)
        except Exception as e:
            raise lv_error(e, "attach_disk") from None
        try:
            await v.check_files(vm.uuid, ids, held)
        except Conflict:
            await _take_out(vm, xml, path)
            raise

    if paused:  # a kill meanwhile is taken in the try below, which resumes the guest
        await cancel.atomic(vm.call("pause for attach_disk", pause))
    try:
        await asyncio.sleep(0)
        # to its end: a kill that comes while libvirt plugs the disk is too late for it
        await cancel.atomic(plugged(), defer=False)
    finally:
        if paused:
            with contextlib.suppress(Exception):  # (destroyed by _take_out)
                await cancel.atomic(vm.call("resume after attach_disk", lambda d: d.resume()),
                                    defer=False)


async def _take_out(vm: VM, xml: str, path: str) -> None:
    """A disk whose files failed the check leaves the guest; if the guest keeps it, the VM
    is destroyed (its disk leads to a file core0 did not check)."""
    v, dom = vm.v, vm.dom
    with contextlib.suppress(Exception):
        if await detach(v, dom, xml, "", "attach_disk"):
            return
    live = await v.conn.call(lambda c: dom.XMLDesc(0))
    if f"'{path}'" not in live and f'"{path}"' not in live:
        return
    log.warning("virt: VM %s keeps a disk whose files core0 did not check: destroyed", vm.uuid)
    with contextlib.suppress(Exception):
        await v.conn.call(lambda c: dom.destroy())
    raise Conflict("media: a disk image or a directory on its path changed while the disk "
                   "was being attached (qemu opened a file core0 did not check), and the "
                   "guest did not let the disk go: the VM was destroyed", field="media")
