"""Managers of the storage domains: disk, btrfs, zpool, zfs (``c.disk.list()``,
``c.zfs.clone("tank/base@v1", "tank/ct1")`` ...). Unset (None) arguments are left out, so the
node's defaults apply."""

from __future__ import annotations

from typing import Any

from core0_client.managers.base import Manager, args_of

#: aliases: a method named ``list`` would shadow the builtin in annotations
StrList = list[str]


class DiskManager(Manager):
    """disk.*: block devices, partitions, filesystems, mounts."""

    def list(self) -> Any:
        return self._json("disk.list")

    def getinfo(self, disk: str, part: str | None = None) -> Any:
        return self._json("disk.getinfo", disk=disk, part=part)

    def mktable(self, disk: str, table_type: str = "gpt", force: bool | None = None) -> Any:
        return self._json("disk.mktable", disk=disk, table_type=table_type, force=force)

    def mkpart(self, disk: str, start: str, end: str, part_type: str | None = None) -> Any:
        return self._json("disk.mkpart", disk=disk, start=start, end=end, part_type=part_type)

    def rmpart(self, disk: str, number: int, force: bool | None = None) -> Any:
        return self._json("disk.rmpart", disk=disk, number=number, force=force)

    def mkfs(self, device: str, fstype: str = "ext4", label: str | None = None,
             force: bool | None = None) -> Any:
        return self._json("disk.mkfs", device=device, fstype=fstype, label=label, force=force)

    def mount(self, source: str, target: str, fstype: str | None = None,
              options: StrList | None = None) -> Any:
        return self._json("disk.mount", source=source, target=target, fstype=fstype,
                          options=options)

    def umount(self, target: str, force: bool | None = None) -> Any:
        return self._json("disk.umount", target=target, force=force)

    def mounts(self) -> Any:
        return self._json("disk.mounts")

    def protect(self, partuuid: str | None = None, disk: str | None = None,
                protect: bool = True) -> Any:
        return self._json("disk.protect", partuuid=partuuid, disk=disk, protect=protect)


class BtrfsManager(Manager):
    """btrfs.*: filesystems, devices, subvolumes, snapshots, quotas."""

    def create(self, devices: StrList, label: str | None = None,
               metadata: str | None = None, data: str | None = None,
               overwrite: bool | None = None) -> Any:
        return self._json("btrfs.create", devices=devices, label=label, metadata=metadata,
                          data=data, overwrite=overwrite)

    def list(self) -> Any:
        return self._json("btrfs.list")

    def info(self, mountpoint: str) -> Any:
        return self._json("btrfs.info", mountpoint=mountpoint)

    def device_add(self, mountpoint: str, devices: StrList,
                   overwrite: bool | None = None) -> Any:
        return self._json("btrfs.device_add", mountpoint=mountpoint, devices=devices,
                          overwrite=overwrite)

    def device_remove(self, mountpoint: str, devices: StrList) -> Any:
        return self._json("btrfs.device_remove", mountpoint=mountpoint, devices=devices)

    def subvol_create(self, path: str) -> Any:
        return self._json("btrfs.subvol_create", path=path)

    def subvol_delete(self, path: str, force: bool | None = None) -> Any:
        return self._json("btrfs.subvol_delete", path=path, force=force)

    def subvol_list(self, path: str) -> Any:
        return self._json("btrfs.subvol_list", path=path)

    def subvol_snapshot(self, source: str, destination: str, read_only: bool = False) -> Any:
        return self._json("btrfs.subvol_snapshot", source=source, destination=destination,
                          read_only=read_only)

    def subvol_quota(self, path: str, limit: int | str) -> Any:
        return self._json("btrfs.subvol_quota", path=path, limit=limit)


class ZpoolManager(Manager):
    """zpool.*: ZFS pools."""

    def create(self, name: str, vdevs: StrList, mountpoint: str | None = None,
               properties: dict[str, str] | None = None,
               fs_properties: dict[str, str] | None = None, force: bool | None = None) -> Any:
        return self._json("zpool.create", name=name, vdevs=vdevs, mountpoint=mountpoint,
                          properties=properties, fs_properties=fs_properties, force=force)

    def list(self, name: str | None = None) -> Any:
        return self._json("zpool.list", name=name)

    def status(self, name: str | None = None) -> Any:
        return self._json("zpool.status", name=name)

    def import_(self, name: str | None = None, dirs: StrList | None = None,
                new_name: str | None = None, properties: dict[str, str] | None = None,
                force: bool | None = None) -> Any:
        return self._json("zpool.import", name=name, dirs=dirs, new_name=new_name,
                          properties=properties, force=force)

    def export(self, name: str, force: bool | None = None) -> Any:
        return self._json("zpool.export", name=name, force=force)

    def destroy(self, name: str, force: bool | None = None) -> Any:
        return self._json("zpool.destroy", name=name, force=force)


