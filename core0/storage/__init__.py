"""The machinery behind disk.*, btrfs.*, zpool.* and zfs.*.

- ``names``: the strict patterns every device, dataset, label and path argument must match.
- ``parse``: pure parsers of the tools' output (lsblk, blkid, parted, mountinfo, zpool, zfs,
  btrfs), unit-tested on captured text.
- ``tools``: running a tool and turning its stderr into a typed error (404/409/412/400).
- ``paths``: user paths resolved inside ``main.filesystem_root`` without following symlinks out.
- ``blockdev``: the block-device tree, partitions, and "is this device in use?".
- ``btrfs``: btrfs filesystems and subvolumes over ``btrfs-progs``.
- ``zfs_cli`` / ``zfs_lzc``: the ZFS backends (the ``zpool``/``zfs`` CLI of OpenZFS or
  zfs-fuse; ``libzfs_core`` where that module and ``/dev/zfs`` exist), chosen by ``zfs``.
- ``zfsfuse``: finding, and starting when needed, the zfs-fuse daemon.

Nothing here runs a shell: every tool gets an argv list built from schema-checked values, with
``--`` before user values where the tool accepts it.
"""
