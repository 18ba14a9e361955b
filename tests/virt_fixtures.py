"""VM test fixtures: a private libvirtd + virtlogd, and a tiny guest (kernel + busybox).

**libvirtd.** Each test module gets its own ``virtlogd`` and ``libvirtd``, started in a private
mount namespace where ``/run/libvirt``, ``/var/lib/libvirt``, ``/var/log/libvirt``,
``/var/cache/libvirt`` and ``/etc/libvirt`` are bind mounts of directories under the fixture's
temp dir: their sockets, pid files, domain state and configuration are the fixture's own and the
host's libvirt (if any) is never touched. Optionally both run inside a network namespace (the
one a core0 node under test runs in), so the taps libvirt makes land on that node's bridges.
The client reaches the daemon through its socket path:
``qemu:///system?socket=<tmp>/run/libvirt-sock``. ``qemu.conf`` runs qemu as root without
cgroups, namespaces or a security driver (what a test VM can do). Teardown destroys every
domain, then kills qemu (by the pid files libvirt wrote), libvirtd and virtlogd by PID.

**Guest.** ``guest_files()`` downloads Debian's kernel package (``apt-get download``, kept in
the image builder's cache), takes busybox (static) and the virtio/ACPI-button modules, and
writes a cpio initramfs whose ``/init`` opens the ACPI power button's input device, then prints
:data:`MARKER` on the serial console (so a test that saw the marker may press the button: the
event is queued, never lost to a listener not started yet), reports
disks as they appear (``GUEST-DISK vdX``), takes a DHCP lease (``GUEST-IP a.b.c.d``), serves
HTTP on port 8080 (busybox httpd, page = :data:`PAGE`) and powers off when the ACPI power button
is pressed (``kvm.shutdown``).

Run as a script (``python tests/virt_fixtures.py nsexec <base> -- argv…``) it is the wrapper
that makes the bind mounts inside the new mount namespace, then execs ``argv``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import socketserver
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "initramfs-builder"))
import imagelib  # type: ignore[import-not-found]  # noqa: E402

#: the image builder's cache (outside the work tree: shared by clones on one machine)
CACHE = imagelib.default_cache()
MARKER = "CORE0-GUEST-UP"
PAGE = "core0-guest-page"
BINDS = {"run": "/run/libvirt", "lib": "/var/lib/libvirt", "log": "/var/log/libvirt",
         "cache": "/var/cache/libvirt", "etc": "/etc/libvirt"}
#: guest modules in load order (dependencies first)
MODULES = ["virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
           "virtio_pci", "virtio_blk", "failover", "net_failover", "virtio_net", "button",
           "evdev"]
QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
"""

