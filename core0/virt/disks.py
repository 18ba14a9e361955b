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

qemu (a VM's disks) reopens these paths, which :mod:`core0.virt.guard` checks afterwards;
qemu-img converting an image (:func:`pinned_image`) gets the descriptors core0 opened and
checked instead, with the whole chain spelled out, so it resolves no path at all — and runs
confined (:mod:`core0.proc.confine`), because the one name it still takes from the images
themselves, an external data file written into a qcow2 header after core0's check, must lead
nowhere. (``qemu-img info`` and ``create -b`` read headers only: they never open a data file.)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core0.errors import (
    BadRequest,
    CommandError,
    Conflict,
    PreconditionFailed,
    ToolError,
    Unavailable,
)
from core0.fspath import Root, oserror
from core0.proc import confine
from core0.virt.guard import Ident, ident

if TYPE_CHECKING:
    from core0.context import Context

QEMU_IMG = "qemu-img"


def _root(ctx: Context) -> Root:
    return Root(ctx.config.main.filesystem_root)


def _no_dotdot(path: str, field: str) -> None:
    if ".." in path.split("/"):
        raise BadRequest(f"{field}: '..' is not allowed in a path", field=field)


def open_file(ctx: Context, path: str, field: str) -> int:
    """An ``O_PATH`` descriptor of an existing regular file (or block device) inside the root
    (the caller closes it). ``..`` is refused outright (400); a symlink is resolved inside
    the root. A tool given ``/proc/<pid>/fd/<n>`` of it opens this very file, whatever the
    path names by then."""
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
    st = os.fstat(fd)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        os.close(fd)
        raise BadRequest(f"{field}: not a file: {path}", field=field)
    return fd


def fd_path(fd: int) -> str:
    """A path naming descriptor ``fd`` of this process for a tool (as root, it opens the
    file the descriptor holds, not whatever the file's name leads to now)."""
    return f"/proc/{os.getpid()}/fd/{fd}"


def resolve_file(ctx: Context, path: str, field: str, ids: set[Ident] | None = None) -> str:
    """The canonical path of an existing regular file (or block device) inside the root
    (:func:`open_file`). ``ids`` gets the file's (device, inode), which qemu must later hold
    open (:mod:`core0.virt.guard`)."""
    fd = open_file(ctx, path, field)
    try:
        return canonical(fd, path, field, ids)
    finally:
        os.close(fd)


def canonical(fd: int, path: str, field: str, ids: set[Ident] | None = None) -> str:
    """The canonical path of the file open as ``fd`` (409 when it no longer names it)."""
    st = os.fstat(fd)
    real = os.readlink(f"/proc/self/fd/{fd}")
    _same(real, st, path, field)
    if ids is not None:
        ids.add(ident(st))
    return real


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
def new_file(ctx: Context, path: str, field: str) -> Iterator[int]:
    """Create a new file inside the root and yield its descriptor, for a tool to write.

    The parent is walked inside the root (409 when the name exists, a symlink included) and
    the file is made there *unnamed* (``O_TMPFILE``), handed to the tool as
    ``/proc/<pid>/fd/<n>`` (:func:`fd_path`): a symlink planted at the name cannot redirect
    the tool's writes to a host file. Only when the block ends well is the file linked in
    under its name (``linkat``, which never replaces a name: 409 when one appeared
    meanwhile). So a half-written image is never found under the name: not when the job is
    killed, nor when the dispatcher is killed -9 (no clean-up of its runs then; before, an
    empty or partial file stayed, and a retry answered 409). A filesystem without
    ``O_TMPFILE`` gets a hidden ``.core0-part-<hex>`` file instead, renamed the same way
    (one a dispatcher killed -9 left is not under the name either)."""
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
            with contextlib.suppress(FileNotFoundError):
                os.stat(name, dir_fd=dfd, follow_symlinks=False)
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), name)
            fd, part = _unnamed(dfd)
        except OSError as e:
            err = oserror(e, path)
            err.field = field
            raise err from None
        try:
            yield fd
            try:
                os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dfd)  # the file held
            except OSError as e:
                err = oserror(e, path)
                err.field = field
                raise err from None
        finally:
            os.close(fd)
            if part:
                with contextlib.suppress(OSError):
                    os.unlink(part, dir_fd=dfd)
    finally:
        os.close(dfd)


def _unnamed(dfd: int) -> tuple[int, str]:
    """A new file in directory ``dfd`` for :func:`new_file`: (descriptor, "") unnamed, or
    (descriptor, its hidden name) where the filesystem cannot make unnamed files."""
    try:
        return os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o644, dir_fd=dfd), ""
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    part = f".core0-part-{secrets.token_hex(8)}"
    return os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                   0o644, dir_fd=dfd), part


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


def _backing_rel(ctx: Context, name: str, field: str) -> str:
    """A backing file's absolute host path as a path inside the root: 400 for a protocol
    (``nbd:``, ``http:``, ``json:``…) or a path outside the root."""
    if not name.startswith("/"):
        raise BadRequest(f"{field}: the image's backing file is not a file path: {name[:200]}",
                         field=field)
    root = os.path.realpath(ctx.config.main.filesystem_root)
    if root == "/":
        return name
    if not name.startswith(root.rstrip("/") + "/"):
        raise BadRequest(f"{field}: the image's backing file is outside the filesystem "
                         f"root: {name[:200]}", field=field)
    return name[len(root.rstrip("/")):]


def _resolve_backing(ctx: Context, name: str, field: str, ids: set[Ident] | None) -> str:
    """The canonical path of a backing file named by an image, walked inside the root like
    any user path: a protocol or a missing file is 400."""
    rel = _backing_rel(ctx, name, field)
    try:
        return resolve_file(ctx, rel, field, ids)
    except CommandError as e:
        raise BadRequest(f"{field}: the image's backing file: {e.message}",
                         field=field) from None


