"""Switching to a staged image by kexec: ``kexec -l`` (load; errors are reported to the caller)
then, once the command's result is written, ``sync`` and ``kexec -e`` (the new kernel starts
at once, without firmware).

The new kernel gets the running one's command line (console, credentials' digest, trusted
keys…) with ``core0.image=<digest>`` in place of any earlier one, so the new boot knows which
image it is. Only a dispatcher whose supervisor is the node's init may switch: under
``core0 dev`` on a host every switch is refused (412) before anything is loaded.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from core0.errors import PreconditionFailed
from core0.image import carry as carry_mod
from core0.image.store import CMDLINE_KEY, Slot, Store
from core0.proc.process import RunResult

#: runs a tool to its end without raising on its status (``ctx.run(..., check=False)`` in a
#: handler, ``core0.proc.process.run`` in the boot assessment)
Run = Callable[[Sequence[str]], Awaitable[RunResult]]

KEXEC = "kexec"
#: set by ``core0 init`` in the environment of the processes it supervises
PID1_ENV = "CORE0_PID1"


def require_node_init() -> None:
    """412 unless this process is supervised by core0 init as the machine's PID 1."""
    if os.environ.get(PID1_ENV) != "1" or os.getppid() != 1:
        raise PreconditionFailed("core0 is not this machine's init (core0 dev?): refusing to "
                                 "kexec (it would replace the host's kernel)")


def next_cmdline(current: str, digest: str) -> str:
    """The running kernel's command line with ``core0.image=<digest>`` (one, last). The text
    is kept as it is (the kernel's own double-quote rules), only earlier marks are removed."""
    kept = re.sub(rf"(?:^|\s){re.escape(CMDLINE_KEY)}=\S*", "", current).strip()
    return f"{kept} {CMDLINE_KEY}={digest}".strip()


def current_cmdline() -> str:
    with open("/proc/cmdline") as f:
        return f.read().strip()


async def load(run: Run, slot: Slot, store: Store | None = None,
               carry: Sequence[Slot] = (), cmdline: str | None = None) -> list[str]:
    """``kexec -l`` the slot's kernel and initramfs (kexec_file_load first: the kernel checks
    the image itself; the older kexec_load where that is refused). When ``store`` lives in the
    initramfs's own filesystem, its state and the ``carry`` slots ride along in a second cpio
    archive (core0.image.carry). ``cmdline``: the new kernel's command line (default: the
    running one with ``core0.image=`` replaced). Returns the argv used."""
    require_node_init()
    cmdline = cmdline or next_cmdline(current_cmdline(), slot.digest)
    initrd = slot.initramfs
    tmp: Path | None = None
    if store is not None and carry_mod.carried(store):
        tmp = store.root / f".kexec-initrd-{secrets.token_hex(6)}"
        initrd = carry_mod.initrd_with(slot.initramfs, tmp, store, carry)
    try:
        base = [KEXEC, "-l", str(slot.kernel), f"--initrd={initrd}",
                f"--command-line={cmdline}"]
        errors = []
        for how in ("--kexec-file-syscall", "--kexec-syscall"):
            argv = [*base[:1], how, *base[1:]]
            res = await run(argv)
            if res.status == 0:
                return argv
            errors.append(f"{how}: {res.stderr.strip()[-300:]}")
        raise PreconditionFailed("kexec -l failed: " + "; ".join(errors))
    finally:
        if tmp is not None:  # the kernel holds its own copy once loaded
            tmp.unlink(missing_ok=True)


async def execute(run: Run) -> None:
    """Sync the filesystems and start the loaded kernel (does not return on success)."""
    require_node_init()
    os.sync()
    res = await run([KEXEC, "-e"])
    raise PreconditionFailed(f"kexec -e failed ({res.status}): {res.stderr.strip()[-300:]}")
