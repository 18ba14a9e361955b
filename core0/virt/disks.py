"""Disk images: confined paths, format detection, per-VM qcow2 overlays, ``qemu-img`` argv.

User paths (media, kernel, initrd, images) are walked inside ``main.filesystem_root`` one
component at a time (:class:`core0.fspath.Root`: ``O_NOFOLLOW``, symlinks resolved inside the
root) and the canonical path read back from ``/proc/self/fd`` is what libvirt and qemu-img get.

A qcow2 file names its backing file (and possibly an external data file) itself, so an image
could point qemu at any host file, device or network address: the chain is walked one image at
a time (``qemu-img info`` never opens a backing file), each backing file resolved inside the
root before anything opens it; a backing file that is not a file path inside the root, and any
external data file, is refused (400). The format is never guessed for an overlay's base (it is
given to ``qemu-img create -F``). Overlays live in the VM's own
directory and go with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from core0.errors import BadRequest, CommandError, Conflict, ToolError
from core0.fspath import Root, oserror
from core0.virt.guard import Ident, ident

if TYPE_CHECKING:
    from core0.context import Context

QEMU_IMG = "qemu-img"


def _root(ctx: Context) -> Root:
    return Root(ctx.config.main.filesystem_root)


def _no_dotdot(path: str, field: str) -> None:
    if ".." in path.split("/"):
        raise BadRequest(f"{field}: '..' is not allowed in a path", field=field)


def resolve_file(ctx: Context, path: str, field: str, ids: set[Ident] | None = None) -> str:
    """The canonical path of an existing regular file (or block device) inside the root.
    ``..`` is refused outright (400); a symlink is resolved inside the root. ``ids`` gets
    the file's (device, inode), which qemu must later hold open (:mod:`core0.virt.guard`)."""
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
        real = os.readlink(f"/proc/self/fd/{fd}")
        _same(real, st, path, field)
        if ids is not None:
            ids.add(ident(st))
        return real
    finally:
        os.close(fd)


def _same(real: str, st: os.stat_result, path: str, field: str) -> None:
    """409 unless the canonical path read back from ``/proc/self/fd`` still names the file
    opened (a file replaced meanwhile reads back as ``<path> (deleted)``, a name anyone could
    have made a symlink)."""
    try:
        now = os.stat(real, follow_symlinks=False)
    except OSError:
        now = None
    if now is None or ident(now) != ident(st):
        raise Conflict(f"{field}: {path} changed while it was being resolved", field=field)


@contextlib.contextmanager
def new_file(ctx: Context, path: str, field: str) -> Iterator[str]:
    """Create a new file inside the root and yield a path naming *that* file for a tool.

    The parent is walked inside the root, the file created there with ``O_EXCL |
    O_NOFOLLOW`` (409 when the name exists, a symlink included) and handed to the tool as
    ``/proc/<pid>/fd/<n>``: a symlink planted at the name afterwards cannot redirect the
    tool's writes to a host file. When the block fails the file is removed again."""
    _no_dotdot(path, field)
    parent, _, name = path.rstrip("/").rpartition("/")
    if not name or name in (".", ".."):
        raise BadRequest(f"{field}: not a valid new file path: {path}", field=field)
    try:
        with _root(ctx) as root:
            dfd = root.open(parent or "/", os.O_PATH | os.O_DIRECTORY)
    except OSError as e:
        err = oserror(e, path)
        err.field = field
        raise err from None
    try:
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644, dir_fd=dfd)
        except OSError as e:
            err = oserror(e, path)
            err.field = field
            raise err from None
        try:
            yield f"/proc/{os.getpid()}/fd/{fd}"
        except BaseException:
            with contextlib.suppress(OSError):
                if ident(os.stat(name, dir_fd=dfd, follow_symlinks=False)) == ident(
                        os.fstat(fd)):
                    os.unlink(name, dir_fd=dfd)
            raise
        finally:
            os.close(fd)
    finally:
        os.close(dfd)


#: images of a backing chain walked at most (the top image included)
MAX_CHAIN = 16


