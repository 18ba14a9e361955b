"""Hostile use of the container commands, on a real node (runc, redis-server, nft), by the
queues of lower roles and by a careless admin: each test is a defect found in a review,
reproduced through the bus, and what core0 answers now.

- an operator ran any program through ``container.run`` (admin only now, as ``bash`` and
  ``core.system`` are, also through ``corex.dispatch``), or as the container's PID 1 by
  mounting a file over the init's path;
- a volume's source was a path the runtime resolved again: a directory swapped for a symlink
  after core0's check (or before a keeper's restart) put a host directory outside
  ``main.filesystem_root`` into the container; an import read its source by path too (a
  swapped subdirectory was copied from anywhere, a FIFO hung the import's thread);
- a read-only queue read containers' ``env`` values; a private queue's inner jobs got ids
  outside its key space; an operator could name an image after a host path an admin's
  create would later take as that path's content;
- an operator queue terminated, dispatched into and rewired (nics, port forwards) an admin's
  containers, and one private queue another's: only a queue that may act on the creating
  queue's jobs may now (403 otherwise, nothing touched);
- an operator queue could create containers until the node's 1,000 were taken, starving
  admin: ``[containers] role_max`` caps each role below admin (503 beyond, also for
  concurrent creates);
- bad input gave 500s (``corex.get`` of ``'²'``, a volume of the wrong type for its target)
  or was written into the container's resolv.conf (``dns`` entries that are no address).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import wait_until
from sandbox_fixtures import ContainerNode, busybox_rootfs, container_node

FSROOT = Path(tempfile.gettempdir()) / f"core0-hostile-{uuid.uuid4().hex[:8]}"
SECRET = "HOST-SECRET-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def cnode() -> Iterator[ContainerNode]:
    FSROOT.mkdir()
    cfg = (f'[main]\ninclude = []\nfilesystem_root = "{FSROOT}"\n'
           '[bus]\nprivate_queues = ["priv"]\n'
           'queues = {default = "admin", ops = "operator", ro = "read-only", '
           'priv = "operator"}\n')
    try:
        with container_node(cfg) as n:
            yield n
    finally:
        shutil.rmtree(FSROOT, ignore_errors=True)


@pytest.fixture(scope="module")
def secret_dir() -> Iterator[Path]:
    """A host directory outside the filesystem root, with a file no operator may read."""
    d = Path(tempfile.mkdtemp(prefix="core0-hostile-secret-"))
    (d / "f").write_text(SECRET)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run(cnode: ContainerNode, queue: str, command: str, args: dict[str, Any],
        timeout: float = 60) -> dict[str, Any]:
    """The result of one command pushed on ``queue`` (ids of the private queue carry its
    prefix)."""
    r = redis.Redis(unix_socket_path=cnode.socket, socket_timeout=timeout + 30)
    jid = ("priv." if queue == "priv" else "") + uuid.uuid4().hex
    r.rpush(f"core:{queue}", json.dumps({"id": jid, "command": command, "arguments": args}))
    raw = r.brpoplpush(f"result:{jid}", f"result:{jid}", timeout)
    assert raw is not None, (queue, command, "no answer")
    return dict(json.loads(raw))


def data(res: dict[str, Any]) -> Any:
    assert res["state"] == "SUCCESS", res
    return json.loads(res["data"])


def inner_out(cnode: ContainerNode, cid: int, script: str) -> str:
    """stdout of ``sh -c script`` dispatched (as admin) into container ``cid``."""
    jid = data(run(cnode, "default", "corex.dispatch", {"container": cid, "command": {
        "command": "bash", "arguments": {"script": script}}}))
    raw = redis.Redis(unix_socket_path=cnode.socket).brpoplpush(f"result:{jid}", "x", 60)
    assert raw is not None
    return str(json.loads(raw)["streams"][0])


def containers(cnode: ContainerNode) -> list[str]:
    return sorted(os.listdir(cnode.state_dir / "sandbox" / "containers"))


def mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [ln.split()[4] for ln in f if ln.split()[4].startswith(str(path))]


@pytest.fixture(scope="module")
def image(cnode: ContainerNode) -> str:
    busybox_rootfs(FSROOT / "img")
    data(run(cnode, "ops", "container.image.import", {"name": "bb",
                                                      "source": str(FSROOT / "img")}))
    return "bb"


def test_operator_runs_no_program(cnode: ContainerNode, image: str) -> None:
    """container.run runs the caller's argv: 403 below admin (nothing made), as bash and
    core.system are; a file mounted over the init's path (it would be PID 1): 400."""
    before = containers(cnode)
    res = run(cnode, "ops", "container.run", {"root": image, "nics": [], "command": ["id"]})
    assert res["state"] == "ERROR" and res["code"] == 403, res
    assert res["streams"] == ["", ""]
    assert containers(cnode) == before
    res = run(cnode, "default", "container.run", {"root": image, "nics": [],
                                                  "command": ["echo", "ran"]})
    assert res["state"] == "SUCCESS" and res["streams"][0] == "ran\n", res
    (FSROOT / "evil").write_text("#!/bin/sh\necho pwned\n")
    os.chmod(FSROOT / "evil", 0o755)
    for target in ("/.core0-init", "//.core0-init/", "/./.core0-init"):
        res = run(cnode, "ops", "corex.create", {"root": image, "nics": [], "mount": {
            str(FSROOT / "evil"): target}})
        assert res["code"] == 400 and "cannot mount over" in res["data"], res
    assert wait_until(lambda: containers(cnode) == before, 10)


