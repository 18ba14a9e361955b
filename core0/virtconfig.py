"""The ``[virt]`` section of the configuration (VMs, ``kvm.*``; see docs/kvm.md).

Kept out of :mod:`core0.config` (which is at its size limit); it is a section like the others
(a strict schema whose unknown fields are keys) and :class:`core0.config.Config` holds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from core0 import schema

if TYPE_CHECKING:
    from core0.registry import Role


@dataclass(frozen=True)
class VirtConfig(schema.Schema):
    """Virtual machines (``kvm.*``, see docs/kvm.md)."""

    __unknown__: ClassVar[str] = "key"

    #: the libvirt URI core0 manages VMs through (with ``libvirtd = "embedded"``: the embedded
    #: daemon's socket, whatever this says)
    uri: str = "qemu:///system"
    #: external: a libvirtd started by someone else (the full image's boot services, the
    #: host's init); embedded: ``core0 dev`` starts its own virtlogd + libvirtd (see
    #: core0/init/libvirtd.py)
    libvirtd: Literal["external", "embedded"] = "external"
    #: VM files (overlays, console logs, downloaded images); outside the state dir, which is
    #: private (0700) while qemu may run as an unprivileged user that must reach its disks
    dir: str = "/var/lib/core0/virt"
    #: auto (kvm where a probe guest really runs, else qemu/TCG), kvm or qemu
    domain_type: Literal["auto", "kvm", "qemu"] = "auto"
    #: the kernel the KVM probe boots ("" = /boot/vmlinuz-<release> or /boot/vmlinuz)
    probe_kernel: str = ""
    #: the default nics' NAT bridge (0-core's kvm0) and its address
    bridge: str = "kvm0"
    bridge_cidr: str = "172.19.0.1/16"
    #: VMs one role below admin may have (running or paused, whichever queue of the role
    #: made them); one more kvm.create is refused with 503
    role_max_vms: dict[str, int] = field(default_factory=lambda: {"operator": 16})
    #: memory (MiB) the VMs of one role below admin may have together; a kvm.create that
    #: would pass it is refused with 503
    role_max_memory_mib: dict[str, int] = field(default_factory=lambda: {"operator": 32768})
    #: largest kernel or initrd (MiB) of a direct kernel boot below admin: each is copied
    #: into the VM's directory and qemu reads that copy (400 beyond)
    boot_file_max_mib: Annotated[int, schema.Range(1, 1 << 16)] = 512
    #: the downloaded images' cache (``<dir>/cache``) is cut back to this size (MiB) after a
    #: create that used it, least recently used first, never an image a VM's overlay or
    #: record names (0: never)
    cache_max_mib: Annotated[int, schema.Range(0, 1 << 30)] = 32768

    def role_vms_cap(self, role: Role) -> int | None:
        """The VM count cap of ``role`` (None: admin, or not listed)."""
        from core0.config import _per_role

        return _per_role(self.role_max_vms, role)

    def role_memory_cap(self, role: Role) -> int | None:
        """The cap (MiB) on the memory of ``role``'s VMs together (None: no cap)."""
        from core0.config import _per_role

        return _per_role(self.role_max_memory_mib, role)
