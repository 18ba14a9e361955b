"""The fuzz target of the wire: decode → validate → route, as the dispatcher does it.

``Target.check(raw, role)`` hands one popped command to the real dispatcher's ``_accept``
(protocol decode, id recovery, id rules, limits, registry lookup, the queue role's check, the
command's argument schema) and checks the one invariant of the wire: every command ends in
exactly one of

* accepted: a decoded command with parsed arguments (it would run), its id the recovered one;
* answered: exactly one result for the recovered id, an error (never SUCCESS), which takes the
  command off the processing list when written;
* dead-lettered and released: only when no id can be recovered or the id is refused;

and nothing else: no exception escapes, no id is lost. The only thing replaced is the Redis
side of dead letters (recorded in memory: ``Target.dead``). Used by the hypothesis properties
(tests/unit/test_fuzz_*.py) and the coverage-guided atheris run (tests/fuzz_atheris.py).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from typing import Any

from core0_client.protocol import Result, State, recover_id

from core0 import registry
from core0.bus.dispatcher import Dispatcher, colliding_id
from core0.config import load
from core0.registry import Role
from core0.schema import Schema, json_schema

#: every field a command may carry, and a few it may not
COMMAND_FIELDS = ["id", "command", "arguments", "queue", "max_time", "max_restart",
                  "recurring_period", "stream", "tags", "stats_interval", "log_levels", "x"]


class Target:
    """A dispatcher built from a default configuration (state in a temp dir), never run:
    only its decode/validate/route step is called."""

    def __init__(self, where: str | None = None) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="core0-fuzz-", dir=where)
        cfg = load(None, cmdline="", env={},
                   overrides={"main": {"state_dir": self.tmp.name, "include": []}})
        self.disp = Dispatcher(cfg)
        self.queue = self.disp.bus.keys.queue("default")
        self.processing = self.disp.bus.keys.processing(self.queue)
        self.dead: list[tuple[bytes, str]] = []
        self.released: list[bytes] = []
        self.loop = asyncio.new_event_loop()

        async def dead_letter(queue: str, raw: bytes, reason: str, job_id: str | None) -> None:
            self.dead.append((raw, reason))

        async def release(processing: str, raw: bytes) -> None:
            self.released.append(raw)

        self.disp.bus.dead_letter = dead_letter  # type: ignore[method-assign]
        self.disp.bus.release = release  # type: ignore[method-assign]
        self.commands = sorted(s.name for s in registry.all_commands())

    def close(self) -> None:
        self.loop.close()
        self.tmp.cleanup()

    def check(self, raw: bytes, role: Role = Role.ADMIN) -> str:
        """Route one command and check the invariant; returns the outcome
        ("accepted", "answered" or "dead")."""
        self.dead.clear()
        self.released.clear()
        pubs: list[Any] = []
        acc = self.loop.run_until_complete(
            self.disp._accept(raw, self.queue, self.processing, role, pubs))
        found = recover_id(raw)
        outcomes = [acc is not None, bool(pubs), bool(self.dead)]
        assert sum(outcomes) == 1, (acc, pubs, self.dead)
        if acc is not None:
            assert acc.raw == raw and acc.cmd.id == found, (acc.cmd.id, found)
            assert isinstance(acc.args, Schema) and acc.spec.name == acc.cmd.command
            assert role >= acc.spec.role and not acc.spec.internal
            return "accepted"
        if pubs:
            assert len(pubs) == 1, pubs
            pub = pubs[0]
            assert pub.raw == raw and pub.processing == self.processing and pub.mode == "new"
            res = Result.from_json(pub.result_json)
            assert res.id == pub.job_id and res.state is not State.SUCCESS, res
            assert 400 <= res.code < 600 or res.state is State.UNKNOWN_CMD, res
            # the id answered is the one a client waits on (decoded, or recovered from the raw)
            assert pub.job_id == found or _decoded_id(raw) == pub.job_id, (pub.job_id, found)
            return "answered"
        assert len(self.dead) == 1 and self.released == [raw]
        # never a lost id: an id that can be recovered is answered unless it is refused
        assert found is None or colliding_id(found), (found, self.dead)
        return "dead"


def _decoded_id(raw: bytes) -> str | None:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return doc.get("id") if isinstance(doc, dict) else None


def schema_of(name: str) -> dict[str, Any]:
    """The JSON schema of a registered command's arguments ({} for an unknown name)."""
    spec = registry.get(name)
    return json_schema(spec.args) if spec is not None else {}


_target: Target | None = None


def target() -> Target:
    """One Target per process (building a dispatcher loads every command module)."""
    global _target
    if _target is None:
        _target = Target()
    return _target
