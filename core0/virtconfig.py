"""The ``[virt]`` section of the configuration (VMs, ``kvm.*``; see docs/kvm.md).

Kept out of :mod:`core0.config` (which is at its size limit); it is a section like the others
(a strict schema whose unknown fields are keys) and :class:`core0.config.Config` holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from core0 import schema


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
