"""User namespaces of containers (``userns: true``): uid/gid ranges and shifted roots.

**Ranges.** Each userns container gets its own range of :data:`SIZE` host uids and gids
(container uid/gid 0..65535 → host ``base``..``base``+65535), ``base`` = :data:`FIRST` +
slot × :data:`SIZE`. A slot is reserved by ``mkdir <state_dir>/sandbox/userns/<slot>`` (atomic:
two creates never share one) holding an ``owner`` file with the container id; the base is also
in the container's record. Both are on the state dir, so a new dispatcher (adoption) sees the
ranges in use; terminate frees the slots the container owns. A slot whose container dir is gone
(a create that died between the two) is taken back by the next allocation.

**Roots.** The root clone is made to belong to the range before the container starts:

- overlayfs (a plain-directory image store): the stored image is mounted a second time as an
  *idmapped* read-only mount (``open_tree`` + ``mount_setattr(MOUNT_ATTR_IDMAP)`` +
  ``move_mount``; kernel ≥ 5.19 for idmapped overlay layers) at ``<container dir>/lower``, and
  the overlay uses it as its lower layer; the upper dir belongs to the range's root. O(1)
  whatever the image's size, and nothing is copied up. Files the container writes land in the
  upper dir with the host uids of the range.
- btrfs snapshot / ZFS clone: every entry's owner is shifted with ``lchown`` (a metadata
  change only, copy-on-write of the metadata blocks; the data is not copied).

**Namespaces.** core0 makes the container's user namespace (and its netns, owned by it) with
a short-lived child (:data:`_HOLDER`): the child unshares a user namespace, core0 writes its
maps, the child unshares a netns inside it, core0 pins both with bind mounts (``<container
dir>/userns`` and ``/run/netns/<name>``) and lets the child exit; the spec joins both by path
(:func:`make_namespaces` says why). The same namespace idmaps the overlay's lower layer: runc
1.1 has no idmapped mounts of its own (they came with runc 1.2). Bind-mounted volumes are
*not* idmapped (see docs/containers.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import stat
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from core0 import cancel
from core0.errors import Internal, PreconditionFailed, Unavailable
from core0.proc import process

#: host ids given to a container
SIZE = 65536
#: the first host uid/gid of the first range (host ids below it are never mapped)
FIRST = 1 << 20
#: ranges available (one per container at most: store.MAX_CONTAINERS)
SLOTS = 1000

_libc = ctypes.CDLL(None, use_errno=True)
#: one allocator per dispatcher (its threads): slots are taken under it
_lock = threading.Lock()
# the new mount API's syscall numbers are the same on every architecture
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = 0o2000000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
MOUNT_ATTR_IDMAP = 0x100000
_MOUNT_ATTR = struct.Struct("=QQQQ")  # attr_set, attr_clr, propagation, userns_fd

MS_BIND = 4096

#: the child making a user namespace (then, on request, a netns in it) and holding them
#: until core0 has pinned them
_HOLDER = ("import ctypes, os, sys\n"
           "libc = ctypes.CDLL(None, use_errno=True)\n"
           "if libc.unshare(0x10000000) != 0:\n"
           "    sys.exit(1)\n"
           "os.write(1, b'u')\n"
           "if os.read(0, 1) == b'n':\n"
           "    if libc.unshare(0x40000000) != 0:\n"
           "        sys.exit(2)\n"
           "    os.write(1, b'n')\n"
           "    os.read(0, 1)\n")


def base_of(slot: int) -> int:
    return FIRST + slot * SIZE


def _dir(state_dir: Path) -> Path:
    d = state_dir / "sandbox" / "userns"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


def _owner(slot_dir: Path) -> int:
    try:
        return int((slot_dir / "owner").read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def allocate(state_dir: Path, cid: int) -> int:
    """Reserve a free range for container ``cid``; returns its host base uid/gid."""
    with _lock:  # (a stale slot taken back by two creates at once must go to one only)
        return _allocate(state_dir, cid)


def _allocate(state_dir: Path, cid: int) -> int:
    d = _dir(state_dir)
    containers = state_dir / "sandbox" / "containers"
    for slot in range(SLOTS):
        sd = d / str(slot)
        try:
            sd.mkdir(mode=0o700)
        except FileExistsError:
            owner = _owner(sd)
            if owner and not (containers / str(owner)).exists():
                _release(sd)  # its container is gone: take the slot back
                with contextlib.suppress(FileExistsError):
                    sd.mkdir(mode=0o700)
                    return _claim(sd, slot, cid)
            continue
        return _claim(sd, slot, cid)
    raise Unavailable(f"all {SLOTS} uid ranges are in use")


def _claim(sd: Path, slot: int, cid: int) -> int:
    (sd / "owner").write_text(f"{cid}\n")
    return base_of(slot)


def _release(sd: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (sd / "owner").unlink()
    with contextlib.suppress(FileNotFoundError, OSError):
        sd.rmdir()


def free(state_dir: Path, cid: int) -> None:
    """Free every range container ``cid`` owns."""
    d = state_dir / "sandbox" / "userns"
    if not d.is_dir():
        return
    with _lock:
        for sd in d.iterdir():
            if sd.name.isdigit() and _owner(sd) == cid:
                _release(sd)


def in_use(state_dir: Path) -> dict[int, int]:
    """{host base: owning container id} of the reserved ranges."""
    d = state_dir / "sandbox" / "userns"
    if not d.is_dir():
        return {}
    return {base_of(int(sd.name)): _owner(sd) for sd in d.iterdir() if sd.name.isdigit()}


# ---------------------------------------------------------------- roots


def shift_tree(root: Path, base: int) -> int:
    """Shift the owner of every entry below ``root`` (and ``root``) into the range
    (uid/gid n → base + n for n < SIZE; symlinks themselves, never followed). Modes are kept
    (chown clears set-id bits: they are put back). Returns the entry count."""
    return _chown_tree(root, lambda n: n + base if n < SIZE else n)


def unshift_tree(root: Path, base: int) -> int:
    """The reverse of :func:`shift_tree`: owners in the range ``base`` … ``base + SIZE - 1``
    back to the container's own ids (others kept). Returns the entry count."""
    return _chown_tree(root, lambda n: n - base if base <= n < base + SIZE else n)


