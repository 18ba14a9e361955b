"""Disk images: confined paths, format detection, per-VM qcow2 overlays, ``qemu-img`` argv.

User paths (media, kernel, initrd, images) are walked inside ``main.filesystem_root`` one
component at a time (:class:`core0.fspath.Root`: ``O_NOFOLLOW``, symlinks resolved inside the
root) and the canonical path read back from ``/proc/self/fd`` is what libvirt and qemu-img get.

A qcow2 file names its backing file itself, so an image could point qemu at any host file: an
image whose backing chain leaves the root is refused (400), and the format is never guessed
for an overlay's base (it is given to ``qemu-img create -F``). Overlays live in the VM's own
directory and go with it.
"""

from __future__ import annotations

import json
import os
import stat
from typing import TYPE_CHECKING, Any

from core0.errors import BadRequest, Conflict
from core0.fspath import Root, oserror

if TYPE_CHECKING:
    from core0.context import Context

QEMU_IMG = "qemu-img"


def _root(ctx: Context) -> Root:
    return Root(ctx.config.main.filesystem_root)


def _inside(ctx: Context, real: str) -> bool:
    root = os.path.realpath(ctx.config.main.filesystem_root)
    return root == "/" or real == root or real.startswith(root.rstrip("/") + "/")


def _no_dotdot(path: str, field: str) -> None:
    if ".." in path.split("/"):
        raise BadRequest(f"{field}: '..' is not allowed in a path", field=field)


def resolve_file(ctx: Context, path: str, field: str) -> str:
    """The canonical path of an existing regular file (or block device) inside the root.
    ``..`` is refused outright (400); a symlink is resolved inside the root."""
    _no_dotdot(path, field)
    try:
        with _root(ctx) as root:
            fd = root.open(path, os.O_PATH)
    except OSError as e:
        err = oserror(e, path)
        err.field = field
        raise err from None
    except BadRequest as e:
        raise BadRequest(f"{field}: {e.message}", field=field) from None
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise BadRequest(f"{field}: not a file: {path}", field=field)
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def resolve_new(ctx: Context, path: str, field: str) -> str:
    """The canonical path for a new file: its parent exists inside the root, it does not."""
    _no_dotdot(path, field)
    parent, _, name = path.rstrip("/").rpartition("/")
    if not name or name in (".", ".."):
        raise BadRequest(f"{field}: not a valid new file path: {path}", field=field)
    try:
        with _root(ctx) as root:
            fd = root.open(parent or "/", os.O_PATH | os.O_DIRECTORY)
    except OSError as e:
        err = oserror(e, path)
        err.field = field
        raise err from None
    try:
        base = os.readlink(f"/proc/self/fd/{fd}")
        try:
            os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return os.path.join(base, name)
        raise Conflict(f"{field}: exists already: {path}", field=field)
    finally:
        os.close(fd)


async def info(ctx: Context, path: str, fmt: str | None = None) -> list[dict[str, Any]]:
    """``qemu-img info --backing-chain`` of a file: one dict per image of the chain."""
    argv = [QEMU_IMG, "info", "--output=json", "--backing-chain", "-U"]
    if fmt:
        argv += ["-f", fmt]
    res = await ctx.run([*argv, "--", path], timeout=60)
    data = json.loads(res.stdout)
    return data if isinstance(data, list) else [data]


async def check_image(ctx: Context, path: str, fmt: str | None, field: str,
                      backing: bool = True) -> str:
    """The image's format (given or detected); 400 when its backing chain leaves the root
    (or, ``backing=False``, when it has one at all)."""
    chain = await info(ctx, path, fmt)
    if not backing and len(chain) > 1:
        raise BadRequest(f"{field}: the image has a backing file", field=field)
    for img in chain[1:]:
        name = str(img.get("filename", ""))
        if not _inside(ctx, os.path.realpath(name)):
            raise BadRequest(f"{field}: the image's backing file is outside the filesystem "
                             f"root: {name}", field=field)
    found = str(chain[0].get("format", "raw"))
    if found not in ("qcow2", "raw"):
        raise BadRequest(f"{field}: image format {found} is not supported (qcow2, raw)",
                         field=field)
    return fmt or found


async def overlay(ctx: Context, base: str, base_fmt: str, out: str) -> None:
    """A qcow2 overlay ``out`` on ``base`` (which is never written)."""
    await ctx.run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-F", base_fmt, "-b", base,
                   "--", out], timeout=60)


async def create(ctx: Context, path: str, fmt: str, size: str) -> None:
    await ctx.run([QEMU_IMG, "create", "-q", "-f", fmt, "--", path, size], timeout=120)


async def convert(ctx: Context, src: str, dst: str, fmt: str) -> None:
    await ctx.run([QEMU_IMG, "convert", "-O", fmt, "--", src, dst], timeout=3600)
