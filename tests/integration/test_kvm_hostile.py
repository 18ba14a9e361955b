"""Hostile use of ``kvm.*`` from operator and read-only queues (and careless admin input).

A node in its own "host" network namespace with a private libvirtd (tests/kvm_env.py,
tests/virt_fixtures.py) serves ``default`` (admin), ``ops`` (operator), ``ro`` (read-only)
and ``pops`` (a private operator queue). Its filesystem root is a temp dir; a "host secret"
file lies outside it.

- Disk images name other files themselves: a qcow2 whose external data file or backing file
  is outside the root, is a network address (``nbd+unix://``, ``json:``), is missing, or whose
  chain is too deep is refused (400) by kvm.create and kvm.convert-image before qemu or
  qemu-img opens it: the host file is never opened, the socket never connected to.
- Domains core0 did not create (defined by someone else through libvirt, the KVM probe's
  names) are invisible to kvm.list/get/info and untouchable by destroy/pause/migrate (404).
- ``kvm.migrate`` only goes to another host's libvirtd over a network transport: no
  ``qemu+ext`` (libvirt would run a program), no ``socket=``/``command=`` parameters, no
  loopback (400, before libvirt is asked).
- Bad input that libvirt or qemu would refuse only after the VM started (a lone surrogate, a
  fifth IDE device, an iotune max without its base, an image another VM holds) is a 4xx,
  and a refused create leaves no domain, no VM directory behind; the node logs no traceback.
- A VM is its creating queue's (403 for other queues' acting commands, its kernel command
  line redacted for them, its events theirs only; owners survive a restart); per-role caps
  refuse with 503 and leave nothing; kvm.convert-image reads the descriptors it checked,
  confined to them (a data file named in a header rewritten after the check leads nowhere);
  a direct-boot kernel is a copy in the VM's directory.

The guests are firmware-only VMs (a blank disk: SeaBIOS finds nothing to boot) and one
kernel that boots no further than its memory lets it: enough for running core0 domains.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import code_of, wait_until
from kvm_env import METRICS_PORT, events_of, seen, spawn_node
from kvm_hostile_env import (
    FOREIGN_XML,
    HOLD,
    SECRET,
    Env,
    _domains,
    _img,
    _lv,
    _vm_dirs,
    firmware_vm,
    hostile_node,
    through_hold,
)
from virt_fixtures import Listener, flip, qemu_files

pytestmark = [pytest.mark.root, pytest.mark.vm, pytest.mark.slow]

@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with hostile_node() as e:
        yield e


@pytest.fixture(scope="module")
def vm(env: Env) -> Iterator[str]:
    """A running core0 VM, made by the operator: a blank disk, no kernel (firmware only)."""
    with firmware_vm(env) as uuid:
        yield uuid


def _create(env: Env, name: str, **kw: Any) -> int:
    """The code of an operator's kvm.create that must fail."""
    args: dict[str, Any] = {"name": name, "memory": 32}
    args.update(kw)
    return code_of(env.op.json, "kvm.create", args)


#: every kvm.* command that acts on one VM, with arguments that pass the schema
ACTS: list[tuple[str, dict[str, Any]]] = [
    ("kvm.destroy", {}), ("kvm.shutdown", {"timeout": 1}), ("kvm.reboot", {}), ("kvm.reset", {}),
    ("kvm.pause", {}), ("kvm.resume", {}), ("kvm.attach_disk", {"media": {"url": "/images/b.raw"}}),
    ("kvm.detach_disk", {"media": {"url": "/images/adm.raw"}}),
    ("kvm.add_nic", {"type": "bridge", "id": "kvm0"}),
    ("kvm.remove_nic", {"type": "bridge", "hwaddr": "52:54:00:00:00:01"}),
    ("kvm.limit_disk_io", {"media": {"url": "/images/adm.raw"}, "totalbytessec": 1,
                           "totalbytessecset": True}),
    ("kvm.portforward-add", {"host_port": "8080", "container_port": 80}),
    ("kvm.portforward-remove", {"host_port": "8080", "container_port": 80}),
    ("kvm.migrate", {"desturi": "qemu+tcp://10.250.0.2/system"})]


