"""Raw-Redis helpers for protocol tests (no core0 client code involved)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import redis
from conftest import wait_until as wait_for  # noqa: F401  (re-exported for tests)


def cmd(command: str, arguments: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"id": kw.pop("id", None) or str(uuid.uuid4()), "command": command,
                         "arguments": arguments or {}}
    d.update(kw)
    return d


def push(r: redis.Redis, c: dict[str, Any] | bytes | str, queue: str = "core:default") -> str:
    raw = c if isinstance(c, (bytes, str)) else json.dumps(c)
    r.rpush(queue, raw)
    return c["id"] if isinstance(c, dict) else ""


def result(r: redis.Redis, job_id: str, timeout: float = 10, prefix: str = "") -> dict[str, Any]:
    """Wait for a result the way 0-core's clients do (BRPOPLPUSH onto itself)."""
    raw = r.brpoplpush(f"{prefix}result:{job_id}", f"{prefix}result:{job_id}", timeout)
    assert raw is not None, f"no result for {job_id} within {timeout}s"
    return json.loads(raw)


def run(r: redis.Redis, command: str, arguments: dict[str, Any] | None = None,
        timeout: float = 10, **kw: Any) -> dict[str, Any]:
    return result(r, push(r, cmd(command, arguments, **kw)), timeout)


def keys_without_ttl(r: redis.Redis) -> list[str]:
    """core0 keys that have no TTL (running jobs' flags are the only allowed ones)."""
    out = []
    for k in r.scan_iter(count=1000):
        key = k.decode()
        if key in ("core:default",) or key.startswith("test:"):
            continue  # the queue itself is written by clients, consumed by core0
        if r.type(k) == b"list" and key.endswith(":processing") and r.llen(k) == 0:
            continue
        if r.ttl(k) == -1:
            out.append(key)
    return out
