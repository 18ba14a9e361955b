"""Named network namespaces (``/run/netns/<name>``) and netlink sockets inside them, and the
mapping of netlink/OS errors to typed command errors. Blocking: for worker threads.

A worker thread enters a namespace with setns(2) (per thread for network namespaces) only
for as long as a ``socket()`` call, then returns to the dispatcher's namespace; if it cannot,
the process exits rather than act on the wrong network. pyroute2's own netns helpers (which
fork, racing the dispatcher's reaper, and create missing namespaces) are never used.

A namespace is identified by its cookie (``SO_NETNS_COOKIE``, never reused) rather than by
its name or inode: that is how core0 tells the namespaces it made from others of the same
name (see ``ip.netns.*``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from core0.errors import (
    BadRequest,
    CommandError,
    Conflict,
    Internal,
    NotFound,
    PreconditionFailed,
    Unavailable,
)

if TYPE_CHECKING:
    from pyroute2 import IPRoute

log = logging.getLogger(__name__)

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_BIND = 0x1000
MS_SHARED = 1 << 20
MNT_DETACH = 2
NETLINK_ROUTE = 0

_libc = ctypes.CDLL(None, use_errno=True)


# ---------------------------------------------------------------- errors


def nl_error(e: BaseException, what: str) -> CommandError:
    """A pyroute2/OS error → the typed error of the command."""
    code = getattr(e, "code", None)
    if code is None and isinstance(e, OSError):
        code = e.errno
    text = os.strerror(code) if isinstance(code, int) and code > 0 else str(e)
    msg = f"{what}: {text}"
    if code == errno.EEXIST:
        return Conflict(f"{what}: exists already")
    if code in (errno.EBUSY, errno.EADDRINUSE, errno.ENOTEMPTY):
        return Conflict(msg)
    if code == errno.ELOOP:
        return BadRequest(f"{what}: that would make a loop of links")
    if code == errno.ENETDOWN:
        return Conflict(f"{what}: the link is down (bring it up first)")
    if code in (errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL):
        return NotFound(msg)
    if code in (errno.EOPNOTSUPP, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
        return PreconditionFailed(msg)
    if code in (errno.EINVAL, errno.ERANGE, errno.ENETUNREACH, errno.EHOSTUNREACH,
                errno.E2BIG, errno.ENOTUNIQ, errno.EDOM, errno.EOVERFLOW, errno.EXDEV,
                errno.EMLINK):
        return BadRequest(msg)
    if code in (errno.ENOSPC, errno.ENOBUFS, errno.ENOMEM, errno.EMFILE, errno.ENFILE):
        return Unavailable(msg)
    if code in (errno.EPERM, errno.EACCES):
        return PreconditionFailed(f"{what}: not permitted ({text})")
    return Internal(msg)


# ---------------------------------------------------------------- namespaces


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def netns_path(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise BadRequest(f"netns: invalid name {name!r:.40}", field="netns")
    return os.path.join(NETNS_DIR, name)


#: which named namespaces a command may use: name → namespace identity (see
#: :func:`namespace_id`), or None for any namespace under /run/netns
Owned = Mapping[str, int] | None
#: getsockopt: the 64-bit cookie of a socket's network namespace (Linux 5.14+)
SO_NETNS_COOKIE = 71


def namespace_id(fd: int) -> int:
    """The identity of the network namespace of ``fd`` (a /run/netns file): its cookie, which
    the kernel never reuses (a name under /run/netns can be removed and made again for another
    namespace, and namespace inode numbers are reused). Kernels older than 5.14 have no
    cookie: the inode number stands in. Blocking (thread)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(fd)
        except OSError as e:
            raise nl_error(e, "enter netns") from None
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
        finally:
            try:
                _setns(home)
            except OSError:  # pragma: no cover - cannot happen with our own open fd
                log.critical("worker thread stuck in a foreign netns: exiting")
                os._exit(70)
    finally:
        os.close(home)
    with sock:
        return _sock_id(sock, os.fstat(fd).st_ino)


def _sock_id(sock: socket.socket, inode: int) -> int:
    try:
        return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")
    except OSError:
        return inode