def test_images_naming_host_files_refused(env: Env) -> None:
    """qcow2 data files and backing files outside the root, network backing files, missing
    ones and over-deep chains: 400 from kvm.create and kvm.convert-image, and nothing opens
    the host file or connects to the socket."""
    img = env.root / "images"
    _img("-f", "raw", str(img / "inside.raw"), "1M")
    _img("-f", "qcow2", "-o", f"data_file={env.secret},data_file_raw=on", str(img / "df.qcow2"),
         "1M")
    _img("-f", "qcow2", "-o", f"data_file={img / 'inside.raw'}", str(img / "dfin.qcow2"), "1M")
    _img("-f", "qcow2", "-F", "raw", "-b", str(env.secret), str(img / "out.qcow2"), "1M")
    sock = env.base / "nbd.sock"
    _img("-f", "qcow2", "-u", "-F", "raw", "-b", f"nbd+unix:///x?socket={sock}",
         str(img / "nbd.qcow2"), "1M")
    _img("-f", "qcow2", "-u", "-F", "raw", "-b",
         'json:{"file":{"driver":"file","filename":"' + str(env.secret) + '"}}',
         str(img / "js.qcow2"), "1M")
    _img("-f", "qcow2", "-u", "-F", "raw", "-b", str(img / "gone.raw"),
         str(img / "missing.qcow2"), "1M")
    _img("-f", "qcow2", "-u", "-F", "raw", "-b", "/nonexistent/host/file",
         str(img / "oracle.qcow2"), "1M")
    (img / "link.raw").symlink_to(env.secret)  # resolved inside the root: not found
    _img("-f", "qcow2", "-u", "-F", "raw", "-b", "link.raw", str(img / "vialink.qcow2"), "1M")
    prev = "inside.raw"  # a chain of 17 qcow2 images on a raw file
    for i in range(17):
        _img("-f", "qcow2", "-F", "raw" if i == 0 else "qcow2", "-b", prev,
             str(img / f"deep{i}.qcow2"), "1M")
        prev = f"deep{i}.qcow2"
    listener = Listener(sock)
    try:
        for name in ("df", "dfin", "out", "nbd", "js", "missing", "oracle", "vialink",
                     "deep16"):
            media = [{"url": f"/images/{name}.qcow2"}]
            assert _create(env, f"h-{name}", media=media) == 400, name
            assert _create(env, f"o-{name}", media=[{**media[0], "overlay": True}]) == 400, name
            assert code_of(env.op.sync, "kvm.convert-image",
                           {"input_file": f"/images/{name}.qcow2",
                            "output_file": f"/images/{name}.out"}) == 400, name
            assert not (img / f"{name}.out").exists()
        # the error names neither the host file nor whether it exists
        with pytest.raises(Exception) as ei:
            env.op.json("kvm.create", {"name": "x", "media": [{"url": "/images/oracle.qcow2"}]})
        assert "No such file" not in str(ei.value) and "outside" in str(ei.value)
    finally:
        listener.close()
    assert listener.count == 0, "qemu-img connected to a backing file's socket"
    # a chain that stays inside the root (relative backing names, 16 images) is accepted
    env.op.sync("kvm.convert-image", {"input_file": "/images/deep14.qcow2",
                                      "output_file": "/images/deep.out", "output_format": "raw"})
    assert (img / "deep.out").stat().st_size == 1 << 20
    assert _domains(env) == [] and _vm_dirs(env) == set()


