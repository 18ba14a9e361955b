"""``c.container`` and ``c.container.client(id)`` have one API for Client and AsyncClient,
and a container's client has the host client's command API and managers."""

from __future__ import annotations

import inspect

from core0_client import AsyncClient, Client
from core0_client.container import ContainerClient
from test_client_api import public


def test_container_client_same_api() -> None:
    c, ac = Client(), AsyncClient()
    inside, ainside = c.container.client(3), ac.container.client(3)
    assert type(inside) is type(ainside) is ContainerClient
    assert public(inside) == public(ainside)
    host = public(c)
    for name in ("raw", "sync", "json", "system", "bash", "upload", "download", "upload_file",
                 "download_file"):
        assert public(inside)[name] == host[name], name
    for name in ("info", "job", "process", "filesystem", "ip"):
        assert type(getattr(inside, name)) is type(getattr(c, name))
        assert public(getattr(inside, name)) == public(getattr(c, name))
    assert public(c.container.image) == public(ac.container.image)
    assert inside.container == 3


def test_container_client_async_is_awaitable() -> None:
    ac = AsyncClient()
    coro = ac.container.client(1).info.mem()
    assert inspect.iscoroutine(coro)
    coro.close()
