"""Per-container monitors on the node's Prometheus endpoint: a running container's memory, CPU
time and OOM kills (from its cgroup), labelled by id and name; gone with the container."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, require, wait_until
from prometheus_client.parser import text_string_to_metric_families
from sandbox_fixtures import ContainerNode, busybox_rootfs, container_node, inside, ok

pytestmark = pytest.mark.root

PORT = free_port()


@pytest.fixture(scope="module")
def cnode() -> Iterator[ContainerNode]:
    require("curl")
    with container_node(f"[metrics]\nport = {PORT}\n") as n:
        root = busybox_rootfs(Path(tempfile.mkdtemp(prefix="bb-", dir=n.dir)) / "rootfs")
        ok(n, "container.image.import", {"name": "bb", "source": str(root)})
        yield n


def scrape(cnode: ContainerNode) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = cnode.ns.run("curl", "-sf", "-m", "10", f"http://127.0.0.1:{PORT}/metrics").stdout
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_container_monitors(cnode: ContainerNode) -> None:
    cid = ok(cnode, "corex.create", {"root": "bb", "name": "mon", "nics": []})
    try:
        # some memory and CPU time in its cgroup
        res = inside(cnode, cid, "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; "
                                 "dd if=/dev/zero of=/tmp/x bs=1M count=8 2>/dev/null; echo ok")
        assert res.state.value == "SUCCESS", res.streams
        labels = (("container", str(cid)), ("name", "mon"))

        def seen() -> bool:
            s = scrape(cnode)
            return (s.get(("core0_container_memory_bytes", labels), 0) > 1 << 20
                    and s.get(("core0_container_cpu_seconds_total", labels), 0) > 0)

        assert wait_until(seen, 20), scrape(cnode)
        assert scrape(cnode)[("core0_container_oom_kills_total", labels)] == 0
    finally:
        ok(cnode, "corex.terminate", {"container": cid})
    assert wait_until(lambda: not any(k[0].startswith("core0_container_")
                                      for k in scrape(cnode)), 20)