def test_media_swapped_for_a_symlink_while_creating(env: Env) -> None:
    """A disk path flipping between a checked file and a symlink to a host file (what an
    operator's container with the root bind-mounted can do) while kvm.create runs: no VM ever
    runs with the host file open; every refusal is a 4xx."""
    img = env.root / "images"
    real, race = img / "race.real", img / "race.raw"
    _img("-f", "raw", str(real), "1M")
    stop = threading.Event()  # a symlink 40 ms of every 100: core0's checks and qemu's open differ
    t = threading.Thread(target=flip, args=(stop, race, real, env.secret), daemon=True)
    t.start()
    made, codes = [], []
    try:
        for i in range(12):
            try:
                uuid = env.op.json("kvm.create", {"name": f"race{i}", "memory": 32,
                                                  "media": [{"url": "/images/race.raw",
                                                             "format": "raw"}]})
            except Exception as e:
                codes.append(getattr(e, "code", 0))
                continue
            files = qemu_files(uuid)
            env.admin.sync("kvm.destroy", {"uuid": uuid})
            made.append(files)
    finally:
        stop.set()
        t.join(5)
    assert all(400 <= c < 500 for c in codes), codes
    assert all(str(env.secret) not in files for files in made), made
    assert all(any(f.startswith(str(race)) for f in files) for files in made), made
    assert _domains(env) == []


def test_media_swapped_between_check_and_start(env: Env) -> None:
    """The same swap made exactly in the window (the node's hold between the check of a new
    VM's disks and its start, CORE0_TEST_VM_HOLD): qemu opens the host file, the VM never
    runs (409, no domain, no qemu); the same create without the swap runs."""
    img = env.root / "images"
    real, path = img / "held.real", img / "held.raw"
    _img("-f", "raw", str(real), "1M")
    args = {"name": "held", "memory": 32, "media": [{"url": "/images/held.raw", "format": "raw"}]}
    for swap in (True, False):
        os.link(real, img / ".h")
        os.replace(img / ".h", path)
        def swap_in() -> None:
            os.symlink(env.secret, img / ".l")
            os.replace(img / ".l", path)

        res = through_hold(env.base, env.op.raw("kvm.create", args), swap_in if swap else None)
        if swap:
            assert (res.state.value, res.code) == ("ERROR", 409), res
            assert "changed while the VM was being made" in res.data
            assert _domains(env) == []
        else:
            assert res.state.value == "SUCCESS", res
            uuid = json.loads(res.data)
            assert str(env.secret) not in qemu_files(uuid)
            env.admin.sync("kvm.destroy", {"uuid": uuid})


def test_a_create_killed_while_libvirt_makes_the_domain(env: Env) -> None:
    """``job.kill`` of a kvm.create at delays from 0 to 150 ms after the node's hold (just
    before libvirt makes the domain), so that some land while libvirt makes it, until one
    comes after the create: each is KILLED and none leaves a domain — before,
    the domain libvirt made after the cancel stayed (paused, its qemu running, its tap)."""
    img = env.root / "images"
    _img("-f", "raw", str(img / "killed.raw"), "1M")
    hold = env.base / "hold"
    states = []
    for ms in range(0, 150, 15):
        job = env.op.raw("kvm.create", {"name": "held", "memory": 32, "media": [
            {"url": "/images/killed.raw", "format": "raw"}]})
        try:
            assert wait_until(lambda: (hold / "held").exists(), 60)
            (hold / "held").unlink()
            (hold / "go").touch()
            time.sleep(ms / 1000)
            env.op.json("job.kill", {"id": job.id})
            res = job.get(120)
        finally:
            (hold / "go").unlink()
        states.append(res.state.value)
        if res.state.value == "SUCCESS":  # the create was done: so are the later delays
            env.op.sync("kvm.destroy", {"uuid": json.loads(res.data)})
            break
        else:
            assert res.state.value == "KILLED", res
            assert _domains(env) == [], f"killed {ms} ms after the hold: a domain is left"
    assert "KILLED" in states, states