async def _info1(ctx: Context, path: str, fmt: str | None, field: str) -> dict[str, Any]:
    """``qemu-img info`` of one image, never opening its backing file (qemu-img info opens
    the top image only: ``BDRV_O_NO_BACKING``); 400 when qemu-img cannot read it."""
    argv = [QEMU_IMG, "info", "--output=json", "-U"]
    if fmt:
        argv += ["-f", fmt]
    try:
        res = await ctx.run([*argv, "--", path], timeout=60)
        data = json.loads(res.stdout)
    except ToolError as e:
        raise BadRequest(f"{field}: not a readable disk image: {e.stderr.strip()[-300:]}",
                         field=field) from None
    except ValueError:
        raise BadRequest(f"{field}: qemu-img gave no description of the image",
                         field=field) from None
    if not isinstance(data, dict):
        raise BadRequest(f"{field}: qemu-img gave no description of the image", field=field)
    return data


def _resolve_backing(ctx: Context, name: str, field: str, ids: set[Ident] | None) -> str:
    """The canonical path of a backing file named by an image, walked inside the root like
    any user path: a protocol (``nbd:``, ``http:``, ``json:``…) or a missing file is 400."""
    if not name.startswith("/"):
        raise BadRequest(f"{field}: the image's backing file is not a file path: {name[:200]}",
                         field=field)
    root = os.path.realpath(ctx.config.main.filesystem_root)
    rel = name
    if root != "/":
        if not name.startswith(root.rstrip("/") + "/"):
            raise BadRequest(f"{field}: the image's backing file is outside the filesystem "
                             f"root: {name[:200]}", field=field)
        rel = name[len(root.rstrip("/")):]
    try:
        return resolve_file(ctx, rel, field, ids)
    except CommandError as e:
        raise BadRequest(f"{field}: the image's backing file: {e.message}",
                         field=field) from None


async def check_image(ctx: Context, path: str, fmt: str | None, field: str,
                      backing: bool = True, ids: set[Ident] | None = None) -> str:
    """The image's format (given or detected). The backing chain is walked one image at a
    time, each backing file resolved inside the root *before* qemu-img opens it: 400 for a
    backing file that is not a file path inside the root (or, ``backing=False``, for any
    backing file), for a qcow2 external data file (qemu would open it as the disk's data,
    wherever it is), for a chain deeper than :data:`MAX_CHAIN`, for a format other than
    qcow2/raw, and for a file qemu-img cannot read. ``ids`` gets the backing files'
    (device, inode) pairs."""
    cur, cur_fmt, found = path, fmt, ""
    for _ in range(MAX_CHAIN):
        img = await _info1(ctx, cur, cur_fmt, field)
        kind = str(img.get("format", "raw"))
        if kind not in ("qcow2", "raw"):
            raise BadRequest(f"{field}: image format {kind} is not supported (qcow2, raw)",
                             field=field)
        found = found or kind
        spec = img.get("format-specific") or {}
        data = spec.get("data") if isinstance(spec, dict) else None
        if isinstance(data, dict) and data.get("data-file") is not None:
            raise BadRequest(f"{field}: qcow2 images with an external data file are not "
                             "supported", field=field)
        name = img.get("full-backing-filename") or img.get("backing-filename")
        if not name:
            return fmt or found
        if not backing:
            raise BadRequest(f"{field}: the image has a backing file", field=field)
        cur = _resolve_backing(ctx, str(name), field, ids)
        bfmt = img.get("backing-filename-format")
        cur_fmt = str(bfmt) if bfmt in ("qcow2", "raw") else None
    raise BadRequest(f"{field}: the image's backing chain is longer than {MAX_CHAIN}",
                     field=field)


async def overlay(ctx: Context, base: str, base_fmt: str, out: str) -> None:
    """A qcow2 overlay ``out`` on ``base`` (which is never written)."""
    await ctx.run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-F", base_fmt, "-b", base,
                   "--", out], timeout=60)


async def create(ctx: Context, path: str, fmt: str, size: str) -> None:
    """``qemu-img create`` (its refusals, e.g. a size over its limit, are 400)."""
    try:
        await ctx.run([QEMU_IMG, "create", "-q", "-f", fmt, "--", path, size], timeout=120)
    except ToolError as e:
        raise BadRequest(f"qemu-img create: {e.stderr.strip()[-300:]}") from None


async def convert(ctx: Context, src: str, dst: str, fmt: str) -> None:
    await ctx.run([QEMU_IMG, "convert", "-O", fmt, "--", src, dst], timeout=3600)
