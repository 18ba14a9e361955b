"""The one door of the ``kvm.*`` commands that act on a VM: :func:`load`.

It finds VM ``uuid`` (404 unless it is one of core0's: a domain someone else defined, or a KVM
probe, is left alone) and refuses (403, nothing changed) a caller that may not act on what the
VM's owner made (:mod:`core0.virt.owner`: the calling queue's role and scope, never the
payload's). Every acting command (destroy, shutdown, reboot, reset, pause, resume, disks, nics,
I/O limits, port forwards, migration) goes through it and then acts on the domain it returns.

:class:`EventFilter` is ``kvm.events``' view: only core0's VMs, and of those only the ones
the caller may see.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from core0 import cancel
from core0.errors import NotFound
from core0.virt import domain as dx
from core0.virt import guard
from core0.virt.manager import lv_error, of
from core0.virt.owner import Owner, allow, caller, live_vms, owned

if TYPE_CHECKING:
    from core0.context import Context
    from core0.virt.manager import Virt

T = TypeVar("T")


@dataclass
class VM:
    """A VM the caller may act on: its domain and what its live XML said when loaded."""

    v: Virt
    uuid: str
    name: str
    dom: Any
    xml: str
    live: dx.Live
    owner: Owner

    @property
    def declared(self) -> str:
        """Its name when it is a declared (persistent) VM, else ""."""
        return self.name if self.live.meta.get("declared") else ""

    async def call(self, what: str, fn: Callable[[Any], T]) -> T:
        """``fn(domain)`` in libvirt's thread pool; libvirt errors become command errors.
        (Fault tests: the step ``<name>/<what>`` holds the thread right after ``fn``.)"""
        def run(_conn: Any) -> T:
            out = fn(self.dom)
            guard.test_hold_sync(f"{self.name}/{what}")
            return out

        try:
            return await self.v.conn.call(run)
        except Exception as e:
            raise lv_error(e, f"{what} {self.uuid}") from None

    async def act(self, what: str, fn: Callable[[Any], T]) -> T:
        """:meth:`call` for a call that changes the VM, run to its end once begun: a kill
        that comes while libvirt acts is too late for it, and the job answers with libvirt's
        outcome (before, it answered KILLED at once and libvirt made the change after); a
        kill that came before is taken here, nothing done."""
        await asyncio.sleep(0)
        return await cancel.atomic(self.call(what, fn), defer=False)


async def load(ctx: Context, uuid: str) -> VM:
    """VM ``uuid`` for a command that acts on it: 404 unless it is core0's, 403 unless the
    calling queue may act on what its owner made."""
    v = await of(ctx).ready()
    dom = await v.domain(uuid)
    try:
        name, xml = await v.conn.call(lambda c: (dom.name(), dom.XMLDesc(0)))
    except Exception as e:
        raise lv_error(e, f"no VM {uuid}") from None
    live = dx.parse(xml)
    owner = Owner.of(live.meta)
    v.owners.note(uuid, owner)
    allow(caller(ctx), owner, f"VM {uuid}")
    return VM(v, uuid, name, dom, xml, live, owner)


class EventFilter:
    """Which libvirt events a ``kvm.events`` caller gets: connection events, and events of
    core0's VMs whose owner it sees. A VM's owner comes from the manager's cache (VMs made,
    listed or acted on), else from its live domain, else from its record (a VM stopped before
    it was looked up); a domain that is not core0's is remembered as foreign."""

    MAX_FOREIGN = 4096

    def __init__(self, ctx: Context, v: Virt):
        self.v = v
        self.who = caller(ctx)
        self.foreign: set[str] = set()

    async def prime(self) -> None:
        """Learn the owners of every domain running now (one libvirt call)."""
        vms, foreign = await live_vms(self.v.conn)
        for vm in vms:
            self.v.owners.note(vm.uuid, vm.owner)
        self._foreign(foreign)

    def _foreign(self, uuids: set[str]) -> None:
        if len(self.foreign) + len(uuids) > self.MAX_FOREIGN:
            self.foreign.clear()
        self.foreign |= uuids

    async def shows(self, ev: dict[str, Any]) -> bool:
        uuid = str(ev.get("uuid") or "")
        if not uuid:
            return True  # the connection's own events (lost, reconnected)
        owner = await self._owner(uuid)
        return owner is not None and self.who.sees(owner)

    async def _owner(self, uuid: str) -> Owner | None:
        owner = self.v.owners.get(uuid)
        if owner is not None:
            return owner
        if uuid in self.foreign:
            return None
        try:
            dom = await self.v.conn.call(lambda c: c.lookupByUUIDString(uuid))
            name, xml = await self.v.conn.call(lambda c: (dom.name(), dom.XMLDesc(0)))
        except Exception:  # gone: core0's only if it left a record
            rec = self.v.record(uuid)
            return Owner.of(rec) if rec is not None else None
        live = dx.parse(xml)
        if not owned(name, live):
            self._foreign({uuid})
            return None
        owner = Owner.of(live.meta)
        self.v.owners.note(uuid, owner)
        return owner


def allow_record(ctx: Context, uuid: str) -> None:
    """403 unless the caller may act on the record of VM ``uuid`` (a prepared incoming one);
    404 when there is none."""
    rec = of(ctx).record(uuid)
    if rec is None:
        raise NotFound(f"no VM {uuid}")
    allow(caller(ctx), Owner.of(rec), f"VM {uuid}")