def test_new_image_name_swapped_for_a_symlink(env: Env) -> None:
    """kvm.create-image's output name flipping between absent and a symlink to a host file:
    the host file is never written (core0 creates the file itself, unnamed, qemu-img writes
    through that descriptor, and it is linked in under the name only where none is, not
    even a symlink); every answer is success or 409."""
    img = env.root / "images"
    before = env.secret.read_bytes()
    current = [img / "new0.raw"]
    stop = threading.Event()

    def flip() -> None:  # a symlink 1 ms of every 2
        while not stop.is_set():
            link = current[0]
            with contextlib.suppress(OSError):
                os.symlink(env.secret, link)
            stop.wait(0.001)
            with contextlib.suppress(OSError):
                if link.is_symlink():
                    link.unlink()
            stop.wait(0.001)

    t = threading.Thread(target=flip, daemon=True)
    t.start()
    codes = []
    try:
        for i in range(30):
            current[0] = img / f"new{i}.raw"
            try:
                env.op.sync("kvm.create-image", {"file_name": f"/images/new{i}.raw",
                                                 "format": "raw", "size": "1M"})
                codes.append(200)
            except Exception as e:
                codes.append(getattr(e, "code", 0))
    finally:
        stop.set()
        t.join(5)
    assert env.secret.read_bytes() == before
    assert set(codes) <= {200, 409}, codes
    for i, code in enumerate(codes):
        if code == 200:
            assert (img / f"new{i}.raw").stat().st_size == 1 << 20


def test_foreign_domains_left_alone(env: Env, vm: str) -> None:
    """A libvirt domain core0 did not create: not listed, 404 for every kvm.* action, still
    running unpaused; its name is taken (409); the probe's names are refused (400)."""
    import libvirt

    with _lv(env) as conn:
        dom = conn.createXML(FOREIGN_XML, 0)
        fu = dom.UUIDString()
        try:
            assert [i["uuid"] for i in env.ro.json("kvm.list")] == [vm]
            assert code_of(env.ro.json, "kvm.get", {"uuid": fu}) == 404
            assert code_of(env.ro.json, "kvm.get", {"name": "foreign"}) == 404
            assert code_of(env.ro.json, "kvm.info", {"uuid": fu}) == 404
            for cmd, extra in ACTS:
                assert code_of(env.op.sync, cmd, {"uuid": fu, **extra}) == 404, cmd
            assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
            assert _create(env, "foreign", media=[{"url": "/images/vm.raw"}]) == 409
            assert _create(env, "core0-kvm-probe-x", media=[{"url": "/images/vm.raw"}]) == 400
            # nor on the metrics endpoint (core0's VM is), sampled since it was made
            from core0.fleet.metrics import QUEUE_EVERY

            def scrape() -> str:
                return str(env.node.ns.run("curl", "-sf", "-m", "10",
                                           f"http://127.0.0.1:{METRICS_PORT}/metrics").stdout)

            time.sleep(QUEUE_EVERY + 1)
            assert wait_until(lambda: f'uuid="{vm}"' in scrape(), 3 * QUEUE_EVERY), scrape()
            assert fu not in scrape(), scrape()[-2000:]
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
    assert env.admin.json("kvm.get", {"uuid": vm})["state"] == "running"


def test_migrate_only_to_another_hosts_libvirtd(env: Env, vm: str) -> None:
    """desturi with a transport that runs a program or opens a local socket, URI parameters,
    loopback or another path: 400 before libvirt is asked (the program never runs)."""
    ran = env.base / "ext-ran"
    prog = env.base / "ext.sh"
    prog.write_text(f"#!/bin/sh\ntouch {ran}\n")
    prog.chmod(0o755)
    for uri in (f"qemu+ext://other.example/system?command={prog}",
                f"qemu+ssh://other.example/system?command={prog}",
                f"qemu+ssh://other.example/system?netcat={prog}",
                f"qemu+unix:///system?socket={env.node.socket}",
                f"qemu+tcp://10.250.0.2/system?socket={env.node.socket}",
                "qemu+tls://10.250.0.2/system?pkipath=/etc",
                "qemu+tcp://127.0.0.1:6379/system", "qemu+tcp://[::1]/system",
                "qemu+tcp://localhost/system", "qemu+tcp://169.254.169.254/system",
                "qemu+tcp:///system", "test:///default", "qemu+tcp://10.250.0.2/session",
                "qemu+tcp://u:pw@10.250.0.2/system", "qemu+tcp://10.250.0.2/system#x"):
        assert code_of(env.op.sync, "kvm.migrate", {"uuid": vm, "desturi": uri}) == 400, uri
    assert not ran.exists()
    rec = json.loads((env.vdir / vm / "vm.json").read_text())
    assert "migrating" not in rec and "migrated" not in rec
    assert env.ro.json("kvm.get", {"uuid": vm})["state"] == "running"


