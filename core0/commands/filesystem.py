"""filesystem.*: 0-core's file API, every path confined to ``main.filesystem_root``.

Files are opened with ``filesystem.open`` → a token; ``read`` returns base64 blocks of at
most 512 KiB, ``write`` takes base64 blocks; tokens idle for ``main.fd_idle`` seconds are
closed, and one role holds at most ``main.fd_max`` tokens. The client's
``upload``/``download`` loop over these.

Every path is resolved inside the root and the command acts on the descriptor it resolved
(``core0.fswalk``): a directory swapped for a symlink meanwhile cannot redirect a chmod, a
chown or a removal outside the root. File I/O runs in worker threads, never on the event loop;
FIFOs and devices are opened only when asked (``special``), and then without blocking.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import grp
import os
import pwd
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from core0 import cancel, fswalk
from core0.context import Context
from core0.errors import BadRequest, Conflict, NotFound, Unavailable
from core0.fspath import Root, oserror
from core0.registry import Role, command
from core0.schema import Doc, Len, Pattern, Range, Schema

T = TypeVar("T")
BLOCK = 512 * 1024
_PATH = Annotated[str, Doc("path (confined to the filesystem root)"), Len(1, 4096),
                  Pattern(r"[^\x00]+")]
_TOKEN = Annotated[str, Doc("token from filesystem.open"), Pattern(r"[0-9a-f]{32}")]

_MODES = {
    "r": os.O_RDONLY,
    "r+": os.O_RDWR,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "w+": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "a+": os.O_RDWR | os.O_CREAT | os.O_APPEND,
    "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    "x+": os.O_RDWR | os.O_CREAT | os.O_EXCL,
}


class _Open:
    """An open file behind a token (closed after ``idle`` seconds without use)."""

    def __init__(self, fd: int, path: str, idle: float, role: Role):
        self.fd = fd
        self.path = path
        self.idle = idle
        self.role = role
        self.timer: asyncio.TimerHandle | None = None


_FILES: dict[str, _Open] = {}


def _touch(token: str) -> _Open:
    f = _FILES.get(token)
    if f is None:
        raise NotFound(f"no such open file (closed, or idle too long): {token}")
    if f.timer is not None:
        f.timer.cancel()
    f.timer = asyncio.get_running_loop().call_later(f.idle, _close, token)
    return f


def _close(token: str) -> bool:
    f = _FILES.pop(token, None)
    if f is None:
        return False
    if f.timer is not None:
        f.timer.cancel()
    os.close(f.fd)
    return True


def _root(ctx: Context) -> Root:
    return Root(ctx.config.main.filesystem_root)


def role_of(ctx: Context) -> Role:
    """The role of the queue the running command came from."""
    return ctx.job.role


async def _in_root(ctx: Context, path: str, fn: Callable[[Root], T]) -> T:
    """Run ``fn(root)`` in a worker thread (file I/O never blocks the event loop); an OSError
    becomes the typed error naming ``path``."""
    def work() -> T:
        with _root(ctx) as root:
            try:
                return fn(root)
            except OSError as e:
                raise oserror(e, path) from None
    return await ctx.to_thread(work)


@dataclass(frozen=True)
class OpenArgs(Schema):
    file: _PATH
    mode: Annotated[Literal["r", "r+", "w", "w+", "a", "a+", "x", "x+"], Doc("open mode")] = "r"
    perm: Annotated[int, Doc("permissions of a new file"), Range(0, 0o7777)] = 0o644
    special: Annotated[bool, Doc("also open a FIFO or a device (non-blocking: a read with "
                                 "nothing to read returns \"\")")] = False


def _open_file(root: Root, path: str, flags: int, perm: int, special: bool) -> int:
    """Open a regular file (or, with ``special``, a FIFO/device) without ever blocking: the
    entry is checked through an O_PATH descriptor first, then opened O_NONBLOCK and checked
    again (a FIFO swapped in between is refused, not waited on)."""
    with root.at(path) as (dfd, name):
        base = name or "."
        try:
            pfd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except FileNotFoundError:
            if not flags & os.O_CREAT:
                raise
            pfd = -1
        if pfd >= 0:
            try:
                st = os.fstat(pfd)
            finally:
                os.close(pfd)
            _check_kind(st, path, special)
        fd = os.open(base, flags | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     perm, dir_fd=dfd)
    try:
        st2 = os.fstat(fd)
        _check_kind(st2, path, special)
        if stat.S_ISREG(st2.st_mode):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_kind(st: os.stat_result, path: str, special: bool) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise BadRequest(f"is a directory: {path}")
    if stat.S_ISREG(st.st_mode):
        return
    if stat.S_ISSOCK(st.st_mode):
        raise BadRequest(f"is a socket: {path}")
    if not special:
        raise BadRequest(f"not a regular file (a FIFO or device; set special to open it): "
                         f"{path}")


@command("filesystem.open", OpenArgs, role=Role.ADMIN)
async def open_(ctx: Context, args: OpenArgs) -> str:
    """Open a file; returns a token for read/write/close (closed after idling). Each role
    holds at most ``main.fd_max`` tokens (503 beyond: close some). FIFOs and devices are
    refused (400) unless ``special``."""
    role = role_of(ctx)
    cap = ctx.config.main.fd_max
    if sum(1 for f in _FILES.values() if f.role == role) >= cap:
        raise Unavailable(f"{cap} files are open for role {role.label} already "
                          "(main.fd_max): close some first")
    # opened and registered even when the job is killed meanwhile: a descriptor opened after
    # the kill was never closed; registered, the idle timeout closes it
    fd = await cancel.atomic(_in_root(ctx, args.file, lambda root: _open_file(
        root, args.file, _MODES[args.mode], args.perm, args.special)))
    token = secrets.token_hex(16)
    _FILES[token] = _Open(fd, args.file, ctx.config.main.fd_idle, role)
    _touch(token)
    return token


@dataclass(frozen=True)
class FdArgs(Schema):
    fd: _TOKEN


@command("filesystem.read", FdArgs, role=Role.ADMIN)
async def read(ctx: Context, args: FdArgs) -> str:
    """The next block (at most 512 KiB) as base64; "" at end of file."""
    f = _touch(args.fd)
    try:
        data = await ctx.to_thread(os.read, f.fd, BLOCK)
    except BlockingIOError:
        data = b""
    except OSError as e:
        raise oserror(e, f.path) from None
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class WriteArgs(Schema):
    fd: _TOKEN
    block: Annotated[str, Doc("base64 data (at most 512 KiB decoded)")]


@command("filesystem.write", WriteArgs, role=Role.ADMIN)
async def write(ctx: Context, args: WriteArgs) -> int:
    """Write a base64 block; returns the number of bytes written."""
    f = _touch(args.fd)
    try:
        # MIME base64 (0-core's client: base64.encodebytes) has line breaks: drop them
        data = base64.b64decode(args.block.replace("\n", "").replace("\r", ""), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("arguments.block: not valid base64", field="arguments.block") from None
    if len(data) > BLOCK:
        raise BadRequest(f"arguments.block: more than {BLOCK} bytes", field="arguments.block")
    view = memoryview(data)
    try:
        while view:
            # each write to its end even if the job is killed meanwhile: left running in its
            # thread, it could write after a filesystem.close into a file that took its fd
            n = await cancel.atomic(ctx.to_thread(os.write, f.fd, view))
            view = view[n:]
    except BlockingIOError:
        raise Conflict(f"{f.path}: would block (a FIFO with nobody reading)") from None
    except OSError as e:
        raise oserror(e, f.path) from None
    return len(data)


@command("filesystem.close", FdArgs, role=Role.ADMIN)
async def close(ctx: Context, args: FdArgs) -> bool:
    """Close a token (404 if unknown)."""
    if not _close(args.fd):
        raise NotFound(f"no such open file: {args.fd}")
    return True


@dataclass(frozen=True)
class PathArgs(Schema):
    path: _PATH


@command("filesystem.exists", PathArgs, role=Role.OPERATOR, rerun=True)
async def exists(ctx: Context, args: PathArgs) -> bool:
    """Whether the path exists (symlinks followed inside the root)."""
    return await _in_root(ctx, args.path, lambda root: root.exists(args.path))


def _entry(name: str, st: os.stat_result) -> dict[str, Any]:
    return {
        "name": name,
        "size": st.st_size,
        "is_dir": stat.S_ISDIR(st.st_mode),
        "is_link": stat.S_ISLNK(st.st_mode),
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mtime": int(st.st_mtime),
    }


@command("filesystem.list", PathArgs, role=Role.OPERATOR, rerun=True)
async def list_(ctx: Context, args: PathArgs) -> list[dict[str, Any]]:
    """Entries of a directory: name, size, is_dir, is_link, mode, uid, gid, mtime."""
    def work(root: Root) -> list[dict[str, Any]]:
        fd = root.opendir(args.path)
        try:
            out = []
            for ent in sorted(os.scandir(fd), key=lambda x: x.name):
                with contextlib.suppress(FileNotFoundError):
                    out.append(_entry(ent.name, ent.stat(follow_symlinks=False)))
            return out
        finally:
            os.close(fd)
    return await _in_root(ctx, args.path, work)


@command("filesystem.mkdir", PathArgs, role=Role.ADMIN)
async def mkdir(ctx: Context, args: PathArgs) -> bool:
    """Create a directory and its missing parents (no error if it exists). At most 256
    components (400 beyond)."""
    await _in_root(ctx, args.path, lambda root: root.mkdir(args.path))
    return True


@command("filesystem.remove", PathArgs, role=Role.ADMIN)
async def remove(ctx: Context, args: PathArgs) -> bool:
    """Remove a file, a symlink or a directory tree of any depth (no error if it is
    absent: false)."""
    def work(root: Root) -> bool:
        try:
            root.remove(args.path)
        except (FileNotFoundError, NotFound):
            return False
        return True
    return await _in_root(ctx, args.path, work)


@dataclass(frozen=True)
class MoveArgs(Schema):
    path: _PATH
    destination: _PATH


@command("filesystem.move", MoveArgs, role=Role.ADMIN)
async def move(ctx: Context, args: MoveArgs) -> bool:
    """Rename a file or directory (within one filesystem)."""
    await _in_root(ctx, args.path, lambda root: root.rename(args.path, args.destination))
    return True


@dataclass(frozen=True)
class ChmodArgs(Schema):
    path: _PATH
    mode: Annotated[int, Doc("permission bits, e.g. 420 (0o644)"), Range(0, 0o7777)]
    recursive: bool = False


@command("filesystem.chmod", ChmodArgs, role=Role.ADMIN)
async def chmod(ctx: Context, args: ChmodArgs) -> bool:
    """Change permissions (of a whole tree of any depth with ``recursive``; symlinks are
    skipped). Each entry is changed through the descriptor it was opened as, never by a path
    resolved again."""
    def work(root: Root) -> None:
        with root.at(args.path) as (dfd, name):
            fswalk.chmod_tree(dfd, name, args.mode, args.recursive)
    await _in_root(ctx, args.path, work)
    return True


@dataclass(frozen=True)
class ChownArgs(Schema):
    path: _PATH
    user: Annotated[str, Doc("user name or uid"), Pattern(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")]
    group: Annotated[str, Doc("group name or gid"),
                     Pattern(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")] = ""
    recursive: bool = False


def _uid(user: str) -> int:
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise NotFound(f"no such user: {user}") from None


def _gid(group: str) -> int:
    if not group:
        return -1
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise NotFound(f"no such group: {group}") from None


@command("filesystem.chown", ChownArgs, role=Role.ADMIN)
async def chown(ctx: Context, args: ChownArgs) -> bool:
    """Change owner (and group) of a path, or of a whole tree with ``recursive``; symlinks
    themselves are changed, never their targets."""
    uid, gid = _uid(args.user), _gid(args.group)

    def work(root: Root) -> None:
        with root.at(args.path) as (dfd, name):
            fswalk.chown_tree(dfd, name, uid, gid, args.recursive)
    await _in_root(ctx, args.path, work)
    return True