def _open_backing(ctx: Context, name: str, image_fd: int, field: str) -> int:
    """An ``O_PATH`` descriptor of the backing file an image (open as ``image_fd``) names,
    as qemu would find it — a relative name is relative to the image's directory — but
    walked inside the root; a protocol (a ``:`` before any ``/``, qemu's rule) is 400."""
    head = name.split("/", 1)[0]
    if ":" in head:
        raise BadRequest(f"{field}: the image's backing file is not a file path: {name[:200]}",
                         field=field)
    if not name.startswith("/"):
        name = os.path.join(os.path.dirname(os.readlink(f"/proc/self/fd/{image_fd}")), name)
    rel = _backing_rel(ctx, name, field)
    try:
        return open_file(ctx, rel, field)
    except CommandError as e:
        raise BadRequest(f"{field}: the image's backing file: {e.message}",
                         field=field) from None


def _check1(img: dict[str, Any], field: str) -> tuple[str, str]:
    """One image's format (qcow2 or raw, else 400) and the backing file name its header
    gives ("" for none); 400 for a qcow2 external data file."""
    kind = str(img.get("format", "raw"))
    if kind not in ("qcow2", "raw"):
        raise BadRequest(f"{field}: image format {kind} is not supported (qcow2, raw)",
                         field=field)
    spec = img.get("format-specific") or {}
    data = spec.get("data") if isinstance(spec, dict) else None
    if isinstance(data, dict) and data.get("data-file") is not None:
        raise BadRequest(f"{field}: qcow2 images with an external data file are not "
                         "supported", field=field)
    return kind, str(img.get("full-backing-filename") or img.get("backing-filename") or "")


def _backing_fmt(img: dict[str, Any]) -> str | None:
    bfmt = img.get("backing-filename-format")
    return str(bfmt) if bfmt in ("qcow2", "raw") else None


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
        kind, name = _check1(img, field)
        found = found or kind
        if not name:
            return fmt or found
        if not backing:
            raise BadRequest(f"{field}: the image has a backing file", field=field)
        cur = _resolve_backing(ctx, name, field, ids)
        cur_fmt = _backing_fmt(img)
    raise BadRequest(f"{field}: the image's backing chain is longer than {MAX_CHAIN}",
                     field=field)


@dataclass(frozen=True)
class Pinned:
    """An image and its backing chain as :func:`pinned_image` opened them."""

    spec: str  #: a qemu ``json:`` filename naming only ``fds``, as the confined tool sees them
    fds: tuple[int, ...]  #: the chain's descriptors, for the tool to inherit


async def pinned_image(ctx: Context, path: str, field: str,
                       stack: contextlib.ExitStack) -> Pinned:
    """The image at ``path`` and its backing chain, each opened once inside the root
    (descriptors closed by ``stack``) and checked by :func:`check_image`'s rules, as a qemu
    ``json:`` filename that names only those descriptors, with every image's format and
    backing given explicitly (``backing: null`` at the end): qemu-img resolves no user path
    and follows no backing name from an image header, which could have been swapped or
    rewritten since the check. The names are those of a confined tool
    (:func:`core0.proc.confine.fd_path`) that inherits :attr:`Pinned.fds`."""
    fd = open_file(ctx, path, field)
    stack.callback(os.close, fd)
    fds = [fd]
    nodes: list[dict[str, Any]] = []
    fmt: str | None = None
    for _ in range(MAX_CHAIN):
        img = await _info1(ctx, fd_path(fd), fmt, field)
        kind, _ = _check1(img, field)
        proto = "host_device" if stat.S_ISBLK(os.fstat(fd).st_mode) else "file"
        nodes.append({"driver": kind,
                      "file": {"driver": proto, "filename": confine.fd_path(fd)}})
        name = str(img.get("backing-filename") or "")  # as the header says it
        if not name:
            break
        fd = _open_backing(ctx, name, fd, field)
        stack.callback(os.close, fd)
        fds.append(fd)
        fmt = _backing_fmt(img)
    else:
        raise BadRequest(f"{field}: the image's backing chain is longer than {MAX_CHAIN}",
                         field=field)
    spec = nodes.pop()
    if spec["driver"] == "qcow2":
        spec["backing"] = None
    while nodes:
        spec = {**nodes.pop(), "backing": spec}
    return Pinned("json:" + json.dumps(spec, separators=(",", ":")), tuple(fds))


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


async def convert(ctx: Context, src: Pinned, dst: int, fmt: str) -> None:
    """``qemu-img convert`` of the pinned chain ``src`` into the new file open as ``dst``,
    confined (:mod:`core0.proc.confine`: the descriptors are all it can reach): 409 when a
    running VM holds the input (qemu's image lock), 503 when the node has no space left for
    the output, 400 for what qemu-img refuses of the image itself — a data file named in a
    header rewritten since the check among it (it does not exist in the sandbox) —, 412 when
    the sandbox cannot be made here."""
    argv = [QEMU_IMG, "convert", "-O", fmt, "--", src.spec, confine.fd_path(dst)]
    try:
        await ctx.run(confine.confined(argv), timeout=3600, keep_fds=(*src.fds, dst))
    except ToolError as e:
        msg = e.stderr.strip()[-300:]
        why = confine.failure(e.stderr)
        if why is not None:
            raise PreconditionFailed(f"qemu-img convert: this node cannot run it in its "
                                     f"sandbox: {why[:300]}") from None
        if "lock" in msg:
            raise Conflict(f"qemu-img convert: the image is in use ({msg})") from None
        if "No space left" in msg:
            raise Unavailable(f"qemu-img convert: {msg}") from None
        raise BadRequest(f"qemu-img convert: {msg}") from None
