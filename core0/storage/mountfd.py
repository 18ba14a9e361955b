"""Mounting and unmounting on resolved file descriptors, mount options, and the mounts core0
made.

``disk.mount`` resolves its target inside the filesystem root to an O_PATH descriptor and
mounts on ``/proc/self/fd/N``: the kernel mounts on the very directory that was resolved, so a
target swapped for a symlink after the checks cannot place the mount elsewhere. Unmounting goes
through the *parent* directory's descriptor (``/proc/self/fd/P/name`` with
``UMOUNT_NOFOLLOW``: a descriptor on the mount itself would keep it busy).

Options are allow-listed: per-mount flags (``ro``, ``noexec``, ``nosuid``, ``noatime``...) and
per-filesystem data options (``subvol=``, ``compress=``, ``errors=``...). ``exec``, ``suid``
and ``dev`` are refused (a new mount has them unless told otherwise); lower roles always get
``nosuid,nodev``. ``remount``
applies only to a mount core0 made (known by its mount id, kept in the state dir).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core0 import mountinfo
from core0.errors import BadRequest, CommandError, Conflict, NotFound, PreconditionFailed

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_DIRSYNC = 128
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_SILENT = 32768
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
MNT_FORCE = 1
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

#: flag options anyone may give: name → (flags set, flags cleared)
FLAGS: dict[str, tuple[int, int]] = {
    "ro": (MS_RDONLY, 0), "rw": (0, MS_RDONLY),
    "noexec": (MS_NOEXEC, 0), "nosuid": (MS_NOSUID, 0), "nodev": (MS_NODEV, 0),
    "noatime": (MS_NOATIME, 0), "nodiratime": (MS_NODIRATIME, 0),
    "relatime": (MS_RELATIME, 0), "strictatime": (MS_STRICTATIME, 0),
    "lazytime": (MS_LAZYTIME, 0), "sync": (MS_SYNCHRONOUS, 0), "dirsync": (MS_DIRSYNC, 0),
    "async": (0, MS_SYNCHRONOUS), "atime": (0, MS_NOATIME), "diratime": (0, MS_NODIRATIME),
}
#: flags refused to everyone: they are the defaults of a new mount, so they only serve to
#: undo a protection (a lower role's nosuid,nodev) on a remount
UNDO_FLAGS = {"exec", "suid", "dev", "user", "users", "owner", "defaults"}
#: filesystem data options: name → value pattern (None: a bare word)
_NUM = r"[0-9]{1,10}"
_COMMON: dict[str, str | None] = {"discard": None, "nodiscard": None}
DATA: dict[str, dict[str, str | None]] = {
    "btrfs": {"subvol": r"/?[A-Za-z0-9_.@+-]{1,255}(/[A-Za-z0-9_.@+-]{1,255}){0,31}",
              "subvolid": _NUM, "compress": r"(zlib|lzo|zstd|no|none)(:[0-9]{1,2})?",
              "compress-force": r"(zlib|lzo|zstd)(:[0-9]{1,2})?", "commit": _NUM,
              "space_cache": r"v[12]", "nospace_cache": None, "ssd": None, "nossd": None,
              "autodefrag": None, "noautodefrag": None, "degraded": None,
              "datacow": None, "nodatacow": None, "datasum": None, "nodatasum": None,
              "flushoncommit": None, "noflushoncommit": None, "skip_balance": None},
    "ext4": {"errors": r"continue|remount-ro|panic", "data": r"journal|ordered|writeback",
             "commit": _NUM, "barrier": r"[01]", "nobarrier": None, "user_xattr": None,
             "nouser_xattr": None, "acl": None, "noacl": None, "noload": None,
             "nodelalloc": None, "delalloc": None, "init_itable": _NUM,
             "noinit_itable": None},
    "xfs": {"nouuid": None, "noquota": None, "logbufs": _NUM,
            "logbsize": r"[0-9]{1,6}[kK]?", "inode64": None, "inode32": None,
            "largeio": None, "nolargeio": None},
    "vfat": {"uid": _NUM, "gid": _NUM, "umask": r"[0-7]{1,4}", "fmask": r"[0-7]{1,4}",
             "dmask": r"[0-7]{1,4}", "utf8": None, "shortname": r"lower|win95|winnt|mixed",
             "codepage": _NUM, "iocharset": r"[a-z0-9-]{1,32}", "flush": None,
             "quiet": None, "showexec": None},
    "iso9660": {"uid": _NUM, "gid": _NUM, "mode": r"[0-7]{1,4}", "dmode": r"[0-7]{1,4}",
                "iocharset": r"[a-z0-9-]{1,32}", "utf8": None, "norock": None,
                "nojoliet": None, "map": r"normal|off|acorn", "session": _NUM,
                "sbsector": _NUM},
    "squashfs": {},
}
DATA["ext2"] = DATA["ext3"] = DATA["ext4"]


def split_options(options: str | list[str]) -> list[str]:
    """0-core's comma-joined string (``"ro,noatime"``) or a list → a list of options."""
    items = options.split(",") if isinstance(options, str) else [
        p for o in options for p in o.split(",")]
    return [o.strip() for o in items if o.strip()]


