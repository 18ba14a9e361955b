"""An id sent again once its result and flag expired is a new command (docs/protocol.md).

The node here keeps results for 3 s (``bus.result_ttl``), so the expiry is Redis's own TTL
and the dispatcher's memory of recent results (which re-answers a resubmission within the
TTL) ages out with it.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import Node, configured_node, wait_until

TTL = 3


@pytest.fixture(scope="module")
def tnode() -> Iterator[Node]:
    with configured_node(f"[main]\ninclude = []\n[bus]\nresult_ttl = {TTL}\n",
                         prefix="core0-ttl-") as node:
        yield node


@pytest.fixture(scope="module")
def r(tnode: Node) -> Iterator[redis.Redis]:
    c = redis.Redis(unix_socket_path=tnode.socket)
    yield c
    c.close()


def _send(r: redis.Redis, cmd: dict[str, Any]) -> dict[str, Any]:
    """Push ``cmd`` and return its result (a new one: the list is read, not kept)."""
    r.rpush("core:default", json.dumps(cmd))
    got = r.blpop([f"result:{cmd['id']}"], 60)
    assert got is not None, cmd
    return dict(json.loads(got[1]))


def _expired(r: redis.Redis, job_id: str) -> None:
    """Wait until Redis has dropped the id's result and flag, and a little more (the
    dispatcher's recent results are kept from just before the result is written)."""
    assert wait_until(lambda: not r.exists(f"result:{job_id}", f"result:{job_id}:flag"),
                      TTL + 10, 0.1)
    time.sleep(0.5)


def test_a_process_job_id_runs_again_after_its_ttl(tnode: Node, r: redis.Redis) -> None:
    """Within the TTL a resubmitted id runs nothing (its result is not written twice); past
    it, the same id runs again. Before, the dispatcher's recent results answered it from
    memory for as long as they held it (up to 20,000 results), whatever the TTL."""
    out = Path(tempfile.mkdtemp(prefix="reuse-", dir=tnode.state_dir.parent)) / "runs"
    jid = f"again-{uuid.uuid4().hex[:8]}"
    cmd = {"id": jid, "command": "core.system",
           "arguments": {"name": "sh", "args": ["-c", f"echo run >> {out}"]}}
    assert _send(r, cmd)["state"] == "SUCCESS"
    r.rpush("core:default", json.dumps(cmd))  # the same id while known: dropped
    assert wait_until(lambda: jid.encode() not in b"".join(
        r.lrange("core:default", 0, -1) + r.lrange("core:default:processing", 0, -1)), 10)
    time.sleep(0.3)
    assert out.read_text() == "run\n" and r.llen(f"result:{jid}") == 0
    _expired(r, jid)
    assert _send(r, cmd)["state"] == "SUCCESS"
    assert out.read_text() == "run\nrun\n"
