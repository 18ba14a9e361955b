"""A fleet of 5 core0 nodes (``core0 dev``, each with its own ``{nodeN}:`` prefix, node id and
ACL user, each in a network namespace of its own with its own address, reaching Redis over a
bridge) on one shared real redis-server: the registry, fan-out with ``Fleet``, a node killed
mid-call, tag selection, and one node's ACL user kept off another node's keys."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis
from conftest import RedisServer, kill_tree, wait_until
from core0_client.fleet import AsyncFleet, Fleet
from fleet_fixtures import FleetNode, fleet_lan, start_fleet_node

pytestmark = pytest.mark.slow

TAGS = {"node1": "web,eu", "node2": "web,us", "node3": "db,eu", "node4": "db,us",
        "node5": "web,eu"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer,
                                                                       dict[str, FleetNode]]]:
    base = tmp_path_factory.mktemp("fleet")
    with fleet_lan(base) as (lan, srv):
        nodes: dict[str, FleetNode] = {}
        try:
            for nid, tags in TAGS.items():
                nodes[nid] = start_fleet_node(srv, base, nid, tags=tags, user=True, lan=lan)
            yield srv, nodes
        finally:
            for fn in nodes.values():
                fn.node.stop()


def _fleet(srv: RedisServer) -> Fleet:
    return Fleet(unix_socket_path=srv.socket, timeout=30)


def test_registry_lists_every_node(fleet: tuple[RedisServer, dict[str, FleetNode]]) -> None:
    srv, nodes = fleet
    with _fleet(srv) as f:
        assert wait_until(lambda: len(f.nodes()) == 5, 10)
        infos = {n.id: n for n in f.nodes()}
    assert set(infos) == set(TAGS)
    # each node in a network namespace of its own, with its own address on the LAN
    assert len({fn.netns for fn in nodes.values()}) == 5
    for nid, fn in nodes.items():
        assert infos[nid].entry["addresses"] == [fn.addr], (nid, infos[nid].entry["addresses"])
    n1 = infos["node1"]
    assert n1.prefix == "{node1}:" and n1.tags == ["web", "eu"]
    assert "core" in n1.entry["capabilities"] and n1.entry["version"]
    assert n1.entry["hostname"] and n1.entry["load"]["cpus"] >= 1
    assert 0 <= n1.age < 30 and n1.uptime >= n1.age
    # the entry has a TTL: it cannot outlive a dead node
    assert 0 < srv.client().ttl("nodes:node1") <= 3


def test_run_on_all_and_by_tags(fleet: tuple[RedisServer, dict[str, FleetNode]]) -> None:
    srv, _ = fleet
    with _fleet(srv) as f:
        res = f.run("core.ping", timeout=20)
        assert res.ok and res.succeeded == sorted(TAGS)
        assert all(r.result is not None and "PONG" in r.result.data for r in res.nodes.values())
        web_eu = f.run("core.ping", tags=["web", "eu"], timeout=20)
        assert sorted(web_eu.nodes) == ["node1", "node5"] and web_eu.ok
        picked = f.run("core.ping", nodes=["node2", "nope"], timeout=20)
        assert picked["node2"].ok and picked["nope"].error == "not in the registry"
        assert picked.failed == ["nope"]
        # a per-node error result does not fail the call
        bad = f.run("core.system", {"name": "false"}, nodes=["node3", "node4"], timeout=20)
        assert bad.failed == ["node3", "node4"] and bad["node3"].result is not None


def test_stream_labels_output(fleet: tuple[RedisServer, dict[str, FleetNode]]) -> None:
    srv, _ = fleet
    lines: list[tuple[str, str]] = []
    with _fleet(srv) as f:
        res = f.stream("core.system", {"name": "sh", "args": ["-c", "echo a; echo b"]},
                       tags=["db"], timeout=20,
                       callback=lambda node, level, msg, flags: lines.append((node, msg)))
    assert res.ok and sorted(res.nodes) == ["node3", "node4"]
    for n in ("node3", "node4"):
        assert [m for node, m in lines if node == n] == ["a", "b"]


def test_async_fleet(fleet: tuple[RedisServer, dict[str, FleetNode]]) -> None:
    srv, _ = fleet

    async def go() -> list[str]:
        async with AsyncFleet(unix_socket_path=srv.socket, timeout=30) as f:
            assert len(await f.nodes()) == 5
            res = await f.run("core.ping", tags=["us"], timeout=20)
            return res.succeeded

    assert asyncio.run(go()) == ["node2", "node4"]


def test_acl_user_cannot_touch_another_node(
        fleet: tuple[RedisServer, dict[str, FleetNode]]) -> None:
    srv, _ = fleet
    r = redis.Redis(unix_socket_path=srv.socket, username="node1", password="pw-node1")
    assert r.llen("{node1}:core:default") == 0
    with pytest.raises(redis.exceptions.NoPermissionError):
        r.llen("{node2}:core:default")
    with pytest.raises(redis.exceptions.NoPermissionError):
        r.rpush("{node2}:core:default", "x")


def _ctl(srv: RedisServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORE0_")}
    return subprocess.run([sys.executable, "-m", "core0_client.cli", "--socket", srv.socket,
                           "--timeout", "20", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_cli_nodes_and_fan_out(fleet: tuple[RedisServer, dict[str, FleetNode]]) -> None:
    srv, _ = fleet
    r = _ctl(srv, "nodes")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["NODE", "AGE", "UPTIME"]
    assert sorted(line.split()[0] for line in lines[1:]) == sorted(TAGS)
    r = _ctl(srv, "--json", "nodes")
    assert {n["id"] for n in json.loads(r.stdout)} == set(TAGS)
    r = _ctl(srv, "--node-tags", "web", "ping")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines()[1:]}
    assert rows == {"node1": "SUCCESS", "node2": "SUCCESS", "node5": "SUCCESS"}
    assert "core0ctl: 3/3 done, 0 failed" in r.stderr.splitlines()
    r = _ctl(srv, "--nodes", "node1,ghost", "--json", "system", "--", "echo", "hi")
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["node1"]["ok"] and out["node1"]["result"]["streams"][0] == "hi\n"
    assert out["ghost"]["error"] == "not in the registry"
    assert r.stderr.splitlines()[-1] == "core0ctl: 2/2 done, 1 failed"
    r = _ctl(srv, "--node-tags", "db", "--stream", "system", "--", "echo", "out")
    assert r.returncode == 0, r.stderr
    assert sorted(x for x in r.stdout.splitlines() if x.endswith(": out")) == [
        "node3: out", "node4: out"]


def test_node_killed_mid_call_then_registry_shows_4(
        fleet: tuple[RedisServer, dict[str, FleetNode]]) -> None:
    srv, nodes = fleet
    progress: list[tuple[int, int, int]] = []
    victim = nodes["node5"]
    with _fleet(srv) as f:
        def kill_when_running() -> None:
            assert wait_until(lambda: srv.client().exists("{node5}:core:default:processing")
                              or srv.client().keys("{node5}:result:*:flag"), 10)
            kill_tree(victim.node.pid, signal.SIGKILL)

        import threading

        t = threading.Thread(target=kill_when_running)
        t.start()
        res = f.run("core.system", {"name": "sleep", "args": ["2"]}, timeout=25,
                    progress=lambda d, n, fl: progress.append((d, n, fl)))
        t.join()
        assert res.succeeded == ["node1", "node2", "node3", "node4"]
        assert res.failed == ["node5"] and "lost" in (res["node5"].error or "")
        assert progress[-1] == (5, 5, 1)
        assert wait_until(lambda: len(f.nodes()) == 4, 10)
        # a clean stop removes the entry at once (no TTL wait)
        nodes["node4"].node.stop()
        assert srv.client().exists("nodes:node4") == 0
        assert [n.id for n in f.nodes()] == ["node1", "node2", "node3"]