def test_bad_input_is_4xx_and_leaves_nothing(env: Env, vm: str) -> None:
    """Input libvirt/qemu would refuse only while starting the VM: 4xx, never 500, and the
    refused creates leave no domain and no VM directory; the node logged no traceback."""
    img = env.root / "images"
    _img("-f", "raw", str(img / "b.raw"), "1M")
    disk = {"url": "/images/b.raw", "format": "raw"}
    before = _vm_dirs(env)
    for bad in ("a\ud800b", "a\udcffb", "a\ufffeb"):
        assert _create(env, "s1", media=[disk], cmdline=bad, kernel="/images/vmlinuz") == 400
        assert _create(env, "s2", media=[disk], tags=[bad]) == 400
        assert _create(env, "s3", media=[{"url": f"/images/{bad}"}]) == 400
        assert _create(env, "s4", media=[disk], kernel=f"/images/{bad}") == 400
        assert code_of(env.op.sync, "kvm.create-image", {"file_name": f"/images/{bad}"}) == 400
        assert code_of(env.op.sync, "kvm.migrate",
                       {"uuid": vm, "desturi": f"qemu+tcp://h{bad}/system"}) == 400
    assert code_of(env.op.sync, "kvm.create-image", {"file_name": "/images/huge.qcow2",
                                                     "size": "999999999999999T"}) == 400
    assert not (img / "huge.qcow2").exists()
    cd = {"url": "/images/b.raw", "type": "cdrom"}
    assert _create(env, "ide5", media=[cd] * 5) == 400
    assert _create(env, "ide5b", media=[{**disk, "bus": "ide"}] * 5) == 400
    for tune in ({"totalbytessecmax": 1000, "totalbytessecmaxset": True},
                 {"readiopssecmaxlength": 5, "readiopssecmaxlengthset": True,
                  "readiopssec": 10, "readiopssecset": True},
                 {"totalbytessec": 10, "totalbytessecset": True, "readbytessec": 5,
                  "readbytessecset": True}):
        assert _create(env, "tune", media=[{**disk, "iotune": tune}]) == 400, tune
        assert code_of(env.op.sync, "kvm.limit_disk_io",
                       {"uuid": vm, "media": {"url": "/images/vm.raw"}, **tune}) == 400, tune
        assert code_of(env.op.sync, "kvm.attach_disk",
                       {"uuid": vm, "media": {**disk, "iotune": tune}}) == 400, tune
    # an image qemu holds for another VM (or twice in one): 409, not 500
    assert _create(env, "twice", media=[disk, disk]) == 409
    assert _create(env, "taken", media=[{"url": "/images/vm.raw", "format": "raw"}]) == 409
    assert code_of(env.op.sync, "kvm.convert-image", {  # qemu-img's lock: 409, not 500
        "input_file": "/images/vm.raw", "output_file": "/images/vm.qcow2",
        "output_format": "qcow2"}) == 409
    assert not (img / "vm.qcow2").exists()
    assert _domains(env) == ["fw"] and _vm_dirs(env) == before
    # a valid iotune still applies
    env.op.sync("kvm.limit_disk_io", {"uuid": vm, "media": {"url": "/images/vm.raw"},
                                      "totalbytessec": 1 << 20, "totalbytessecset": True,
                                      "totalbytessecmax": 2 << 20,
                                      "totalbytessecmaxset": True})
    log = env.node.log_text()
    assert "Traceback" not in log, log[-3000:]
    assert os.path.exists(env.node.socket)


