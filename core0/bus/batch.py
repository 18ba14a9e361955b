"""What the pop loop holds of the commands of one batch: accepted ones, pickups in flight,
and the id rule that keeps a job off another's keys."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core0_client.protocol import Command

from core0.bus.store import Publish
from core0.registry import CommandSpec, Role
from core0.schema import Schema

if TYPE_CHECKING:
    from core0.jobs.job import Job

_COLLIDING_ID = re.compile(r".*:(flag|[0-9]+)")


def colliding_id(job_id: str) -> bool:
    """True for ids whose keys are another job's: ``result:<x>:flag`` is job x's pickup flag
    and ``result:<x>:<n>`` run n of recurring job x."""
    return ":" in job_id and _COLLIDING_ID.fullmatch(job_id) is not None


@dataclass(slots=True)
class Accepted:
    """A popped command that passed every check: its spec, its parsed arguments, its bytes."""

    cmd: Command
    spec: CommandSpec
    args: Schema
    raw: bytes


@dataclass(slots=True)
class Picked:
    """Commands whose pickups are in flight (one write), and what became of them."""

    results: int  #: the results sent in the same write (their replies come first)
    starts: list[Accepted]
    processing: str
    role: Role
    #: their jobs, once built (the handlers' programs made while the pickups fly)
    jobs: list[Job] | None = None
    #: started (or refused): by the reply's arrival or by the pop loop
    done: bool = False
    #: results of those refused at start
    late: list[Publish] = field(default_factory=list)