def _current_id() -> int:
    """The identity of the calling thread's own network namespace."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE) as sock:
        return _sock_id(sock, os.stat("/proc/thread-self/ns/net").st_ino)


def open_netns(name: str, owned: Owned = None) -> int:
    """An O_RDONLY fd of the named namespace (NotFound when it does not exist, or when
    ``owned`` is given and does not list it with that very namespace's identity)."""
    try:
        # O_NONBLOCK: a FIFO put there by someone else must not hang a worker thread
        fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise NotFound(f"no such network namespace: {name}") from None
    except OSError as e:
        raise nl_error(e, f"netns {name}") from None
    if owned is not None:
        try:
            ok = owned.get(name) == namespace_id(fd)
        except (OSError, CommandError):
            ok = False
        if not ok:
            os.close(fd)
            raise NotFound(f"no network namespace {name} made by core0")
    return fd


@contextlib.contextmanager
def entered(name: str, owned: Owned = None) -> Iterator[None]:
    """The calling thread inside netns ``name`` for the duration of the block (keep it short).

    If the thread cannot return to its own namespace the process exits: a worker thread left
    in a foreign namespace would silently act on the wrong network.
    """
    target = open_netns(name, owned)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(target)
        except OSError as e:
            raise nl_error(e, f"enter netns {name}") from None
        try:
            yield
        finally:
            try:
                _setns(home)
            except OSError:  # pragma: no cover - cannot happen with our own open fd
                log.critical("worker thread stuck in netns %s: exiting", name)
                os._exit(70)
    finally:
        os.close(target)
        os.close(home)


def ipr(netns: str | None = None, owned: Owned = None) -> IPRoute:
    """An IPRoute on a netlink socket of ``netns`` (None = the dispatcher's own)."""
    from pyroute2 import IPRoute

    if netns is None:
        return IPRoute(groups=0)
    with entered(netns, owned):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
    fd = sock.detach()
    try:
        return IPRoute(fileno=fd, groups=0)
    except BaseException:
        os.close(fd)
        raise


_local = threading.local()


@contextlib.contextmanager
def session(netns: str | None = None, owned: Owned = None) -> Iterator[IPRoute]:
    """An IPRoute for one command, in a worker thread.

    In the dispatcher's own namespace each worker thread keeps one socket (an IPRoute costs
    about as much to open as a request); it is dropped after any error that is not a plain
    netlink answer. Sockets of other namespaces are opened per command: a namespace may be
    deleted and a new one made under the same name.
    """
    if netns is not None:
        r = ipr(netns, owned)
        try:
            yield r
        finally:
            r.close()
        return
    r = getattr(_local, "ipr", None)
    if r is None:
        r = _local.ipr = ipr(None)
    try:
        yield r
    except CommandError:
        raise
    except BaseException:
        _local.ipr = None
        with contextlib.suppress(Exception):
            r.close()
        raise


def netns_list() -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR)
                      if os.path.isfile(os.path.join(NETNS_DIR, n)))
    except FileNotFoundError:
        return []


def _mount(src: bytes, dst: bytes, fstype: bytes | None, flags: int) -> None:
    if _libc.mount(src, dst, fstype, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {dst.decode()}: {os.strerror(err)}")


def netns_create(name: str) -> int:
    """Create a named netns like ``ip netns add``: a bind mount of a fresh namespace at
    /run/netns/<name> (the dir made a shared mount so the name is seen in other mount
    namespaces that are slaves of ours). Returns the new namespace's identity
    (:func:`namespace_id`)."""
    path = netns_path(name)
    os.makedirs(NETNS_DIR, exist_ok=True)
    d = NETNS_DIR.encode()
    if _libc.mount(b"", d, None, MS_SHARED | MS_REC, None) != 0:
        _mount(d, d, b"none", MS_BIND | MS_REC)
        _mount(b"", d, None, MS_SHARED | MS_REC)
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    except FileExistsError:
        raise Conflict(f"network namespace {name} exists already") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            os.unlink(path)
            raise nl_error(OSError(err, os.strerror(err)), f"create netns {name}")
        try:
            _mount(b"/proc/thread-self/ns/net", path.encode(), b"none", MS_BIND)
            ident = _current_id()
        except OSError as e:
            os.unlink(path)
            raise nl_error(e, f"create netns {name}") from None
        finally:
            try:
                _setns(home)
            except OSError:  # pragma: no cover
                log.critical("worker thread stuck in a new netns: exiting")
                os._exit(70)
    finally:
        os.close(home)
    return ident


def netns_id(name: str) -> int | None:
    """The identity (:func:`namespace_id`) of the namespace named ``name`` (None when there
    is none)."""
    try:
        # O_NONBLOCK: a FIFO put there by someone else must not hang a worker thread
        fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return namespace_id(fd)
    except (OSError, CommandError):
        return None
    finally:
        os.close(fd)


def netns_remove(name: str) -> None:
    path = netns_path(name)
    if not os.path.exists(path):
        raise NotFound(f"no such network namespace: {name}")
    _libc.umount2(path.encode(), MNT_DETACH)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