# ---------------------------------------------------------------- owners, caps, descriptors


def _running(env: Env, *uuids: str) -> bool:
    with _lv(env) as conn, contextlib.suppress(Exception):
        return all(conn.lookupByUUIDString(u).state()[0] == 1 for u in uuids)  # RUNNING
    return False


@pytest.fixture(scope="module")
def adm(env: Env) -> Iterator[str]:
    """A running VM made by the admin queue (firmware only, like ``vm``)."""
    _img("-f", "raw", str(env.root / "images/adm.raw"), "1M")
    uuid = env.admin.json("kvm.create", {"name": "adm", "memory": 32, "media": [
        {"url": "/images/adm.raw", "format": "raw"}]})
    yield uuid
    with contextlib.suppress(Exception):
        env.admin.sync("kvm.destroy", {"uuid": uuid})


def test_a_vm_is_its_creators(env: Env, vm: str, adm: str) -> None:
    """An operator queue gets 403 for every acting command on the admin's VM, a private
    operator queue on the other operator queue's VM too, and the VMs run on, unpaused; the
    owner's queue and admin act on theirs. Read-only and the private queue see the kernel
    command line redacted; the kernel qemu loaded is core0's copy in the VM's directory."""
    for c, target in ((env.op, adm), (env.pop, adm), (env.pop, vm)):
        for cmd, extra in ACTS:
            assert code_of(c.sync, cmd, {"uuid": target, **extra}) == 403, (cmd, target)
    assert _running(env, vm, adm) and (env.vdir / adm).is_dir()
    for c in (env.op, env.admin):
        c.sync("kvm.pause", {"uuid": vm})
        c.sync("kvm.resume", {"uuid": vm})
    uuid = env.op.json("kvm.create", {"name": "kern", "memory": 32, "kernel": "/images/vmlinuz",
                                      "cmdline": "console=ttyS0 token=s3cr3t"})
    try:
        for c in (env.ro, env.pop):
            params = c.json("kvm.get", {"uuid": uuid})["params"]
            assert params["cmdline"] == "<redacted>" and params["kernel"] == "/images/vmlinuz"
            assert "s3cr3t" not in json.dumps(c.json("kvm.list"))
        for c in (env.op, env.admin):
            assert c.json("kvm.get", {"name": "kern"})["params"]["cmdline"].endswith("s3cr3t")
        with _lv(env) as conn:
            xml = conn.lookupByUUIDString(uuid).XMLDesc(0)
        copy = env.vdir / uuid / "kernel"
        assert f"<kernel>{copy}</kernel>" in xml
        assert copy.read_bytes() == (env.root / "images/vmlinuz").read_bytes()
    finally:
        env.op.sync("kvm.destroy", {"uuid": uuid})
    assert _running(env, vm) and not (env.vdir / uuid).exists()


def test_events_only_of_visible_vms(env: Env, vm: str) -> None:
    """kvm.events: a foreign domain's events reach nobody; the operator's VM's events reach
    admin and that operator queue, not a read-only or another (private) operator queue."""
    jobs = {name: c.raw("kvm.events", {}).id for name, c in (
        ("admin", env.admin), ("op", env.op), ("ro", env.ro), ("pop", env.pop))}
    try:
        for job in jobs.values():
            assert wait_until(lambda j=job: any(e["event"] == "subscribed"
                                                for e in events_of(env, j)), 30)
        with _lv(env) as conn:
            dom = conn.createXML(FOREIGN_XML, 0)
            fu = dom.UUIDString()
            dom.suspend()
            dom.resume()
            dom.destroy()
        env.op.sync("kvm.pause", {"uuid": vm})
        env.op.sync("kvm.resume", {"uuid": vm})
        assert wait_until(lambda: all(seen(env, jobs[n], vm, "resumed")  # type: ignore[arg-type]
                                      for n in ("admin", "op")), 15)
        threading.Event().wait(0.5)  # the other two had the same events to filter
        for name, job in jobs.items():
            got = {e["uuid"] for e in events_of(env, job)}  # type: ignore[arg-type]
            assert fu not in got and (vm in got) == (name in ("admin", "op")), (name, got)
    finally:
        for job in jobs.values():
            with contextlib.suppress(Exception):
                env.admin.job.kill(job)


