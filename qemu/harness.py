"""Boot the core0 image under qemu and talk to it: the e2e tests' and bench/boot.py's harness.

    from qemu.harness import VM, VMConfig
    with VM(VMConfig(append=["core0.main.hostname=n1"], config_drive=Path("cidata/"))) as vm:
        vm.start()
        print(vm.wait_ping(120))          # seconds from qemu's start to the first core.ping
        ...
        vm.command("core.poweroff")
        assert vm.wait_exit(60) == 0

Acceleration: ``auto`` uses KVM only when a real probe boots the image's kernel under KVM
(``/dev/kvm`` existing is not enough: nested or PVM hosts expose it and then hang), and TCG
otherwise. The probe's answer is cached per host boot in ``build/cache/kvm-probe.json``.
``CORE0_VM_ACCEL=tcg|kvm`` forces one.

Credentials: each VM gets a fresh random password (``VMConfig.password``; ``""`` = none). Only
its SHA-256 goes on the kernel command line (``core0.redis.password_sha256=``), so the console
never shows it; the node's ``default`` user (0-core's one-argument AUTH) accepts it, and
``vm.url`` is the ``CORE0_URL`` to reach the node with.

The kernel boots through its PVH entry (``vmlinux`` extracted once from the image's
``vmlinuz`` and cached next to it): the same kernel, minus its self-decompressor, which costs
about 4 s under TCG. ``kernel_boot="bzimage"`` boots the file as it is.

Standard library only (the node is reached with a few lines of RESP), so ``qemu/boot`` runs
with any python3.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import lzma
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE_DIR = REPO / "build" / "image"
CACHE_DIR = REPO / "build" / "cache"
QEMU = "qemu-system-x86_64"
BASE_CMDLINE = ["console=ttyS0", "panic=-1", "random.trust_cpu=on"]
#: UEFI firmware for qemu (Debian's ovmf)
OVMF = Path("/usr/share/ovmf/OVMF.fd")


class VMError(RuntimeError):
    """The VM did not start, answer or stop as expected (the message has the serial tail)."""


class GuestStalled(VMError):
    """A wait ran out and the guest's own kernel had reported a stall on the console (a soft
    lockup or an RCU stall): the emulated machine stopped making progress under the node.
    Under TCG this was seen with both vCPUs stuck at code the kernel was rewriting (the memcg
    static branch, at the first memory cgroup; the image's init now makes that cgroup at boot:
    docs/developing.md, "Tests under qemu"); the e2e tests that boot a VM of their own are run
    again once on this error, and on no other."""


# ---------------------------------------------------------------- image files

def image_files(image_dir: Path = DEFAULT_IMAGE_DIR, flavour: str = "core") -> tuple[Path, Path]:
    """(vmlinuz, initramfs) of a built image."""
    suffix = "" if flavour == "core" else f"-{flavour}"
    kernel = image_dir / "vmlinuz"
    initrds = sorted(image_dir.glob(f"initramfs{suffix}.cpio.*"))
    if not kernel.exists() or not initrds:
        raise VMError(f"no {flavour} image in {image_dir}: run `make image` "
                      f"(bash initramfs-builder/build.sh {flavour})")
    return kernel, initrds[0]


def pvh_kernel(vmlinuz: Path) -> Path | None:
    """The uncompressed ELF inside a bzImage (booted through its PVH note), cached beside it;
    None when it cannot be extracted (not XZ-compressed)."""
    digest = hashlib.sha256(vmlinuz.read_bytes()).hexdigest()[:16]
    out = vmlinuz.parent / f".vmlinux-{digest}"
    if out.exists():
        return out
    data = vmlinuz.read_bytes()
    off = data.find(b"\xfd7zXZ\x00")
    if off < 0:
        return None
    try:
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[off:])
    except lzma.LZMAError:
        return None
    if elf[:4] != b"\x7fELF":
        return None
    for old in vmlinuz.parent.glob(".vmlinux-*"):
        old.unlink()
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(elf)
    tmp.replace(out)
    return out


# ---------------------------------------------------------------- config drive

def make_config_drive(src: Path | dict[str, str], out: Path, fmt: str = "iso") -> Path:
    """A NoCloud config drive labelled ``cidata`` from a directory (or {name: text}):
    iso9660 (genisoimage) or vfat (mkfs.vfat + mcopy). An existing file is used as is."""
    if isinstance(src, Path) and src.is_file():
        return src
    with tempfile.TemporaryDirectory(prefix="cidata-") as tmp:
        d = Path(tmp)
        if isinstance(src, dict):
            for name, text in src.items():
                (d / name).write_text(text)
        else:
            shutil.copytree(src, d, dirs_exist_ok=True)
        out.unlink(missing_ok=True)
        if fmt == "iso":
            subprocess.run(["genisoimage", "-quiet", "-output", str(out),  # noqa: S607
                            "-volid", "cidata", "-joliet", "-rock", str(d)], check=True)
        elif fmt == "vfat":
            subprocess.run(["mkfs.vfat", "-n", "CIDATA", "-C", str(out), "2048"],  # noqa: S607
                           check=True,
                           stdout=subprocess.DEVNULL)
            files = [str(p) for p in d.iterdir()]
            if files:
                subprocess.run(["mcopy", "-s", "-i", str(out), *files, "::"],  # noqa: S607
                               check=True)
        else:
            raise ValueError(f"unknown config drive format {fmt!r}")
    return out


# ---------------------------------------------------------------- KVM probe

def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def probe_kvm(kernel: Path, timeout: float = 10.0, cache: Path | None = None) -> bool:
    """Does a guest kernel really run under KVM here? Boots ``kernel`` without an initramfs
    under KVM: it must reach its "cannot mount root" panic (all of early boot and the
    initcalls) within ``timeout``. Cached per host boot, qemu binary and kernel."""
    from core0.virt.probe import kvm_device_ok  # the one /dev/kvm check

    if not kvm_device_ok():
        return False
    qemu = shutil.which(QEMU) or QEMU
    key = "|".join([_boot_id(), str(os.stat(qemu).st_mtime) if os.path.exists(qemu) else "",
                    hashlib.sha256(kernel.read_bytes()).hexdigest()[:16]])
    cache = cache or CACHE_DIR / "kvm-probe.json"
    with contextlib.suppress(OSError, ValueError):
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return bool(saved["kvm"])
    argv = [QEMU, "-machine", "pc,accel=kvm", "-cpu", "host", "-m", "256", "-nodefaults",
            "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
            "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1 root=/dev/core0-none"]
    t = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        ok = b"VFS: Unable to mount root" in out or b"Kernel panic" in out
    except subprocess.TimeoutExpired:
        ok = False
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    result = {"key": key, "kvm": ok, "seconds": round(time.monotonic() - t, 2)}
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(result))
    return ok


def choose_accel(accel: str, kernel: Path) -> str:
    accel = os.environ.get("CORE0_VM_ACCEL", accel)
    if accel == "auto":
        return "kvm" if probe_kvm(kernel) else "tcg"
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"accel must be auto, kvm or tcg, not {accel!r}")
    return accel


# ---------------------------------------------------------------- a tiny RESP client

class Resp:
    """Just enough Redis protocol for the harness (no redis-py needed)."""

    def __init__(self, host: str, port: int, timeout: float, password: str = ""):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""
        if password:
            try:
                self.call("AUTH", password)
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def call(self, *args: str | bytes, timeout: float | None = None) -> Any:
        parts = [a.encode() if isinstance(a, str) else a for a in args]
        msg = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        if timeout is not None:
            self.sock.settimeout(timeout)
        self.sock.sendall(msg)
        return self._read()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _read(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise VMError(f"redis error: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed")
                self.buf += chunk
            data, self.buf = self.buf[:n], self.buf[n + 2 :]
            return data
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise VMError(f"bad reply {line[:60]!r}")


# ---------------------------------------------------------------- the VM

@dataclass
class VMConfig:
    image_dir: Path = DEFAULT_IMAGE_DIR
    flavour: str = "core"
    memory: int = 1024  #: MiB
    cpus: int = 2
    #: host port forwarded to the node's Redis (None: a free one)
    redis_port: int | None = None
    accel: str = "auto"
    #: extra kernel command line arguments (``core0.<section>.<key>=…``, ``ip=…``, ``debug``)
    append: list[str] = field(default_factory=list)
    #: a directory (or {name: text}) made into a cidata drive, or an existing image file
    config_drive: Path | dict[str, str] | None = None
    config_drive_format: str = "iso"
    #: extra raw disks (virtio-blk)
    disks: list[Path] = field(default_factory=list)
    #: serial console log (None: a file in a temporary directory)
    serial_log: Path | None = None
    #: "pvh" (the kernel's uncompressed ELF; faster) or "bzimage"
    kernel_boot: str = "pvh"
    #: more host→guest TCP forwards
    forwards: list[tuple[int, int]] = field(default_factory=list)
    extra_qemu: list[str] = field(default_factory=list)
    #: echo the console on stdout as well (qemu/boot in the foreground)
    console_stdout: bool = False
    #: the node's Redis password (None: a fresh random one; "": no credential, and then the
    #: node serves loopback only, which the host cannot reach)
    password: str | None = None
    #: boot from this medium (an ISO from initramfs-builder/media.py) through the firmware
    #: instead of qemu's ``-kernel``; its kernel command line is the medium's own
    boot_iso: Path | None = None
    #: boot from this raw disk (the A/B disk image from initramfs-builder/disk.py) through the
    #: firmware, as the machine's first disk (virtio-blk, written in place)
    boot_disk: Path | None = None
    #: "bios" (SeaBIOS) or "uefi" (OVMF)
    firmware: str = "bios"
    #: network boot: the URL (or TFTP name) the firmware's iPXE gets by DHCP (an iPXE script
    #: from initramfs-builder/media.py); the host is 10.0.2.2 for the guest
    netboot: str | None = None


#: the guest kernel's own report that a CPU stopped making progress
STALL = re.compile(r"BUG: soft lockup|rcu: INFO: rcu_\w+ (self-)?detected (expedited )?stall")
#: console lines worth seeing whatever came after them (``VM.tail``)
LANDMARK = re.compile(r"Linux version|reboot: |Power down|BUG:|rcu: INFO"
                      r"|Kernel panic|Out of memory|oom-kill|blocked for more than"
                      r"|Call Trace|core0-[a-z]+\[\d+\] (WARNING|ERROR|CRITICAL)|Traceback")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VM:
    """One qemu process, killed by PID when the VM is stopped or the ``with`` block ends."""

    def __init__(self, cfg: VMConfig | None = None):
        self.cfg = cfg or VMConfig()
        self.port = self.cfg.redis_port or free_port()
        self.password = (secrets.token_urlsafe(24) if self.cfg.password is None
                         else self.cfg.password)
        self._tmpdir: Path | None = None
        self.serial_log = self.cfg.serial_log or self._tmp / "serial.log"
        #: qemu's own messages (stderr)
        self.qemu_log = self.serial_log.with_name(self.serial_log.name + ".qemu")
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.accel = ""
        self.argv: list[str] = []

    @property
    def _tmp(self) -> Path:
        """A private directory (default serial log, config drive), made when first needed."""
        if self._tmpdir is None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="core0-vm-"))
        return self._tmpdir

    @property
    def url(self) -> str:
        """``CORE0_URL`` of the node (its ``default`` user: 0-core's one-argument AUTH)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/"

    def cmdline(self) -> list[str]:
        """The kernel command line: only the password's SHA-256 is on it."""
        cred = []
        if self.password:
            digest = hashlib.sha256(self.password.encode()).hexdigest()
            cred = [f"core0.redis.password_sha256={digest}"]
        return BASE_CMDLINE + cred + list(self.cfg.append)

    # ------------------------------------------------------------ lifecycle

    def build_argv(self) -> list[str]:
        c = self.cfg
        vmlinuz, initrd = image_files(c.image_dir, c.flavour)
        kernel = vmlinuz
        if c.kernel_boot == "pvh":
            kernel = pvh_kernel(vmlinuz) or vmlinuz
        self.accel = choose_accel(c.accel, kernel)
        cpu = "host" if self.accel == "kvm" else "max"
        fwd = ",".join(f"hostfwd=tcp:127.0.0.1:{h}-:{g}"
                       for h, g in [(self.port, 6379), *c.forwards])
        argv = [QEMU, "-machine", f"pc,accel={self.accel}", "-cpu", cpu, "-m", str(c.memory),
                "-smp", str(c.cpus), "-nodefaults", "-no-user-config", "-display", "none"]
        if c.netboot is not None:
            argv += ["-boot", "order=n"]
        elif c.boot_disk is not None:
            argv += ["-drive", f"file={c.boot_disk},if=none,id=boot,format=raw",
                     "-device", "virtio-blk-pci,drive=boot,bootindex=0"]
        elif c.boot_iso is None:
            argv += ["-kernel", str(kernel), "-initrd", str(initrd),
                     "-append", " ".join(self.cmdline())]
        else:
            argv += ["-drive", f"file={c.boot_iso},if=ide,index=1,media=cdrom,readonly=on",
                     "-boot", "order=d"]
        if c.firmware == "uefi":
            argv += ["-bios", str(OVMF)]
        elif c.firmware != "bios":
            raise VMError(f"firmware {c.firmware!r}: bios or uefi")
        boot = f",bootfile={c.netboot}" if c.netboot is not None else ""
        rom = "" if c.netboot is not None else ",romfile="  # iPXE only to boot from it
        argv += ["-netdev", f"user,id=n0,{fwd}{boot}",
                "-device", f"virtio-net-pci,netdev=n0{rom}",
                "-device", "virtio-rng-pci"]
        if c.console_stdout:
            argv += ["-chardev", f"stdio,id=con0,signal=off,logfile={self.serial_log}",
                     "-serial", "chardev:con0"]
        else:
            argv += ["-chardev", f"file,id=con0,path={self.serial_log}", "-serial",
                     "chardev:con0"]
        drives: list[Path] = []
        if c.config_drive is not None:
            drives.append(make_config_drive(c.config_drive, self._tmp / "cidata.img",
                                            c.config_drive_format))
        drives += c.disks
        for i, d in enumerate(drives):
            ro = ",readonly=on" if i == 0 and c.config_drive is not None else ""
            argv += ["-drive", f"file={d},if=none,id=d{i},format=raw{ro}",
                     "-device", f"virtio-blk-pci,drive=d{i}"]
        return argv + list(c.extra_qemu)

    def start(self) -> None:
        if self.proc is not None:
            raise VMError("already started")
        self.argv = self.build_argv()
        self.serial_log.parent.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        out = None if self.cfg.console_stdout else subprocess.DEVNULL
        with open(self.qemu_log, "wb") as err:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=err, start_new_session=not self.cfg.console_stdout)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout: float) -> int:
        """qemu's exit status (0 after a guest power off)."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise self.timed_out(f"qemu still running after {timeout:.0f}s") from None

    def stop(self) -> None:
        """TERM qemu, then KILL (by PID)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        """Stop qemu and remove the private directory (a caller's serial log stays)."""
        self.stop()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> VM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def died(self) -> VMError:
        """The error for a qemu that exited: qemu's own message first, then the console."""
        code = self.proc.returncode if self.proc else "?"
        try:
            err = self.qemu_log.read_text(errors="replace").strip()
        except OSError:
            err = ""
        first = err.splitlines()[-1] if err else "(no message from qemu)"
        return VMError(f"qemu exited ({code}): {first}\n{self.tail()}")

    def stall(self) -> str | None:
        """The guest kernel's first stall report on the console, if any."""
        try:
            text = self.serial_log.read_text(errors="replace")
        except OSError:
            return None
        m = STALL.search(text)
        if m is None:
            return None
        start = text.rfind("\n", 0, m.start()) + 1
        end = text.find("\n", m.end())
        return text[start:end if end >= 0 else len(text)].strip()

    def timed_out(self, what: str) -> VMError:
        """The error for a wait that ran out: :class:`GuestStalled` when the guest's kernel
        reported a stall, else :class:`VMError`; the console's landmarks and tail follow."""
        line = self.stall()
        if line:
            return GuestStalled(f"{what}; the guest kernel reported: {line}\n{self.tail()}")
        return VMError(f"{what}\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        """The console's landmarks (boots, reboots, kernel warnings, core0's own warnings:
        a kernel stack dump alone can fill the end), the end of the console log, and
        qemu's own messages."""
        try:
            lines = self.serial_log.read_text(errors="replace").splitlines()
        except OSError:
            lines = ["(no serial log)"]
        marks = [f"{i + 1}: {line}" for i, line in enumerate(lines) if LANDMARK.search(line)]
        if len(marks) > 40:
            marks = [*marks[:10], f"… {len(marks) - 40} more …", *marks[-30:]]
        out = ["-- landmarks:", *marks, f"-- last {n} of {len(lines)} lines:", *lines[-n:]]
        with contextlib.suppress(OSError):
            err = self.qemu_log.read_text(errors="replace").strip()
            if err:
                out += ["-- qemu:", *err.splitlines()[-20:]]
        return "\n".join(out)

    # ------------------------------------------------------------ talking to the node

    def redis_ping(self, timeout: float = 1.0) -> bool:
        """The node's redis-server answers PING (slirp accepts at once and then holds the
        connection until the guest answers, hence the short timeout)."""
        try:
            r = Resp("127.0.0.1", self.port, timeout, self.password)
            try:
                return r.call("PING") == "PONG"
            finally:
                r.close()
        except (OSError, VMError):
            return False

    def command(self, name: str, arguments: dict[str, Any] | None = None,
                timeout: float = 60.0) -> dict[str, Any]:
        """Push a command on ``core:default`` and wait for its result (a dict)."""
        job = uuid.uuid4().hex
        cmd = {"id": job, "command": name, "arguments": arguments or {}, "queue": None,
               "max_time": None, "max_restart": None, "recurring_period": None,
               "stream": False, "tags": None}
        r = Resp("127.0.0.1", self.port, 5.0, self.password)
        try:
            r.call("RPUSH", "core:default", json.dumps(cmd))
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if self.proc is not None and self.proc.poll() is not None:
                    raise self.died()
                if left <= 0:
                    raise self.timed_out(f"{name}: no result within {timeout:.0f}s")
                chunk = max(1, min(int(left), 10))
                raw = r.call("BLMOVE", f"result:{job}", f"result:{job}", "RIGHT", "RIGHT",
                             str(chunk), timeout=chunk + 5)
                if raw is not None:
                    return dict(json.loads(raw))
        finally:
            r.close()

    def wait_ping(self, timeout: float = 120.0) -> float:
        """Wait until ``core.ping`` answers; return seconds since qemu started."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise self.died()
            if self.redis_ping():
                try:
                    res = self.command("core.ping", timeout=max(1.0, deadline - time.monotonic()))
                except (OSError, VMError):
                    if not self.running():
                        raise self.died() from None
                    time.sleep(0.2)
                    continue
                if res.get("state") == "SUCCESS":
                    return time.monotonic() - self.started
            time.sleep(0.1)
        raise self.timed_out(f"core.ping did not answer within {timeout:.0f}s")

    def system(self, *argv: str, timeout: float = 60.0) -> dict[str, Any]:
        """core.system; the result dict (``streams`` = [stdout, stderr])."""
        return self.command("core.system", {"name": argv[0], "args": list(argv[1:])}, timeout)
