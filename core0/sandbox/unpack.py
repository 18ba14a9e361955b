"""Safe extraction of image layers (tar archives) into a root directory.

Every member passes tarfile's ``data`` filter (CVE-2007-4559 and friends): no member outside
the destination (checked with the real path on disk, so a symlink extracted earlier cannot
lead a later member out), no device nodes, FIFOs or other special files, no setuid/setgid
bits, no ownership taken from the archive (everything belongs to root). Before the filter,
core0 refuses outright what an image layer has no business containing: absolute member
names and ``..`` components.

One exception to the filter, because every real image has them: a *symlink* whose target is
absolute (``bin/sh -> /bin/busybox``). Inside the container that path is relative to the
container's root, so it is checked as if it were relative to the root; it is never followed
on the host (the real-path check of every later member still resolves it on disk and refuses
anything that would land outside).

OCI whiteouts (``.wh.<name>`` deletes ``<name>`` from the lower layers, ``.wh..wh..opq`` empties
a directory of the lower layers' entries) are applied before the layer's own entries are
extracted; the deletions are confined to the root like the members.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

from core0 import cancel
from core0.errors import BadRequest

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


class UnsafeMember(BadRequest):
    """A layer member that would escape the root or is not plain data (400)."""


def _norm(name: str) -> str:
    """The member's path relative to the root, or UnsafeMember."""
    if "\0" in name:
        raise UnsafeMember(f"layer member with a NUL byte: {name!r:.80}")
    if name.startswith("/"):
        raise UnsafeMember(f"absolute layer member: {name!r:.200}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeMember(f"layer member with '..': {name!r:.200}")
    return "/".join(parts)


def _inside(root: str, path: str) -> bool:
    real = os.path.realpath(path)
    return os.path.commonpath([real, root]) == root


def _filter(root: str) -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo | None]:
    def f(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        name = _norm(member.name)
        if not name:
            return None  # the root itself
        member = member.replace(name=name, deep=False)
        try:
            if member.issym() and member.linkname.startswith("/"):
                # judged as relative to the root; extracted as written
                rel = posixpath.relpath("/" + _norm(member.linkname.lstrip("/")),
                                        "/" + posixpath.dirname(name))
                checked = tarfile.data_filter(member.replace(linkname=rel, deep=False), dest)
                return checked.replace(linkname=member.linkname, deep=False)
            return tarfile.data_filter(member, dest)
        except tarfile.FilterError as e:
            raise UnsafeMember(f"refused layer member {member.name!r:.200}: {e}") from None

    return f


def _remove(root: str, rel: str) -> None:
    """Delete ``root/rel`` (file, link or tree) without following a symlink out of root."""
    path = os.path.join(root, rel)
    parent = os.path.dirname(path)
    if not _inside(root, parent):
        raise UnsafeMember(f"whiteout outside the root: {rel!r:.200}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _whiteouts(tf: tarfile.TarFile, root: str) -> set[str]:
    """Apply the layer's whiteouts; returns the names of the whiteout members."""
    names: set[str] = set()
    for m in tf.getmembers():
        name = _norm(m.name)
        base = posixpath.basename(name)
        if not base.startswith(WHITEOUT):
            continue
        names.add(m.name)
        d = posixpath.dirname(name)
        if base == OPAQUE:
            dpath = os.path.join(root, d)
            if not _inside(root, dpath):
                raise UnsafeMember(f"opaque whiteout outside the root: {name!r:.200}")
            if os.path.isdir(dpath) and not os.path.islink(dpath):
                for entry in os.listdir(dpath):
                    _remove(root, posixpath.join(d, entry))
        else:
            target = base[len(WHITEOUT):]
            if target in ("", ".", ".."):
                raise UnsafeMember(f"invalid whiteout: {name!r:.200}")
            _remove(root, posixpath.join(d, target))
    return names


class _Checked:
    """A file whose reads first check the job's cancel token (core0/cancel.py)."""

    def __init__(self, f: IO[bytes]):
        self._f = f

    def read(self, n: int = -1, /) -> bytes:
        cancel.check()
        return self._f.read(n)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def extract_layer(fileobj: IO[bytes] | None, dest: Path, path: str | None = None) -> int:
    """Extract one layer (a tar, optionally gzip/bzip2/xz compressed) into ``dest``.

    Returns the number of members extracted. UnsafeMember (400) on the first member that is
    refused; what was extracted before stays (the caller drops the whole image).
    """
    root = os.path.realpath(dest)
    n = 0
    with contextlib.ExitStack() as stack:
        if fileobj is None:
            assert path is not None
            fileobj = stack.enter_context(open(path, "rb"))
        try:
            # every read of the archive checks the job's cancel token: reading the members'
            # list alone decompresses a whole (maybe multi-GiB) layer
            tf = stack.enter_context(tarfile.open(fileobj=cast(IO[bytes], _Checked(fileobj)),
                                                  mode="r:*"))
        except tarfile.TarError as e:
            raise BadRequest(f"not a tar archive: {e}") from None
        skip = _whiteouts(tf, root)
        flt = _filter(root)
        for m in tf.getmembers():
            cancel.check()  # a killed import stops here (its caller drops the image)
            if m.name in skip:
                continue
            # a member may replace a directory with a file (or the reverse): clear the way
            name = _norm(m.name)
            if name:
                target = os.path.join(root, name)
                if _inside(root, os.path.dirname(target)) and os.path.lexists(target):
                    is_dir = os.path.isdir(target) and not os.path.islink(target)
                    if not (m.isdir() and is_dir):
                        _remove(root, name)
            tf.extract(m, root, set_attrs=True, numeric_owner=True, filter=flt)
            n += 1
    return n


def copy_tree(src: Path | int, dest: Path) -> int:
    """Copy a directory tree (files, dirs, symlinks as links) into ``dest``; special files
    (devices, FIFOs, sockets) are refused. Returns the number of entries copied.

    ``src`` is a path or a descriptor of the directory (an ``O_PATH`` one is fine). The tree
    is walked on descriptors (:func:`core0.fswalk.walk`: ``O_NOFOLLOW`` at every step, no path
    string resolved again) and each file is read through the descriptor its type was checked
    on, so a directory swapped for a symlink while it is copied (by a container writing into
    a volume, say) can never make the copy read anything outside ``src``.
    """
    from core0 import fswalk

    top = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if isinstance(src, Path) \
        else os.open(f"/proc/self/fd/{src}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    dirs: dict[tuple[int, int], Path] = {}
    count = [0]

    def visit(pfd: int, name: str, efd: int, st: os.stat_result) -> None:
        cancel.check()
        if not name:  # the top directory itself
            dirs[(st.st_dev, st.st_ino)] = dest
            return
        pst = os.fstat(pfd)
        d = dirs[(pst.st_dev, pst.st_ino)] / name
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink("", dir_fd=efd), d)  # the link that was checked
        elif stat.S_ISDIR(st.st_mode):
            d.mkdir(mode=stat.S_IMODE(st.st_mode) & 0o1777)
            dirs[(st.st_dev, st.st_ino)] = d
        elif stat.S_ISREG(st.st_mode):
            _copy_file(efd, st, d)
        else:
            raise UnsafeMember(f"special file in the source directory: {name!r:.200}")
        count[0] += 1

    try:
        fswalk.walk(top, "", visit=visit)
    finally:
        os.close(top)
    return count[0]


def _copy_file(efd: int, st: os.stat_result, dest: Path) -> None:
    """Copy the regular file opened as ``efd`` (``O_PATH``) to ``dest``: reopened through the
    descriptor (the same inode, checked), mode without set-id bits, times kept."""
    fd = os.open(f"/proc/self/fd/{efd}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        got = os.fstat(fd)
        if (got.st_dev, got.st_ino) != (st.st_dev, st.st_ino):
            raise UnsafeMember(f"source file changed while copied: {dest.name!r:.200}")
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            while os.sendfile(out, fd, None, 1 << 30) > 0:
                pass
            os.fchmod(out, stat.S_IMODE(st.st_mode) & 0o777)
            os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(out)
    finally:
        os.close(fd)