def test_role_caps(env: Env, vm: str) -> None:
    """virt.role_max_vms = 4 and role_max_memory_mib = 600 for operators (both operator
    queues count): of five concurrent creates with the operator's VM running, three pass and
    two get 503; more memory than is left: 503. A refused create leaves no domain, no VM
    directory (no overlay). Admin has no cap."""
    _img("-f", "qcow2", str(env.root / "images/capbase.qcow2"), "1M")
    args = {"memory": 32, "media": [{"url": "/images/capbase.qcow2", "overlay": True}]}
    dirs, doms = _vm_dirs(env), _domains(env)
    clients = [env.node.client("pops" if i % 2 else "ops", timeout=120) for i in range(5)]

    def make(i: int) -> Any:
        try:
            return clients[i].json("kvm.create", {**args, "name": f"cap{i}"})
        except Exception as e:
            return getattr(e, "code", e)

    with ThreadPoolExecutor(5) as pool:
        out = list(pool.map(make, range(5)))
    made = [u for u in out if isinstance(u, str)]
    try:
        assert out.count(503) == 2 and len(made) == 3, out
        assert _vm_dirs(env) == dirs | set(made) and len(_domains(env)) == len(doms) + 3
        assert code_of(env.op.json, "kvm.create", {**args, "name": "cap9"}) == 503
    finally:
        for u in made:
            env.admin.sync("kvm.destroy", {"uuid": u})
        for c in clients:
            c.close()
    assert code_of(env.pop.json, "kvm.create", {**args, "name": "big", "memory": 580}) == 503
    assert _vm_dirs(env) == dirs and _domains(env) == doms
    env.admin.sync("kvm.destroy", {"uuid": env.admin.json("kvm.create", {
        **args, "name": "big", "memory": 640})})


def test_convert_image_reads_what_it_checked(env: Env) -> None:
    """kvm.convert-image's input path flipping to a symlink to a host file, then an image's
    header flipping between a backing file inside the root and the host file: no output ever
    holds the host file's bytes (qemu-img reads the checked descriptors, the chain given
    explicitly). Both fail on a convert that reads by path."""
    img = env.root / "images"
    (img / "cin.real").write_bytes(b"INSIDE-THE-ROOT\n" * 65536)
    outs: list[Path] = []
    codes: list[int] = []

    def convert(name: str, n: int, flipper: Any, *a: Any) -> None:
        outs.clear()
        stop = threading.Event()
        t = threading.Thread(target=flipper, args=(stop, *a), daemon=True)
        t.start()
        try:
            for i in range(n):
                try:
                    env.op.sync("kvm.convert-image", {"input_file": f"/images/{name}",
                                                      "output_file": f"/images/{name}{i}.out",
                                                      "output_format": "raw"})
                    outs.append(img / f"{name}{i}.out")
                except Exception as e:
                    codes.append(getattr(e, "code", 0))
        finally:
            stop.set()
            t.join(5)
        assert outs and all(SECRET not in p.read_bytes() for p in outs), (name, len(outs))

    # a symlink 1 ms of every 3
    convert("cin.raw", 16, flip, img / "cin.raw", img / "cin.real", env.secret, (0.001, 0.002))
    assert set(codes) <= {400, 404, 409}, codes
    # the same header naming a backing file inside the root, or the host file
    for name, backing in (("hin", img / "cin.real"), ("hout", env.secret)):
        _img("-f", "qcow2", "-u", "-F", "raw", "-b", str(backing), str(img / name), "1M")
    heads = [(img / n).read_bytes()[:4096] for n in ("hout", "hin")]
    (img / "top.qcow2").write_bytes((img / "hin").read_bytes())

    def rewrite(stop: threading.Event) -> None:
        fd = os.open(img / "top.qcow2", os.O_WRONLY)
        while not stop.is_set():
            for h, pause in zip(heads, (0.02, 0.03), strict=True):
                os.pwrite(fd, h, 0)
                stop.wait(pause)
        os.close(fd)

    convert("top.qcow2", 12, rewrite)


