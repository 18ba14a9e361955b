"""A/B slot partitions of a node booted from the disk image (initramfs-builder/disk.py).

GRUB names the slot it booted on the kernel command line (``core0.slot=a|b``) and the image
(``core0.image=<digest>``, from the slot's ``slot.env``). The partitions are found by their
file system labels (``core0-a``, ``core0-b``, the ESP ``CORE0-ESP``; exactly one of each, or
the node refuses to write); they are mounted only for a moment, on a private directory in the
state dir, by init's mount(2) helper.

* :func:`install` writes a verified image into a slot partition: the old files removed, the new
  ones copied and fsynced, ``slot.env`` last; then the partition is mounted again read-only and
  every artifact's sha256 is checked against the signed manifest once more.
* The **grubenv** (ESP ``/boot/grub/grubenv``) says which slot GRUB boots: ``core0_slot`` the
  known-good one, ``core0_try`` a slot on trial and ``core0_tries`` its boots left (GRUB counts
  down before each trial boot and boots ``core0_slot`` once the count is spent). The node
  rewrites the 1024-byte block in place (GRUB's ``save_env`` writes the same blocks), fsynced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from core0 import cancel
from core0.errors import PreconditionFailed

if TYPE_CHECKING:
    from core0.config import Config
    from core0.image.store import Slot

#: the kernel command line word naming the booted slot (one dot: not a config key)
CMDLINE_KEY = "core0.slot"
SLOTS = ("a", "b")
ESP_LABEL = "CORE0-ESP"
GRUBENV = "boot/grub/grubenv"
SLOT_ENV = "slot.env"
ENV_SIZE = 1024
ENV_HEADER = b"# GRUB Environment Block\n"
CHUNK = 1 << 20
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MNT_DETACH = 2


def booted_slot(cfg: Config) -> str | None:
    """The slot this boot came from (None: not booted from the A/B disk)."""
    value = cfg.cmdline.get(CMDLINE_KEY, "")
    return value if value in SLOTS else None


def other(slot: str) -> str:
    return "b" if slot == "a" else "a"


def with_slot(cmdline: str, slot: str) -> str:
    """``cmdline`` with ``core0.slot=<slot>`` (one, last): for a kexec into a slot."""
    kept = re.sub(rf"(?:^|\s){re.escape(CMDLINE_KEY)}=\S*", "", cmdline).strip()
    return f"{kept} {CMDLINE_KEY}={slot}".strip()


def label(slot: str) -> str:
    return f"core0-{slot}"


# ------------------------------------------------------------------ grubenv

def parse_env(raw: bytes) -> dict[str, str]:
    """A GRUB environment block → its variables (GRUB's ``\\`` escapes undone)."""
    if not raw.startswith(ENV_HEADER):
        raise ValueError("not a GRUB environment block")
    out: dict[str, str] = {}
    for line in raw[len(ENV_HEADER):].decode(errors="replace").split("\n"):
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, _, v = line.partition("=")
        out[k] = v.replace("\\\\", "\0").replace("\\", "").replace("\0", "\\")
    return out


def format_env(values: dict[str, str]) -> bytes:
    """Variables → a 1024-byte GRUB environment block (``#`` padded, as grub-editenv)."""
    body = ENV_HEADER
    for k, v in values.items():
        if not k.replace("_", "").isalnum() or any(c in v for c in "\n\\"):
            raise ValueError(f"grubenv: {k}={v!r}")
        body += f"{k}={v}\n".encode()
    if len(body) > ENV_SIZE:
        raise ValueError("grubenv: more than 1024 bytes")
    return body + b"#" * (ENV_SIZE - len(body))


def _rewrite(path: Path, values: dict[str, str]) -> None:
    """Write the block in place (same file, same blocks: what GRUB's save_env finds)."""
    raw = format_env(values)
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        os.pwrite(fd, raw, 0)
        os.ftruncate(fd, ENV_SIZE)
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ partitions

def find_label(name: str) -> str:
    """The one block device whose file system is labelled ``name`` (412 for none or two)."""
    from core0.init.persistent import read_label

    found = []
    with contextlib.suppress(OSError):
        for dev in sorted(os.listdir("/sys/class/block")):
            path = f"/dev/{dev}"
            if os.path.exists(path) and read_label(path) == name:
                found.append(path)
    if len(found) != 1:
        raise PreconditionFailed(f"{len(found)} block devices labelled {name!r} "
                                 f"({', '.join(found) or 'none'}): exactly one expected")
    return found[0]


@contextlib.contextmanager
def mounted(cfg: Config, name: str, fstype: str, *, write: bool) -> Iterator[Path]:
    """The file system labelled ``name`` mounted on a private directory for the block."""
    from core0.init import mounts

    dev = find_label(name)
    where = Path(cfg.state_dir) / f"slot-mnt-{secrets.token_hex(6)}"
    where.mkdir(mode=0o700)
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC | (0 if write else MS_RDONLY)
    try:
        mounts.mount(dev, str(where), fstype, flags)
        try:
            yield where
        finally:
            os.sync()
            try:
                mounts.umount(str(where))
            except OSError:
                mounts.umount(str(where), MNT_DETACH)
    finally:
        with contextlib.suppress(OSError):
            where.rmdir()


def read_grubenv(cfg: Config) -> dict[str, str]:
    """The grubenv's variables (412 when the ESP cannot be read)."""
    with mounted(cfg, ESP_LABEL, "vfat", write=False) as esp:
        return parse_env((esp / GRUBENV).read_bytes())


def update_grubenv(cfg: Config, **values: str) -> dict[str, str]:
    """Set grubenv variables (the others kept); → the new variables."""
    with mounted(cfg, ESP_LABEL, "vfat", write=True) as esp:
        path = esp / GRUBENV
        env = parse_env(path.read_bytes())
        env.update(values)
        _rewrite(path, env)
        return env


def slot_env(cfg: Config, slot: str) -> dict[str, str]:
    """What a slot partition holds (its slot.env: core0_initrd, core0_digest, core0_version);
    empty when the slot holds no image."""
    try:
        with mounted(cfg, label(slot), "ext4", write=False) as root:
            return parse_env((root / SLOT_ENV).read_bytes())
    except (OSError, ValueError):
        return {}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _copy(src: Path, dest: Path) -> None:
    with src.open("rb") as i, dest.open("xb") as o:
        while data := i.read(CHUNK):
            cancel.check()  # the switch was cancelled (its task waits for this thread)
            o.write(data)
        o.flush()
        os.fsync(o.fileno())


def install(cfg: Config, image: Slot, slot: str) -> dict[str, str]:
    """Write the staged, verified ``image`` into slot partition ``slot``, then check it again
    from the disk; → the slot's slot.env values. Blocking (run it in a thread)."""
    names = ["vmlinuz", str(image.manifest["initramfs"]), "manifest.json",
             "manifest.json.minisig"]
    env = {"core0_initrd": names[1], "core0_digest": image.digest,
           "core0_version": image.version}
    with mounted(cfg, label(slot), "ext4", write=True) as root:
        # slot.env first out and last in: a half-written slot has none, so GRUB skips it
        (root / SLOT_ENV).unlink(missing_ok=True)
        for p in root.iterdir():
            if p.name == "lost+found":
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        for n in names:
            _copy(image.path / n, root / n)
        tmp = root / f".{SLOT_ENV}.tmp"
        tmp.write_bytes(format_env(env))
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, root / SLOT_ENV)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    with mounted(cfg, label(slot), "ext4", write=False) as root:
        manifest_raw = (root / "manifest.json").read_bytes()
        if hashlib.sha256(manifest_raw).hexdigest() != image.digest:
            raise PreconditionFailed(f"slot {slot}: manifest.json differs after writing")
        sums = json.loads(manifest_raw)["sha256"]
        for n in names[:2]:
            if _sha256(root / n) != sums[n]:
                raise PreconditionFailed(f"slot {slot}: {n} differs from its signed sha256 "
                                         "after writing")
        if parse_env((root / SLOT_ENV).read_bytes()) != env:
            raise PreconditionFailed(f"slot {slot}: slot.env differs after writing")
    return env
