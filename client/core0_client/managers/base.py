"""The base of every manager."""

from __future__ import annotations

from typing import Any


def args_of(**kw: Any) -> dict[str, Any]:
    """Arguments without the unset (None) ones."""
    return {k: v for k, v in kw.items() if v is not None}


class Manager:
    def __init__(self, client: Any):
        self._c = client

    def _json(self, command: str, **kw: Any) -> Any:
        return self._c.json(command, args_of(**kw))
