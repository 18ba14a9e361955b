"""An embedded virtlogd + libvirtd (``[virt] libvirtd = "embedded"``), supervised by ``core0 dev``.

So that ``make run`` on a development box can run VMs without the host's libvirt (which may
not be installed, configured or running, and which must not be disturbed): both daemons run
as supervised services of ``core0 dev``, each in a private mount namespace (``unshare
--mount``) where ``/run/libvirt``, ``/var/lib/libvirt``, ``/var/log/libvirt``,
``/var/cache/libvirt`` and ``/etc/libvirt`` are bind mounts of directories under
``<state_dir>/libvirt/``. Their sockets, pid files, domain state and configuration are
therefore core0's own; the network namespace is the node's (the VMs' taps land on its
bridges). ``qemu.conf`` runs qemu as root without a security driver, cgroups or namespaces
(what a development box can do). The dispatcher reaches the daemon at
``qemu:///system?socket=<state_dir>/libvirt/run/libvirt-sock`` (:func:`uri`), whatever
``virt.uri`` says. When ``core0 dev`` stops, the VMs of the embedded libvirtd are destroyed
before the daemons stop (they would otherwise outlive it, reparented to the host's init).

Under ``core0 init`` (the full image) libvirtd and virtlogd are boot services of the image
(``[startup.libvirtd]``, ``[startup.virtlogd]``) on the default paths: ``external``.

Run as a module (``python -m core0.init.libvirtd nsexec <base> -- argv…``) it is the wrapper
that makes the bind mounts inside the new mount namespace, then execs the daemon.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from core0.init.supervise import Service

if TYPE_CHECKING:
    from core0.config import Config

log = logging.getLogger(__name__)
#: directory under the base → the path it is mounted on inside the daemons' namespace
BINDS = {"run": "/run/libvirt", "lib": "/var/lib/libvirt", "log": "/var/log/libvirt",
         "cache": "/var/cache/libvirt", "etc": "/etc/libvirt"}
QEMU_CONF = """\
# written by core0 (embedded libvirtd): qemu runs as root, unconfined
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
"""
#: seconds a daemon has to create its socket
READY_TIMEOUT = 30.0


def enabled(cfg: Config) -> bool:
    return cfg.virt.libvirtd == "embedded"


def base(cfg: Config) -> Path:
    return cfg.state_dir / "libvirt"


def socket_path(cfg: Config) -> Path:
    return base(cfg) / "run" / "libvirt-sock"


def uri(cfg: Config) -> str:
    """The libvirt URI the dispatcher uses: the embedded daemon's, else ``virt.uri``."""
    if enabled(cfg):
        return f"qemu:///system?socket={socket_path(cfg)}"
    return cfg.virt.uri


def _prepare(cfg: Config) -> None:
    b = base(cfg)
    for d in BINDS:
        (b / d).mkdir(mode=0o700, parents=True, exist_ok=True)
    (b / "etc" / "qemu.conf").write_text(QEMU_CONF)
    (b / "etc" / "libvirtd.conf").write_text("# written by core0 (embedded libvirtd)\n")
    (b / "etc" / "virtlogd.conf").write_text("# written by core0 (embedded libvirtd)\n")


def _argv(cfg: Config, *daemon: str) -> list[str]:
    return ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-m",
            "core0.init.libvirtd", "nsexec", str(base(cfg)), "--", *daemon]


def _gone(pid: int | None) -> bool:
    """The process has ended (a zombie the supervisor has not reaped yet, or no process)."""
    if pid is None:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def _wait_socket(path: Path, svc: Service) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if path.exists():
            return True
        if _gone(svc.pid):
            return False
        time.sleep(0.05)
    return path.exists()


def services(cfg: Config) -> list[Service]:
    """virtlogd and libvirtd as supervised services (in start order); [] unless embedded.
    Raises FileNotFoundError when a daemon or ``unshare`` is not installed."""
    if not enabled(cfg):
        return []
    for prog in ("unshare", "virtlogd", "libvirtd"):
        if shutil.which(prog) is None:
            raise FileNotFoundError(f"virt.libvirtd = embedded needs {prog}, which is not "
                                    "installed")
    _prepare(cfg)
    b = base(cfg)
    for stale in (b / "run" / "virtlogd-sock", socket_path(cfg)):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    logd = Service("virtlogd", _argv(cfg, "virtlogd", "-p", str(b / "virtlogd.pid")))
    logd.ready = lambda: _wait_socket(b / "run" / "virtlogd-sock", logd)
    lvd = Service("libvirtd", _argv(cfg, "libvirtd", "-p", str(b / "libvirtd.pid")))
    lvd.ready = lambda: _wait_socket(socket_path(cfg), lvd)
    return [logd, lvd]


def destroy_domains(cfg: Config, timeout: float = 20.0) -> int:
    """Destroy every domain of the embedded libvirtd (``core0 dev`` stopping); returns how
    many. Nothing when libvirt-python is missing or the daemon does not answer."""
    try:
        import libvirt
    except ImportError:
        return 0
    n = 0
    try:
        conn = libvirt.open(uri(cfg))
    except libvirt.libvirtError as e:
        log.warning("embedded libvirtd: not reachable to stop its VMs: %s", e)
        return 0
    try:
        deadline = time.monotonic() + timeout
        for dom in conn.listAllDomains(0):
            if time.monotonic() > deadline:
                break
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
                n += 1
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
    if n:
        log.info("embedded libvirtd: destroyed %d VM(s)", n)
    return n


def _nsexec(b: str, argv: list[str]) -> None:
    """Inside the daemon's new mount namespace: the bind mounts (mount(2), as init's own),
    then exec the daemon."""
    from core0.init import mounts

    for d, target in BINDS.items():
        os.makedirs(target, exist_ok=True)
        mounts.mount(os.path.join(b, d), target, "", mounts.MS_BIND)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    if len(sys.argv) > 4 and sys.argv[1] == "nsexec" and sys.argv[3] == "--":
        _nsexec(sys.argv[2], sys.argv[4:])
    sys.exit("usage: python -m core0.init.libvirtd nsexec <base> -- argv...")
