"""A container's client: ``c.container.client(id)``.

It has the host client's command API (``raw``, ``sync``, ``json``, ``system``, ``bash``,
``upload``/``download``) and its ``info``, ``job``, ``process``, ``filesystem`` and ``ip``
managers, each command sent into container ``id`` with ``corex.dispatch`` (``ip.*`` acts in
the container's network namespace; ``ip.netns.*`` is not served inside: 412). Submitting
returns the inner job's Response, read on the node's client like any other job (its result
carries ``container``). One class serves ``Client`` and ``AsyncClient``: it is driven by its
node's client, so with an ``AsyncClient`` every call returns an awaitable.
"""

from __future__ import annotations

from typing import Any

from core0_client._api import CommandAPI, Gen
from core0_client._base import build
from core0_client.errors import ProtocolError
from core0_client.managers.core import (
    FilesystemManager,
    InfoManager,
    JobManager,
    ProcessManager,
)
from core0_client.managers.net import IpManager


class ContainerClient(CommandAPI):
    """The command API inside container ``container`` of the node behind ``client``."""

    def __init__(self, client: Any, container: int):
        self._node = client
        #: the container's integer id
        self.container = int(container)
        self.info = InfoManager(self)
        self.job = JobManager(self)
        self.process = ProcessManager(self)
        self.filesystem = FilesystemManager(self)
        self.ip = IpManager(self)

    def __repr__(self) -> str:
        return f"<ContainerClient {self.container} of {self._node!r}>"

    def _drive(self, gen: Gen) -> Any:
        return self._node._drive(gen)

    def _g_raw(self, command: str, arguments: dict[str, Any] | None = None,
               **kw: Any) -> Gen:
        cmd = build(command, arguments, **kw)
        inner = {k: v for k, v in cmd.to_dict().items() if v is not None}
        job_id = yield from self._node._g_json(
            "corex.dispatch", {"container": self.container, "command": inner})
        if not isinstance(job_id, str):
            raise ProtocolError("corex.dispatch: expected the inner job id")
        return self._node._response_class(self._node, job_id)