def parse_options(options: list[str], fstype: str, admin: bool,
                  remount: bool = False) -> tuple[int, str]:
    """Allow-listed options → (mount flags, data string). 400 naming the first refused one.
    Lower roles always get nosuid,nodev."""
    flags = MS_SILENT
    data: list[str] = []
    table = DATA.get(fstype, {})
    for opt in options:
        name, eq, value = opt.partition("=")
        if not eq and name in FLAGS:
            on, off = FLAGS[name]
            flags = (flags | on) & ~off
            continue
        if name in UNDO_FLAGS:
            raise BadRequest(f"arguments.options: {name} is not allowed (a new mount has it "
                             "by default; it cannot be given back once taken)",
                             field="arguments.options")
        if remount:
            raise BadRequest(f"arguments.options: {opt!r} cannot be changed by a remount "
                             "(flags only)", field="arguments.options")
        if name not in table and name not in _COMMON:
            raise BadRequest(f"arguments.options: {opt!r} is not allowed for {fstype or 'this'}"
                             " filesystem", field="arguments.options")
        pat = table.get(name, _COMMON.get(name))
        if (pat is None) != (not eq) or pat is not None and not re.fullmatch(pat, value):
            raise BadRequest(f"arguments.options: bad value in {opt!r}",
                             field="arguments.options")
        data.append(opt)
    if not admin:
        flags |= MS_NOSUID | MS_NODEV
    return flags, ",".join(data)


# ------------------------------------------------------------------ syscalls

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _errno_error(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def mount_fd(source: str, target_fd: int, fstype: str, flags: int, data: str) -> None:
    """mount(2) on the directory ``target_fd`` designates (blocking: call it in a thread)."""
    target = f"/proc/self/fd/{target_fd}".encode()
    if _libc.mount(source.encode(), target, fstype.encode(), flags,
                   data.encode() if data else None) != 0:
        raise _errno_error("mount")


def remount_fd(target_fd: int, flags: int) -> None:
    """Change the flags of the mount whose root ``target_fd`` is."""
    target = f"/proc/self/fd/{target_fd}".encode()
    if _libc.mount(None, target, None, flags | MS_REMOUNT, None) != 0:
        raise _errno_error("remount")


MS_BIND = 4096
#: statvfs f_flag bits → the mount flags that keep them on a bind remount
_ST_TO_MS = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 16: MS_SYNCHRONOUS,
             1024: MS_NOATIME, 2048: MS_NODIRATIME, 4096: MS_RELATIME}


def remount_bind_fd(target_fd: int, add: int) -> None:
    """Add per-mount flags (nosuid, nodev...) to the mount whose root ``target_fd`` is,
    keeping the ones it has (a bind remount: the filesystem itself is not touched)."""
    target = f"/proc/self/fd/{target_fd}"
    have = os.statvfs(target).f_flag
    flags = add | sum(ms for st, ms in _ST_TO_MS.items() if have & st)
    if _libc.mount(None, target.encode(), None, flags | MS_REMOUNT | MS_BIND, None) != 0:
        raise _errno_error("remount")