class ZfsManager(Manager):
    """zfs.*: datasets, snapshots, clones, holds, send/receive (through files on the node)."""

    def create(self, name: str, type: str | None = None, volsize: str | None = None,
               properties: dict[str, str] | None = None, parents: bool | None = None,
               sparse: bool | None = None) -> Any:
        return self._json("zfs.create", name=name, type=type, volsize=volsize,
                          properties=properties, parents=parents, sparse=sparse)

    def list(self, name: str | None = None, types: StrList | None = None,
             recursive: bool | None = None, depth: int | None = None) -> Any:
        return self._json("zfs.list", name=name, types=types, recursive=recursive, depth=depth)

    def get(self, name: str, properties: StrList | None = None) -> Any:
        return self._json("zfs.get", name=name, properties=properties)

    def set(self, name: str, properties: dict[str, str]) -> Any:
        return self._json("zfs.set", name=name, properties=properties)

    def exists(self, name: str) -> Any:
        return self._json("zfs.exists", name=name)

    def rename(self, name: str, new_name: str, recursive: bool | None = None,
               parents: bool | None = None) -> Any:
        return self._json("zfs.rename", name=name, new_name=new_name, recursive=recursive,
                          parents=parents)

    def mount(self, name: str, overlay: bool | None = None) -> Any:
        return self._json("zfs.mount", name=name, overlay=overlay)

    def unmount(self, name: str, force: bool | None = None) -> Any:
        return self._json("zfs.unmount", name=name, force=force)

    def destroy(self, name: str, recursive: bool | None = None,
                recursive_clones: bool | None = None, defer: bool | None = None,
                force: bool | None = None) -> Any:
        return self._json("zfs.destroy", name=name, recursive=recursive,
                          recursive_clones=recursive_clones, defer=defer, force=force)

    def snapshot(self, name: str, snapname: str, recursive: bool | None = None,
                 properties: dict[str, str] | None = None) -> Any:
        return self._json("zfs.snapshot", name=name, snapname=snapname, recursive=recursive,
                          properties=properties)

    def clone(self, origin: str, name: str, properties: dict[str, str] | None = None,
              parents: bool | None = None) -> Any:
        return self._json("zfs.clone", origin=origin, name=name, properties=properties,
                          parents=parents)

    def rollback(self, name: str, destroy_recent: bool | None = None,
                 destroy_clones: bool | None = None, force: bool | None = None) -> Any:
        return self._json("zfs.rollback", name=name, destroy_recent=destroy_recent,
                          destroy_clones=destroy_clones, force=force)

    def holds(self, name: str, recursive: bool | None = None) -> Any:
        return self._json("zfs.holds", name=name, recursive=recursive)

    def hold(self, name: str, tag: str, recursive: bool | None = None) -> Any:
        return self._json("zfs.hold", name=name, tag=tag, recursive=recursive)

    def release(self, name: str, tag: str, recursive: bool | None = None) -> Any:
        return self._json("zfs.release", name=name, tag=tag, recursive=recursive)

    def send(self, name: str, file: str, base: str | None = None,
             intermediary: bool | None = None, replicate: bool | None = None,
             properties: bool | None = None, overwrite: bool | None = None,
             timeout: float | None = None) -> Any:
        """Write a send stream to ``file`` on the node; waits up to ``timeout`` seconds."""
        return self._c.json("zfs.send", args_of(
            name=name, file=file, base=base, intermediary=intermediary, replicate=replicate,
            properties=properties, overwrite=overwrite), timeout=timeout)

    def receive(self, name: str, file: str, force: bool | None = None,
                timeout: float | None = None) -> Any:
        """Receive a stream from ``file`` on the node; waits up to ``timeout`` seconds."""
        return self._c.json("zfs.receive", args_of(name=name, file=file, force=force),
                            timeout=timeout)


MANAGERS = {
    "disk": DiskManager,
    "btrfs": BtrfsManager,
    "zpool": ZpoolManager,
    "zfs": ZfsManager,
}
