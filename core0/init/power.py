"""Power control of PID 1: ``reboot(2)`` via ctypes, sync, and the final step of shutdown.

Only PID 1 may call these: a process that is not PID 1 gets :class:`PowerError` and nothing
happens (``core0 dev`` on a developer's machine can never reboot it). In a PID namespace
other than the initial one, the kernel does not reboot the machine: ``reboot(2)`` by the
namespace's init ends the namespace (its init dies of SIGHUP for a restart, SIGINT for a power
off), which is what the PID-1 tests observe.
"""

from __future__ import annotations

import ctypes
import logging
import os
from typing import Literal

log = logging.getLogger("core0.init.power")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.reboot.argtypes = [ctypes.c_int]

LINUX_REBOOT_CMD_RESTART = 0x01234567
LINUX_REBOOT_CMD_HALT = 0xCDEF0123
LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC
LINUX_REBOOT_CMD_CAD_OFF = 0x00000000
LINUX_REBOOT_CMD_KEXEC = 0x45584543
#: "1" when a kernel was loaded with kexec -l (core.upgrade with switch "reboot")
KEXEC_LOADED = "/sys/kernel/kexec_loaded"

Action = Literal["reboot", "poweroff", "halt"]

_COMMANDS: dict[str, int] = {
    "reboot": LINUX_REBOOT_CMD_RESTART,
    "poweroff": LINUX_REBOOT_CMD_POWER_OFF,
    "halt": LINUX_REBOOT_CMD_HALT,
}

#: inode of the initial PID namespace (PROC_PID_INIT_INO)
INITIAL_PID_NS = 0xEFFFFFFC


class PowerError(OSError):
    """The power action was refused or failed."""


def in_initial_pid_namespace() -> bool:
    """True when this process sees the machine's own PID namespace."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino == INITIAL_PID_NS
    except OSError:
        return False


def _require_pid1() -> None:
    if os.getpid() != 1:
        raise PowerError(f"not PID 1 (pid {os.getpid()}): refusing to touch the machine's power")


def sync() -> None:
    """Flush every filesystem (sync(2))."""
    os.sync()


def cad_to_signal() -> None:
    """Ctrl-Alt-Del sends SIGINT to PID 1 (an ordered reboot) instead of an instant reset."""
    _require_pid1()
    if _libc.reboot(ctypes.c_int(LINUX_REBOOT_CMD_CAD_OFF).value) != 0:
        err = ctypes.get_errno()
        log.debug("reboot(CAD_OFF): %s", os.strerror(err))


def kexec_loaded() -> bool:
    """A kernel is loaded for kexec: an ordered reboot ends in it, not in the firmware
    (docs/images.md, ``switch: "reboot"``)."""
    try:
        with open(KEXEC_LOADED) as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def power(action: Action) -> None:
    """sync, then reboot(2) (into the kexec-loaded kernel when there is one). Returns only on
    failure (raising PowerError)."""
    _require_pid1()
    cmd, label = _COMMANDS[action], str(action)
    if action == "reboot" and kexec_loaded() and in_initial_pid_namespace():
        cmd, label = LINUX_REBOOT_CMD_KEXEC, "reboot into the kexec-loaded kernel"
    sync()
    log.warning("%s now", label)
    for h in logging.getLogger().handlers:
        h.flush()
    if _libc.reboot(ctypes.c_int(cmd).value) != 0:
        err = ctypes.get_errno()
        raise PowerError(err, f"reboot({label}): {os.strerror(err)}")
    # a power off without a power-off driver halts: nothing more can happen
    raise PowerError(f"reboot({label}) returned")
