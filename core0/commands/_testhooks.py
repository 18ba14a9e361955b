"""Commands that exist only for core0's own fault tests (loaded when CORE0_TEST_POISON=1).

``test.crash`` kills the dispatcher the way a fatal bug in a handler would, to test the
poison-pill rule (at most 3 deliveries, then an error result and a dead letter); ``test.raise``
fails the way a handler can (a bug, a timeout of its own, a sleep for max_time); ``test.hold``
is a command that changes something and runs until told to end (a run cut short).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Literal

from core0 import cancel
from core0.context import Context
from core0.registry import Role, command
from core0.schema import NoArgs, Schema

log = logging.getLogger(__name__)


@command("test.crash", NoArgs, role=Role.ADMIN, rerun=True)
async def crash(ctx: Context, args: NoArgs) -> None:
    """Crash the dispatcher (test builds only). Run again after a crash, as a command that
    changes nothing is."""
    log.error("test.crash: crashing the dispatcher on purpose")
    os._exit(70)


@dataclass(frozen=True)
class RaiseArgs(Schema):
    kind: Literal["bug", "timeout", "sleep", "atomic"]


@command("test.raise", RaiseArgs, role=Role.ADMIN)
async def raise_(ctx: Context, args: RaiseArgs) -> None:
    """Fail the way a handler can (test builds only): ``bug`` raises a RuntimeError (500),
    ``timeout`` a TimeoutError of its own (504, not max_time), ``sleep`` sleeps 60 s (for
    max_time: TIMEOUT), ``atomic`` ends with a 1 s step that a kill cannot cut
    (cancel.atomic) and returns right after it."""
    if args.kind == "bug":
        raise RuntimeError("a bug in a handler")
    if args.kind == "timeout":
        raise TimeoutError("the tool did not answer")
    if args.kind == "atomic":
        await cancel.atomic(asyncio.sleep(1.0))
        return
    await asyncio.sleep(60)


@dataclass(frozen=True)
class HoldArgs(Schema):
    path: str


@command("test.hold", HoldArgs, role=Role.ADMIN)
async def hold(ctx: Context, args: HoldArgs) -> str:
    """A command that changes the node (test builds only): appends a line to ``<path>.runs``
    at each run, then waits until ``path`` exists."""
    with open(args.path + ".runs", "a") as f:
        f.write(f"{ctx.job.id}\n")
    while not os.path.exists(args.path):
        await asyncio.sleep(0.05)
    return "held"
