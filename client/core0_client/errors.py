"""Typed errors of the client. Every error the client raises is a ``Core0Error``."""

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
    """The deadline passed: connecting, sending, reading, or waiting for a result (the job
    may still be running)."""


class ProtocolError(Core0Error, ValueError):
    """Something that breaks the protocol: a command core0 refuses (``field`` names the
    offending field, ``code`` is the result code to answer with), or, on the client's side,
    a reply from the server that is not what a core0/Redis node sends (RESP garbage, an
    oversized or malformed reply, a result that is not a valid result). The connection it
    arrived on is dropped."""

    def __init__(self, message: str, field: str | None = None, code: int = 400):
        super().__init__(message)
        self.field = field
        self.code = code


class ConnectionError(Core0Error, builtins.ConnectionError):
    """The node cannot be reached (refused, reset, TLS failure) within the deadline."""


class ServerError(Core0Error):
    """Redis answered a request with an error reply; ``kind`` is its first word
    (``NOPERM``, ``WRONGTYPE``, ``ERR``…)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.kind = message.split(" ", 1)[0] if message else "ERR"


class AuthError(ServerError):
    """The credentials were refused (``WRONGPASS``, ``NOAUTH``, ``NOPERM``…)."""
