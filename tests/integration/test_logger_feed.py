"""logger.subscribe (0-core's aggregated log) on a real node: what each role's list gets, the
backlog, the bounds, and subscriptions across a dispatcher kill -9 (0-core's client side is
in tests/compat/test_compat_core.py)."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from conftest import Node, configured_node, wait_until

CONFIG = """[main]
include = []
[bus]
queues = {default = "admin", ro = "read-only", priv = "operator"}
private_queues = ["priv"]
"""


@pytest.fixture(scope="module")
def lnode() -> Iterator[Node]:
    with configured_node(CONFIG, "core0-logger-") as n:
        yield n


@pytest.fixture
def r(lnode: Node) -> Iterator[redis.Redis]:
    c = lnode.redis()
    yield c
    c.close()


def call(r: redis.Redis, queue: str, command: str, args: dict[str, Any] | None = None,
         jid: str | None = None) -> dict[str, Any]:
    jid = jid or (f"{queue}." if queue == "priv" else "") + uuid.uuid4().hex
    r.rpush(f"core:{queue}", json.dumps({"id": jid, "command": command,
                                         "arguments": args or {}}))
    raw = r.brpoplpush(f"result:{jid}", f"result:{jid}", 30)
    assert raw is not None, f"no result for {command}"
    res = json.loads(raw)
    res["value"] = json.loads(res["data"]) if res.get("level") == 20 and res["data"] else None
    return res


def ok(r: redis.Redis, queue: str, command: str, args: dict[str, Any] | None = None) -> Any:
    res = call(r, queue, command, args)
    assert res["state"] == "SUCCESS", res
    return res["value"]


def drain(r: redis.Redis, key: str, until: str, timeout: float = 20) -> list[dict[str, Any]]:
    """Pop ``key`` until the EOF record of job ``until``: every record popped."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = r.blpop([key], 2)
        if item is None:
            continue
        rec = json.loads(item[1])
        out.append(rec)
        if rec["command"] == until and rec["message"]["meta"] & 0x6:
            return out
    raise AssertionError(f"no EOF of {until} in {key}: {[x['command'] for x in out]}")


def test_each_role_gets_what_it_may_see(r: redis.Redis) -> None:
    before = call(r, "default", "bash", {"script": "echo before-subscribe"})
    admin = ok(r, "default", "logger.subscribe", {})
    ro = ok(r, "ro", "logger.subscribe", {"queue": f"ro-{uuid.uuid4().hex[:6]}"})
    priv = ok(r, "priv", "logger.subscribe", {})
    assert admin.startswith("logger:") and priv.startswith("logger:priv.")
    assert r.ttl(admin) > 0
    # the backlog: a job that ended before the subscription
    got = drain(r, admin, before["id"])
    assert any(x["message"]["message"] == "before-subscribe" for x in got)

    secret = call(r, "default", "bash", {"script": "echo admin-secret"})
    mine = call(r, "priv", "disk.list", {})  # a job of the private queue (its EOF record)
    ro_job = call(r, "ro", "disk.list", {})
    got = drain(r, admin, ro_job["id"])
    ids = {x["command"] for x in got}
    assert {secret["id"], mine["id"], ro_job["id"]} <= ids  # admin sees every queue's jobs
    got = drain(r, ro, ro_job["id"])
    assert not {x["command"] for x in got} & {secret["id"], mine["id"], before["id"]}
    assert "admin-secret" not in json.dumps(got)
    got = drain(r, priv, mine["id"])
    assert all(x["command"].startswith("priv.") for x in got), got  # its own jobs only

    # names: another queue's subscription is neither taken over nor ended from below
    assert call(r, "ro", "logger.subscribe", {"queue": admin})["code"] == 409
    assert call(r, "ro", "logger.unsubscribe", {"queue": admin})["code"] == 404
    assert call(r, "priv", "logger.subscribe", {"queue": "not-mine"})["code"] == 400
    assert ok(r, "default", "logger.subscribe", {"queue": admin}) == admin  # again: no change
    for key, q in ((admin, "default"), (ro, "ro"), (priv, "priv")):
        assert ok(r, q, "logger.unsubscribe", {"queue": key}) is None
    assert call(r, "default", "logger.unsubscribe", {"queue": admin})["code"] == 404


def test_levels_bounds_and_caps(r: redis.Redis) -> None:
    key = ok(r, "default", "logger.subscribe", {"queue": "errors-only", "levels": [2]})
    r.delete(key)
    job = call(r, "default", "bash", {"script": "echo out; echo err >&2"})
    got = [x for x in drain(r, key, job["id"]) if x["command"] == job["id"]]
    assert [x["message"]["message"] for x in got] == ["err", ""], got  # stderr, then EOF
    assert got[-1]["message"]["meta"] & 0x2  # EOF success
    # the list keeps its newest 1,000 records (1,050 jobs: an EOF record each)
    ids = [f"many-{i}-{uuid.uuid4().hex[:8]}" for i in range(1050)]
    pipe = r.pipeline(transaction=False)
    for jid in ids:
        pipe.rpush("core:default", json.dumps({"id": jid, "command": "core.system",
                                               "arguments": {"name": "true"}}))
    pipe.execute()
    assert wait_until(lambda: r.exists(*(f"result:{j}" for j in ids)) == len(ids), 60)
    assert wait_until(lambda: r.llen(key) == 1000 and json.loads(
        r.lrange(key, -1, -1)[0])["command"] in ids, 20), r.llen(key)
    assert 0 < r.ttl(key) <= 300
    ok(r, "default", "logger.unsubscribe", {"queue": key})
    # 16 per role, then 503
    made = [ok(r, "ro", "logger.subscribe", {}) for _ in range(16)]
    over = call(r, "ro", "logger.subscribe", {})
    assert over["code"] == 503, over
    for k in made:
        ok(r, "ro", "logger.unsubscribe", {"queue": k})
    assert call(r, "default", "logger.subscribe", {"levels": [99]})["code"] == 400


def test_a_subscription_survives_a_dispatcher_kill(lnode: Node, r: redis.Redis) -> None:
    key = ok(r, "default", "logger.subscribe", {"queue": "survivor"})
    old = lnode.dispatcher_pid()
    os.kill(old, signal.SIGKILL)

    def back() -> bool:
        try:
            return lnode.dispatcher_pid() != old and call(r, "ro", "core.ping")["state"] \
                == "SUCCESS"
        except Exception:
            return False

    assert wait_until(back, 60, 0.2), lnode.log_text()[-2000:]
    job = call(r, "default", "bash", {"script": "echo after-restart"})
    got = drain(r, key, job["id"])
    assert any(x["message"]["message"] == "after-restart" for x in got)
    ok(r, "default", "logger.unsubscribe", {"queue": key})


def test_core0s_client_logger_manager(lnode: Node, r: redis.Redis) -> None:
    """core0's own client: c.logger.subscribe/unsubscribe (and set_level)."""
    c = lnode.client()
    try:
        key = c.logger.subscribe(levels=[1])
        assert key.startswith("logger:")
        job = c.bash("echo via-client; echo not-this >&2")
        assert job.get(30).state.value == "SUCCESS"
        got = [x for x in drain(r, key, job.id) if x["command"] == job.id]
        assert [x["message"]["message"] for x in got] == ["via-client", ""], got
        assert c.logger.unsubscribe(key) is None
        assert c.logger.set_level("INFO")["level"] == "INFO"
    finally:
        c.close()
