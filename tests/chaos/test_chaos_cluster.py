"""Chaos: the Redis Cluster master serving a node's slot SIGKILLed while clients keep a steady
load on that node; a replica takes over. The cluster's servers are on the fleet's LAN, the
node in a network namespace of its own on it (fleet_fixtures.cluster_lan).

Clients speak the raw wire protocol (RPUSH of command JSON, as 0-core's clients and redis-cli
scripts do) on one connection to the slot's master, and call a command *accepted* once WAIT
says every replica the master had has it (Redis Cluster replicates asynchronously: a write
the dead master never passed on is gone, for the queue as for core0's own keys). Commands not
confirmed are pushed again with the same id after the failover (core0's duplicate check must
keep them to one run). Then every id must have exactly one result, and nothing that started
may have run twice (process jobs append their id to a marks file)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import wait_until
from fleet_fixtures import Cluster, Lan, Unsettled, cluster_lan, start_cluster_node

pytestmark = pytest.mark.slow

CLIENTS = 3
BATCH = 4
PREFIX = "{k1}:"
QUEUE = f"{PREFIX}core:default"


@pytest.fixture
def lan_cluster(tmp_path: Path) -> Iterator[tuple[Lan, Cluster]]:
    with cluster_lan(tmp_path) as (lan, c):
        yield lan, c


def _raw(jid: str, seq: int, marks: Path) -> str:
    kind = seq % 4
    if kind == 0:
        command, args = "core.ping", {}
    elif kind == 1:
        command, args = "core.system", {"name": "true"}
    else:
        script = f"echo {jid} >> {marks}" + ("; sleep 0.4" if kind == 3 else "")
        command, args = "bash", {"script": script, "stdin": ""}
    return json.dumps({"id": jid, "command": command, "arguments": args})


class Owner:
    """One connection to the master of the node's slot, looked up again after any error
    (so WAIT counts this connection's own writes)."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.r: redis.Redis | None = None

    def get(self) -> redis.Redis:
        if self.r is None:
            port = self.cluster.owner(QUEUE)
            self.r = self.cluster.redis(port, socket_timeout=5, single_connection_client=True)
        return self.r

    def drop(self) -> None:
        if self.r is not None:
            with contextlib.suppress(Exception):
                self.r.close()
        self.r = None


def _push(owner: Owner, items: list[tuple[str, str]]) -> bool:
    """RPUSH ``items``; True once every replica of the master has them (WAIT)."""
    try:
        r = owner.get()
        r.rpush(QUEUE, *[raw for _, raw in items])
        replicas = int(r.info("replication")["connected_slaves"])
        return replicas == 0 or int(r.execute_command("WAIT", replicas, 2000)) >= replicas
    except (redis.RedisError, OSError, Unsettled):
        owner.drop()
        return False


def _client(cluster: Cluster, wid: int, marks: Path, stop: threading.Event,
            out: dict[int, dict[str, Any]]) -> None:
    owner = Owner(cluster)
    accepted: list[str] = []
    unconfirmed: dict[str, str] = {}  # pushed (maybe) but not confirmed: pushed again
    pushes = Counter[str]()
    seq = 0
    errors: list[str] = []
    try:
        while not stop.is_set() or unconfirmed:
            if not stop.is_set():
                for _ in range(BATCH):
                    jid = f"kc-{wid}-{seq}"
                    unconfirmed[jid] = _raw(jid, seq, marks)
                    seq += 1
            items = list(unconfirmed.items())
            pushes.update(jid for jid, _ in items)
            if _push(owner, items):
                accepted += [jid for jid, _ in items]
                unconfirmed.clear()
            time.sleep(0.2)
    except Exception as e:
        errors.append(repr(e))
    finally:
        owner.drop()
        out[wid] = {"accepted": accepted, "pushed_again": sum(n > 1 for n in pushes.values()),
                    "errors": errors}


def test_cluster_master_killed_under_load(lan_cluster: tuple[Lan, Cluster],
                                          tmp_path: Path) -> None:
    lan, cluster = lan_cluster
    victim = cluster.owner(QUEUE)
    # the URL names a node that is not killed below: the slot lookup starts there
    url_port = next(p for p in cluster.ports if p != victim)
    node = start_cluster_node(cluster, lan, tmp_path, "k1", url_port=url_port).node
    marks = tmp_path / "marks"
    stop = threading.Event()
    out: dict[int, dict[str, Any]] = {}
    threads = [threading.Thread(target=_client, args=(cluster, i, marks, stop, out),
                                daemon=True) for i in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        time.sleep(4)  # load before the kill
        cluster.kill(victim)

        # every live server names the promoted replica
        assert wait_until(lambda: cluster.settled_owner(QUEUE) not in (None, victim), 60,
                          step=0.2), "no replica took over"
        time.sleep(4)  # load after the failover
        stop.set()
        for t in threads:
            t.join(120)
            assert not t.is_alive(), "a client is stuck"
        errors = [e for w in out.values() for e in w["errors"]]
        assert not errors, errors
        accepted = [i for w in out.values() for i in w["accepted"]]
        assert len(accepted) == len(set(accepted))
        r = cluster.redis(cluster.owner(QUEUE))

        def answered() -> bool:
            pipe = r.pipeline(transaction=False)
            for i in accepted:
                pipe.llen(f"{PREFIX}result:{i}")
            return all(pipe.execute())

        assert wait_until(answered, 90, step=0.5), (
            "results missing: " + node.log_text()[-3000:])
        pipe = r.pipeline(transaction=False)
        for i in accepted:
            pipe.lrange(f"{PREFIX}result:{i}", 0, -1)
        results = dict(zip(accepted, pipe.execute(), strict=True))
        many = {i: len(v) for i, v in results.items() if len(v) != 1}
        assert not many, many
        states = {i: json.loads(v[0]) for i, v in results.items()}
        bad = {i: (s["state"], s["critical"][:200]) for i, s in states.items()
               if s["state"] != "SUCCESS"}
        assert not bad, list(bad.items())[:10]
        ran = Counter(marks.read_text().split()) if marks.exists() else Counter()
        twice = {k: n for k, n in ran.items() if n > 1}
        assert not twice, twice
        marked = {i for i in accepted if int(i.rsplit("-", 1)[1]) % 4 in (2, 3)}
        assert set(ran) == marked, marked ^ set(ran)
        assert wait_until(lambda: r.llen(f"{QUEUE}:processing") == 0, 30), \
            r.lrange(f"{QUEUE}:processing", 0, 5)
        assert r.llen(QUEUE) == 0
        assert "Traceback" not in node.log_text()
        again = sum(w["pushed_again"] for w in out.values())
        print(f"\nmaster killed under {CLIENTS} clients: {len(accepted)} commands "
              f"({len(marked)} process jobs, {again} pushed again after an unconfirmed "
              "push), each exactly one result, none run twice")
    finally:
        stop.set()
        node.stop()
