"""aggregator.query: the level-10 statistics of jobs (0-core's aggregator, core0.fleet)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from core0.context import Context
from core0.registry import Role, command
from core0.schema import Doc, Len, Schema


@dataclass(frozen=True)
class QueryArgs(Schema):
    key: Annotated[str, Doc("only this metric ('' = all)"), Len(0, 512)] = ""
    tags: Annotated[dict[str, str] | None, Doc("only states carrying all these tags")] = None


@command("aggregator.query", QueryArgs, role=Role.READ_ONLY, inline=True)
async def query(ctx: Context, args: QueryArgs) -> dict[str, Any]:
    """The statistics jobs reported with ``10::key:value|A|tags`` lines (``A``: average,
    ``D``: rate of a counter), as 0-core returned them: ``{"key[/id]": {op, last_value,
    last_time, tags, current: {"300": sample, "3600": sample}, history: {"300": [≤5 samples],
    "3600": [...]}}}`` with samples ``{avg, total, max, count, start}``. Kept in the
    dispatcher's memory (bounded: 10000 states, dropped after an idle hour)."""
    return ctx.node.aggregator.query(args.key, args.tags)
