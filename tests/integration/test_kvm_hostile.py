"""Hostile use of ``kvm.*`` from operator and read-only queues (and careless admin input).

A node in its own "host" network namespace with a private libvirtd (tests/kvm_env.py,
tests/virt_fixtures.py) serves ``default`` (admin), ``ops`` (operator) and ``ro``
(read-only). Its filesystem root is a temp dir; a "host secret" file lies outside it.

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

The only guest is a diskless-firmware VM (a blank disk, no kernel: SeaBIOS finds nothing to
boot), enough for libvirt to hold a running core0 domain.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import code_of
from kvm_env import start_node
from net_fixtures import NetNode, netns
from virt_fixtures import Libvirtd, guest_files, libvirtd

pytestmark = [pytest.mark.root, pytest.mark.vm, pytest.mark.slow]

CONFIG = ('[main]\nfilesystem_root = "{root}"\n'
          '[bus]\nqueues = {{default = "admin", ops = "operator", ro = "read-only"}}\n'
          '[virt]\nuri = "{uri}"\ndir = "{vdir}"\nprobe_kernel = "{kernel}"\n')
SECRET = b"HOST-SECRET-OUTSIDE-THE-ROOT\n"
FOREIGN_XML = ("<domain type='qemu'><name>foreign</name><memory unit='MiB'>16</memory>"
               "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
               "<devices><memballoon model='none'/></devices></domain>")


@dataclass
class Env:
    node: NetNode
    lv: Libvirtd
    base: Path
    root: Path  #: the node's filesystem root
    vdir: Path  #: virt.dir
    secret: Path  #: a host file outside the root
    admin: Any
    op: Any
    ro: Any


def _img(*argv: str) -> None:
    subprocess.run(["qemu-img", "create", "-q", *argv], check=True)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    kernel, _ = guest_files()
    base = Path(tempfile.mkdtemp(prefix="core0-kvmh-", dir="/tmp"))
    root, vdir = base / "root", base / "virt"
    (root / "images").mkdir(parents=True)
    shutil.copy2(kernel, root / "images" / "vmlinuz")
    secret = base / "secret.raw"
    secret.write_bytes(SECRET * 4096)
    try:
        with netns("host") as ns, libvirtd(ns.name) as lv:
            cfg = base / "core0.toml"
            cfg.write_text(CONFIG.format(root=root, uri=lv.uri, vdir=vdir,
                                         kernel=root / "images/vmlinuz"))
            node = start_node(ns, base, cfg)
            clients = [node.client(q, timeout=120) for q in (None, "ops", "ro")]
            try:
                yield Env(node, lv, base, root, vdir, secret, *clients)
            finally:
                for c in clients:
                    with contextlib.suppress(Exception):
                        c.close()
                node.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def vm(env: Env) -> Iterator[str]:
    """A running core0 VM, made by the operator: a blank disk, no kernel (firmware only)."""
    _img("-f", "raw", str(env.root / "images/vm.raw"), "1M")
    uuid = env.op.json("kvm.create", {"name": "fw", "memory": 32,
                                      "media": [{"url": "/images/vm.raw", "format": "raw"}]})
    yield str(uuid)
    with contextlib.suppress(Exception):
        env.admin.sync("kvm.destroy", {"uuid": uuid})


def _create(env: Env, name: str, **kw: Any) -> int:
    """The code of an operator's kvm.create that must fail."""
    args: dict[str, Any] = {"name": name, "memory": 32}
    args.update(kw)
    return code_of(env.op.json, "kvm.create", args)


def _domains(env: Env) -> list[str]:
    import libvirt

    conn = libvirt.open(env.lv.uri)
    try:
        return sorted(d.name() for d in conn.listAllDomains(0)
                      if not d.name().startswith("core0-kvm-probe-"))
    finally:
        conn.close()


def _vm_dirs(env: Env) -> set[str]:
    return {p.name for p in env.vdir.glob("*-*-*-*-*")} if env.vdir.exists() else set()