#: the first lines of a guest's /init: busybox applets, /proc /sys /dev, the modules
GUEST_PRELUDE = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in {' '.join(MODULES)}; do insmod /lib/mod/$m.ko 2>/dev/null; done
"""

GUEST_INIT = GUEST_PRELUDE + f"""for e in /sys/class/input/event*; do
  if grep -q "Power Button" $e/device/name 2>/dev/null; then
    exec 3</dev/input/${{e##*/}}
    (head -c 1 <&3 >/dev/null; echo GUEST-POWEROFF; poweroff -f) &
    exec 3<&-
  fi
done
echo {MARKER}
(seen=""; while true; do for b in /sys/block/vd*; do n=${{b##*/}};
  case " $seen " in *" $n "*) ;; *) [ -e $b ] && seen="$seen $n" && echo "GUEST-DISK $n";; esac;
  done; sleep 0.3; done) &
ip link set lo up
mkdir -p /www && echo {PAGE} > /www/index.html
if ip link set eth0 up 2>/dev/null; then
  (udhcpc -i eth0 -s /bin/dhcp-script -t 20 -T 1 -b >/dev/null 2>&1) &
  httpd -p 8080 -h /www
fi
while true; do sleep 3600; done
"""
DHCP_SCRIPT = """#!/bin/busybox sh
case "$1" in bound|renew)
  ifconfig $interface $ip netmask $subnet up
  [ -n "$router" ] && route add default gw ${router%% *} dev $interface 2>/dev/null
  echo "GUEST-IP $ip" > /dev/console;;
esac
"""


# ---------------------------------------------------------------- the guest


def _kernel_tree() -> Path:
    sys.path.insert(0, str(ROOT / "initramfs-builder"))
    import imagelib  # type: ignore[import-not-found]

    out = imagelib.run(["apt-cache", "depends", "linux-image-amd64"])
    pkg = next(n for line in out.splitlines()
               if (n := line.strip().partition(": ")[2]).startswith("linux-image-")
               and n[12:13].isdigit())
    pkgs = imagelib.candidates([pkg])
    debs = imagelib.download(pkgs.values(), CACHE / "debs")
    return Path(imagelib.extract(debs[pkg], CACHE / "x"))


def _busybox() -> Path:
    for cand in ("/bin/busybox", "/usr/bin/busybox"):
        p = Path(cand)
        if p.exists() and b"ld-linux" not in p.read_bytes()[:65536]:
            return p  # no ELF interpreter: static
    raise RuntimeError("a static busybox is needed (apt-get install busybox-static)")


def guest_files() -> tuple[Path, Path]:
    """(vmlinuz, initramfs) of the test guest, built once into the image builder's cache
    (``virt-guest/``)."""
    sys.path.insert(0, str(ROOT / "initramfs-builder"))
    import imagelib

    out_dir = CACHE / "virt-guest"
    kernel, initrd = out_dir / "vmlinuz", out_dir / "initrd.cpio"
    stamp = out_dir / ".ok"
    if stamp.exists() and stamp.read_text() == GUEST_INIT + DHCP_SCRIPT:
        return kernel, initrd
    tree = _kernel_tree()
    mod_root = next((tree / "lib/modules").iterdir())
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(tree / f"boot/vmlinuz-{mod_root.name}", kernel)
    kos = {p.name[:-3].replace("-", "_"): p for p in (mod_root / "kernel").rglob("*.ko")}
    tmp = initrd.with_suffix(".tmp")
    with tmp.open("wb") as f:
        w = imagelib.CpioWriter(f)
        for d in ("bin", "dev", "proc", "sys", "lib", "lib/mod", "www", "tmp"):
            w.add(imagelib.Entry(d, stat.S_IFDIR | 0o755))
        w.add(imagelib.Entry("bin/busybox", stat.S_IFREG | 0o755, _busybox()))
        w.add(imagelib.Entry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"))
        w.add(imagelib.Entry("bin/dhcp-script", stat.S_IFREG | 0o755, DHCP_SCRIPT.encode()))
        w.add(imagelib.Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
        for m in MODULES:
            if m in kos:
                w.add(imagelib.Entry(f"lib/mod/{m}.ko", stat.S_IFREG | 0o644, kos[m]))
        w.add(imagelib.Entry("init", stat.S_IFREG | 0o755, GUEST_INIT.encode()))
        w.finish()
    tmp.replace(initrd)
    stamp.write_text(GUEST_INIT + DHCP_SCRIPT)
    return kernel, initrd


def marker_stub(marker: str = MARKER) -> bytes:
    """A guest of 70 bytes that prints ``marker`` on the first serial port and halts: a
    multiboot image (the header's address fields, no ELF) that qemu's direct kernel boot
    (``kernel`` of ``kvm.create``) loads at 1 MiB and enters in 32-bit protected mode. For
    a test that needs a guest to run, not Linux: a Debian kernel's boot costs minutes under
    TCG inside TCG, this one a firmware's few seconds."""
    base = 0x100000
    entry = base + 32  # right after the header
    code = (b"\xbe" + struct.pack("<I", entry + 21)  # mov esi, marker
            + b"\x66\xba\xf8\x03"  # mov dx, 0x3f8 (COM1)
            + b"\xac\x84\xc0\x74\x03\xee\xeb\xf8"  # next: lodsb; test al; jz end; out; jmp next
            + b"\xfa\xf4\xeb\xfd")  # end: cli; hlt; jmp hlt
    magic, flags = 0x1BADB002, 0x00010000  # flags: the load addresses are in the header
    header = struct.pack("<8I", magic, flags, -(magic + flags) & 0xFFFFFFFF, base, base, 0, 0,
                         entry)
    return header + code + marker.encode() + b"\r\n\0"


# ---------------------------------------------------------------- libvirtd


def _wait(cond, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return bool(cond())


@dataclass
class Libvirtd:
    """A private virtlogd + libvirtd (see the module docstring)."""

    base: Path
    netns: str | None = None
    #: also listen on TCP at this address, without authentication (a migration target)
    listen: str | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def socket(self) -> str:
        return str(self.base / "run" / "libvirt-sock")

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket}"

    def _argv(self, *argv: str) -> list[str]:
        pre = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*pre, "unshare", "--mount", "--uts", "--propagation", "private", "--",
                sys.executable, __file__, "nsexec", str(self.base), "--", *argv]

    def _spawn(self, name: str, argv: list[str], ready: Path) -> None:
        log = open(self.base / f"{name}.log", "ab")
        p = subprocess.Popen(self._argv(*argv), stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.procs[name] = p
        if not _wait(lambda: ready.exists() or p.poll() is not None, 30) or p.poll() is not None:
            raise RuntimeError(f"{name} did not start:\n"
                               + (self.base / f"{name}.log").read_text(errors="replace")[-3000:])

    def start(self) -> None:
        for d in BINDS:
            (self.base / d).mkdir(parents=True, exist_ok=True)
        (self.base / "etc" / "qemu.conf").write_text(QEMU_CONF)
        # its own host uuid (and, through its UTS namespace, hostname): two fixtures are two
        # hosts to libvirt, so a VM can migrate between them
        conf = f'host_uuid = "{uuid.uuid4()}"\n'
        if self.listen:
            conf += (f'listen_tls = 0\nlisten_tcp = 1\nauth_tcp = "none"\n'
                     f'listen_addr = "{self.listen}"\n')
        (self.base / "etc" / "libvirtd.conf").write_text(conf)
        if "virtlogd" not in self.procs or self.procs["virtlogd"].poll() is not None:
            self._spawn("virtlogd", ["virtlogd", "-p", str(self.base / "virtlogd.pid")],
                        self.base / "run" / "virtlogd-sock")
        self.start_libvirtd()

    def start_libvirtd(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)
        self._spawn("libvirtd", ["libvirtd", "-p", str(self.base / "libvirtd.pid"),
                                 *(["--listen"] if self.listen else [])],
                    Path(self.socket))
        import libvirt

        def answers() -> bool:
            try:
                c = libvirt.open(self.uri)
            except libvirt.libvirtError:
                return False
            c.close()
            return True

        assert _wait(answers, 30), "libvirtd does not answer"

    def kill_libvirtd(self) -> None:
        p = self.procs.pop("libvirtd", None)
        if p is not None:
            _kill_group(p)

    def qemu_pids(self) -> list[int]:
        out = []
        for f in (self.base / "run" / "qemu").glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                out.append(int(f.read_text().strip()))
        return out

    def stop(self) -> None:
        import libvirt

        with contextlib.suppress(libvirt.libvirtError):
            c = libvirt.open(self.uri)
            for d in c.listAllDomains():
                with contextlib.suppress(libvirt.libvirtError):
                    d.destroy()
            c.close()
        for pid in self.qemu_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for name in ("libvirtd", "virtlogd"):
            p = self.procs.pop(name, None)
            if p is not None:
                _kill_group(p)


def _kill_group(p: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(5)


@contextlib.contextmanager
def libvirtd(netns: str | None = None, listen: str | None = None) -> Iterator[Libvirtd]:
    """A private libvirtd (skips locally / fails in CI when libvirt or qemu is missing)."""
    from conftest import require, require_root

    require_root()
    require("libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img", "unshare")
    try:
        import libvirt  # noqa: F401
    except ImportError:
        require("python3-libvirt (pip install libvirt-python)")
    base = Path(tempfile.mkdtemp(prefix="core0-lv-", dir="/tmp"))
    d = Libvirtd(base, netns, listen)
    try:
        d.start()
        yield d
    finally:
        d.stop()
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def libvirtd_peer(ns: Any, name: str, link: str, net: str) -> Iterator[tuple[Any, Libvirtd]]:
    """A second network namespace ``name`` joined to ``ns`` (a net_fixtures.Netns) by the veth
    pair ``<link>0``/``<link>1`` on ``<net>.1``/``<net>.2`` (a /30), with its own libvirtd
    listening on ``<net>.2``: a migration's destination host. Yields (namespace, libvirtd)."""
    from net_fixtures import netns

    with netns(name) as peer:
        ns.run("ip", "link", "add", f"{link}0", "type", "veth", "peer", "name", f"{link}1",
               "netns", peer.name)
        ns.run("ip", "addr", "add", f"{net}.1/30", "dev", f"{link}0")
        ns.run("ip", "link", "set", f"{link}0", "up")
        peer.run("ip", "addr", "add", f"{net}.2/30", "dev", f"{link}1")
        peer.run("ip", "link", "set", f"{link}1", "up")
        with libvirtd(peer.name, listen=f"{net}.2") as lv:
            yield peer, lv


# ---------------------------------------------------------------- helpers for tests


def wait_text(path: Path, text: str, timeout: float = 120) -> bool:
    """Wait until ``text`` appears in the file at ``path``."""
    def seen() -> bool:
        with contextlib.suppress(OSError):
            return text in path.read_text(errors="replace")
        return False

    return _wait(seen, timeout)


def _nsexec(base: str, argv: list[str]) -> None:
    socket.sethostname("lv-" + os.path.basename(base))
    for d, target in BINDS.items():
        os.makedirs(target, exist_ok=True)
        subprocess.run(["mount", "--bind", os.path.join(base, d), target], check=True)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    if len(sys.argv) > 4 and sys.argv[1] == "nsexec" and sys.argv[3] == "--":
        _nsexec(sys.argv[2], sys.argv[4:])
    sys.exit("usage: virt_fixtures.py nsexec <base> -- argv...")


# ---------------------------------------------------------------- hostile-use helpers

class Listener(socketserver.ThreadingUnixStreamServer):
    """A unix socket that counts the connections made to it (qemu-img's nbd client)."""

    def __init__(self, path: Path):
        self.count = 0
        super().__init__(str(path), socketserver.BaseRequestHandler)
        threading.Thread(target=self.serve_forever, args=(0.1,), daemon=True).start()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.count += 1
        return False  # closed at once

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def qemu_files(uuid: str) -> list[str]:
    """The regular files the qemu of VM ``uuid`` holds open (psutil, by its -uuid)."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and os.path.basename(cmd[0]).startswith("qemu-system") and uuid in cmd:
            return [f.path for f in p.open_files()]
    return []


def flip(stop: threading.Event, link: Path, real: Path, target: Path,
          times: tuple[float, float] = (0.04, 0.06)) -> None:
    """Until ``stop`` is set: ``link`` a symlink to ``target`` for ``times[0]`` seconds,
    then a hard link of ``real`` for ``times[1]``."""
    while not stop.is_set():
        with contextlib.suppress(OSError):
            os.symlink(target, link.with_name(".l"))
            os.replace(link.with_name(".l"), link)
        stop.wait(times[0])
        with contextlib.suppress(OSError):
            os.link(real, link.with_name(".f"))
            os.replace(link.with_name(".f"), link)
        stop.wait(times[1])
