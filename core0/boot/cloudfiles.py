"""Idempotent, atomic file writes inside a root (write_files, ssh keys, resolv.conf).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from core0.errors import BadRequest, NotFound
from core0.fspath import Root

if TYPE_CHECKING:
    pass


def ensure_file(root: Root, path: str, data: bytes, mode: int,
                owner: tuple[int, int] | None = None, dir_mode: int = 0o755) -> bool:
    """Make ``path`` (inside ``root``) hold ``data`` with ``mode``/``owner``; atomic; returns
    whether anything changed."""
    parent = os.path.dirname(path.rstrip("/")) or "/"
    root.mkdir(parent, dir_mode)
    with root.at(path) as (dfd, name):
        if not name:
            raise BadRequest(f"{path}: not a file path")
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except FileNotFoundError:
            fd = -1
        if fd >= 0:
            try:
                st = os.fstat(fd)
                same = (st.st_size == len(data) and (st.st_mode & 0o7777) == mode
                        and (owner is None or (st.st_uid, st.st_gid) == owner))
                if same:
                    chunks = []
                    while True:
                        b = os.read(fd, 1 << 20)
                        if not b:
                            break
                        chunks.append(b)
                    if b"".join(chunks) == data:
                        return False
            finally:
                os.close(fd)
        tmp = f".{name}.core0-{os.getpid()}"
        wfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=dfd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(wfd, view):]
            if owner is not None:
                os.fchown(wfd, *owner)
            os.fchmod(wfd, mode)
            os.fsync(wfd)
        except BaseException:
            os.close(wfd)
            os.unlink(tmp, dir_fd=dfd)
            raise
        os.close(wfd)
        try:
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError:
            # e.g. the target is a directory (EISDIR): leave nothing behind
            os.unlink(tmp, dir_fd=dfd)
            raise
        return True


def read_file(root: Root, path: str) -> bytes | None:
    try:
        fd = root.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotFound):
        return None
    try:
        chunks: list[bytes] = []
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                return b"".join(chunks)
            chunks.append(b)
    finally:
        os.close(fd)
