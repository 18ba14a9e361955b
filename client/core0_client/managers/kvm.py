"""The VM manager: ``c.kvm`` (kvm.*), with 0-core's ``KvmManager`` method names and argument
shapes plus core0's additions (direct kernel boot, overlays, ``persistent``)."""

from __future__ import annotations

import builtins
from typing import Any

from core0_client.managers.base import Manager, args_of


class KvmManager(Manager):
    """kvm.*: virtual machines through libvirt (uuids are strings)."""

    def create(self, name: str, media: builtins.list[dict[str, Any]] | None = None,
               cpu: int | None = None, memory: int | None = None,
               nics: builtins.list[dict[str, Any]] | None = None,
               port: dict[str, int] | None = None, vnc: bool | None = None,
               kernel: str | None = None, initrd: str | None = None,
               cmdline: str | None = None, tags: builtins.list[str] | None = None,
               persistent: bool | None = None, timeout: float | None = None,
               **extra: Any) -> Any:
        """Create and start a VM; returns its uuid. ``media``: [{url|path, type disk|cdrom,
        bus, format, overlay, iotune, checksum}] (the first boots, unless ``kernel``);
        ``nics``: [{type default|bridge, id, hwaddr}]; ``port``: {"<host port>": guest
        port}; ``persistent``: declared, created again after a reboot of the node.
        ``extra``: 0-core's other arguments (flist, share_cache, mount, config, storage)."""
        args = args_of(name=name, media=media, cpu=cpu, memory=memory, nics=nics, port=port,
                       vnc=vnc, kernel=kernel, initrd=initrd, cmdline=cmdline, tags=tags,
                       persistent=persistent, **extra)
        return self._c.json("kvm.create", args, timeout=timeout)

    def destroy(self, uuid: str) -> Any:
        """Force a VM off (its overlays, lease and forwards go with it)."""
        return self._json("kvm.destroy", uuid=uuid)

    def shutdown(self, uuid: str, timeout: float | None = None) -> Any:
        """ACPI power-off; with ``timeout``, destroy the VM if it has not stopped by then."""
        wait = None if timeout is None else timeout + 30
        return self._c.json("kvm.shutdown", args_of(uuid=uuid, timeout=timeout), timeout=wait)

    def reboot(self, uuid: str) -> Any:
        return self._json("kvm.reboot", uuid=uuid)

    def reset(self, uuid: str) -> Any:
        return self._json("kvm.reset", uuid=uuid)

    def pause(self, uuid: str) -> Any:
        return self._json("kvm.pause", uuid=uuid)

    def resume(self, uuid: str) -> Any:
        return self._json("kvm.resume", uuid=uuid)

    def list(self) -> Any:
        """[{id, uuid, name, state, vnc, tags, ifctargets, default_ip, params, console}]."""
        return self._json("kvm.list")

    def get(self, uuid: str | None = None, name: str | None = None) -> Any:
        """One VM by uuid or name (404 when there is none)."""
        return self._json("kvm.get", uuid=uuid, name=name)

    def info(self, uuid: str) -> Any:
        """Counters: {vcpu, net, block, cputime}."""
        return self._json("kvm.info", uuid=uuid)

    def infops(self, uuid: str) -> Any:
        """The same counters per second (over one second)."""
        return self._json("kvm.infops", uuid=uuid)

    def attach_disk(self, uuid: str, media: dict[str, Any]) -> Any:
        return self._json("kvm.attach_disk", uuid=uuid, media=media)

    def detach_disk(self, uuid: str, media: dict[str, Any]) -> Any:
        return self._json("kvm.detach_disk", uuid=uuid, media=media)

    def add_nic(self, uuid: str, type: str, id: str | None = None,
                hwaddr: str | None = None) -> Any:
        return self._json("kvm.add_nic", uuid=uuid, type=type, id=id, hwaddr=hwaddr)

    def remove_nic(self, uuid: str, type: str, id: str | None = None,
                   hwaddr: str | None = None) -> Any:
        return self._json("kvm.remove_nic", uuid=uuid, type=type, id=id, hwaddr=hwaddr)

    def limit_disk_io(self, uuid: str, media: dict[str, Any], **iotune: Any) -> Any:
        """0-core's iotune fields (``totalbytessecset=True, totalbytessec=…``…)."""
        return self._json("kvm.limit_disk_io", uuid=uuid, media=media, **iotune)

    def create_image(self, file_name: str, size: str, format: str | None = None) -> Any:
        """``qemu-img create`` of a confined path."""
        return self._json("kvm.create-image", file_name=file_name, format=format, size=size)

    def convert_image(self, input_file: str, output_file: str,
                      output_format: str | None = None) -> Any:
        return self._json("kvm.convert-image", input_file=input_file,
                          output_file=output_file, output_format=output_format)

    def portforward_add(self, uuid: str, host_port: int | str, container_port: int) -> Any:
        return self._json("kvm.portforward-add", uuid=uuid, host_port=str(host_port),
                          container_port=container_port)

    def portforward_remove(self, uuid: str, host_port: int | str, container_port: int) -> Any:
        return self._json("kvm.portforward-remove", uuid=uuid, host_port=str(host_port),
                          container_port=container_port)

    def prepare_migration_target(self, uuid: str,
                                 nics: builtins.list[dict[str, Any]] | None = None,
                                 port: dict[str, int] | None = None) -> Any:
        """On the destination node, before ``migrate`` on the source: make the VM's nics'
        bridges, its default nic's lease and its port forwards here."""
        return self._json("kvm.prepare_migration_target", uuid=uuid, nics=nics, port=port)

    def migrate(self, uuid: str, desturi: str, shared_storage: bool | None = None,
                timeout: float | None = None) -> Any:
        """Live-migrate to the libvirtd at ``desturi``."""
        return self._c.json("kvm.migrate", args_of(uuid=uuid, desturi=desturi,
                                                   shared_storage=shared_storage),
                            timeout=timeout)

    def events(self, id: str | None = None) -> Any:
        """Start a ``kvm.events`` job; returns its Response (read its output with
        ``.stream()``; stop it with ``c.job.kill(r.id)``)."""
        return self._c.raw("kvm.events", {}, id=id)


MANAGERS = {"kvm": KvmManager}