def detach_path(path: str) -> None:
    """Lazily detach the mount on ``path`` (a path core0 read from the mount table)."""
    if _libc.umount2(path.encode(), UMOUNT_NOFOLLOW | MNT_DETACH) != 0:
        raise _errno_error("umount")


def umount_at(parent_fd: int, name: str, lazy: bool) -> None:
    """umount2 of the mount on ``name`` in directory ``parent_fd`` (never following a
    symlink in ``name``)."""
    path = f"/proc/self/fd/{parent_fd}/{name}".encode()
    if _libc.umount2(path, UMOUNT_NOFOLLOW | (MNT_DETACH if lazy else 0)) != 0:
        raise _errno_error("umount")


def mnt_id(fd: int) -> int:
    """The id of the mount an open descriptor is on (``/proc/self/fdinfo``)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    raise OSError(0, "no mnt_id in fdinfo")


def error(e: OSError, what: str) -> CommandError:
    """A mount/umount errno → typed error."""
    import errno

    code = e.errno or 0
    if code == errno.ENODEV:
        return PreconditionFailed(f"{what}: the kernel has no such filesystem type")
    if code == errno.EBUSY:
        return Conflict(f"{what}: busy (already mounted, or in use)")
    if code == errno.ENOENT:
        return NotFound(f"{what}: not found")
    if code == errno.EROFS:
        return Conflict(f"{what}: read-only device (mount it ro)")
    if code in (errno.EINVAL, errno.ENOTBLK, errno.ENOTDIR, errno.EPERM, errno.EACCES,
                errno.ELOOP):
        return BadRequest(f"{what}: {os.strerror(code)} (wrong filesystem type, bad option, "
                          "or not a mount point)")
    return BadRequest(f"{what}: {os.strerror(code)}")


SYSTEM_MOUNTS = {"/", "/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/run", "/tmp",
                 "/sys/fs/cgroup"}


def inside(root: str, mp: str) -> str | None:
    """Mount point ``mp`` as a path relative to the filesystem root ``root``, or None when it
    is outside."""
    root = root.rstrip("/")
    if not root:
        return mp
    if mp == root:
        return "/"
    return mp[len(root):] if mp.startswith(root + "/") else None


def umount_in_root(root_path: str, state_dir: str | Path, rel: str, lazy: bool,
                   done: Callable[[], None] | None = None) -> str:
    """Unmount the mount on ``rel`` (resolved inside the root; its last component is not
    followed) through its parent's descriptor → the canonical mount point. 404 if nothing is
    mounted there, 400 for the root itself or a system mount; OSError (EBUSY...) otherwise.
    ``done`` is called between the umount(2) and its record (the fault tests' hold)."""
    from core0.fspath import Root

    with Root(root_path) as root, root.at(rel, follow=False) as (pfd, n):
        if not n:
            raise BadRequest("refusing to unmount the filesystem root")
        efd = os.open(n, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            mid = mnt_id(efd)
            real = os.readlink(f"/proc/self/fd/{efd}")
        finally:
            os.close(efd)
        if mid == mnt_id(pfd):
            raise NotFound(f"nothing is mounted on {real}")
        if real in SYSTEM_MOUNTS:
            raise BadRequest(f"refusing to unmount the system mount {real}")
        umount_at(pfd, n, lazy)
        if done is not None:
            done()
        Made(state_dir).discard(mid)
        return real


# ------------------------------------------------------------------ mounts core0 made


class Made:
    """Mount ids of the mounts core0 made (kept in ``<state_dir>/disk-mounts.json`` so a
    dispatcher restart remembers them; entries whose mount is gone are dropped).

    A mount about to be made is noted first (``disk-mounts.pending.json``: its target,
    device and the dispatcher's pid, removed once the mount(2) returned): a dispatcher
    killed -9 in between leaves the note, and the next one that reads the record adopts the
    mount if it is there (before, it was a mount core0 had made but did not know: its
    ``remount`` was refused with 403)."""

    def __init__(self, state_dir: str | Path):
        self.path = Path(state_dir) / "disk-mounts.json"
        self.pending = Path(state_dir) / "disk-mounts.pending.json"

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, path: Path, data: dict[str, Any]) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    def _load(self) -> dict[str, str]:
        ids = {str(k): str(v) for k, v in self._read(self.path).items()}
        if self.pending.exists():
            with _LOCK:
                self._adopt(ids)
        return ids

    def prune(self) -> None:
        """Drop the ids of mounts that are gone: a dispatcher killed -9 between a
        ``umount(2)`` and its record (a umount writing back dirty data takes seconds, and
        the process dies only once it returned) left its id behind."""
        with _LOCK:
            ids = self._load()
            live = _live_ids()
            if any(live.get(int(k)) != v for k, v in ids.items()):
                with contextlib.suppress(OSError):
                    self._save(ids)

    def _adopt(self, ids: dict[str, str]) -> None:
        """Record the mounts a dead dispatcher noted and made (``ids`` updated)."""
        notes = self._read(self.pending)
        dead = {k: v for k, v in notes.items() if isinstance(v, dict)
                and v.get("pid") != os.getpid()}
        if not dead:
            return
        live = list(mountinfo.read())
        for note in dead.values():
            for m in live:
                if m.mountpoint == note.get("target") and str(m.mount_id) not in ids and (
                        m.majmin == note.get("majmin") or m.source == note.get("source")):
                    ids[str(m.mount_id)] = f"{m.majmin} {m.mountpoint}"
        with contextlib.suppress(OSError):
            self._save(ids)
            left = {k: v for k, v in notes.items() if k not in dead}
            if left:
                self._write(self.pending, left)
            else:
                self.pending.unlink()

    def _save(self, ids: dict[str, str]) -> None:
        live = _live_ids()
        self._write(self.path, {k: v for k, v in ids.items() if live.get(int(k)) == v})

    def note(self, target: str, majmin: str, source: str) -> str:
        """Note a mount about to be made → the note's key (for :meth:`unnote`)."""
        key = f"{os.getpid()}:{threading.get_ident()}:{time.monotonic_ns()}"
        with _LOCK:
            notes = self._read(self.pending)
            notes[key] = {"pid": os.getpid(), "target": target, "majmin": majmin,
                          "source": source}
            self._write(self.pending, notes)
        return key

    def unnote(self, key: str) -> None:
        with _LOCK:
            notes = self._read(self.pending)
            if notes.pop(key, None) is not None:
                with contextlib.suppress(OSError):
                    if notes:
                        self._write(self.pending, notes)
                    else:
                        self.pending.unlink()

    def add(self, mid: int) -> None:
        with _LOCK:
            ids = self._load()
            ids[str(mid)] = _live_ids().get(mid, "")
            self._save(ids)

    def discard(self, mid: int) -> None:
        with _LOCK:
            ids = self._load()
            if ids.pop(str(mid), None) is not None:
                with contextlib.suppress(OSError):
                    self._save(ids)

    def __contains__(self, mid: int) -> bool:
        with _LOCK:
            want = self._load().get(str(mid))
        return want is not None and _live_ids().get(mid) == want


#: the record's readers and writers (the event loop's thread and workers)
_LOCK = threading.RLock()


def unmount_id(mid: int, state_dir: str | Path) -> None:
    """Take away the mount ``mid`` that a command cut short had just made (a plain
    unmount, lazily if something already uses it) and drop it from the record."""
    mp = next((m.mountpoint for m in mountinfo.read() if m.mount_id == mid), None)
    if mp is not None:
        try:
            if _libc.umount2(mp.encode(), UMOUNT_NOFOLLOW) != 0:
                raise _errno_error("umount")
        except OSError:
            detach_path(mp)
    Made(state_dir).discard(mid)


def mount_ids() -> set[int]:
    """Ids of every current mount."""
    return set(_live_ids())


def _live_ids() -> dict[int, str]:
    """mount id → "majmin mountpoint" of every current mount."""
    return {m.mount_id: f"{m.majmin} {m.mountpoint}" for m in mountinfo.read()}
