"""The ``[image]`` configuration section (verified upgrades, docs/images.md).

Kept out of core0/config.py (its size limit); registered there as the ``image`` section. It
derives from :class:`core0.schema.Schema` with unknown fields named as keys, exactly as
``config.Section`` does (deriving from that class would make the two modules import each other).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar

from core0 import schema


@dataclass(frozen=True)
class ImageConfig(schema.Schema):
    """Node images: who may sign them, where they are staged, how a new boot is judged."""

    __unknown__: ClassVar[str] = "key"

    #: minisign public keys (the base64 line of a ``.pub`` file, ``RW…``) an image's manifest
    #: must be signed with; none = ``core.upgrade`` refuses every image (412)
    trusted_keys: list[str] = field(default_factory=list)
    #: seconds a freshly switched image has to answer ``core.ping`` with every protected startup
    #: service running; past it the node goes back to the previous image by itself
    boot_deadline: Annotated[float, schema.Range(5, 86400)] = 300.0
    #: a crash loop fails the boot before the deadline: the dispatcher or the embedded
    #: redis-server ended this many times before the first passing check (0: never early;
    #: an exit with status 125, "do not restart", fails it at once)
    crash_limit: Annotated[int, schema.Range(0, 1000)] = 3
    #: boots GRUB gives a newly written slot of the A/B disk image before it falls back to
    #: the known-good slot (initramfs-builder/disk.py; a failed assessment ends it at once)
    boot_tries: Annotated[int, schema.Range(1, 9)] = 3
    #: where images are staged without a persistent dir ("" = <state_dir>/images; the node
    #: image says /var/lib/core0/images: its initramfs's own filesystem, carried across kexec).
    #: With ``main.persistent_dir`` they are in <persistent_dir>/images
    dir: Annotated[str, schema.Pattern(r"(/.*)?")] = ""
    #: largest artifact (vmlinuz, initramfs) accepted, in bytes
    max_bytes: Annotated[int, schema.Range(1 << 20)] = 2 << 30
