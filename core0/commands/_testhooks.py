"""Commands that exist only for core0's own fault tests (loaded when CORE0_TEST_POISON=1).

``test.crash`` kills the dispatcher the way a fatal bug in a handler would, to test the
poison-pill rule (at most 3 deliveries, then an error result and a dead letter).
"""

from __future__ import annotations

import logging
import os

from core0.context import Context
from core0.registry import Role, command
from core0.schema import NoArgs

log = logging.getLogger(__name__)


@command("test.crash", NoArgs, role=Role.ADMIN)
async def crash(ctx: Context, args: NoArgs) -> None:
    """Crash the dispatcher (test builds only)."""
    log.error("test.crash: crashing the dispatcher on purpose")
    os._exit(70)
