"""Declared VMs that come back after a reboot (``[main] persistent_dir``).

The mechanism is the containers' (:mod:`core0.declared`): ``kvm.create {persistent: true}``
records the VM's arguments, their hash and its uuid in
``<persistent_dir>/vms/<digest of the name>.json``, with the VM's owner (the declaring queue's
role and private-queue scope, :mod:`core0.virt.owner`); each dispatcher start re-submits
``kvm.create`` for every record as a job of core0's own (a failed one is retried each
second, :data:`RETRIES` times: libvirtd, a boot service, may not be up yet) with that role,
and the re-created VM has that owner again (:func:`owner_of`). A VM of that
name running with the same hash (kept in the domain's metadata, ``declared``) is kept, so
a dispatcher restart changes nothing; one with another hash is destroyed and created
again; a gone one is created again under its recorded uuid; a running VM declared here whose
declaration is gone (removed while core0 was down) is destroyed (``kvm.forget-undeclared``,
as declared containers are terminated). ``kvm.destroy``,
``kvm.shutdown`` and ``kvm.migrate`` of a declared VM delete its record; a guest that powers
itself off stays declared (it comes back at the next dispatcher start). Persistent creates
of one name are serialised (:data:`name_lock`): the second of two at once finds the first's
VM running with the same hash and answers its uuid.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core0_client.protocol import Command

from core0.declared import Declarations, declared_role, spec_hash
from core0.virt.owner import Owner

if TYPE_CHECKING:
    from core0.config import Config
    from core0.virt.spec import CreateArgs

log = logging.getLogger(__name__)

#: how many times a failed re-creation at start is retried (1 s apart; libvirtd may be starting)
RETRIES = 120
VMS = Declarations(kind="vms", command="kvm.create", job_prefix="declared-vm", what="VM",
                   retries=RETRIES)


#: serialises the persistent creates of one VM name (:meth:`Declarations.name_lock`)
name_lock = VMS.name_lock


def arguments(args: CreateArgs) -> dict[str, Any]:
    """The arguments a declaration records (the set ones, without ``persistent``)."""
    return _drop_none({k: v for k, v in dataclasses.asdict(args).items()
                       if k != "persistent"})


def _drop_none(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _drop_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_drop_none(x) for x in v]
    return v


def hash_of(args: CreateArgs) -> str:
    return spec_hash(arguments(args))


def declaration(cfg: Config, name: str) -> dict[str, Any] | None:
    return VMS.declaration(cfg, name)


def declare(cfg: Config, args: CreateArgs, uuid: str, role: int, scope: str = "") -> None:
    """Record (or update) the declaration of VM ``args.name``, owned by a queue of ``role``
    and private-queue ``scope`` (it is restored with that role, so its paths are resolved as
    that queue's were: :func:`core0.declared.declared_role`, and owned by them again)."""
    VMS.declare(cfg, args.name, arguments(args), uuid=uuid, role=int(role), scope=scope)


def owner_of(declaration: dict[str, Any]) -> Owner:
    """The owner a declaration gives its VM back: the declared role (as restored) and
    scope."""
    return Owner(declared_role(declaration), str(declaration.get("scope") or ""))


def undeclare(cfg: Config, name: str) -> None:
    VMS.undeclare(cfg, name)


def redeclare(cfg: Config, declaration: dict[str, Any]) -> None:
    """Write back a declaration read with :func:`declaration` and removed since (a
    ``kvm.destroy`` that libvirt refused)."""
    d = {k: v for k, v in declaration.items() if k != "hash"}
    VMS.declare(cfg, str(d.pop("name")), dict(d.pop("arguments")), **d)


def restore(engine: Any, cfg: Config) -> int:
    """Dispatcher start: re-submit ``kvm.create`` for every declared VM, and destroy the
    declared VMs whose declaration was removed meanwhile (``kvm.forget-undeclared``, when
    core0 has VMs on this node)."""
    from core0.declared import base
    from core0.virt.manager import vm_uuids

    if base(cfg) is not None and vm_uuids(Path(cfg.virt.dir)):
        try:
            engine.submit_internal(Command(command="kvm.forget-undeclared",
                                           id="undeclared-vms", max_restart=RETRIES))
        except Exception as e:
            log.warning("undeclared VMs not looked for: %s", e)
    return VMS.restore(engine, cfg)
