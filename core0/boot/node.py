"""Facts about the node the boot runs on."""

from __future__ import annotations

import os

from core0.proc import process


def on_node() -> bool:
    """The dispatcher runs under ``core0 init`` (a node), not ``core0 dev`` on a host."""
    return os.environ.get("CORE0_PID1") == "1" and os.getppid() == 1


def boot_token() -> str:
    """Identifies one boot: the kernel's boot id and the supervisor process (core0 init or
    core0 dev). A dispatcher restart keeps it; a new boot or a new ``core0 dev`` changes it."""
    ppid = os.getppid()
    return f"{process.boot_id()}:{ppid}:{process.proc_start_ticks(ppid)}"
