"""User paths for storage commands, resolved inside ``main.filesystem_root``.

Each path is walked component by component (``core0.fspath.Root``: ``O_NOFOLLOW``, symlinks
resolved inside the root), then the opened object's real path is read back from
``/proc/self/fd``; that canonical path is what the tool gets. A symlink can therefore never
take a mount target, a subvolume or a stream file outside the root.
"""

from __future__ import annotations

import os
import stat

from core0.context import Context
from core0.errors import BadRequest, Conflict
from core0.fspath import Root, oserror


def _root(ctx: Context) -> Root:
    return Root(ctx.config.main.filesystem_root)


def root_of(ctx: Context) -> Root:
    """The filesystem root of this node, opened (use it as a context manager)."""
    return _root(ctx)

def _real(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def resolve(ctx: Context, path: str, *, kind: str = "any", create_dir: bool = False) -> str:
    """The canonical absolute path of an existing ``path`` (``kind``: "dir", "file", "any").

    With ``create_dir``, missing directories are created first (like ``mkdir -p``).
    """
    try:
        with _root(ctx) as root:
            if create_dir:
                root.mkdir(path)
            fd = root.open(path, os.O_PATH)
            try:
                st = os.fstat(fd)
                if kind == "dir" and not stat.S_ISDIR(st.st_mode):
                    raise BadRequest(f"not a directory: {path}")
                if kind == "file" and not stat.S_ISREG(st.st_mode):
                    raise BadRequest(f"not a regular file: {path}")
                return _real(fd)
            finally:
                os.close(fd)
    except OSError as e:
        raise oserror(e, path) from None


def resolve_new(ctx: Context, path: str) -> str:
    """The canonical path for a new entry: its parent must exist (resolved safely), the entry
    itself must not (409)."""
    parent, _, name = path.rstrip("/").rpartition("/")
    if not name or name in (".", ".."):
        raise BadRequest(f"not a valid new path: {path}")
    base = resolve(ctx, parent or "/", kind="dir")
    full = os.path.join(base, name)
    if os.path.lexists(full):
        raise Conflict(f"exists already: {path}")
    return full


def open_file(ctx: Context, path: str, flags: int, mode: int = 0o600) -> tuple[int, str]:
    """Open a file inside the root → (fd, canonical path). The caller closes the fd."""
    try:
        with _root(ctx) as root:
            fd = root.open(path, flags, mode)
    except OSError as e:
        raise oserror(e, path) from None
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadRequest(f"is a directory: {path}")
    return fd, _real(fd)


def open_dir(ctx: Context, path: str) -> tuple[int, str]:
    """Open an existing directory inside the root for reading (ioctls need a real fd, not
    O_PATH) → (fd, canonical path). The caller closes the fd."""
    try:
        with _root(ctx) as root:
            fd = root.opendir(path)
    except OSError as e:
        raise oserror(e, path) from None
    return fd, _real(fd)


def open_parent(ctx: Context, path: str) -> tuple[int, str, str]:
    """For a new entry: open its parent directory inside the root → (dir fd, name, canonical
    path of the entry). 409 if the entry exists. The caller closes the fd."""
    try:
        with _root(ctx) as root, root.at(path, follow=False) as (pfd, name):
            if not name or name in (".", ".."):
                raise BadRequest(f"not a valid new path: {path}")
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
    except OSError as e:
        raise oserror(e, path) from None
    try:
        os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return fd, name, os.path.join(_real(fd), name)
    os.close(fd)
    raise Conflict(f"exists already: {path}")