def _chown_tree(root: Path, new_id: Callable[[int], int]) -> int:
    n = 0

    def one(path: str) -> None:
        nonlocal n
        cancel.check()  # the job was killed (core0/cancel.py)
        st = os.lstat(path)
        uid, gid = new_id(st.st_uid), new_id(st.st_gid)
        if (uid, gid) != (st.st_uid, st.st_gid):
            os.lchown(path, uid, gid)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(path, stat.S_IMODE(st.st_mode))
        n += 1

    one(str(root))
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            one(os.path.join(dirpath, name))
    return n


def _syscall(nr: int, *args: object) -> int:
    res = _libc.syscall(ctypes.c_long(nr), *args)
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(res)


def idmapped_mount(src: Path, dst: Path, userns_fd: int) -> None:
    """Mount ``src`` again at ``dst``, read-only, nosuid, nodev, idmapped through the user
    namespace ``userns_fd`` (on-disk id n shows as the namespace's mapping of n)."""
    try:
        fd = _syscall(SYS_OPEN_TREE, ctypes.c_int(AT_FDCWD), os.fsencode(src),
                      ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC))
    except OSError as e:
        raise PreconditionFailed(f"open_tree({src}): {e.strerror} (userns needs the new "
                                 "mount API, kernel ≥ 5.12)") from None
    try:
        attr = ctypes.create_string_buffer(_MOUNT_ATTR.pack(
            MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0,
            userns_fd), _MOUNT_ATTR.size)
        try:
            _syscall(SYS_MOUNT_SETATTR, ctypes.c_int(fd), b"", ctypes.c_uint(AT_EMPTY_PATH),
                     attr, ctypes.c_size_t(_MOUNT_ATTR.size))
        except OSError as e:
            raise PreconditionFailed(
                f"idmapped mount of {src} refused ({e.strerror}): its file system does not "
                "support idmapped mounts (userns on an overlay clone needs it)") from None
        dst.mkdir(mode=0o755, exist_ok=True)
        try:
            _syscall(SYS_MOVE_MOUNT, ctypes.c_int(fd), b"", ctypes.c_int(AT_FDCWD),
                     os.fsencode(dst), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH))
        except OSError as e:
            raise Internal(f"move_mount to {dst}: {e.strerror}") from None
    finally:
        os.close(fd)


