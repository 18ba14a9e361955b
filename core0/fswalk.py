"""Acting on entries through the file descriptors that were resolved, and walking trees of
any depth without recursion.

Every change is made on the object that was opened (``O_PATH | O_NOFOLLOW``), never on a path
string the kernel would resolve again: permissions through ``/proc/self/fd/N`` (``fchmod``
does not take an O_PATH descriptor and ``fchmodat`` cannot refuse a symlink on this kernel
ABI), ownership with ``fchownat(fd, "", AT_EMPTY_PATH)``. A symlink swapped in between two
steps is therefore either skipped or acted upon *as the link*; its target is never touched.

The walk keeps at most :data:`WINDOW` directory descriptors open. Deeper, it closes the
shallower ones and gets back up with ``openat(child, "..")``, checking that the directory it
reaches is the one it left (device and inode): a tree moved while it is walked ends the walk
with 409 instead of leading elsewhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from core0.errors import Conflict

#: directory descriptors a walk keeps open at most
WINDOW = 32
AT_EMPTY_PATH = 0x1000
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.fchownat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32,
                           ctypes.c_int]


def open_entry(dfd: int, name: str) -> int:
    """An O_PATH descriptor of ``name`` in directory ``dfd`` (the link itself for a symlink;
    ``""``: the directory itself)."""
    return os.open(name or ".", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)


def chmod_fd(fd: int, st: os.stat_result, mode: int) -> bool:
    """chmod the opened object (never a symlink's target: symlinks are skipped) → done."""
    if stat.S_ISLNK(st.st_mode):
        return False
    os.chmod(f"/proc/self/fd/{fd}", mode)
    return True


def chown_fd(fd: int, uid: int, gid: int) -> None:
    """fchownat(fd, "", AT_EMPTY_PATH): the opened object itself (a symlink: the link)."""
    if _libc.fchownat(fd, b"", uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, AT_EMPTY_PATH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@dataclass
class _Level:
    fd: int
    dev: int
    ino: int
    name: str
    st: os.stat_result
    names: list[str] = field(default_factory=list)


Visit = Callable[[int, str, int, os.stat_result], object]
Leave = Callable[[int, str, os.stat_result], None]


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _mnt_id(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    return -1


def walk(dfd: int, name: str, visit: Visit | None = None, leave: Leave | None = None,
         one_fs: bool = False) -> None:
    """Walk ``name`` in directory ``dfd`` and, for a directory, everything below it (symlinks
    are never followed), without recursion.

    ``visit(parent_fd, name, entry_fd, st)`` is called first for each entry with an O_PATH
    descriptor of it (pre-order); ``leave(parent_fd, name, st)`` after a directory's children
    (post-order; for other entries right after ``visit``). Entries that vanish meanwhile are
    skipped. With ``one_fs``, a directory on which something is mounted ends the walk with
    409 before anything below it is visited.
    """
    stack: list[_Level] = []
    top: list[int] = []  # st_dev, mount id of the top directory

    def enter(pfd: int, child: str) -> None:
        efd = open_entry(pfd, child)
        try:
            st = os.fstat(efd)
            if visit is not None:
                visit(pfd, child, efd, st)
            if not stat.S_ISDIR(st.st_mode):
                if leave is not None:
                    leave(pfd, child, st)
                return
            cfd = os.open(".", _DIR, dir_fd=efd)  # the same directory as efd, readable
        finally:
            os.close(efd)
        if one_fs:
            if not top:
                top.extend((st.st_dev, _mnt_id(cfd)))
            elif st.st_dev != top[0] and _mnt_id(cfd) != top[1]:
                os.close(cfd)
                raise Conflict(f"a filesystem is mounted on {child} (unmount it first)")
        try:
            names = sorted(os.listdir(cfd), reverse=True)
        except BaseException:
            os.close(cfd)
            raise
        stack.append(_Level(cfd, st.st_dev, st.st_ino, child, st, names))
        if len(stack) > WINDOW:
            old = stack[-WINDOW - 1]
            os.close(old.fd)
            old.fd = -1

    try:
        enter(dfd, name)
        while stack:
            lvl = stack[-1]
            if lvl.names:
                child = lvl.names.pop()
                try:
                    enter(lvl.fd, child)
                except FileNotFoundError:
                    continue
                continue
            stack.pop()
            if stack and stack[-1].fd < 0:
                up = stack[-1]
                pfd = os.open("..", _DIR, dir_fd=lvl.fd)
                if not _same(os.fstat(pfd), up.st):
                    os.close(pfd)
                    os.close(lvl.fd)
                    raise Conflict("the tree was moved while it was walked")
                up.fd = pfd
            os.close(lvl.fd)
            if leave is not None:
                leave(stack[-1].fd if stack else dfd, lvl.name, lvl.st)
    finally:
        for lvl in stack:
            if lvl.fd >= 0:
                os.close(lvl.fd)


def chmod_tree(dfd: int, name: str, mode: int, recursive: bool) -> None:
    """chmod ``name`` (and, with ``recursive``, every entry below it; symlinks skipped)."""
    if not recursive:
        efd = open_entry(dfd, name)
        try:
            chmod_fd(efd, os.fstat(efd), mode)
        finally:
            os.close(efd)
        return
    walk(dfd, name, visit=lambda _p, _n, fd, st: chmod_fd(fd, st, mode))


def chown_tree(dfd: int, name: str, uid: int, gid: int, recursive: bool) -> None:
    """chown ``name`` (and, with ``recursive``, every entry below it; symlinks themselves)."""
    if not recursive:
        efd = open_entry(dfd, name)
        try:
            chown_fd(efd, uid, gid)
        finally:
            os.close(efd)
        return
    walk(dfd, name, visit=lambda _p, _n, fd, _st: chown_fd(fd, uid, gid))


def remove_tree(dfd: int, name: str) -> None:
    """Remove ``name`` in ``dfd``: a file, a symlink (not its target) or a whole tree.

    Entries are removed by name inside the directory descriptor they were found in
    (``unlinkat``/``rmdir`` never follow a symlink), post-order, at any depth. It never
    descends into another mounted filesystem (409: unmount it first).
    """
    def leave(pfd: int, child: str, st: os.stat_result) -> None:
        try:
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(child, dir_fd=pfd)
            else:
                os.unlink(child, dir_fd=pfd)
        except FileNotFoundError:
            pass

    walk(dfd, name, leave=leave, one_fs=True)
