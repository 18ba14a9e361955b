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

import os
import posixpath
import shutil
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

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


def extract_layer(fileobj: IO[bytes] | None, dest: Path, path: str | None = None) -> int:
    """Extract one layer (a tar, optionally gzip/bzip2/xz compressed) into ``dest``.

    Returns the number of members extracted. UnsafeMember (400) on the first member that is
    refused; what was extracted before stays (the caller drops the whole image).
    """
    root = os.path.realpath(dest)
    try:
        tf = tarfile.open(name=path, fileobj=fileobj, mode="r:*")
    except tarfile.TarError as e:
        raise BadRequest(f"not a tar archive: {e}") from None
    n = 0
    with tf:
        skip = _whiteouts(tf, root)
        flt = _filter(root)
        for m in tf.getmembers():
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


def copy_tree(src: Path, dest: Path) -> int:
    """Copy a directory tree (files, dirs, symlinks as links) into ``dest``; special files
    (devices, FIFOs, sockets) are refused. Returns the number of entries copied."""
    n = 0
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        rel = os.path.relpath(dirpath, src)
        out = dest if rel == "." else dest / rel
        for name in [*dirnames, *filenames]:
            s = os.path.join(dirpath, name)
            d = out / name
            st = os.lstat(s)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(s), d)
            elif stat.S_ISDIR(st.st_mode):
                d.mkdir(mode=stat.S_IMODE(st.st_mode) & 0o1777)
            elif stat.S_ISREG(st.st_mode):
                shutil.copy2(s, d, follow_symlinks=False)
                os.chmod(d, stat.S_IMODE(st.st_mode) & 0o777)
            else:
                raise UnsafeMember(f"special file in the source directory: {s!r:.200}")
            n += 1
    return n
