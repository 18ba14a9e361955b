"""Storage steps a kill cannot cut in half, and the undoing of what a killed command made.

A storage command that is killed (``job.kill``, ``max_time``) used to stop at its next
``await`` while its effect went on without it: the worker thread of a ``mount(2)`` or a btrfs
ioctl ran to its end after the job had answered KILLED (a mount core0 did not record, a
subvolume nobody asked for any more), and a SIGKILLed ``zfs``/``zpool`` CLI had already handed
its request to the zfs-fuse daemon, which finished it (a dataset, snapshot or pool made after
the answer; a dataset unmounted by a killed ``zfs set``/``destroy``/``rename`` and never
mounted again). A retry of the same command then failed with 409.

So a step whose effect cannot be cut in half runs to its end (:func:`step`, over
:func:`core0.cancel.atomic`: the kill is delivered at the caller's next ``await``), and a
command that makes something undoes it when the kill comes (:func:`undo`, itself not cut
short by a second kill): a killed command leaves nothing, and what it was asked to remove is
either removed or still there as it was.

``CORE0_TEST_STORAGE_HOLD=any:<dir>`` (fault tests only, core0/faults.py): the step named
in ``<dir>/step`` (``mount``, ``subvol``, or a tool and words of its argv such as ``zfs
create``) makes ``<dir>/held`` once its effect is made (a tool: it has exited; a mount: its
mount(2) returned; an ioctl: just before it) and waits up to 30 s for ``<dir>/go``, so a test
can kill the job, or its dispatcher, exactly there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import TypeVar

from core0 import cancel, faults
from core0.context import Context
from core0.errors import PreconditionFailed
from core0.proc import process
from core0.proc.process import RunResult
from core0.storage import blockdev, tools

log = logging.getLogger(__name__)
T = TypeVar("T")

def _armed(want: str, step: str) -> bool:
    """The step named in ``<dir>/step`` (a test arms one at a time): a name, or a tool and
    words of its argv (``zfs create``, ``parted mkpart``)."""
    try:
        armed = Path(_HOLD.where, "step").read_text().split()
    except OSError:
        return False
    got = step.split()
    if not armed or not got:
        return False
    return os.path.basename(got[0]) == armed[0] and all(w in got[1:] for w in armed[1:])


_HOLD = faults.Hold("CORE0_TEST_STORAGE_HOLD", _armed)


def hold(step: str | Sequence[str]) -> None:
    """The fault tests' pause in a worker thread (blocking; nothing unless asked)."""
    _HOLD.wait(step if isinstance(step, str) else " ".join(step))


async def hold_async(step: str | Sequence[str]) -> None:
    """The fault tests' pause on the event loop (nothing unless asked)."""
    await _HOLD.wait_async(step if isinstance(step, str) else " ".join(step))


async def step(aw: Awaitable[T]) -> T:
    """Await ``aw`` to its end even if the job is killed meanwhile; the kill is raised at
    the caller's next ``await`` (:func:`core0.cancel.atomic`), after the caller has taken
    note of what the step made. A kill held back by an earlier step is raised before this
    one begins (not absorbed by it: a killed ``zfs.destroy`` went on to destroy)."""
    return await cancel.atomic(aw)


async def undo(aw: Awaitable[object], what: str) -> None:
    """Undo what a cut-short command made: ``aw`` runs to its end, a second kill
    notwithstanding; its failure is logged (the command's own error or kill is what
    propagates)."""
    try:
        await cancel.atomic(aw, defer=False)
    except Exception as e:
        log.warning("could not undo %s of a command cut short: %s", what, e)


async def deliver() -> None:
    """Raise here a kill that a :func:`step` held back (nothing otherwise)."""
    await asyncio.sleep(0)


#: seconds a killed tool is given to be gone (reaped) before the command goes on
GONE_WAIT = 10.0


async def killed_and_gone(ctx: Context, argv: Sequence[str],
                          rules: Sequence[tools.Rule] = tools.RULES) -> RunResult:
    """Run a tool that a kill may stop (mkfs: long on a big device): killed, it is
    SIGKILLed and waited for (up to :data:`GONE_WAIT` s) before the kill goes on, so what
    comes after (the undoing; the job's answer) sees no tool still writing. Failures →
    typed errors as :func:`core0.storage.tools.run`."""
    try:
        res = await process.run(argv, stop=(signal.SIGKILL, GONE_WAIT))
    except FileNotFoundError:
        raise PreconditionFailed(f"{argv[0]} is not installed on this node") from None
    await hold_async(argv)
    if res.status != 0:
        raise tools.tool_error(res, rules)
    return res


async def wipe_if_changed(ctx: Context, before: dict[str, dict[str, str]]) -> None:
    """Wipe the signatures of each device path in ``before`` whose signatures (blkid's
    TYPE, UUID, PTTYPE, PTUUID) differ from what ``before`` has for it: what a killed mkfs
    wrote. A device it had not touched yet keeps what it carried."""
    now = await blockdev.probe(ctx, list(before))
    keys = ("TYPE", "UUID", "PTTYPE", "PTUUID")
    changed = [p for p, was in before.items()
               if any(now.get(p, {}).get(k) != was.get(k) for k in keys)
               and (now.get(p, {}).get("TYPE") or now.get(p, {}).get("PTTYPE"))]
    if changed:
        await tools.run(ctx, ["wipefs", "-a", "-q", "--", *changed])
