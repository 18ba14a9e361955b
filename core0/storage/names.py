"""Strict patterns for storage arguments. No value may start with ``-`` (never an option),
contain a NUL, a newline, ``;``, spaces or a ``..`` path component."""

from __future__ import annotations

from typing import Annotated

from core0.schema import Doc, Len, Pattern

#: a kernel block device name (``sda``, ``loop0p1``, ``nvme0n1p2``, ``dm-0``), or ``/dev/<name>``
DEVICE_RE = r"(/dev/)?[a-z][a-z0-9_-]{0,62}"
#: a ZFS pool name: a letter first, then letters, digits, ``_ - . :``
POOL_RE = r"[A-Za-z][A-Za-z0-9_.:-]{0,63}"
#: one dataset component (no leading ``-`` or ``.``)
_COMP = r"[A-Za-z0-9_:][A-Za-z0-9_.:-]{0,127}"
DATASET_RE = rf"{POOL_RE}(/{_COMP}){{0,31}}"
SNAPNAME_RE = _COMP
SNAPSHOT_RE = rf"{DATASET_RE}@{SNAPNAME_RE}"
#: an absolute path without NUL, newline, or a ``.``/``..`` component
ABS_PATH_RE = r"(?!.*(^|/)\.\.?(/|$))/[^\x00\n]{0,4095}"
#: a filesystem label
LABEL_RE = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}"
#: a ZFS property name (user properties contain ``:``)
PROP_RE = r"[a-z][a-z0-9_:.@-]{0,255}"
#: a ZFS property value: printable, one line, bounded
PROP_VALUE_RE = r"[^\x00\n\r]{0,1024}"
#: a size: ``1048576``, ``512M``, ``1.5G``, ``10%`` (parted), ``2048s`` (parted sectors)
SIZE_RE = r"[0-9]+(\.[0-9]+)?([KMGTPE]i?B?|[kmgtpe]|B|kB|MB|GB|TB|s|%)?"

Device = Annotated[str, Doc("block device: kernel name (sda, loop0p1) or /dev/<name>"),
                   Pattern(DEVICE_RE)]
Pool = Annotated[str, Doc("pool name"), Pattern(POOL_RE)]
Dataset = Annotated[str, Doc("dataset: pool/fs/..."), Len(1, 255), Pattern(DATASET_RE)]
Snapshot = Annotated[str, Doc("snapshot: pool/fs@snap"), Len(1, 255), Pattern(SNAPSHOT_RE)]
DatasetOrSnapshot = Annotated[str, Doc("dataset or snapshot"), Len(1, 255),
                              Pattern(rf"{DATASET_RE}(@{SNAPNAME_RE})?")]
AbsPath = Annotated[str, Doc("absolute path on the node"), Pattern(ABS_PATH_RE)]
Label = Annotated[str, Doc("filesystem label"), Pattern(LABEL_RE)]
Size = Annotated[str, Doc("size, e.g. 512M, 1G, 100%"), Pattern(SIZE_RE)]
Props = Annotated[
    dict[str, Annotated[str, Pattern(PROP_VALUE_RE)]],
    Doc("properties {name: value}"),
    Len(0, 64),
]
Tag = Annotated[str, Doc("hold tag"), Pattern(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,255}")]
