"""0-core's monitor on a real node: the periodic pass and the ``monitor`` command put the
node's statistics into the aggregator under 0-core's keys; a bad domain is 400, a read-only
queue 403. (``kvm.monitor``: tests/integration/test_kvm.py, on a running VM.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import Node, code_of, configured_node, wait_until


@pytest.fixture(scope="module")
def mnode() -> Iterator[Node]:
    with configured_node('[metrics]\nmonitor_period = 1\n'
                         '[bus]\nqueues = {default = "admin", ro = "read-only"}\n',
                         "core0-monitor-") as n:
        yield n


def test_the_periodic_pass_feeds_the_aggregator(mnode: Node) -> None:
    c = mnode.client()
    try:
        def has(key: str) -> bool:
            return bool(c.json("aggregator.query", {"key": key}))

        for key in ("machine.memory.ram.available", "machine.CPU.percent",
                    "machine.CPU.utilisation", "machine.CPU.contextswitch",
                    "machine.process.threads", "disk.size.total", "network.packets.rx"):
            assert wait_until(lambda k=key: has(k), 20), key
        ram = c.json("aggregator.query", {"key": "machine.memory.ram.available"})
        state = ram["machine.memory.ram.available"]
        assert state["op"] == "A" and state["last_value"] > 0
        assert state["tags"] == [{"Key": "type", "Value": "phys"}]
        cpus = c.json("aggregator.query", {"key": "machine.CPU.percent"})
        assert "machine.CPU.percent/0" in cpus and 0 <= cpus["machine.CPU.percent/0"][
            "last_value"] <= 100
        util = c.json("aggregator.query", {"key": "machine.CPU.utilisation"})
        assert util["machine.CPU.utilisation/0"]["op"] == "D"
        # a counter's rate: two passes a second apart give a sample
        assert wait_until(lambda: c.json("aggregator.query", {
            "key": "machine.CPU.contextswitch"})["machine.CPU.contextswitch"]["current"][
            "300"]["count"] >= 1, 20)
        links = c.json("aggregator.query", {"key": "network.packets.rx"})
        kinds = {next(t["Value"] for t in s["tags"] if t["Key"] == "kind")
                 for s in links.values()}
        assert kinds <= {"device", "bridge", "openvswitch", "veth"}, kinds
        assert not any(name.endswith("/lo") for name in links)
    finally:
        c.close()


def test_monitor_command(mnode: Node) -> None:
    c = mnode.client()
    try:
        for domain in ("cpu", "memory", "disk", "network", "CPU"):
            c.sync("monitor", {"domain": domain})
        assert code_of(c.sync, "monitor", {"domain": "gpu"}) == 400
        assert code_of(c.sync, "monitor", {}) == 400
        ro = mnode.client(queue="ro")
        try:
            assert code_of(ro.sync, "monitor", {"domain": "cpu"}) == 403
            assert ro.json("aggregator.query", {"key": "machine.memory.swap.used"})
        finally:
            ro.close()
    finally:
        c.close()