async def make_namespaces(cdir: Path, base: int, netns: str = "", timeout: float = 10
                          ) -> int:
    """The container's user namespace (mapping 0..SIZE-1 to ``base``.., uids and gids),
    pinned by a bind mount at ``cdir/userns``, and, with ``netns``, its network namespace,
    *owned by that user namespace*, at /run/netns/<netns> with ``lo`` up. Returns an fd of
    the user namespace (the caller closes it).

    The netns must belong to the user namespace: runc 1.1's ``exec`` joins the user
    namespace first and could not enter a netns owned by the node's; and a netns of its own
    lets runc mount a fresh sysfs and set ``net.ipv4.ping_group_range`` inside."""
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    try:
        sp = process.spawn([sys.executable, "-c", _HOLDER], stdin=in_r, stdout=out_w,
                           stderr=out_w, start_ticks=False)
    except BaseException:
        for fd in (in_r, in_w, out_r, out_w):
            os.close(fd)
        raise
    os.close(in_r)
    os.close(out_w)
    done = process.get_reaper().watch(sp.pid)

    async def step(expect: bytes) -> None:
        got = await asyncio.wait_for(asyncio.to_thread(os.read, out_r, 1), timeout)
        if got != expect:
            raise PreconditionFailed("this node cannot make a user namespace"
                                     if expect == b"u" else
                                     "cannot make a netns in the container's user namespace")

    try:
        await step(b"u")
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{sp.pid}/{name}", "w") as f:
                f.write(f"0 {base} {SIZE}\n")
        _bind_ns(f"/proc/{sp.pid}/ns/user", cdir / "userns")
        if netns:
            os.write(in_w, b"n")
            await step(b"n")
            from core0.sandbox.netsetup import pin_netns

            await asyncio.to_thread(pin_netns, f"/proc/{sp.pid}/ns/net", netns)
        return os.open(cdir / "userns", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(in_w)  # the holder reads EOF and exits
        os.close(out_r)
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            process.killpg(sp.pid, 9)


def _bind_ns(src: str, dst: Path) -> None:
    """Pin a namespace: bind its /proc file on ``dst`` (a new empty file)."""
    os.close(os.open(dst, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
    if _libc.mount(src.encode(), os.fsencode(dst), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise Internal(f"bind {src} on {dst}: {os.strerror(err)}")


async def idmap_lower(lower: Path, cdir: Path, userns_fd: int) -> Path:
    """``lower`` idmapped through the container's user namespace at ``cdir/lower`` (the
    overlay's lower layer)."""
    dst = cdir / "lower"
    await asyncio.to_thread(idmapped_mount, lower, dst, userns_fd)
    return dst


def reachable(state_dir: Path, cdir: Path, base: int) -> None:
    """Let the range's root (host uid/gid ``base``) reach the container's dir: search-only
    (o+x) on the state dir, ``sandbox`` and ``sandbox/containers`` (their entries keep their
    own modes: the records, the runtime's state and the Redis socket stay 0700/0600), and the
    container dir 0710 to group ``base`` only (other containers' dirs stay 0700). The state
    dir's parents are not core0's: 412 when one of them is not searchable by others."""
    for parent in state_dir.resolve().parents:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            raise PreconditionFailed(
                f"userns: {parent} (above the state dir) is not searchable by others (o+x): "
                "the container's root user could not reach its root")
    for d in (state_dir, state_dir / "sandbox", state_dir / "sandbox" / "containers"):
        mode = stat.S_IMODE(os.stat(d).st_mode)
        if not mode & stat.S_IXOTH:
            os.chmod(d, mode | stat.S_IXOTH)
    os.chown(cdir, 0, base)
    os.chmod(cdir, 0o710)
