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
from conftest import wait_until
from sandbox_fixtures import ContainerNode, busybox_rootfs, container_node, inside, ok

TTL = 3


@pytest.fixture(scope="module")
def cnode() -> Iterator[ContainerNode]:
    with container_node(config=f"[bus]\nresult_ttl = {TTL}\n") as n:
        yield n


@pytest.fixture(scope="module")
def r(cnode: ContainerNode) -> Iterator[redis.Redis]:
    c = redis.Redis(unix_socket_path=str(cnode.socket))
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


def test_a_process_job_id_runs_again_after_its_ttl(cnode: ContainerNode,
                                                    r: redis.Redis) -> None:
    """Within the TTL a resubmitted id runs nothing (its result is not written twice); past
    it, the same id runs again. Before, the dispatcher's recent results answered it from
    memory for as long as they held it (up to 20,000 results), whatever the TTL."""
    out = Path(tempfile.mkdtemp(prefix="reuse-", dir=cnode.dir)) / "runs"
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


def test_a_reused_dispatch_id_starts_a_new_inner_job(cnode: ContainerNode,
                                                      r: redis.Redis) -> None:
    """A ``corex.dispatch`` sent again with its id once that id's result and flag expired
    starts a new inner job with an id of its own, while the first inner job (still running,
    so its own flag lives) keeps its id. Before, the inner id was made from the outer id
    alone, so the second dispatch answered the first one's inner id and started nothing."""
    root = busybox_rootfs(Path(tempfile.mkdtemp(prefix="bb-", dir=cnode.dir)) / "rootfs")
    ok(cnode, "container.image.import", {"name": "bb-reuse", "source": str(root)})
    cid = ok(cnode, "corex.create", {"root": "bb-reuse", "nics": []})
    try:
        jid = f"outer-{uuid.uuid4().hex[:8]}"
        cmd = {"id": jid, "command": "corex.dispatch", "arguments": {
            "container": cid, "command": {"command": "bash", "arguments": {
                "script": "echo run >> /tmp/runs; while [ ! -e /tmp/stop ]; do sleep 0.05; "
                          "done; echo stopped"}}}}
        first = _send(r, cmd)
        assert first["state"] == "SUCCESS", first
        first_inner = json.loads(first["data"])
        assert wait_until(lambda: inside(cnode, cid, "cat /tmp/runs").stdout == "run\n", 30)
        _expired(r, jid)
        assert r.exists(f"result:{first_inner}:flag")  # the first inner job still runs
        second = _send(r, cmd)
        assert second["state"] == "SUCCESS", second
        second_inner = json.loads(second["data"])
        assert second_inner != first_inner
        assert wait_until(lambda: inside(cnode, cid, "cat /tmp/runs").stdout == "run\nrun\n",
                          30)
        assert inside(cnode, cid, "touch /tmp/stop").state.value == "SUCCESS"
        c = cnode.client()
        try:
            for inner in (first_inner, second_inner):
                res = c.response_for(inner).get(60)
                assert (res.state.value, res.stdout, res.container) == (
                    "SUCCESS", "stopped\n", cid), res
        finally:
            c.close()
    finally:
        ok(cnode, "corex.terminate", {"container": cid})