def test_convert_image_reaches_no_data_file_named_later(env: Env) -> None:
    """A qcow2 input rewritten, between core0's check and qemu-img's open (the node's hold),
    to name a host file as its raw external data file: qemu-img runs confined to the
    descriptors it was given, so the name leads nowhere — 400 naming it, no output left;
    the same convert without the rewrite succeeds. Unconfined, the output held the host
    file's bytes."""
    img, out = env.root / "images", env.root / "images/held"
    _img("-f", "qcow2", "-o", f"data_file={img / 'df.raw'},data_file_raw=on",
         str(img / "evil.qcow2"), "1M")
    subprocess.run(["qemu-img", "amend", "-f", "qcow2", "-o", f"data_file={env.secret}",
                    str(img / "evil.qcow2")], check=True)
    for rewrite in (True, False):
        _img("-f", "qcow2", str(img / "plain.qcow2"), "1M")
        job = env.op.raw("kvm.convert-image", {"input_file": "/images/plain.qcow2",
                                               "output_file": "/images/held",
                                               "output_format": "raw"})
        # the same inode (core0's descriptor), new content
        res = through_hold(env.base, job, (lambda: (img / "plain.qcow2").write_bytes(
            (img / "evil.qcow2").read_bytes())) if rewrite else None)
        if rewrite:
            assert (res.state.value, res.code) == ("ERROR", 400), res
            assert f"Could not open '{env.secret}'" in res.data, res.data
            assert not out.exists()
        else:
            assert res.state.value == "SUCCESS", res
            assert out.stat().st_size == 1 << 20 and SECRET not in out.read_bytes()
            out.unlink()
        (img / "plain.qcow2").unlink()


def test_owners_survive_restart_and_redeclaration(env: Env, vm: str, adm: str) -> None:
    """A private operator queue declares a VM: another queue may not declare it again (same
    or changed spec: 403). The node stops, the declared VM dies meanwhile (a reboot, for it),
    the node starts again: the VM is back and still the private queue's; the other VMs ran
    on and are still their owners'."""
    spec = {"name": "pdecl", "memory": 32, "persistent": True, "cmdline": "k=secret",
            "media": [{"url": "/images/pdecl.raw", "format": "raw"}]}
    _img("-f", "raw", str(env.root / "images/pdecl.raw"), "1M")
    pu = env.pop.json("kvm.create", spec)
    assert code_of(env.op.json, "kvm.create", spec) == 403
    assert code_of(env.op.json, "kvm.create", {**spec, "memory": 48}) == 403
    assert env.pop.json("kvm.create", spec) == pu
    for c in (env.admin, env.op, env.ro, env.pop):
        c.close()
    env.node.stop()
    with _lv(env) as conn:
        conn.lookupByUUIDString(pu).destroy()
    env.node = spawn_node(env.node.ns, env.base, env.cfg, HOLD(env.base))
    env.connect()

    assert wait_until(lambda: _running(env, pu), 60), env.node.log_text()[-3000:]
    for c, target in ((env.op, pu), (env.op, adm), (env.pop, vm), (env.pop, adm)):
        assert code_of(c.sync, "kvm.pause", {"uuid": target}) == 403, target
    for c, target in ((env.pop, pu), (env.op, vm)):
        c.sync("kvm.pause", {"uuid": target})
        c.sync("kvm.resume", {"uuid": target})
    assert env.ro.json("kvm.get", {"uuid": pu})["params"]["cmdline"] == "<redacted>"
    env.pop.sync("kvm.destroy", {"uuid": pu})
    assert not list((env.base / "persist" / "vms").iterdir())
