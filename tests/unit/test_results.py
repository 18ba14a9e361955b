"""exception_result: the one mapping of exceptions to results (core0.jobs.result)."""

from __future__ import annotations

import json

import pytest
from core0_client.protocol import State

from core0.errors import BadRequest, Killed, NotFound, TimedOut, Timeout, UnknownCommand
from core0.jobs.result import exception_result


@pytest.mark.parametrize(("exc", "state", "code"), [
    (BadRequest("x"), State.ERROR, 400),
    (NotFound("x"), State.ERROR, 404),
    (UnknownCommand("x"), State.UNKNOWN_CMD, 404),
    (Timeout("max_time of 1s reached"), State.TIMEOUT, 408),
    (Killed("job killed"), State.KILLED, 499),
    (TimedOut("x"), State.ERROR, 504),
    (TimeoutError("the socket"), State.ERROR, 504),
    (TimeoutError(), State.ERROR, 504),
    (RuntimeError("bug"), State.ERROR, 500),
    (KeyError("k"), State.ERROR, 500),
])
def test_states_and_codes(exc: BaseException, state: State, code: int) -> None:
    res = exception_result("id-1", "x.y", exc, 1000, ["t"])
    assert (res.state, res.code) == (state, code)
    assert res.id == "id-1" and res.command == "x.y" and res.tags == ["t"]
    assert res.critical and json.loads(res.data) == res.critical


def test_a_bug_names_the_exception() -> None:
    res = exception_result("i", "c", ValueError("bad value"))
    assert res.critical == "internal error: ValueError('bad value')"
