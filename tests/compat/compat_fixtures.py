"""The 0-core compatibility suite: 0-core's own Python client (``0-core-client`` from PyPI,
``zeroos.core0.client``) against a real core0 node, unchanged, with its own defaults.

One core0 node serves the whole suite. It runs in a network namespace of its own (its links,
bridges and nft table never touch the host; it shares the host's mounts), listening on
127.0.0.1 there with a password and its front (TLS, 0-core's command names) on a port of its
own; the test process joins that namespace (``setns``) for the suite, so the client connects
the way a 0-core user's would: ``Client(host, port, password=…)``, nothing else changed.
Disks are loop devices (``storage_fixtures``).

Every test records what each client method did (``record``): the table in docs/compat.md is
written from it (``CORE0_COMPAT_TABLE=docs/compat.md pytest tests/compat``). Under
``CI=true`` a missing client, tool or privilege fails the suite instead of skipping it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, require, require_root, stop_tree, unavailable
from net_fixtures import Netns, netns
from storage_fixtures import umount_below

ROOT = Path(__file__).resolve().parent.parent.parent
CLONE_NEWNET = 0x40000000

#: every method of every 0-core client manager core0 serves. PyPI's 0-core-client (1.1.0a8)
#: has most of them; the methods only 0-core's last client has (threefoldtech/0-core's git
#: master client: info.dmi, ip.bond, disk.spindown/seektime, cgroup, job.unschedule,
#: ip.link.mtu, bridge.nic_*, container.layer, zfs, rtinfo, socat) are called through the PyPI
#: client's own ``json``/``raw``/``filesystem`` with exactly the arguments that client sends.
METHODS = [
    "ping", "system", "bash", "subscribe", "raw", "sync", "json", "response_for",
    "info.cpu", "info.nic", "info.mem", "info.disk", "info.os", "info.port", "info.version",
    "info.dmi",
    "job.list", "job.kill", "job.unschedule",
    "process.list", "process.kill",
    "filesystem.open", "filesystem.exists", "filesystem.list", "filesystem.mkdir",
    "filesystem.remove", "filesystem.move", "filesystem.chmod", "filesystem.chown",
    "filesystem.read", "filesystem.write", "filesystem.close", "filesystem.upload",
    "filesystem.download", "filesystem.upload_file", "filesystem.download_file",
    "ip.bridge.add", "ip.bridge.delete", "ip.bridge.addif", "ip.bridge.delif",
    "ip.link.up", "ip.link.down", "ip.link.name", "ip.link.mtu", "ip.link.list",
    "ip.addr.add", "ip.addr.delete", "ip.addr.list",
    "ip.route.add", "ip.route.delete", "ip.route.list",
    "ip.bond.add", "ip.bond.delete", "ip.bond.list",
    "bridge.create", "bridge.list", "bridge.delete", "bridge.nic_add", "bridge.nic_remove",
    "bridge.nic_list",
    "disk.list", "disk.mktable", "disk.getinfo", "disk.mkpart", "disk.rmpart", "disk.mount",
    "disk.umount", "disk.spindown", "disk.seektime",
    "btrfs.list", "btrfs.info", "btrfs.create", "btrfs.device_add", "btrfs.device_remove",
    "btrfs.subvol_create", "btrfs.subvol_list", "btrfs.subvol_delete", "btrfs.subvol_quota",
    "btrfs.subvol_snapshot",
    "logger.set_level", "logger.reopen", "logger.subscribe", "logger.unsubscribe",
    "nft.open_port", "nft.drop_port", "nft.list", "nft.rule_exists",
    "config.get",
    "aggregator.query",
    "zfs.config", "zfs.purge", "zfs.set_cache",
    "zerotier.join", "zerotier.leave", "zerotier.list", "zerotier.info",
    "rtinfo.start", "rtinfo.stop", "rtinfo.list",
    "socat.list", "socat.reserve",
    "cgroup.list", "cgroup.ensure", "cgroup.remove", "cgroup.tasks", "cgroup.task_add",
    "cgroup.task_remove", "cgroup.reset", "cgroup.memory", "cgroup.cpuset",
    "container.create", "container.list", "container.find", "container.get",
    "container.terminate", "container.nic_add", "container.nic_remove",
    "container.portforward_add", "container.portforward_remove", "container.backup",
    "container.restore", "container.layer", "container.client",
    "container.client.system", "container.client.bash", "container.client.raw",
    "container.client.sync", "container.client.json", "container.client.ping",
    "container.client.subscribe", "container.client.info", "container.client.job",
    "container.client.process", "container.client.filesystem", "container.client.ip",
    "container.client.zerotier",
    "kvm.create", "kvm.list", "kvm.get", "kvm.info", "kvm.infops", "kvm.pause", "kvm.resume",
    "kvm.reboot", "kvm.reset", "kvm.shutdown", "kvm.destroy", "kvm.attach_disk",
    "kvm.detach_disk", "kvm.add_nic", "kvm.remove_nic", "kvm.limit_disk_io",
    "kvm.migrate", "kvm.prepare_migration_target", "kvm.create_image", "kvm.convert_image",
    "kvm.portforward_add", "kvm.portforward_remove",
]

#: rows that are 0-core *server* commands no client has a method for: sent with ``json``
SERVER_COMMANDS = {
    "container.portforward_add": "corex.portforward-add",
    "container.portforward_remove": "corex.portforward-remove",
    "kvm.create_image": "kvm.create-image", "kvm.convert_image": "kvm.convert-image",
    "kvm.portforward_add": "kvm.portforward-add",
    "kvm.portforward_remove": "kvm.portforward-remove",
}

_RESULTS: dict[str, tuple[str, bool]] = {}
TABLE = ROOT / "docs" / "compat.md"
_START, _END = "<!-- compat-table -->", "<!-- /compat-table -->"


def zeroos() -> Any:
    """The ``zeroos.core0.client`` module (skips locally, fails in CI, when not installed)."""
    try:
        import zeroos.core0.client as zc
    except ImportError:
        unavailable("0-core-client is not installed (scripts/install-deps.sh installs it)")
    return zc


@pytest.fixture
def record() -> Any:
    """``record(method, what_the_client_got, works=True)``: one row of docs/compat.md
    (``works=False``: core0 answers, deliberately without doing it, e.g. 501)."""

    def rec(method: str, outcome: str, works: bool = True) -> None:
        assert method in METHODS, method
        _RESULTS[method] = (outcome, works)

    return rec


def render_table() -> str:
    """The method table of docs/compat.md, from what this session recorded."""
    def cell(m: str) -> str:
        return _RESULTS.get(m, ("**fails** (see the suite)", False))[0].replace("|", "\\|")

    def name(m: str) -> str:
        if m in SERVER_COMMANDS:
            return f"`{m}` (server command `{SERVER_COMMANDS[m]}`, sent with `json`)"
        return f"`{m}`"

    rows = [f"| {name(m)} | {cell(m)} |" for m in METHODS]
    n = sum(1 for m in METHODS if _RESULTS.get(m, ("", False))[1])
    return "\n".join([f"{n} of {len(METHODS)} methods work; the others answer as documented "
                      "(501 with the reason, or 412).", "",
                      "| client method | what the client gets from core0 |", "|---|---|",
                      *rows])


#: where the working path of the machine-bound methods is checked: this development host has
#: neither a DMI table, nor the bonding driver, nor an ATA disk; the image under qemu has all
#: three (its SMBIOS, the bonding module, a SATA disk on qemu's AHCI controller)
IN_QEMU = "verified in the image under qemu: tests/e2e/test_vm_full.py"

#: rows whose answer depends on the machine (a DMI table, the bonding driver): their text is
#: not compared with the committed table
HOST_DEPENDENT = {"info.dmi", "ip.bond.add", "ip.bond.delete", "ip.bond.list"}


def _rows(table: str) -> dict[str, str]:
    """method → its table line."""
    out = {}
    for line in table.splitlines():
        if line.startswith("| `"):
            out[line.split("`")[1]] = line
    return out


def _committed_table(path: Path) -> str:
    text = path.read_text()
    return text[text.index(_START) + len(_START):text.index(_END)].strip("\n")


_DESELECTED: list[str] = []


def pytest_deselected(items: list[pytest.Item]) -> None:
    """Remember compat tests left out by ``-k``/``-m``: the run is then a selection."""
    _DESELECTED.extend(i.nodeid for i in items if "test_compat_" in i.nodeid)


def _full_run(session: pytest.Session) -> bool:
    """Whether this session ran every test of the compat suite (not a selection)."""
    here = Path(__file__).resolve().parent
    files = {p.name for p in here.glob("test_compat_*.py")}
    ran = {Path(str(i.fspath)).name for i in session.items}
    picked = any("::" in str(a) for a in session.config.args)
    return bool(files) and files <= ran and not _DESELECTED and not picked


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the table (``CORE0_COMPAT_TABLE``), and after a full run check that every
    method was recorded and that docs/compat.md's table is the recorded one: under
    ``CI=true`` a missing method or a drifted table fails the session."""
    if not _RESULTS:
        return
    target = os.environ.get("CORE0_COMPAT_TABLE")
    if target:
        path = Path(target)
        text = path.read_text()
        a, b = text.index(_START) + len(_START), text.index(_END)
        path.write_text(text[:a] + "\n" + render_table() + "\n" + text[b:])
        return
    if not _full_run(session):
        return
    problems = [f"not recorded (neither working nor a documented answer): {m}"
                for m in METHODS if m not in _RESULTS]
    ours = _rows(render_table())
    committed = _rows(_committed_table(TABLE))
    problems += [f"docs/compat.md lacks the row of {m}" for m in ours if m not in committed]
    problems += [f"docs/compat.md has a row for {m}, which the suite does not call"
                 for m in committed if m not in ours]
    problems += [f"docs/compat.md's row of {m} differs from the recording: {committed[m]!r} "
                 f"(recorded: {ours[m]!r})" for m in ours
                 if m in committed and m not in HOST_DEPENDENT and committed[m] != ours[m]]
    if not problems:
        return
    msg = "compat suite deviations:\n  " + "\n  ".join(problems) + \
        "\n(regenerate: CORE0_COMPAT_TABLE=docs/compat.md pytest tests/compat)"
    print("\n" + msg, file=sys.stderr)
    if os.environ.get("CI") == "true":
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# ---------------------------------------------------------------- the node and the client


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def inside(ns: Netns) -> Iterator[None]:
    """The test process inside ``ns``'s network namespace for the block."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)
        os.close(target)


class Zos:
    """The node under test and a connected 0-core client."""

    def __init__(self, ns: Netns, port: int, pid: int, base: Path, front_port: int,
                 password: str):
        self.ns, self.port, self.pid, self.base = ns, port, pid, base
        #: the front (0-core's redis-proxy in core0's place: TLS, LKEYEXISTS/LTTL)
        self.front_port = front_port
        #: the ``default`` user's password: 0-core's one-argument AUTH
        self.password = password
        #: the node's CA (``core0 tls init``), which the client's side trusts
        self.ca = base / "tls" / "ca.crt"
        self.client: Any = None
        #: where tests mount things
        self.mnt = base / "mnt"

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return (self.base / "node.log").read_text(errors="replace")
        return ""


def start(ns: Netns, base: Path, extra: str = "") -> Zos:
    """Start a node in ``ns`` with the front; ``extra``: more of its config file (TOML)."""
    state = base / "state"
    state.mkdir(parents=True)
    (base / "mnt").mkdir()
    port, front_port = free_port(), free_port()
    password = secrets.token_urlsafe(18)
    tls = base / "tls"
    subprocess.run([sys.executable, "-m", "core0", "tls", "init", "--dir", str(tls)],
                   check=True, cwd=str(ROOT), capture_output=True, timeout=120)
    # as a node serving 0-core's clients: a credential (the default user, 0-core's
    # one-argument AUTH) and the front on TLS, where 0-core's redis-proxy was
    conf = base / "core0.toml"
    conf.write_text(f"""[redis]
