"""Volumes of a container (``mount: {host path: target[:ro]}``) and host paths given as
sources (an import's, a create's ``root``): checked for the queue's role and resolved to a
descriptor once.

A source is resolved inside ``main.filesystem_root`` for queues below admin (anywhere on the
node for admin), component by component (:class:`core0.fspath.Root`), and from then on only
the descriptor is used: a volume is bound from it below the container's dir
(:func:`core0.sandbox.roots.pin_source`) and the runtime mounts that bind, an import reads
through it. So a directory swapped for a symlink after the check (by a container writing
into a volume, say), or before a keeper restarts the container, leads nowhere else.
Targets are checked here and resolved by the runtime inside the container's root.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core0.errors import BadRequest, CommandError, Forbidden, NotFound
from core0.registry import Role
from core0.sandbox import spec

if TYPE_CHECKING:
    from core0.context import Context


def check_target(target: str, field_name: str) -> str:
    """A mount target inside the container: absolute, no ``..``, no NUL (the runtime resolves
    it inside the container's root, so symlinks there cannot lead out)."""
    if not target.startswith("/") or "\0" in target or len(target) > 4096:
        raise BadRequest(f"{field_name}: the target must be an absolute path", field=field_name)
    parts = target.split("/")
    if ".." in parts:
        raise BadRequest(f"{field_name}: '..' in the target", field=field_name)
    norm = "/" + "/".join(p for p in parts if p not in ("", "."))
    if norm in ("/", "/proc", "/sys", "/dev", spec.INIT_PATH) \
            or norm.startswith(("/proc/", "/sys/", spec.INIT_PATH + "/")):
        # (the init path: a file mounted there would be the container's PID 1)
        raise BadRequest(f"{field_name}: cannot mount over {norm}", field=field_name)
    return norm


def open_source(ctx: Context, source: str, field_name: str, create: bool = False) -> int:
    """An ``O_PATH`` descriptor of a host path for a bind mount, an import or a backup
    repository, resolved inside ``main.filesystem_root`` without following symlinks out of
    it (anywhere on the node for admin queues; 403 outside it). Callers act on the
    descriptor, never on the path again: a component swapped for a symlink after the check
    cannot send them elsewhere. ``create``: the directory (and its missing parents) is made,
    mode 0700, when it is not there."""
    from core0.fspath import Root, oserror

    if not source.startswith("/") or "\0" in source:
        raise BadRequest(f"{field_name}: the source must be an absolute path", field=field_name)
    fs_root = ctx.config.main.filesystem_root
    if ".." in source.split("/") and ctx.job.role < Role.ADMIN:
        raise Forbidden(f"{field_name}: '..' in a host path needs the admin role")
    base = "/" if ctx.job.role >= Role.ADMIN else fs_root
    rel = source
    if base != "/":
        root_real = os.path.realpath(base)
        if not (source == root_real or source.startswith(root_real.rstrip("/") + "/")):
            raise Forbidden(f"{field_name}: {source} is outside {base} (needs the admin role)")
        rel = source[len(root_real.rstrip("/")):] or "/"
    try:
        with Root(base) as root:
            if create:
                parent, name = root.parent(rel, create=0o700)
                try:
                    if name:
                        with contextlib.suppress(FileExistsError):
                            os.mkdir(name, 0o700, dir_fd=parent)
                finally:
                    os.close(parent)
            return root.open(rel, os.O_PATH)
    except OSError as e:
        raise oserror(e, source) from None
    except CommandError as e:
        raise type(e)(f"{field_name}: {e.message}", field=field_name) from None


def resolve_source(ctx: Context, source: str, field_name: str) -> str:
    """The canonical path of a host path resolved as :func:`open_source` does (for records:
    what is mounted or imported is the descriptor, never this path)."""
    fd = open_source(ctx, source, field_name)
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Source:
    """A volume of a create: its source resolved to a descriptor, where it goes."""

    fd: int  #: O_PATH descriptor of the host path (closed by :func:`prepare`)
    field: str  #: ``mount.<host path>``, for errors
    target: str
    readonly: bool


def check_targets(rootfs: Path, sources: list[Source]) -> None:
    """400 for a volume whose target in the image is a directory while its source is not, or
    the reverse (the runtime would fail to start the container with an error of its own);
    the target is resolved inside the root, as the runtime does (thread)."""
    from core0.fspath import Root

    with Root(str(rootfs)) as root:
        for v in sources:
            try:
                there = stat.S_ISDIR(root.stat(v.target).st_mode)
            except (NotFound, FileNotFoundError, BadRequest):
                continue  # missing (the runtime makes it) or under a non-directory
            if there != stat.S_ISDIR(os.fstat(v.fd).st_mode):
                what = "a directory" if there else "not a directory"
                raise BadRequest(f"{v.field}: {v.target} is {what} in the image, the source "
                                 "is not", field=v.field)
