"""Resolving user paths safely inside a root directory.

Paths are walked one component at a time from a root opened as a file descriptor, every
component opened with ``O_NOFOLLOW``, so the kernel never follows a symlink on our behalf.
A symlink met on the way is read and its target resolved *inside the root* (an absolute target
starts again at the root, ``..`` never climbs above it): the semantics of openat2's
``RESOLVE_IN_ROOT``, which Python does not expose. A directory swapped for a symlink between two
steps therefore cannot lead outside the root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator

from core0.errors import BadRequest, CommandError, Conflict, NotFound, Unavailable

MAX_LINKS = 40
MAX_PATH = 4096
#: components of a user path (a deeper path is refused with 400 before anything is done)
MAX_DEPTH = 256
#: bytes of one name (NAME_MAX)
MAX_NAME = 255


def check_path(path: str) -> None:
    """400 for a path no command should walk: empty, NUL, too long, too deep, a name over
    255 bytes."""
    if not isinstance(path, str) or not path:
        raise BadRequest("path: must be a non-empty string", field="path")
    if "\0" in path:
        raise BadRequest("path: NUL byte in path", field="path")
    if len(path.encode()) > MAX_PATH:
        raise BadRequest(f"path: longer than {MAX_PATH} bytes", field="path")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if len(parts) > MAX_DEPTH:
        raise BadRequest(f"path: deeper than {MAX_DEPTH} components", field="path")
    if any(len(p.encode()) > MAX_NAME for p in parts):
        raise BadRequest(f"path: a name is longer than {MAX_NAME} bytes", field="path")


class Root:
    """A directory that user paths are confined to."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.fd = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ resolution

    def parent(self, path: str, *, follow: bool = True,
               create: int | None = None) -> tuple[int, str]:
        """Resolve all but the last component → (an O_PATH fd of the parent dir, last name).

        With ``follow``, a last component that is a symlink is resolved too (inside the root),
        so the returned name is never a symlink. With ``create`` (a mode), missing directories
        on the way are created (``mkdir -p``, in one walk). The caller closes the fd. The name
        is "" when the path designates the root itself.
        """
        check_path(path)
        parts = [p for p in path.split("/") if p not in ("", ".")]
        stack = [os.dup(self.fd)]
        links = 0
        try:
            while parts:
                comp = parts.pop(0)
                if comp == "..":
                    if len(stack) > 1:
                        os.close(stack.pop())
                    continue
                last = not parts
                try:
                    st = os.stat(comp, dir_fd=stack[-1], follow_symlinks=False)
                except FileNotFoundError:
                    if last:
                        return stack.pop(), comp
                    if create is None:
                        raise NotFound(f"no such file or directory: {path}") from None
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(comp, create, dir_fd=stack[-1])
                    parts.insert(0, comp)
                    links += 1  # bounds a loop with an entry that keeps vanishing
                    if links > MAX_LINKS + MAX_DEPTH:
                        raise BadRequest(f"path keeps changing: {path}") from None
                    continue
                if stat.S_ISLNK(st.st_mode):
                    if last and not follow:
                        return stack.pop(), comp
                    links += 1
                    if links > MAX_LINKS:
                        raise BadRequest(f"too many symbolic links in {path}")
                    target = os.readlink(comp, dir_fd=stack[-1])
                    tparts = [p for p in target.split("/") if p not in ("", ".")]
                    if target.startswith("/"):
                        while len(stack) > 1:
                            os.close(stack.pop())
                    parts = tparts + parts
                    continue
                if last:
                    return stack.pop(), comp
                if not stat.S_ISDIR(st.st_mode):
                    raise BadRequest(f"not a directory: {comp} in {path}")
                try:
                    fd = os.open(comp, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 dir_fd=stack[-1])
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped under us: re-resolve
                        parts.insert(0, comp)
                        links += 1
                        if links > MAX_LINKS:
                            raise BadRequest(f"path keeps changing: {path}") from None
                        continue
                    raise
                stack.append(fd)
            return stack.pop(), ""
        finally:
            for fd in stack:
                os.close(fd)

    @contextlib.contextmanager
    def at(self, path: str, *, follow: bool = True) -> Iterator[tuple[int, str]]:
        dfd, name = self.parent(path, follow=follow)
        try:
            yield dfd, name
        finally:
            os.close(dfd)

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        """Open a file inside the root (symlinks resolved inside it)."""
        with self.at(path) as (dfd, name):
            if not name:
                return os.open(".", flags | os.O_CLOEXEC, dir_fd=dfd)
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)

    def opendir(self, path: str) -> int:
        """A readable fd of a directory inside the root."""
        with self.at(path) as (dfd, name):
            if not name:
                return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
            return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                           dir_fd=dfd)

    def lstat(self, path: str) -> os.stat_result:
        with self.at(path, follow=False) as (dfd, name):
            if not name:
                return os.stat(dfd)
            return os.stat(name, dir_fd=dfd, follow_symlinks=False)

    def stat(self, path: str) -> os.stat_result:
        with self.at(path) as (dfd, name):
            if not name:
                return os.stat(dfd)
            return os.stat(name, dir_fd=dfd, follow_symlinks=False)

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
            return True
        except (NotFound, FileNotFoundError):
            return False

    def mkdir(self, path: str, mode: int = 0o755, parents: bool = True) -> None:
        """Create a directory (and, with ``parents``, the missing ones above it) in one walk
        from the root; no error if it exists as a directory."""
        dfd, name = self.parent(path, create=mode if parents else None)
        try:
            if not name:
                return
            try:
                os.mkdir(name, mode, dir_fd=dfd)
            except FileExistsError:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    raise BadRequest(f"not a directory: {path}") from None
        finally:
            os.close(dfd)

    def remove(self, path: str) -> None:
        """Remove a file, a symlink (not its target) or a directory tree, never leaving the root
        (iterative: any depth)."""
        from core0.fswalk import remove_tree

        with self.at(path, follow=False) as (dfd, name):
            if not name:
                raise BadRequest("refusing to remove the root")
            remove_tree(dfd, name)

    def rename(self, src: str, dst: str) -> None:
        with self.at(src, follow=False) as (sfd, sname), self.at(dst, follow=False) as (dfd, dname):
            if not sname or not dname:
                raise BadRequest("cannot move the root")
            os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)


def oserror(e: OSError, path: str) -> CommandError:
    """An OSError met on a user path, as the typed error (404, 409 or 400) naming the path."""
    if isinstance(e, FileNotFoundError):
        return NotFound(f"no such file or directory: {path}")
    if isinstance(e, FileExistsError):
        return Conflict(f"exists already: {path}")
    if isinstance(e, PermissionError):
        return BadRequest(f"permission denied: {path}")
    if e.errno == errno.ENAMETOOLONG:
        return BadRequest(f"file name too long: {path}")
    if e.errno in (errno.EMFILE, errno.ENFILE):
        return Unavailable(f"too many open files (try again later): {path}")
    if e.errno == errno.EBUSY:
        return Conflict(f"busy: {path}")
    return BadRequest(f"{e.strerror or e}: {path}")
