"""logger.set_level and logger.reopen: the level and the files of the dispatcher's own log;
logger.subscribe and logger.unsubscribe: 0-core's aggregated job log (:mod:`core0.jobs.logfeed`)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from core0.context import Context
from core0.errors import BadRequest, NotFound
from core0.registry import Role, command
from core0.schema import Doc, Len, NoArgs, Pattern, Range, Schema

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


_NAMES = uuid.UUID("0f5d3b1e-6c2a-4d8e-9b7a-2c4e6a8b0d1f")
#: a list name: what a Redis ACL key pattern and a key can hold literally
_NAME = Pattern(r"[A-Za-z0-9_.:@=+,{}/-]{1,200}", what="1-200 of A-Z a-z 0-9 _ . : @ = + , { } / -")


@dataclass(frozen=True)
class SubscribeArgs(Schema):
    queue: Annotated[str | None, _NAME,
                     Doc("the list's name (``logger:`` is put in front); default: a new "
                         "uuid")] = None
    levels: Annotated[list[Annotated[int, Range(1, 30)]] | None, Len(0, 30),
                      Doc("only these output levels (1 stdout, 2 stderr, 20 result…); "
                          "EOF records always; default: all")] = None


@command("logger.subscribe", SubscribeArgs, role=Role.READ_ONLY)
async def subscribe(ctx: Context, args: SubscribeArgs) -> str:
    """0-core's aggregated log: from now on, every output record of every job this queue
    may see (its role's, and below admin only its private queue's) is also pushed, as
    0-core's log record JSON (``core``: the container, ``command``: the job id,
    ``message``: {message, epoch, meta}), to the list ``logger:<queue>``, which first gets
    the node's recent records (up to 1,000). Returns the list's key (read it with
    ``BLPOP``); subscribing to it again changes nothing. The list keeps its newest 1,000
    records and expires ``bus.result_ttl`` seconds after its last one. Subscriptions
    survive a dispatcher restart; 16 per role (per private queue below admin: 503
    beyond); a name another queue's subscription has and this queue cannot see: 409. On a
    private queue the name must start with its id prefix. Ends with logger.unsubscribe."""
    scope = ctx.scope
    if args.queue is not None and scope and not args.queue.removeprefix(
            ctx.config.bus.prefix).removeprefix("logger:").startswith(scope):
        raise BadRequest(f"queue: must start with {scope!r} on this private queue",
                         field="queue")
    # a name made from this command's id: run again after a restart, it is the same list
    name = args.queue or (scope or "") + str(uuid.uuid5(_NAMES, ctx.id))
    return ctx.engine.feed.subscribe(name, list(args.levels or []), ctx.job.role, scope)


@dataclass(frozen=True)
class UnsubscribeArgs(Schema):
    queue: Annotated[str, _NAME, Doc("the key logger.subscribe returned (or its name)")]


@command("logger.unsubscribe", UnsubscribeArgs, role=Role.READ_ONLY)
async def unsubscribe(ctx: Context, args: UnsubscribeArgs) -> None:
    """Stop feeding a logger.subscribe list (what it holds stays readable until it
    expires). 404 when there is no such subscription this queue may see."""
    sub = ctx.engine.feed.owner(args.queue)
    if sub is None or not ctx.job.role.sees(ctx.scope, Role(sub.role), sub.scope):
        raise NotFound(f"no logger subscription {args.queue!r}")
    ctx.engine.feed.unsubscribe(args.queue)