class _Listener:
    """A unix socket that counts the connections made to it (qemu-img's nbd client)."""

    def __init__(self, path: Path):
        self.path = path
        self.count = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.count += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


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
    listener = _Listener(sock)
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


def _qemu_files(uuid: str) -> list[str]:
    """The regular files the qemu of VM ``uuid`` holds open (psutil, by its -uuid)."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and os.path.basename(cmd[0]).startswith("qemu-system") and uuid in cmd:
            return [f.path for f in p.open_files()]
    return []


def test_media_swapped_for_a_symlink_while_creating(env: Env) -> None:
    """A disk path flipping between a checked file and a symlink to a host file (what an
    operator's container with the root bind-mounted can do) while kvm.create runs: no VM ever
    runs with the host file open; every refusal is a 4xx."""
    img = env.root / "images"
    real, race = img / "race.real", img / "race.raw"
    _img("-f", "raw", str(real), "1M")
    stop = threading.Event()

    def flip() -> None:  # a symlink 40 ms of every 100: core0's checks and qemu's open differ
        while not stop.is_set():
            with contextlib.suppress(OSError):
                os.symlink(env.secret, img / ".l")
                os.replace(img / ".l", race)
            stop.wait(0.04)
            with contextlib.suppress(OSError):
                os.link(real, img / ".f")
                os.replace(img / ".f", race)
            stop.wait(0.06)

    t = threading.Thread(target=flip, daemon=True)
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
            files = _qemu_files(uuid)
            env.admin.sync("kvm.destroy", {"uuid": uuid})
            made.append(files)
    finally:
        stop.set()
        t.join(5)
    assert all(400 <= c < 500 for c in codes), codes
    assert all(str(env.secret) not in files for files in made), made
    assert all(any(f.startswith(str(race)) for f in files) for files in made), made
    assert _domains(env) == []


def test_new_image_name_swapped_for_a_symlink(env: Env) -> None:
    """kvm.create-image's output name flipping between absent and a symlink to a host file:
    the host file is never written (core0 creates the file itself, O_EXCL|O_NOFOLLOW, and
    qemu-img writes through that descriptor); every answer is success or 409."""
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

    conn = libvirt.open(env.lv.uri)
    try:
        dom = conn.createXML(FOREIGN_XML, 0)
        fu = dom.UUIDString()
        try:
            assert [i["uuid"] for i in env.ro.json("kvm.list")] == [vm]
            assert code_of(env.ro.json, "kvm.get", {"uuid": fu}) == 404
            assert code_of(env.ro.json, "kvm.get", {"name": "foreign"}) == 404
            assert code_of(env.ro.json, "kvm.info", {"uuid": fu}) == 404
            for cmd, extra in (("kvm.pause", {}), ("kvm.reset", {}), ("kvm.reboot", {}),
                               ("kvm.shutdown", {}), ("kvm.destroy", {}),
                               ("kvm.attach_disk", {"media": {"url": "/images/vm.raw"}}),
                               ("kvm.migrate", {"desturi": "qemu+tcp://10.250.0.2/system"}),
                               ("kvm.portforward-add", {"host_port": "8080",
                                                        "container_port": 80})):
                assert code_of(env.op.sync, cmd, {"uuid": fu, **extra}) == 404, cmd
            assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
            assert _create(env, "foreign", media=[{"url": "/images/vm.raw"}]) == 409
            assert _create(env, "core0-kvm-probe-x", media=[{"url": "/images/vm.raw"}]) == 400
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
    finally:
        conn.close()
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
    rec = __import__("json").loads((env.vdir / vm / "vm.json").read_text())
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
    assert _domains(env) == ["fw"] and _vm_dirs(env) == before
    # a valid iotune still applies
    env.op.sync("kvm.limit_disk_io", {"uuid": vm, "media": {"url": "/images/vm.raw"},
                                      "totalbytessec": 1 << 20, "totalbytessecset": True,
                                      "totalbytessecmax": 2 << 20,
                                      "totalbytessecmaxset": True})
    log = env.node.log_text()
    assert "Traceback" not in log, log[-3000:]
    assert os.path.exists(env.node.socket)
