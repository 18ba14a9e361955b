"""filesystem.*: 0-core's file API, every path confined to ``main.filesystem_root``.

Files are opened with ``filesystem.open`` → a token; ``read`` returns base64 blocks of at
most 512 KiB, ``write`` takes base64 blocks; tokens idle for ``main.fd_idle`` seconds are
closed. The client's ``upload``/``download`` loop over these.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import grp
import os
import pwd
import secrets
import stat
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from core0.context import Context
from core0.errors import BadRequest, NotFound
from core0.fspath import Root, oserror
from core0.registry import Role, command
from core0.schema import Doc, Len, Pattern, Range, Schema

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
    def __init__(self, fd: int, path: str, idle: float):
        self.fd = fd
        self.path = path
        self.idle = idle
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




@dataclass(frozen=True)
class OpenArgs(Schema):
    file: _PATH
    mode: Annotated[Literal["r", "r+", "w", "w+", "a", "a+", "x", "x+"], Doc("open mode")] = "r"
    perm: Annotated[int, Doc("permissions of a new file"), Range(0, 0o7777)] = 0o644


@command("filesystem.open", OpenArgs, role=Role.ADMIN)
async def open_(ctx: Context, args: OpenArgs) -> str:
    """Open a file; returns a token for read/write/close (closed after idling)."""
    with _root(ctx) as root:
        try:
            fd = root.open(args.file, _MODES[args.mode], args.perm)
        except OSError as e:
            raise oserror(e, args.file) from None
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadRequest(f"is a directory: {args.file}")
    token = secrets.token_hex(16)
    _FILES[token] = _Open(fd, args.file, ctx.config.main.fd_idle)
    _touch(token)
    return token


@dataclass(frozen=True)
class FdArgs(Schema):
    fd: _TOKEN


@command("filesystem.read", FdArgs, role=Role.ADMIN)
async def read(ctx: Context, args: FdArgs) -> str:
    """The next block (at most 512 KiB) as base64; "" at end of file."""
    f = _touch(args.fd)
    data = await ctx.to_thread(os.read, f.fd, BLOCK)
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
    while view:
        n = await ctx.to_thread(os.write, f.fd, view)
        view = view[n:]
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


@command("filesystem.exists", PathArgs, role=Role.OPERATOR)
async def exists(ctx: Context, args: PathArgs) -> bool:
    """Whether the path exists (symlinks followed inside the root)."""
    with _root(ctx) as root:
        return root.exists(args.path)


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


@command("filesystem.list", PathArgs, role=Role.OPERATOR)
async def list_(ctx: Context, args: PathArgs) -> list[dict[str, Any]]:
    """Entries of a directory: name, size, is_dir, is_link, mode, uid, gid, mtime."""
    with _root(ctx) as root:
        try:
            fd = root.opendir(args.path)
        except OSError as e:
            raise oserror(e, args.path) from None
        try:
            out = []
            for ent in sorted(os.scandir(fd), key=lambda x: x.name):
                out.append(_entry(ent.name, ent.stat(follow_symlinks=False)))
            return out
        finally:
            os.close(fd)


@command("filesystem.mkdir", PathArgs, role=Role.ADMIN)
async def mkdir(ctx: Context, args: PathArgs) -> bool:
    """Create a directory and its missing parents (no error if it exists)."""
    with _root(ctx) as root:
        try:
            root.mkdir(args.path)
        except OSError as e:
            raise oserror(e, args.path) from None
    return True


@command("filesystem.remove", PathArgs, role=Role.ADMIN)
async def remove(ctx: Context, args: PathArgs) -> bool:
    """Remove a file, a symlink or a directory tree (no error if it is absent)."""
    with _root(ctx) as root:
        try:
            root.remove(args.path)
        except (FileNotFoundError, NotFound):
            return False
        except OSError as e:
            raise oserror(e, args.path) from None
    return True


@dataclass(frozen=True)
class MoveArgs(Schema):
    path: _PATH
    destination: _PATH


@command("filesystem.move", MoveArgs, role=Role.ADMIN)
async def move(ctx: Context, args: MoveArgs) -> bool:
    """Rename a file or directory (within one filesystem)."""
    with _root(ctx) as root:
        try:
            root.rename(args.path, args.destination)
        except OSError as e:
            raise oserror(e, args.path) from None
    return True


@dataclass(frozen=True)
class ChmodArgs(Schema):
    path: _PATH
    mode: Annotated[int, Doc("permission bits, e.g. 420 (0o644)"), Range(0, 0o7777)]
    recursive: bool = False


@command("filesystem.chmod", ChmodArgs, role=Role.ADMIN)
async def chmod(ctx: Context, args: ChmodArgs) -> bool:
    """Change permissions (of a whole tree with ``recursive``; symlinks are skipped)."""
    with _root(ctx) as root:
        try:
            items = root.walk_fds(args.path) if args.recursive else iter([root.parent(args.path)])
            for dfd, name in items:
                st = os.stat(name or ".", dir_fd=dfd, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode):
                    os.chmod(name or ".", args.mode, dir_fd=dfd, follow_symlinks=True)
                if not args.recursive:
                    os.close(dfd)
        except OSError as e:
            raise oserror(e, args.path) from None
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
    with _root(ctx) as root:
        try:
            if args.recursive:
                for dfd, name in root.walk_fds(args.path):
                    os.chown(name or ".", uid, gid, dir_fd=dfd, follow_symlinks=False)
            else:
                with root.at(args.path) as (dfd, name):
                    os.chown(name or ".", uid, gid, dir_fd=dfd, follow_symlinks=False)
        except OSError as e:
            raise oserror(e, args.path) from None
    return True
