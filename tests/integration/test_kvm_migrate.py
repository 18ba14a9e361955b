"""``kvm.prepare_migration_target`` then ``kvm.migrate``, between two core0 nodes, each with its own
libvirtd, in two network namespaces (TCP over a veth pair between the libvirtds; the files
are on "shared storage": the same host). The VM keeps its default nic's address; its port
forward answers on the destination; the source releases its lease and forwards; the
destination removes them when the VM stops there. Run under ``flock /tmp/core0-vm.lock``."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import code_of, wait_until
from kvm_env import Env, env, migration_peer
from virt_fixtures import PAGE, wait_text

__all__ = ["env"]  # the fixture
pytestmark = [pytest.mark.root, pytest.mark.vm, pytest.mark.slow]
DEST_URI = "qemu+tcp://10.250.0.2/system"


def test_prepare_migration_target_then_migrate(env: Env) -> None:
    c = env.core0()
    uuid = c.kvm.create(**env.guest_args("mover", port={"9494": 8080}))
    vm = c.kvm.get(uuid=uuid)
    ip, console = vm["default_ip"], Path(vm["console"])
    [nic] = vm["params"]["nics"]
    assert nic["type"] == "default" and nic["hwaddr"].startswith("00:28:06:82:")
    assert wait_text(console, "GUEST-IP " + ip, 120), console.read_text()[-1500:]
    # not here: it runs here
    assert code_of(c.sync, "kvm.prepare_migration_target",
                   {"uuid": uuid, "nics": vm["params"]["nics"]}) == 409
    base_b = Path(tempfile.mkdtemp(prefix="core0-kvmb-", dir="/tmp"))
    try:
        with migration_peer(env, base_b) as dest:
            _on_both(env, c, dest.node, dest.ns, uuid, vm, ip)
    finally:
        shutil.rmtree(base_b, ignore_errors=True)
        shutil.rmtree(env.vdir / uuid, ignore_errors=True)


def _on_both(env: Env, c: Any, node_b: Any, ns_b: Any, uuid: str, vm: dict[str, Any],
             ip: str) -> None:
    from core0_client import Client

    b = Client(unix_socket_path=node_b.socket, timeout=120)
    params = vm["params"]
    # refused: a bridge nic onto a bridge the destination lacks; a default nic without MAC
    assert code_of(b.sync, "kvm.prepare_migration_target", {
        "uuid": uuid, "nics": [*params["nics"], {"type": "bridge", "id": "nosuchbr"}]}) == 412
    assert code_of(b.sync, "kvm.prepare_migration_target", {
        "uuid": uuid, "nics": [{"type": "default"}]}) == 400
    # 0-core's client: {uuid, nics, port}
    got = b.kvm.prepare_migration_target(uuid, nics=params["nics"], port=params["port"])
    assert got == {"uuid": uuid, "mac": params["nics"][0]["hwaddr"], "ip": ip}
    mac = params["nics"][0]["hwaddr"]
    assert list(b.bridge.info("kvm0")["hosts"]) == [mac]
    assert [(f["owner"], f["src"], f["ip"], f["port"]) for f in b.nft.forward_list()] == [
        (f"vm:{uuid}", "9494|tcp", ip, 8080)]
    # again: the same (idempotent)
    assert b.kvm.prepare_migration_target(uuid, nics=params["nics"],
                                          port=params["port"]) == got

    # cut short (max_time 2 s; the migration takes about 5 s here): aborted, not left
    # running in the background — the VM stays here, running, its record says so (no
    # "migrating"), nothing of it runs on the destination; then it migrates for real
    res = c.raw("kvm.migrate", {"uuid": uuid, "desturi": DEST_URI}, max_time=2).get(60)
    assert res.state == "TIMEOUT", res
    assert [(v["uuid"], v["state"]) for v in c.kvm.list()] == [(uuid, "running")]
    assert "migrating" not in _record_at(env.vdir, uuid)
    assert b.kvm.list() == []

    c.kvm.migrate(uuid, DEST_URI)
    assert c.kvm.list() == []
    # the source released its lease and forwards; its files stay (shared storage)
    assert all(f["owner"] != f"vm:{uuid}" for f in c.nft.forward_list())
    assert mac not in c.bridge.info("kvm0")["hosts"]

    [moved] = b.kvm.list()
    assert moved["uuid"] == uuid and moved["default_ip"] == ip and moved["state"] == "running"

    def answers() -> bool:
        r = ns_b.run("curl", "-s", "-m", "3", "http://172.19.0.1:9494/", check=False)
        return PAGE in r.stdout

    assert wait_until(answers, 90)
    assert "incoming" not in _record(node_b, uuid)

    # the VM stops on the destination: the destination cleans up after it
    b.kvm.destroy(uuid)
    assert b.kvm.list() == []
    assert b.nft.forward_list() == []
    assert list(b.bridge.info("kvm0")["hosts"]) == []
    assert wait_until(lambda: not (Path(str(node_b.dir)).parent / "virt" / uuid).exists(), 30)
    b.close()


def _record(node_b: Any, uuid: str) -> dict[str, Any]:
    return _record_at(Path(str(node_b.dir)).parent / "virt", uuid)


def _record_at(vdir: Path, uuid: str) -> dict[str, Any]:
    import json

    return dict(json.loads((vdir / uuid / "vm.json").read_text()))
