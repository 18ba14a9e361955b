"""The node of tests/integration/test_kvm_hostile.py: its own libvirtd in netns ``host``, a
filesystem root in a temp dir, a "host secret" outside it, four queues (``default`` admin,
``ops`` operator, ``ro`` read-only, ``pops`` a private operator queue) and the fault-test hook
that holds the create of a VM named ``held`` between its check and its start."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import wait_until
from kvm_env import METRICS_PORT, start_node
from net_fixtures import NetNode, netns
from virt_fixtures import Libvirtd, guest_files, libvirtd

CONFIG = ('[main]\nfilesystem_root = "{root}"\npersistent_dir = "{persist}"\n'
          '[bus]\nqueues = {{default = "admin", ops = "operator", ro = "read-only", '
          'pops = "operator"}}\nprivate_queues = ["pops"]\n'
          '[virt]\nuri = "{uri}"\ndir = "{vdir}"\nprobe_kernel = "{kernel}"\n'
          'domain_type = "qemu"\n'  # (the probe is test_kvm.py's: 15-25 s here)
          'role_max_vms = {{operator = 4}}\nrole_max_memory_mib = {{operator = 600}}\n'
          '[segments]\nparent = "under0"\nvxlan_remotes = ["10.231.9.2"]\n'  # (vxlan segments)
          '[metrics]\nport = {metrics}\n')
SECRET = b"HOST-SECRET-OUTSIDE-THE-ROOT\n"


#: steps test_kvm_cut_short.py holds: kvm.attach_disk of VM ``cut`` right after the
#: guest's pause and of VM ``cut2`` right before libvirt plugs the disk; libvirt's thread
#: right after it destroyed, shut down, paused, limited or detached (``<vm>/<what>``); a
#: kvm.create-image / convert-image writing ``cs-img.qcow2``; a prepare_migration_target; a
#: persistent kvm.create of ``cs-r`` with a changed spec right after the old VM's destroy
CUT_SHORT = ("cut/suspend,cut2/attach,cs-d/destroy,cs-d9/destroy,cs-s/shutdown,cs-p/pause,"
             "cs-p/limit_disk_io,cs-x/detach_disk,cs-n/remove_nic,cs-img.qcow2,"
             "prepare/0c5e0000-0000-4000-8000-000000000001,cs-r/replace")


def HOLD(base: Path) -> dict[str, str]:
    """The node's fault-test hook: creates of VM ``held`` (and converts to an output file
    named ``held``) wait in ``base/hold``, and so do the steps of :data:`CUT_SHORT`."""
    return {"CORE0_TEST_VM_HOLD": f"held,{CUT_SHORT}:{base / 'hold'}"}


def through_hold(base: Path, job: Any, act: Callable[[], None] | None) -> Any:
    """The result of ``job``, a command the node holds (:func:`HOLD`) between its check and
    qemu's (qemu-img's) open, with ``act`` done exactly in that window."""
    hold = base / "hold"
    assert wait_until(lambda: (hold / "held").exists(), 60)
    if act is not None:
        act()
    (hold / "held").unlink()
    (hold / "go").touch()
    try:
        return job.get(120)
    finally:
        (hold / "go").unlink()
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
    cfg: Path
    admin: Any
    op: Any
    ro: Any
    pop: Any  #: an operator's private queue

    def connect(self) -> None:
        self.admin, self.op, self.ro, self.pop = (self.node.client(q, timeout=120)
                                                  for q in (None, "ops", "ro", "pops"))


def _img(*argv: str) -> None:
    subprocess.run(["qemu-img", "create", "-q", *argv], check=True)


@contextlib.contextmanager
def hostile_node() -> Iterator[Env]:
    """The node (the module's ``env`` fixture), stopped and removed at the end."""
    kernel, _ = guest_files()
    base = Path(tempfile.mkdtemp(prefix="core0-kvmh-", dir="/tmp"))
    root, vdir = base / "root", base / "virt"
    (root / "images").mkdir(parents=True)
    shutil.copy2(kernel, root / "images" / "vmlinuz")
    secret = base / "secret.raw"
    secret.write_bytes(SECRET * 4096)
    try:
        with netns("host") as ns, libvirtd(ns.name) as lv:
            ns.run("ip", "link", "add", "under0", "type", "veth", "peer", "name", "under1")
            ns.run("ip", "addr", "add", "10.231.9.1/24", "dev", "under0")
            for link in ("under0", "under1"):
                ns.run("ip", "link", "set", link, "up")
            cfg = base / "core0.toml"
            cfg.write_text(CONFIG.format(root=root, uri=lv.uri, vdir=vdir,
                                         kernel=root / "images/vmlinuz",
                                         persist=base / "persist", metrics=METRICS_PORT))
            (base / "hold").mkdir()
            e = Env(start_node(ns, base, cfg, HOLD(base)), lv, base, root, vdir, secret, cfg,
                    *[None] * 4)
            e.connect()
            try:
                yield e
            finally:
                for c in (e.admin, e.op, e.ro, e.pop):
                    with contextlib.suppress(Exception):
                        c.close()
                e.node.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def firmware_vm(env: Env) -> Iterator[str]:
    """A running core0 VM, made by the operator: a blank disk, no kernel (firmware only)."""
    _img("-f", "raw", str(env.root / "images/vm.raw"), "1M")
    uuid = env.op.json("kvm.create", {"name": "fw", "memory": 32,
                                      "media": [{"url": "/images/vm.raw", "format": "raw"}]})
    yield str(uuid)
    with contextlib.suppress(Exception):
        env.admin.sync("kvm.destroy", {"uuid": uuid})


@contextlib.contextmanager
def _lv(env: Env) -> Iterator[Any]:
    import libvirt

    conn = libvirt.open(env.lv.uri)
    try:
        yield conn
    finally:
        conn.close()


def _domains(env: Env) -> list[str]:
    with _lv(env) as conn:
        return sorted(d.name() for d in conn.listAllDomains(0)
                      if not d.name().startswith("core0-kvm-probe-"))


def _vm_dirs(env: Env) -> set[str]:
    return {p.name for p in env.vdir.glob("*-*-*-*-*")} if env.vdir.exists() else set()