def test_volume_source_swapped_for_a_symlink(cnode: ContainerNode, image: str,
                                             secret_dir: Path) -> None:
    """An operator's volume is checked inside the filesystem root; the directory is then
    replaced by a symlink to a host directory outside it and the init dies (an OOM kill,
    say): the keeper's restart still mounts what was checked, never the host directory.
    Terminate unmounts it and leaves the source's files alone."""
    vol = FSROOT / "vol"
    (vol / "d").mkdir(parents=True)
    (vol / "d" / "f").write_text("inside")
    cid = data(run(cnode, "ops", "corex.create", {"root": image, "nics": [], "restart": "always",
                                                  "mount": {str(vol / "d"): "/x"}}))
    try:
        assert inner_out(cnode, cid, "cat /x/f") == "inside"
        os.rename(vol / "d", vol / "d.checked")
        os.symlink(secret_dir, vol / "d")
        pid = data(run(cnode, "default", "corex.get", {"query": cid}))["container"]["pid"]
        os.kill(pid, signal.SIGKILL)

        def restarted() -> bool:
            c = data(run(cnode, "default", "corex.get", {"query": cid}))["container"]
            return bool(c["status"] == "running" and c["pid"] not in (0, pid))

        assert wait_until(restarted, 30, 0.2), cnode.log_text()[-2000:]
        assert inner_out(cnode, cid, "cat /x/f") == "inside"
    finally:
        data(run(cnode, "ops", "corex.terminate", {"container": cid}))
    assert all("/sandbox/containers/" not in m for m in mounts_under(cnode.state_dir))
    assert (vol / "d.checked" / "f").read_text() == "inside"
    assert (secret_dir / "f").read_text() == SECRET


def test_volume_of_the_wrong_type(cnode: ContainerNode, image: str) -> None:
    """A careless admin mounts a file over a directory of the image (or the reverse): 400
    naming the volume (was: 500 with runc's error), nothing left."""
    before = containers(cnode)
    (FSROOT / "plain").write_text("x")
    for src, target in ((FSROOT / "plain", "/bin"), (FSROOT / "img", "/etc/passwd")):
        res = run(cnode, "default", "corex.create", {"root": image, "nics": [],
                                                     "mount": {str(src): target}})
        assert res["code"] == 400 and f"mount.{src}" in res["data"], res
    assert containers(cnode) == before
    assert all("/sandbox/containers/" not in m for m in mounts_under(cnode.state_dir))


def race_tree(src: Path, dirs: int) -> Path:
    """A tree to copy while it changes: ``dirs`` directories holding a file each, and the
    directory ``sub`` (returned) for :func:`swapping`."""
    for i in range(dirs):
        (src / f"d{i:02}").mkdir(parents=True)
        (src / f"d{i:02}" / "f").write_text("mine")
    sub = src / "sub"
    sub.mkdir()
    (sub / "g").write_text("mine")
    return sub