password = "{password}"
tls_cert = "{tls}/server.crt"
tls_key = "{tls}/server.key"
tls_ca = "{tls}/ca.crt"
front_port = {front_port}
""" + extra)
    os.chmod(conf, 0o600)
    # only the network namespace is the node's own: it shares the host's mounts (loop devices
    # mounted by the tests, the cgroup hierarchies), which ``ip netns exec`` would hide
    with open(base / "node.log", "wb") as log:
        proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{ns.name}", "--",
             sys.executable, "-m", "core0", "dev", "--config", str(conf),
             "--state-dir", str(state), "--redis-port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT), start_new_session=True)
    return Zos(ns, port, proc.pid, base, front_port, password)


def connect(zos: Zos) -> Any:
    """THE connection of the suite: 0-core's client with its own defaults (``ssl=True``,
    one-argument ``AUTH``, timeout 10 s, db 0, three connection attempts) on the node's
    front, as a 0-core user connects to 0-core's redis-proxy. The client is unchanged: its
    ledis-era ``LKEYEXISTS``/``LTTL`` reach Redis renamed by the front. Its redis-py verifies
    the certificate against the default trust store, to which the user adds the node's CA
    (here: ``SSL_CERT_FILE`` for the suite's process, set by ``zos``)."""
    zc = zeroos()
    deadline = time.monotonic() + 30
    while True:
        try:
            c = zc.Client("127.0.0.1", zos.front_port, password=zos.password)
            c.ping()
            return c
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError("core0 did not come up:\n" + zos.log_text()[-4000:]
                                   ) from None
            time.sleep(0.2)


#: extensions the suite's node declares: 0-core's ``[extension."<name>"]`` tables, as in its
#: conf/*.toml (core0/boot/extensions.py)
EXTENSIONS = r'''
[extension."compat.hello"]
binary = "echo"
args = ["hello {who}", "{count}"]

[extension."compat.json"]
binary = "sh"
args = ["-c", "printf '20:::\\n{\"n\": %s}\\n:::\\n' \"$1\"", "sh", "{n}"]
'''


@pytest.fixture(scope="session")
def zos() -> Iterator[Zos]:
    """A core0 node in its own netns, and 0-core's client connected to it."""
    require_root()
    require("redis-server", "nft", "dnsmasq", "ip", "nsenter", "openssl")
    zeroos()
    base = Path(tempfile.mkdtemp(prefix="core0-compat-"))
    with netns("compat") as ns:
        node = start(ns, base, EXTENSIONS)
        trust = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = str(node.ca)
        try:
            with inside(ns):
                node.client = connect(node)
                yield node
        finally:
            if trust is None:
                os.environ.pop("SSL_CERT_FILE", None)
            else:
                os.environ["SSL_CERT_FILE"] = trust
            stop(node)
            shutil.rmtree(base, ignore_errors=True)


def stop(node: Zos) -> None:
    """Stop the node (TERM, then its whole tree), unmount what tests left below its mnt."""
    stop_tree(node.pid)
    umount_below(str(node.mnt))


@pytest.fixture
def zc() -> Any:
    """The ``zeroos.core0.client`` module (its exceptions: ResultError, JobNotFoundError)."""
    return zeroos()


@pytest.fixture
def mnt(zos: Zos, tmp_path: Path) -> Iterator[Path]:
    """A fresh directory where the test's mounts are seen by the node too."""
    d = zos.mnt / tmp_path.name
    d.mkdir()
    yield d
    umount_below(str(d))
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def cl(zos: Zos) -> Any:
    """0-core's client (``zeroos.core0.client.Client``) connected to the node."""
    return zos.client
