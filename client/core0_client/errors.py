"""Typed errors of the client."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core0_client.protocol import Result


class Core0Error(Exception):
    """Base of the client's errors."""


class ResultError(Core0Error):
    """A job ended in another state than SUCCESS. ``code`` is the result's code
    (HTTP-like for builtins, 1000 + exit status for processes); ``result`` the whole result."""

    def __init__(self, message: str, code: int, result: Result | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.result = result

    @property
    def state(self) -> str:
        return self.result.state.value if self.result is not None else ""

    def __str__(self) -> str:
        return f"{self.message} (code {self.code})"


class JobNotFoundError(Core0Error):
    """No job with this id is known (never submitted, or its result expired)."""


class TimeoutError(Core0Error, builtins.TimeoutError):
    """The result did not arrive within the deadline (the job may still be running)."""