@contextlib.contextmanager
def swapping(sub: Path, target: Path) -> Iterator[None]:
    """While the block runs, a thread keeps swapping the directory ``sub`` for a symlink to
    ``target`` and back."""
    stop = threading.Event()

    def swap() -> None:
        aside = sub.with_name(sub.name + ".dir")
        while not stop.is_set():
            os.rename(sub, aside)
            os.symlink(target, sub)
            time.sleep(0.0005)
            os.unlink(sub)
            os.rename(aside, sub)

    t = threading.Thread(target=swap, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(10)


def test_import_source_swapped_while_copied(cnode: ContainerNode, secret_dir: Path) -> None:
    """While an operator imports a directory, a subdirectory keeps being swapped for a
    symlink to a host directory outside the root: no import ever holds the host's file
    (the tree is read on descriptors; a swapped entry is copied as the link it is)."""
    src = FSROOT / "race"
    sub = race_tree(src, 40)
    names = [f"race{i}" for i in range(12)]
    with swapping(sub, secret_dir):
        for name in names:
            res = run(cnode, "ops", "container.image.import", {"name": name,
                                                               "source": str(src)})
            assert res["state"] == "SUCCESS" or res["code"] in (404, 409), res
    leaked = []
    for top, _dirs, files in os.walk(cnode.state_dir / "sandbox" / "images"):
        for f in files:
            p = os.path.join(top, f)
            if os.path.isfile(p) and not os.path.islink(p) and os.path.getsize(p) < 4096:
                with open(p, errors="replace") as fh:
                    if SECRET in fh.read():
                        leaked.append(p)
    for name in names:
        run(cnode, "ops", "container.image.delete", {"name": name})
    assert leaked == []
    assert sorted(os.listdir(secret_dir)) == ["f"]


def test_copy_tree_under_swaps(tmp_path: Path, secret_dir: Path) -> None:
    """The directory copy of an import (core0.sandbox.unpack.copy_tree) while a subdirectory
    keeps being swapped for a symlink to a host directory, 200 times: never an error, never
    a file of the host directory read, never a file written into it (the old path-based copy
    wrote through a symlink it had just copied, and failed with a 500 one time in ten)."""
    from core0.sandbox import unpack

    src = tmp_path / "src"
    sub = race_tree(src, 20)
    with swapping(sub, secret_dir):
        for n in range(200):
            dest = tmp_path / f"dest{n}"
            dest.mkdir()
            unpack.copy_tree(src, dest)
            d = dest / "sub"
            assert d.is_symlink() or not (d / "f").exists(), n
            assert sorted(os.listdir(secret_dir)) == ["f"], n
            shutil.rmtree(dest)


def test_import_of_a_fifo(cnode: ContainerNode) -> None:
    """A FIFO (or a device) as an import's source: 400 at once (was: the import's thread
    blocked in open() until someone wrote to it)."""
    os.mkfifo(FSROOT / "fifo")
    res = run(cnode, "ops", "container.image.import", {"name": "fifo",
                                                       "source": str(FSROOT / "fifo")}, 20)
    assert res["code"] == 400 and "neither a directory nor a regular file" in res["data"], res
    res = run(cnode, "default", "container.image.import", {"name": "zero",
                                                           "source": "/dev/zero"}, 20)
    assert res["code"] == 400, res


def test_read_only_sees_no_env_values(cnode: ContainerNode, image: str) -> None:
    """corex.list/get/find show a read-only queue the names of an operator's container's env
    variables, not their values (job.list's rule: below the creator's role, redacted); the
    operator and the admin see them."""
    cid = data(run(cnode, "ops", "corex.create", {"root": image, "nics": [], "name": "sec",
                                                  "tags": ["sec"],
                                                  "env": {"TOKEN": "hunter2"}}))
    try:
        for cmd, args in (("corex.list", {}), ("corex.get", {"query": "sec"}),
                          ("corex.find", {"tags": ["sec"]})):
            res = run(cnode, "ro", cmd, args)
            assert "hunter2" not in res["data"], (cmd, res)
            assert '"TOKEN": "<redacted>"' in res["data"], (cmd, res)
            # the private queue (operator, but not the creating queue): redacted too
            assert "hunter2" not in run(cnode, "priv", cmd, args)["data"], cmd
        for q in ("ops", "default"):
            got = data(run(cnode, q, "corex.get", {"query": cid}))
            assert got["container"]["arguments"]["env"] == {"TOKEN": "hunter2"}, q
    finally:
        data(run(cnode, "ops", "corex.terminate", {"container": cid}))


def test_private_queue_inner_ids(cnode: ContainerNode, image: str) -> None:
    """An inner job dispatched from a private queue (into its own container) gets an id with
    the queue's prefix (its result is where the caller, and only the caller, may read it);
    another id: 400."""
    cid = data(run(cnode, "priv", "corex.create", {"root": image, "nics": []}))
    try:
        jid = data(run(cnode, "priv", "corex.dispatch", {"container": cid, "command": {
            "command": "info.os"}}))
        assert jid.startswith("priv."), jid
        raw = redis.Redis(unix_socket_path=cnode.socket).brpoplpush(f"result:{jid}", "x", 60)
        assert raw is not None and json.loads(raw)["state"] == "SUCCESS"
        res = run(cnode, "priv", "corex.dispatch", {"container": cid, "command": {
            "command": "info.os", "id": "ops.x-" + uuid.uuid4().hex}})
        assert res["code"] == 400 and "priv." in res["data"], res
    finally:
        data(run(cnode, "priv", "corex.terminate", {"container": cid}))


def test_image_named_after_a_host_path(cnode: ContainerNode) -> None:
    """Names starting with '/' are the host paths a create's ``root`` imports itself: an
    import under such a name from another source (an operator's content for an admin's
    later ``root: /srv/trusted``), or a pull under one, is 400; the path's own name is fine."""
    res = run(cnode, "ops", "container.image.import", {"name": "/srv/trusted",
                                                       "source": str(FSROOT / "img")})
    assert res["code"] == 400 and "name" in res["data"], res
    res = run(cnode, "ops", "container.image.pull", {"ref": "127.0.0.1:1/x",
                                                     "name": "/srv/trusted"})
    assert res["code"] == 400, res
    name = str(FSROOT / "img")
    data(run(cnode, "ops", "container.image.import", {"name": name, "source": name}))
    data(run(cnode, "ops", "container.image.delete", {"name": name}))


def test_bad_input_is_4xx(cnode: ContainerNode, image: str) -> None:
    """A query that str.isdigit() takes and int() refuses ('²'): 404, not 500; an env
    variable too long for execve, a dns entry that is no address (it would be written into
    resolv.conf as given): 400, nothing made."""
    for q in ("²", "1²", "١٢"):
        res = run(cnode, "ro", "corex.get", {"query": q})
        assert res["code"] == 404, (q, res)
    before = containers(cnode)
    # (an init started with a variable of 128 KiB or more dies of E2BIG at once: the create
    # answered with the id of a stopped container)
    res = run(cnode, "default", "corex.create", {"root": image, "nics": [],
                                                 "env": {"BIG": "x" * 140_000}})
    assert res["code"] == 400 and "env.BIG" in res["data"], res
    for dns in (["1.2.3.4/8"], ["::::"], ["10.0.0.1", "x"]):
        res = run(cnode, "default", "corex.create", {"root": image, "nics": [
            {"type": "default", "config": {"dns": dns}}]})
        assert res["code"] == 400 and "dns" in res["data"], (dns, res)
    assert containers(cnode) == before


def test_inner_job_list_and_kill_keep_roles(cnode: ContainerNode, image: str) -> None:
    """``job.list``/``job.kill`` dispatched into a container by an operator see the admin's
    inner jobs there as the host's job.list does (arguments redacted) and may not kill them
    (403); the admin's job runs on; the admin sees and kills it."""
    cid = data(run(cnode, "ops", "corex.create", {"root": image, "nics": []}))
    try:
        admin_job = data(run(cnode, "default", "corex.dispatch", {"container": cid, "command": {
            "command": "core.system", "arguments": {"name": "sleep", "args": ["60"],
                                                    "env": {"TOKEN": "hunter2"}}}}))
        r = redis.Redis(unix_socket_path=cnode.socket)

        def inner(queue: str, command: str, args: dict[str, Any]) -> dict[str, Any]:
            jid = data(run(cnode, queue, "corex.dispatch", {"container": cid, "command": {
                "command": command, "arguments": args}}))
            raw = r.brpoplpush(f"result:{jid}", f"result:{jid}", 60)
            assert raw is not None
            return dict(json.loads(raw))

        listed = inner("ops", "job.list", {})
        assert "hunter2" not in listed["data"], listed
        mine = [j for j in json.loads(listed["data"]) if j["id"] == admin_job]
        assert mine and mine[0]["redacted"] is True, listed
        killed = inner("ops", "job.kill", {"id": admin_job})
        assert killed["code"] == 403, killed
        assert r.exists(f"result:{admin_job}") == 0  # still running
        assert "hunter2" in inner("default", "job.list", {"id": admin_job})["data"]
        assert inner("default", "job.kill", {"id": admin_job})["state"] == "SUCCESS"
        raw = r.brpoplpush(f"result:{admin_job}", f"result:{admin_job}", 30)
        assert raw is not None and json.loads(raw)["state"] == "KILLED"
    finally:
        data(run(cnode, "ops", "corex.terminate", {"container": cid}))


@pytest.fixture(scope="module")
def nat_bridge(cnode: ContainerNode, image: str) -> str:
    """core0's NAT bridge, made by a first default nic (it stays: not a leak)."""
    warm = data(run(cnode, "ops", "corex.create", {"root": image}))
    data(run(cnode, "ops", "corex.terminate", {"container": warm}))
    return "core0"


def test_no_nat_network_address_by_hand(cnode: ContainerNode, image: str,
                                        nat_bridge: str) -> None:
    """A ``bridge`` nic into core0's NAT bridge with a static address of its network (the
    node's gateway 172.18.0.1, another container's 172.18.x.y) would answer ARP for them
    (every container's DNS and NAT, or another container's traffic): 400, nothing made,
    create and nic-add alike; an address outside that network stays allowed."""
    before = containers(cnode)
    for kind, cidr in (("bridge", "172.18.0.1/16"), ("bridge", "172.18.0.9/16"),
                       ("macvlan", "172.18.0.1/16")):
        res = run(cnode, "ops", "corex.create", {"root": image, "nics": [
            {"type": kind, "id": "core0", "config": {"cidr": cidr}}]})
        assert res["code"] == 400 and "core0's" in res["data"], (kind, res)
    assert wait_until(lambda: containers(cnode) == before, 10)
    cid = data(run(cnode, "ops", "corex.create", {"root": image, "nics": []}))
    try:
        res = run(cnode, "ops", "corex.nic-add", {"container": cid, "nic": {
            "type": "bridge", "id": "core0", "config": {"cidr": "172.18.0.1/24"}}})
        assert res["code"] == 400, res
        # a nic that failed is not listed (it was, with state "configured", when the failed
        # nic-add was the container's first: the record was saved on the way)
        assert data(run(cnode, "ops", "corex.get", {"query": cid}))["container"]["nics"] == []
        data(run(cnode, "ops", "corex.nic-add", {"container": cid, "nic": {
            "type": "bridge", "id": "core0", "config": {"cidr": "10.123.0.2/24"}}}))
        # the host end of that nic (another container's veth, as far as a third one goes)
        veth = data(run(cnode, "ops", "corex.get", {"query": cid}))["container"]["nics"][0][
            "host_link"]
        other = run(cnode, "ops", "corex.create", {"root": image, "nics": [
            {"type": "macvlan", "id": veth, "config": {"cidr": "10.123.0.3/24"}}]})
        assert other["code"] == 400 and "container's link" in other["data"], other
    finally:
        data(run(cnode, "ops", "corex.terminate", {"container": cid}))


def test_nic_add_is_bounded(cnode: ContainerNode, image: str, nat_bridge: str) -> None:
    """A create takes at most 16 nics; nic-add took any number (a veth on the node each):
    409 beyond 16 live nics; one removed, one may come again."""
    cid = data(run(cnode, "ops", "corex.create", {"root": image, "nics": []}))
    try:
        for i in range(16):
            data(run(cnode, "ops", "corex.nic-add", {"container": cid, "nic": {
                "type": "bridge", "id": "core0", "config": {"cidr": f"10.124.{i}.2/24"}}}))
        res = run(cnode, "ops", "corex.nic-add", {"container": cid, "nic": {
            "type": "bridge", "id": "core0", "config": {"cidr": "10.124.99.2/24"}}})
        assert res["code"] == 409, res
        data(run(cnode, "ops", "corex.nic-remove", {"container": cid, "index": 3}))
        data(run(cnode, "ops", "corex.nic-add", {"container": cid, "nic": {
            "type": "bridge", "id": "core0", "config": {"cidr": "10.124.99.2/24"}}}))
    finally:
        data(run(cnode, "ops", "corex.terminate", {"container": cid}))


def get_container(cnode: ContainerNode, cid: int) -> dict[str, Any]:
    return dict(data(run(cnode, "default", "corex.get", {"query": cid}))["container"])


def acts(cid: int) -> list[tuple[str, dict[str, Any]]]:
    """Every command that acts on container ``cid`` (``container.*`` aliases included)."""
    return [
        ("corex.terminate", {"container": cid}),
        ("container.terminate", {"container": cid}),
        ("corex.dispatch", {"container": cid, "command": {"command": "info.os"}}),
        ("container.dispatch", {"container": cid, "command": {"command": "process.list"}}),
        ("corex.nic-add", {"container": cid, "nic": {"type": "bridge", "id": "core0",
                                                     "config": {"cidr": "10.125.0.2/24"}}}),
        ("corex.nic-remove", {"container": cid, "index": 0}),
        ("corex.portforward-add", {"container": cid, "host_port": 18081,
                                   "container_port": 81}),
        ("corex.portforward-remove", {"container": cid, "host_port": "18080",
                                      "container_port": 80}),
    ]


def test_who_may_act_on_a_container(cnode: ContainerNode, image: str, nat_bridge: str) -> None:
    """An operator queue (and a private one) may not terminate, dispatch into, add or remove
    nics of, or forward ports to an admin's container: 403 each, the container runs on with
    the same init, nics and forwards, and no inner job ran. A private queue may not act on
    the shared operator queue's container, nor that queue on the private one's. A queue acts
    on its own; admin acts on everyone's."""
    admin = data(run(cnode, "default", "corex.create", {"root": image, "port": {"18080": 80}}))
    ops = data(run(cnode, "ops", "corex.create", {"root": image, "port": {"18090": 80}}))
    priv = data(run(cnode, "priv", "corex.create", {"root": image, "nics": []}))
    try:
        before = get_container(cnode, admin)
        assert before["status"] == "running" and before["pid"] > 0, before
        refused = [(q, cmd, args) for q, cid in (("ops", admin), ("priv", admin),
                                                 ("priv", ops), ("ops", priv))
                   for cmd, args in acts(cid)]
        for q, cmd, args in refused:
            res = run(cnode, q, cmd, args)
            assert res["state"] == "ERROR" and res["code"] == 403, (q, cmd, res)
            assert "may not act on it" in res["data"], (q, cmd, res)
        after = get_container(cnode, admin)
        for k in ("status", "pid", "nics", "ports"):
            assert after[k] == before[k], (k, before, after)
        assert get_container(cnode, ops)["status"] == "running"
        assert get_container(cnode, priv)["status"] == "running"
        fwd = data(run(cnode, "default", "nft.forward_list", {"owner": f"container:{admin}"}))
        assert [f["port"] for f in fwd] == [80], fwd

        # a queue acts on its own container
        for q, cid in (("ops", ops), ("priv", priv)):
            jid = data(run(cnode, q, "corex.dispatch", {"container": cid, "command": {
                "command": "info.os"}}))
            raw = redis.Redis(unix_socket_path=cnode.socket).brpoplpush(f"result:{jid}", "x",
                                                                        60)
            assert raw is not None and json.loads(raw)["state"] == "SUCCESS", raw
            nic = data(run(cnode, q, "corex.nic-add", {"container": cid, "nic": {
                "type": "bridge", "id": "core0", "config": {"cidr": f"10.126.{cid}.2/24"}}}))
            data(run(cnode, q, "corex.nic-remove", {"container": cid, "index": nic["index"]}))
        data(run(cnode, "ops", "corex.portforward-add", {"container": ops, "host_port": 18091,
                                                         "container_port": 81}))
        data(run(cnode, "ops", "corex.portforward-remove", {
            "container": ops, "host_port": "18091", "container_port": 81}))
        # admin acts on everyone's
        data(run(cnode, "default", "corex.portforward-add", {
            "container": ops, "host_port": 18092, "container_port": 82}))
        assert get_container(cnode, ops)["ports"] == {"18090": 80, "18092": 82}
        assert inner_out(cnode, ops, "echo in-ops") == "in-ops\n"
        data(run(cnode, "default", "corex.terminate", {"container": ops}))
        data(run(cnode, "default", "container.terminate", {"container": priv}))
        data(run(cnode, "ops", "corex.get", {"query": admin}))  # (listing stays open)
    finally:
        for cid in (admin, ops, priv):
            run(cnode, "default", "corex.terminate", {"container": cid})
    for cid in (admin, ops):
        assert data(run(cnode, "default", "nft.forward_list", {
            "owner": f"container:{cid}"})) == []


# ---------------------------------------------------------------- per-role caps

CAP = 2


@pytest.fixture(scope="module")
def qnode(image: str) -> Iterator[ContainerNode]:
    """A node whose operator role may have :data:`CAP` containers (the module's own node
    keeps the default, so the other tests never meet the cap); the busybox image imported."""
    cfg = (f'[main]\ninclude = []\nfilesystem_root = "{FSROOT}"\n'
           '[bus]\nprivate_queues = ["priv"]\n'
           'queues = {default = "admin", ops = "operator", priv = "operator"}\n'
           f'[containers]\nrole_max = {{operator = {CAP}}}\n')
    with container_node(cfg) as n:
        data(run(n, "default", "container.image.import", {"name": image,
                                                          "source": str(FSROOT / "img")}))
        yield n


def roles_of(node: ContainerNode) -> list[int]:
    """The creating role of every container record of ``node``."""
    base = node.state_dir / "sandbox" / "containers"
    out = []
    for d in containers(node):
        with contextlib.suppress(OSError):
            out.append(json.loads((base / d / "container.json").read_text())["role"])
    return sorted(out)


def test_operator_container_cap(qnode: ContainerNode, image: str) -> None:
    """With ``role_max = {operator = 2}``: the operator role's queues (the private one
    included) get two containers, the third create is 503 and makes nothing (not even the
    import of a host-path root); admin still creates; a terminate frees a place."""
    made = [data(run(qnode, "ops", "corex.create", {"root": image, "nics": []})),
            data(run(qnode, "priv", "corex.create", {"root": image, "nics": []}))]
    try:
        images_before = data(run(qnode, "default", "container.image.list", {}))
        dirs = containers(qnode)
        for q, root in (("ops", image), ("priv", image), ("ops", str(FSROOT / "img"))):
            res = run(qnode, q, "corex.create", {"root": root, "nics": []})
            assert res["state"] == "ERROR" and res["code"] == 503, (q, res)
            assert "containers.role_max" in res["data"], res
        assert containers(qnode) == dirs
        assert data(run(qnode, "default", "container.image.list", {})) == images_before
        made.append(data(run(qnode, "default", "corex.create", {"root": image, "nics": []})))
        assert roles_of(qnode) == [2, 2, 3]
        data(run(qnode, "ops", "corex.terminate", {"container": made.pop(0)}))
        made.append(data(run(qnode, "ops", "corex.create", {"root": image, "nics": []})))
        assert roles_of(qnode) == [2, 2, 3]
    finally:
        for cid in made:
            run(qnode, "default", "corex.terminate", {"container": cid})
    assert containers(qnode) == []


def test_concurrent_creates_keep_the_cap(qnode: ContainerNode, image: str) -> None:
    """Eight operator creates pushed at once (one batch: concurrent jobs of the dispatcher's
    loop): their root a host path not imported yet, so each passes the early check, then
    waits for an import thread before it takes an id. Exactly the cap succeed, the others are
    503, and no more than the cap ever exist."""
    r = redis.Redis(unix_socket_path=qnode.socket, socket_timeout=90)
    ids = [uuid.uuid4().hex for _ in range(8)]
    root = str(FSROOT / "img")
    r.rpush("core:ops", *[json.dumps({"id": j, "command": "corex.create",
                                      "arguments": {"root": root, "nics": []}}) for j in ids])
    results = []
    for j in ids:
        raw = r.brpoplpush(f"result:{j}", f"result:{j}", 60)
        assert raw is not None, j
        results.append(json.loads(raw))
    made = [json.loads(res["data"]) for res in results if res["state"] == "SUCCESS"]
    try:
        assert len(made) == CAP, results
        assert sorted(res["code"] for res in results if res["state"] != "SUCCESS") \
            == [503] * (len(ids) - CAP), results
        assert roles_of(qnode) == [2] * CAP
    finally:
        for cid in made:
            run(qnode, "default", "corex.terminate", {"container": cid})
        run(qnode, "default", "container.image.delete", {"name": root})
    assert containers(qnode) == []
