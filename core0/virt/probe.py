"""The domain type by a real probe: ``kvm`` only where a guest kernel really runs under KVM.

libvirt's capabilities list ``kvm`` whenever ``/dev/kvm`` exists, also where KVM cannot run a
normal guest (nested PVM: the kernel hangs in its decompressor). So, when capabilities offer
kvm and ``/dev/kvm`` answers ``KVM_GET_API_VERSION``, core0 boots a probe kernel (no initramfs,
``root=`` pointing nowhere) as a transient ``kvm`` domain: it must print its "cannot mount
root" panic on the serial log within the timeout. Otherwise VMs use ``qemu`` (TCG). The result
is cached per host boot and probe kernel in ``<virt dir>/probe.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import platform
import uuid as uuidlib
from pathlib import Path
from typing import TYPE_CHECKING

from core0.proc import process
from core0.virt import domain as dx

if TYPE_CHECKING:
    from core0.virt.conn import Conn

log = logging.getLogger(__name__)
PANIC = (b"Unable to mount root", b"Kernel panic")
#: the names of the probe's domains (refused as VM names: kvm.* leaves them alone)
PREFIX = "core0-kvm-probe-"


def kvm_device_ok() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, 0xAE00) == 12  # KVM_GET_API_VERSION
    except OSError:
        return False
    finally:
        os.close(fd)


def probe_kernel(configured: str) -> Path | None:
    cands = [configured] if configured else [f"/boot/vmlinuz-{platform.release()}",
                                             "/boot/vmlinuz"]
    for c in cands:
        p = Path(c)
        if p.is_file():
            return p
    return None


def decide(mode: str, caps: str, device_ok: bool, kernel: Path | None) -> tuple[str | None, str]:
    """The decision before any boot: ``(type, why)``, or ``(None, why)`` when only a probe
    boot can tell (``kvm`` offered, ``/dev/kvm`` answers, a probe kernel exists)."""
    if mode in ("qemu", "kvm"):
        return mode, f"virt.domain_type is {mode}"
    if "type='kvm'" not in caps and 'type="kvm"' not in caps:
        return "qemu", "libvirt's capabilities offer no kvm domain"
    if not device_ok:
        return "qemu", "/dev/kvm does not answer KVM_GET_API_VERSION"
    if kernel is None:
        return "qemu", "no probe kernel (virt.probe_kernel)"
    return None, "probe boot"


def boot_reason(ok: bool, kernel: Path, timeout: float) -> str:
    """Why a probe boot's outcome chose its type."""
    if ok:
        return f"the probe kernel {kernel} panicked as expected under kvm"
    return (f"the probe kernel {kernel} did not reach its root-mount panic within "
            f"{timeout:g}s under kvm")


async def domain_type(conn: Conn, mode: str, kernel_path: str, work: Path,
                      timeout: float = 15.0) -> str:
    """``qemu`` or ``kvm`` (``mode``: auto, qemu or kvm). The decision and its reason are
    written to ``<work>/probe.json`` (``{key, type, reason}``)."""
    cache = work / "probe.json"
    caps = "" if mode in ("qemu", "kvm") else await conn.call(lambda c: c.getCapabilities())
    kernel = probe_kernel(kernel_path) if mode not in ("qemu", "kvm") else None
    chosen, why = decide(mode, caps, mode in ("qemu", "kvm") or kvm_device_ok(), kernel)
    if chosen is not None:
        if why.startswith("no probe kernel"):
            log.warning("virt: no probe kernel (virt.probe_kernel); using qemu (TCG)")
        _save(cache, {"key": "", "type": chosen, "reason": why})
        return chosen
    assert kernel is not None
    st = kernel.stat()
    key = f"{process.boot_id()}|{kernel}|{st.st_size}|{st.st_mtime_ns}"
    with contextlib.suppress(OSError, ValueError):
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return str(saved["type"])
    ok = await _boot(conn, kernel, work, timeout)
    result = "kvm" if ok else "qemu"
    log.info("virt: KVM probe %s: domains are %s", "passed" if ok else "failed", result)
    _save(cache, {"key": key, "type": result, "reason": boot_reason(ok, kernel, timeout)})
    return result


def _save(cache: Path, rec: dict[str, str]) -> None:
    with contextlib.suppress(OSError):
        cache.write_text(json.dumps(rec))


async def _boot(conn: Conn, kernel: Path, work: Path, timeout: float) -> bool:
    serial = work / "probe-serial.log"
    serial.unlink(missing_ok=True)
    spec = dx.DomainSpec(name=f"{PREFIX}{uuidlib.uuid4().hex[:8]}",
                         uuid=str(uuidlib.uuid4()), memory=256, vcpus=1, type="kvm",
                         serial_log=str(serial), kernel=str(kernel),
                         cmdline="console=ttyS0 panic=-1 root=/dev/core0-none")
    xml = dx.build(spec)
    try:
        dom = await conn.call(lambda c: c.createXML(xml, 0))
    except Exception as e:
        log.info("virt: KVM probe domain refused: %s", e)
        return False
    ok = False
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            with contextlib.suppress(OSError):
                data = serial.read_bytes()
                if any(p in data for p in PANIC):
                    ok = True
                    break
            await asyncio.sleep(0.2)
    finally:
        with contextlib.suppress(Exception):
            await conn.call(lambda c: dom.destroy())
        serial.unlink(missing_ok=True)
    return ok
