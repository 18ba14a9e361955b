"""Users isolated from each other: private queues (``bus.private_queues``).

Two read-only users, each with a private queue, and an admin, on a real redis-server with the
ACL file core0 generates: a user reads only its own jobs' results, streams and logs (NOPERM on
the other user's and on the admin's), sees and acts on only its own jobs, and a command
whose id lacks the queue's prefix is not answered (it would land where its sender cannot
read it).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import Node, kill_tree, wait_until
from test_security import noperm, start_locked, tcp

ADMIN_PW = "admin-" + uuid.uuid4().hex
ALICE_PW = "alice-" + uuid.uuid4().hex
BOB_PW = "bob-" + uuid.uuid4().hex

CONFIG = f"""
[main]
include = []
[bus]
private_queues = ["alice", "bob"]
[bus.queues]
default = "admin"
alice = "read-only"
bob = "read-only"
[redis]
bind = "127.0.0.1"
[users.admin]
role = "admin"
password = "{ADMIN_PW}"
[users.alice]
role = "read-only"
password = "{ALICE_PW}"
queues = ["alice"]
[users.bob]
role = "read-only"
password = "{BOB_PW}"
queues = ["bob"]
"""


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    d = Path(tempfile.mkdtemp(prefix="core0-priv-"))
    n = start_locked(d, CONFIG, "admin", ADMIN_PW)
    yield n
    n.stop()
    kill_tree(n.pid)
    shutil.rmtree(d, ignore_errors=True)


def _run(r: redis.Redis, queue: str, jid: str, command: str, args: dict | None = None,  # type: ignore[type-arg]
         **kw: object) -> dict:  # type: ignore[type-arg]
    r.rpush(f"core:{queue}", json.dumps({"id": jid, "command": command,
                                         "arguments": args or {}, **kw}))
    raw = r.brpoplpush(f"result:{jid}", f"result:{jid}", 20)
    assert raw is not None, jid
    return json.loads(raw)  # type: ignore[no-any-return]


def test_users_read_only_their_own_results(node: Node) -> None:
    alice, bob, admin = (tcp(node, "alice", ALICE_PW), tcp(node, "bob", BOB_PW),
                         tcp(node, "admin", ADMIN_PW))
    a_id, b_id = f"alice.{uuid.uuid4().hex}", f"bob.{uuid.uuid4().hex}"
    assert _run(alice, "alice", a_id, "info.version", stream=True)["state"] == "SUCCESS"
    assert _run(bob, "bob", b_id, "info.version")["state"] == "SUCCESS"
    # each reads its own: 0-core's flow (flag, result, stream) and core0's log
    assert alice.exists(f"result:{a_id}:flag", f"result:{a_id}") == 2
    assert alice.xrange(f"log:{a_id}") is not None
    # but not the other's, nor an admin job's
    adm = uuid.uuid4().hex
    assert _run(admin, "default", adm, "core.system", {"name": "true"})["state"] == "SUCCESS"
    for key in (f"result:{b_id}", f"result:{adm}"):
        noperm(alice.lrange, key, 0, -1)
        noperm(alice.brpoplpush, key, key, 1)
        noperm(alice.exists, key)
    noperm(bob.lrange, f"result:{a_id}", 0, -1)
    noperm(bob.xrange, f"log:{a_id}")
    noperm(bob.lrange, f"stream:{a_id}", 0, -1)
    # nor push to the other's queue
    noperm(alice.rpush, "core:bob", "{}")
    # the admin reads everything
    assert admin.exists(f"result:{a_id}", f"result:{b_id}") == 2
    # logger.subscribe: a list of one's own jobs, named with the queue's prefix, read by its
    # user only
    sub = f"alice.{uuid.uuid4().hex}"
    key = json.loads(_run(alice, "alice", sub, "logger.subscribe")["data"])
    assert key.startswith("logger:alice.")
    assert _run(alice, "alice", f"alice.{uuid.uuid4().hex}", "disk.list")["state"] == "SUCCESS"
    assert wait_until(lambda: alice.llen(key) > 0, 10)
    noperm(bob.lrange, key, 0, -1)
    noperm(bob.blpop, [key], 1)
    assert all(json.loads(x)["command"].startswith("alice.") for x in alice.lrange(key, 0, -1))
    assert _run(alice, "alice", f"alice.{uuid.uuid4().hex}", "logger.unsubscribe",
                {"queue": key})["state"] == "SUCCESS"
    for c in (alice, bob, admin):
        c.close()


def test_ids_without_the_queue_prefix_are_not_answered(node: Node) -> None:
    alice = tcp(node, "alice", ALICE_PW)
    # core0's own user (its secret is in the state dir) reads the dead-letter list
    admin = redis.Redis(unix_socket_path=node.socket, username="core0",
                        password=(node.state_dir / "core0.secret").read_text().strip())
    dead = admin.llen("core:alice:dead")
    for jid in (uuid.uuid4().hex, f"bob.{uuid.uuid4().hex}", "alice."):
        alice.rpush("core:alice", json.dumps({"id": jid, "command": "core.ping",
                                              "arguments": {}}))
    alice.rpush("core:alice", '{"id": "bob.x", "command": ')  # broken JSON, foreign id
    assert wait_until(lambda: admin.llen("core:alice:dead") == dead + 4, 10)
    assert admin.exists("result:bob.x") == 0
    # core0's own ids behind a private prefix (a container's /.startup.toml jobs are
    # "<prefix>startup:<container>:<name>"): refused from every queue, the queue's own too
    for n, (user, queue) in enumerate(((alice, "alice"),
                                       (tcp(node, "admin", ADMIN_PW), "default"))):
        res = _run(user, queue, f"alice.startup:{n}:entry", "core.ping")
        assert (res["state"], res["code"]) == ("ERROR", 400) and "reserved" in res["data"], res
    alice.close()
    admin.close()


def test_users_see_and_touch_only_their_own_jobs(node: Node) -> None:
    from core0_client import Client, ResultError

    secret = "s3cret-" + uuid.uuid4().hex
    with Client(port=node.port, username="bob", password=BOB_PW, queue="bob",
                timeout=30) as bob:
        long = bob.raw("info.version", {}, recurring_period=3600)
        assert long.id.startswith("bob.")  # the client prefixes ids on its queue
        assert wait_until(lambda: any(j["id"] == long.id for j in bob.json("job.list", {})), 10)
        with Client(port=node.port, username="alice", password=ALICE_PW, queue="alice",
                    timeout=30) as alice:
            assert alice.raw("info.version", {}, tags=[secret]).get().state.value == "SUCCESS"
            jobs = alice.json("job.list", {})
            theirs = [j for j in jobs if j["id"] == long.id]
            assert theirs and theirs[0]["redacted"] is True
            with pytest.raises(ResultError) as ei:
                alice.json("core.subscribe", {"id": long.id})
            assert ei.value.code == 403
            mine = bob.json("job.list", {})
            assert not [j for j in mine if j["id"] == long.id][0]["redacted"]
        with Client(port=node.port, username="admin", password=ADMIN_PW, timeout=30) as adm:
            assert adm.json("job.unschedule", {"id": long.id}) is True
        assert long.get(timeout=20).state.value == "SUCCESS"
