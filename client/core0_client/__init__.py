"""Python client for core0 (and Zero-OS 0-core) nodes, sync and asyncio.

    from core0_client import Client
    c = Client("127.0.0.1", 6379)             # or Client(url="redis://user:pass@host:6379/")
    c.ping()                                  # 'PONG 0.1.0'
    r = c.system("ls -l /").get(timeout=5)    # Result: r.state, r.code, r.stdout
    c.info.cpu()                              # decoded level-20 data

``AsyncClient`` has the same API, awaitable.
"""

from core0_client.errors import (
    AuthError,
    ConnectionError,
    Core0Error,
    JobNotFoundError,
    ProtocolError,
    ResultError,
    ServerError,
    TimeoutError,
)
from core0_client.protocol import Command, Keys, LogRecord, Result, State
from core0_client.url import Endpoint, parse_url

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AuthError",
    "Client",
    "Command",
    "ConnectionError",
    "Core0Error",
    "Endpoint",
    "JobNotFoundError",
    "Keys",
    "LogRecord",
    "ProtocolError",
    "Result",
    "ResultError",
    "ServerError",
    "State",
    "TimeoutError",
    "parse_url",
]


def __getattr__(name: str) -> object:  # lazy: importing the sync client must not import asyncio's
    if name == "Client":
        from core0_client.sync import Client

        return Client
    if name == "AsyncClient":
        from core0_client.aio import AsyncClient

        return AsyncClient
    raise AttributeError(name)
