"""ZFS and the filesystem root: where datasets may mount, and what lower roles may ask.

- **Mount points are user paths.** A ``mountpoint`` (property or argument) is resolved inside
  ``main.filesystem_root`` like every other path (``/data`` means ``<root>/data``; the
  directory is created there, symlinks are resolved inside the root) and the canonical path is
  what ZFS gets. A dataset that would *inherit* a mount point outside the root (its parent's is
  outside) is refused with 400. ``none`` and ``legacy`` are kept.
- **Received streams** are received unmounted (``zfs receive -u``); a mount point they carry
  that lies outside the root is mapped inside it, then the datasets are mounted.
- **After a mount** the mounts of the datasets touched are checked: one outside the root (a
  directory swapped between the check and the daemon's mount) is detached at once and the
  command fails (409). ZFS mounts by path, in its own process, so this check-then-verify is
  the best that can be done for it (no descriptor can be handed to the daemon).
- **Lower roles** (operator, read-only) get ``setuid=off`` and ``devices=off`` on what they
  create, may not set them ``on`` (403), and their mounts get the per-mount flags
  ``nosuid,nodev`` (a bind remount: zfs-fuse does not apply these properties itself).
  An admin's mounts get them where the dataset's ``setuid``/``devices`` is ``off`` (before,
  an admin's ``setuid=off`` dataset was mounted without nosuid until a zfs-fuse recovery).
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import TYPE_CHECKING

from core0.context import Context
from core0.errors import BadRequest, Conflict, Forbidden
from core0.registry import Role
from core0.storage import blockdev, mountfd, paths, whole

if TYPE_CHECKING:
    from core0.storage.zfs_cli import CliBackend

#: properties whose value is a size: an integer with an optional unit, or none
SIZE_PROPS = {"quota", "refquota", "reservation", "refreservation", "volsize", "recordsize",
              "volblocksize"}
_SIZE_VALUE = r"(none|[0-9]{1,20}[KMGTPEkmgtpe]?[Bb]?)"
#: properties that give back what nosuid/nodev take away
GUARDED = ("setuid", "devices")
ZFS_FSTYPES = ("zfs", "fuse.zfs")


def is_admin(ctx: Context) -> bool:
    """Whether the running command came from an admin queue."""
    return ctx.job.role >= Role.ADMIN


def check_values(props: dict[str, str], field: str = "arguments.properties") -> None:
    """400 for a size property that is not an integer with an optional unit (``1.5G`` is
    refused: ZFS tools differ on fractions)."""
    for k, v in props.items():
        if k in SIZE_PROPS and not re.fullmatch(_SIZE_VALUE, v):
            raise BadRequest(f"{field}.{k}: {v!r} is not a size (an integer with an optional "
                             "unit K, M, G, T, P, E, or none)", field=f"{field}.{k}")


def mountpoint(ctx: Context, value: str, field: str) -> str:
    """A mount point value confined to the filesystem root → what ZFS gets."""
    if value in ("none", "legacy"):
        return value
    if not value.startswith("/"):
        raise BadRequest(f"{field}: an absolute path, none or legacy", field=field)
    return paths.resolve(ctx, value, kind="dir", create_dir=True)


def inside_root(ctx: Context, path: str) -> bool:
    """Whether a canonical path lies inside the filesystem root."""
    return mountfd.inside(ctx.config.main.filesystem_root, path) is not None


def policy(ctx: Context, props: dict[str, str], field: str = "arguments.properties",
           creating: bool = True) -> dict[str, str]:
    """The properties to pass: values checked, ``mountpoint`` confined, and for lower roles
    ``setuid``/``devices`` forced off (403 if asked on)."""
    check_values(props, field)
    out = dict(props)
    if "mountpoint" in out:
        out["mountpoint"] = mountpoint(ctx, out["mountpoint"], f"{field}.mountpoint")
    if not is_admin(ctx):
        for k in GUARDED:
            if k in out and out[k] != "off":
                raise Forbidden(f"{field}.{k}: only the admin role may set {k}={out[k]}",
                                field=f"{field}.{k}")
            if creating:
                out[k] = "off"
    return out


async def check_inherited(ctx: Context, be: CliBackend, name: str,
                          props: dict[str, str]) -> None:
    """400 when dataset ``name`` (about to be created without a mountpoint of its own) would
    inherit one outside the filesystem root."""
    if "mountpoint" in props or "/" not in name:
        return
    parent, _, last = name.rpartition("/")
    get_props = be.get_props
    try:
        got = await get_props(parent, ["mountpoint"])
    except Exception:  # the parent is missing: the tool says so (404), or -p creates it
        return
    mp = got.get("mountpoint", {}).get("value", "")
    if mp.startswith("/") and not inside_root(ctx, mp.rstrip("/") + "/" + last):
        raise BadRequest(f"{name} would mount at {mp.rstrip('/')}/{last}, outside the "
                         "filesystem root: give it a mountpoint")


def zfs_mounts(names: list[str]) -> list[tuple[str, str]]:
    """(dataset, mount point) of the ZFS mounts of ``names`` and their descendants."""
    want = tuple(names)
    return [(m.source, m.mountpoint) for m in blockdev.mounts()
            if m.fstype in ZFS_FSTYPES
            and any(m.source == n or m.source.startswith(n + "/") for n in want)]


def _harden(ctx: Context, mp: str) -> None:
    rel = mountfd.inside(ctx.config.main.filesystem_root, mp)
    if rel is None:
        return
    try:
        with paths.root_of(ctx) as root:
            fd = root.open(rel, os.O_PATH | os.O_DIRECTORY)
    except (OSError, BadRequest):
        return
    try:
        mountfd.remount_bind_fd(fd, mountfd.MS_NOSUID | mountfd.MS_NODEV)
    except OSError:
        pass
    finally:
        os.close(fd)


async def verify(ctx: Context, names: list[str], harden: bool | None = None) -> None:
    """After an operation that may have mounted ``names`` (and what is below them): detach a
    mount that landed outside the root (409), and give nosuid,nodev to the mounts of a lower
    role's command (or with ``harden``). Runs to its end even if the job is killed meanwhile
    (the kill is raised after it): a mount left outside the root, or a lower role's mount
    left without nosuid,nodev, is what a kill here used to leave."""
    await whole.step(_verify(ctx, names, harden))


async def _verify(ctx: Context, names: list[str], harden: bool | None) -> None:
    mounts = zfs_mounts(names)
    outside = [(ds, mp) for ds, mp in mounts if not inside_root(ctx, mp)]
    for _ds, mp in outside:
        with contextlib.suppress(OSError):
            await ctx.to_thread(mountfd.detach_path, mp)
    if outside:
        raise Conflict("mounted outside the filesystem root, detached: "
                       + ", ".join(f"{ds} on {mp}" for ds, mp in outside))
    if harden if harden is not None else not is_admin(ctx):
        for _ds, mp in mounts:
            await ctx.to_thread(_harden, ctx, mp)
    elif mounts:  # an admin's: what its datasets' setuid=off/devices=off ask for
        from core0.storage import zfsfuse

        await zfsfuse.harden_all(ctx, names)
    await whole.hold_async("verify")
