"""logger.set_level and logger.reopen: the level and the files of the dispatcher's own log."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from core0.context import Context
from core0.registry import Role, command
from core0.schema import Doc, NoArgs, Schema

#: 0-core's level names (go-logging) → Python's; NOTICE sits between INFO and WARNING
NOTICE = 25
LEVELS = {"CRITICAL": logging.CRITICAL, "ERROR": logging.ERROR, "WARNING": logging.WARNING,
          "NOTICE": NOTICE, "INFO": logging.INFO, "DEBUG": logging.DEBUG}
logging.addLevelName(NOTICE, "NOTICE")


@dataclass(frozen=True)
class LevelArgs(Schema):
    level: Annotated[Literal["CRITICAL", "ERROR", "WARNING", "NOTICE", "INFO", "DEBUG"],
                     Doc("the least severe level still logged")]


@command("logger.set_level", LevelArgs, role=Role.OPERATOR)
async def set_level(ctx: Context, args: LevelArgs) -> dict[str, str]:
    """Set the level of the dispatcher's log (what reaches the console or log file; job
    output is not affected). Returns {level, was}. Lasts until the dispatcher restarts."""
    root = logging.getLogger()
    was = logging.getLevelName(root.level)
    root.setLevel(LEVELS[args.level])
    return {"level": args.level, "was": str(was)}


@command("logger.reopen", NoArgs, role=Role.OPERATOR)
async def reopen(ctx: Context, args: NoArgs) -> dict[str, Any]:
    """Reopen the dispatcher's log files (after logrotate moved them), as 0-core's
    ``logger.reopen``. Returns {reopened: [paths]} ([] when it logs to a stream only)."""
    done = []
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            h.acquire()
            try:
                h.close()  # FileHandler reopens its file on the next record
                done.append(h.baseFilename)
            finally:
                h.release()
    return {"reopened": done}
