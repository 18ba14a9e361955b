"""Who made a VM, and who may see and act on it.

Every VM records the role and private-queue scope of the queue that created it (its *owner*)
in the domain's metadata (``owner: {role, scope}``, held by libvirt: it survives dispatcher
restarts, and travels with a migration) and in its record ``<virt dir>/<uuid>/vm.json``; a
declared VM's declaration keeps them too, and the re-creation at boot gives them back
(:mod:`core0.virt.persist`). The rule is the jobs' and containers' one,
:meth:`core0.registry.Role.sees`: a caller may act on a VM, and read its secrets (the kernel
command line), when its role is at least the owner's and, below admin, it comes from the
owner's private queue (or neither is on one). VMs made before owners were recorded, and any
metadata without one, are admin's.

This module has no libvirt call of its own beyond :func:`live_vms` (one listing of every
domain with its metadata), so the manager, the quotas and the event filter can share it.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core0.errors import Forbidden
from core0.registry import Role
from core0.virt import domain as dx
from core0.virt import probe

if TYPE_CHECKING:
    from core0.context import Context
    from core0.virt.conn import Conn

#: create arguments (``params``) that may hold secrets: shown as :data:`REDACTED` to a viewer
#: who may not see the owner (the containers' ``env`` rule, core0/sandbox/manager.py)
SECRET_PARAMS = ("cmdline", "config", "storage")
REDACTED = "<redacted>"


@dataclass(frozen=True)
class Owner:
    """The role and private-queue scope ("" = none) of the queue that made a VM."""

    role: Role
    scope: str = ""

    @classmethod
    def of(cls, data: dict[str, Any] | None) -> Owner:
        """The owner a VM's metadata or record names (``owner: {role, scope}``); admin when
        there is none or it is unreadable."""
        o = (data or {}).get("owner")
        try:
            if isinstance(o, dict):
                return cls(Role(min(int(o.get("role", Role.ADMIN)), Role.ADMIN)),
                           str(o.get("scope") or ""))
        except (TypeError, ValueError):
            pass
        return cls(Role.ADMIN)

    def to_json(self) -> dict[str, Any]:
        return {"role": int(self.role), "scope": self.scope}

    def sees(self, other: Owner) -> bool:
        """May a caller of this role and scope see and act on what ``other`` made?"""
        return self.role.sees(self.scope or None, other.role, other.scope or None)


def caller(ctx: Context) -> Owner:
    """The calling queue's role and scope (never from the payload)."""
    return Owner(ctx.job.role, ctx.scope or "")


def allow(who: Owner, owner: Owner, what: str) -> None:
    """403 unless ``who`` may act on ``what``, made by ``owner``."""
    if not who.sees(owner):
        raise Forbidden(f"{what} was made by a {owner.role.label} queue this queue may not "
                        "act for")


def visible_params(params: dict[str, Any], owner: Owner, viewer: Owner) -> dict[str, Any]:
    """A VM's create arguments as ``viewer`` may see them: as given when it sees the owner,
    else with the values of :data:`SECRET_PARAMS` replaced by ``<redacted>``."""
    if viewer.sees(owner):
        return params
    return {k: (REDACTED if k in SECRET_PARAMS and v not in (None, "", {}) else v)
            for k, v in params.items()}


def owned(name: str, live: dx.Live) -> bool:
    """Whether a domain is one of core0's VMs: it carries core0's metadata and is not a KVM
    probe."""
    return live.core0 and not name.startswith(probe.PREFIX)


@dataclass(frozen=True)
class LiveVM:
    uuid: str
    name: str
    owner: Owner
    memory: int  #: MiB


async def live_vms(conn: Conn) -> tuple[list[LiveVM], set[str]]:
    """Every domain libvirt runs now, in one call: core0's VMs (with owner and memory) and
    the uuids of the others (foreign domains, KVM probes)."""
    def read(c: Any) -> list[tuple[str, str, str, int]]:
        out = []
        for d in c.listAllDomains(0):
            try:
                out.append((d.UUIDString(), d.name(), d.XMLDesc(0), d.maxMemory()))
            except Exception:  # gone meanwhile
                continue
        return out

    vms, foreign = [], set()
    for uuid, name, xml, kib in await conn.call(read):
        live = dx.parse(xml)
        if owned(name, live):
            vms.append(LiveVM(uuid, name, Owner.of(live.meta), int(kib) // 1024))
        else:
            foreign.add(uuid)
    return vms, foreign


class Owners:
    """The owners of the VMs this dispatcher has seen (made, acted on, listed), so that an
    event of a VM that is gone already (``stopped``) can still be told core0's or not, and
    whose. Bounded: the oldest entries go first."""

    MAX = 4096

    def __init__(self) -> None:
        self._m: collections.OrderedDict[str, Owner] = collections.OrderedDict()

    def note(self, uuid: str, owner: Owner) -> None:
        self._m[uuid] = owner
        self._m.move_to_end(uuid)
        while len(self._m) > self.MAX:
            self._m.popitem(last=False)

    def get(self, uuid: str) -> Owner | None:
        return self._m.get(uuid)
