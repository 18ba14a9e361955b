"""End to end: a verified upgrade by kexec under qemu, and the automatic rollback.

Two core images, A and B (versions ``+a`` and ``+b``), are built and signed with a key made
here; B is built on an OCI image layout made here with umoci (``build.sh --base oci:…``: a
marker file and a tool that only the base holds, found on the node after the upgrade); A
boots with that key trusted (``core0.image.trusted_keys=`` on the kernel command line), a
signed image with a wrong hash is refused, then ``core.upgrade`` fetches B from an
HTTP server on the host (qemu's user network reaches the host's loopback as 10.0.2.2),
verifies and stages it, and kexecs: the same qemu process then answers with B's version and
digest, and B's boot assessment passes. Then a broken image C (B with a dispatcher that exits
at once, signed all the same) is installed: C never answers core.ping, and once its
supervisor has seen the dispatcher end ``image.crash_limit`` times (well before
``boot_deadline``) the node kexecs back to B by itself, and ``image.history`` says so (the
images directory rides along each kexec: the node has no disk). How fast a switch is gets
measured by bench/upgrade.py, not here.

Run under ``flock /tmp/core0-vm.lock`` on a shared machine.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, require
from image_fixtures import SignedBuilds
from sandbox_fixtures import oci_layout

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "initramfs-builder"))
import imagelib  # the image builder's cpio writer
import sign  # the image builder's signing step

from qemu.harness import VM, VMConfig, VMError

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(2400)]
#: seconds a switched-to image has to become healthy (B needs ~25 s under TCG on a quiet host;
#: the disk e2e runs with 60)
DEADLINE = 90
BROKEN = b'raise SystemExit("image C is broken on purpose (tests/e2e/test_upgrade.py)")\n'
SITE = "usr/lib/python3/dist-packages/core0/bus"
#: what only B's OCI base holds
MARKER = "B's root came from an OCI image made by tests/e2e/test_upgrade.py\n"
TOOL = "#!/bin/sh\necho \"base tool of B, args: $*\"\n"


def base_layout(d: Path) -> tuple[Path, str]:
    """An OCI layout (umoci) whose image ``b`` holds the marker and the tool; → (layout, the
    digest of its manifest)."""
    root = d / "b-root"
    (root / "etc").mkdir(parents=True)
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "etc/b-base-marker").write_text(MARKER)
    (root / "usr/local/bin/b-tool").write_text(TOOL)
    (root / "usr/local/bin/b-tool").chmod(0o755)
    layout = oci_layout(d, root, tag="b")
    index = json.loads((layout / "index.json").read_text())
    return layout, str(index["manifests"][0]["digest"])


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory,
           signed_builds: SignedBuilds) -> dict[str, Any]:
    require("qemu-system-x86_64", "umoci")
    d = tmp_path_factory.mktemp("images")
    layout, base_digest = base_layout(d)
    out = {"key": sign.public_key(signed_builds.pub), "base_digest": base_digest}
    signed_builds.image("a", d / "a")
    signed_builds.image("b", d / "b", base=f"oci:{layout}:b")
    broken(d / "b", d / "c", signed_builds.sec)
    for tag in ("a", "b", "c"):
        raw = (d / tag / "manifest.json").read_bytes()
        out[tag] = {"dir": d / tag, "digest": hashlib.sha256(raw).hexdigest(),
                    "version": json.loads(raw)["version"], "base": json.loads(raw).get("base")}
    return out


def broken(b: Path, c: Path, key: Path) -> None:
    """Image C: B's kernel and initramfs followed by a cpio that replaces the dispatcher with
    one that exits at once (its .pyc emptied, so Python compiles the new source), and a new
    manifest (version +c, the new sha256) signed with the trusted key."""
    c.mkdir()
    shutil.copy2(b / "vmlinuz", c / "vmlinuz")
    manifest = json.loads((b / "manifest.json").read_text())
    initrd = c / manifest["initramfs"]
    with initrd.open("wb") as f:
        f.write((b / manifest["initramfs"]).read_bytes())
        f.write(b"\0" * (-f.tell() % 4))
        w = imagelib.CpioWriter(f)
        w.add(imagelib.Entry(f"{SITE}/dispatcher.py", stat.S_IFREG | 0o644, BROKEN))
        w.add(imagelib.Entry(f"{SITE}/__pycache__/dispatcher.cpython-311.pyc",
                             stat.S_IFREG | 0o644, b""))
        w.finish()
    manifest["version"] = "0.1.0+c"
    manifest["sha256"][manifest["initramfs"]] = imagelib.sha256_file(initrd)
    (c / "manifest.json").write_text(json.dumps(manifest))
    sign.sign(c / "manifest.json", key, "core0 image 0.1.0+c core (broken on purpose)")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server(images: dict[str, Any]) -> Iterator[int]:
    """An HTTP server on the host's loopback serving the images' parent directory."""
    root = images["b"]["dir"].parent
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                          functools.partial(_Quiet, directory=str(root)))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield int(srv.server_address[1])
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def vm(images: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[VM]:
    tmp = tmp_path_factory.mktemp("vm")
    machine = VM(VMConfig(image_dir=images["a"]["dir"], serial_log=tmp / "serial.log",
                          append=[f"core0.image.trusted_keys={images['key']}",
                                  f"core0.image.boot_deadline={DEADLINE}"]))
    machine.start()
    machine.wait_ping(300)
    yield machine
    machine.close()


def ok(res: dict[str, Any]) -> Any:
    assert res["state"] == "SUCCESS", res
    return json.loads(res["data"])


def test_a_runs_with_its_version(vm: VM, images: dict[str, Any]) -> None:
    ver = ok(vm.command("info.version"))
    assert ver["version"] == images["a"]["version"] == "0.1.0+a"
    assert ver["image"]["digest"] is None  # booted by qemu -kernel: from outside


def test_a_bad_hash_is_refused_and_a_keeps_running(vm: VM, images: dict[str, Any],
                                                   server: int) -> None:
    url = f"http://10.0.2.2:{server}/b/manifest.json"
    res = vm.command("core.upgrade", {"url": url, "sha256": "0" * 64}, timeout=120)
    assert res["state"] == "ERROR" and res["code"] == 400, res
    assert ok(vm.command("image.list")) == []
    assert ok(vm.command("info.version"))["version"] == "0.1.0+a"


def test_upgrade_to_b_by_kexec(vm: VM, images: dict[str, Any], server: int) -> None:
    b = images["b"]
    boot_id = vm.system("cat", "/proc/sys/kernel/random/boot_id")["streams"][0].strip()
    url = f"http://10.0.2.2:{server}/b/manifest.json"
    out = ok(vm.command("core.upgrade", {"url": url, "sha256": b["digest"]}, timeout=600))
    assert out["digest"] == b["digest"] and out["version"] == b["version"]
    assert out["switch"] == "kexec" and out["kexec"][0] == "kexec"
    deadline = time.monotonic() + 600
    ver: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            if vm.redis_ping():
                ver = ok(vm.command("info.version", timeout=30))
                if ver["version"] == b["version"]:
                    break
        except (VMError, OSError, AssertionError):
            if not vm.running():
                raise
        time.sleep(1)
    assert ver.get("version") == b["version"], vm.tail()
    assert ver["image"]["digest"] == b["digest"]
    assert vm.system("cat", "/proc/sys/kernel/random/boot_id")["streams"][0].strip() != boot_id
    cmdline = vm.system("cat", "/proc/cmdline")["streams"][0]
    assert f"core0.image={b['digest']}" in cmdline and "core0.image.trusted_keys=" in cmdline
    # B's boot assessment passes (the images dir was tmpfs: B judges itself from scratch)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        hist = ok(vm.command("image.history"))
        if any(h["event"] in ("booted", "failed") for h in hist["history"]):
            break
        time.sleep(2)
    events = [(h["event"], h.get("digest")) for h in hist["history"]]
    # A's records came along: the images directory rode the kexec in a second cpio
    assert [e for e in events if e[1] == b["digest"]] == [
        ("staged", b["digest"]), ("upgrade", b["digest"]), ("booted", b["digest"])], hist
    cur = ok(vm.command("image.current"))
    assert cur["digest"] == b["digest"] and cur["staged"] is True
    # B's root is its OCI base with core0 on top: what only the base holds is on the node
    assert b["base"]["digest"] == images["base_digest"] and images["a"]["base"] is None
    assert vm.system("cat", "/etc/b-base-marker")["streams"][0] == MARKER
    ran = vm.system("/usr/local/bin/b-tool", "hello")["streams"][0]
    assert ran.strip() == "base tool of B, args: hello"


def answer(vm: VM, name: str, args: dict[str, Any] | None = None) -> Any:
    """The command's data, or None while the node does not answer (kexec, a broken image)."""
    try:
        res = vm.command(name, args, timeout=20)
    except (VMError, OSError):
        if not vm.running():
            raise vm.died() from None
        return None
    if res.get("state") != "SUCCESS":
        return None
    return json.loads(res["data"]) if res.get("level") == 20 else res["streams"][0]


def boot_id(vm: VM) -> str | None:
    out = answer(vm, "core.system", {"name": "cat", "args": ["/proc/sys/kernel/random/boot_id"]})
    return None if out is None else str(out).strip()


def wait_boot(vm: VM, version: str, old_boot: str, timeout: float) -> dict[str, Any]:
    """info.version of a new boot (another boot_id) running ``version``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if vm.redis_ping():
            now = boot_id(vm)
            ver = answer(vm, "info.version") if now not in (None, old_boot) else None
            if ver is not None and ver["version"] == version:
                return dict(ver)
        time.sleep(2)
    raise AssertionError(f"no new boot of {version} within {timeout:.0f}s\n{vm.tail()}")


def wait_history(vm: VM, last: str, timeout: float = 300) -> list[dict[str, Any]]:
    """image.history once its newest event is one of ``last``'s kind (or the timeout)."""
    deadline = time.monotonic() + timeout
    hist: dict[str, Any] = {"history": []}
    while time.monotonic() < deadline:
        hist = answer(vm, "image.history") or hist
        if hist["history"] and hist["history"][-1]["event"] in (last, "failed"):
            break
        time.sleep(2)
    return list(hist["history"])


def test_a_broken_image_rolls_back_by_itself(vm: VM, images: dict[str, Any],
                                             server: int) -> None:
    b, c = images["b"], images["c"]
    old_boot = boot_id(vm)
    assert old_boot
    url = f"http://10.0.2.2:{server}/c/manifest.json"
    out = ok(vm.command("core.upgrade", {"url": url, "sha256": c["digest"]}, timeout=600))
    assert out["digest"] == c["digest"] and out["switch"] == "kexec"
    # C's redis answers but its dispatcher dies at each start: once the supervisor has seen
    # it end image.crash_limit times, C kexecs back to B (long before DEADLINE)
    ver = wait_boot(vm, b["version"], old_boot, DEADLINE + 600)
    assert ver["image"]["digest"] == b["digest"]
    history = wait_history(vm, "booted")
    hist = {"history": history}
    events = [(h["event"], h.get("digest")) for h in history]
    tail = events[events.index(("upgrade", c["digest"])):]
    assert tail == [("upgrade", c["digest"]), ("failed", c["digest"]),
                    ("rollback", c["digest"]), ("booted", b["digest"])], hist
    failed = next(h for h in history if h["event"] == "failed")
    assert "not healthy" in failed["reason"] and "core.ping" in failed["reason"], failed
    assert "the dispatcher ended 3 times (last: status 1)" in failed["reason"], failed
    assert failed["seconds"] < DEADLINE, failed
    assert next(h for h in history if h["event"] == "rollback")["to"] == b["digest"]
    assert ok(vm.command("image.current"))["digest"] == b["digest"]


def test_switch_by_ordered_reboot(vm: VM, images: dict[str, Any], server: int) -> None:
    """``switch: reboot``: the node shuts down in order (as core.reboot) and its final
    reboot(2) starts the loaded kernel instead of the firmware: back to A's version."""
    a = images["a"]
    old_boot = boot_id(vm)
    assert old_boot
    url = f"http://10.0.2.2:{server}/a/manifest.json"
    out = ok(vm.command("core.upgrade", {"url": url, "switch": "reboot"}, timeout=600))
    assert out["digest"] == a["digest"] and out["switch"] == "reboot"
    ver = wait_boot(vm, a["version"], old_boot, 600)
    assert ver["image"]["digest"] == a["digest"]
    history = wait_history(vm, "booted")
    last = history[-2:]
    assert [(h["event"], h["digest"]) for h in last] == [("upgrade", a["digest"]),
                                                         ("booted", a["digest"])], history
    assert last[0]["how"] == "reboot"
    assert "reboot into the kexec-loaded kernel" in vm.serial_log.read_text(errors="replace")


def test_image_rollback_goes_back_to_the_previous_image(vm: VM, images: dict[str, Any]) -> None:
    """A came from B (which rode along in the carried images): image.rollback kexecs to B."""
    b = images["b"]
    assert ok(vm.command("image.previous"))["digest"] == b["digest"]
    listed = {i["digest"]: i for i in ok(vm.command("image.list"))}
    assert listed[images["a"]["digest"]]["running"] and listed[b["digest"]]["previous"]
    old_boot = boot_id(vm)
    assert old_boot
    out = ok(vm.command("image.rollback", timeout=120))
    assert out["digest"] == b["digest"] and out["switch"] == "kexec"
    ver = wait_boot(vm, b["version"], old_boot, 600)
    assert ver["image"]["digest"] == b["digest"]
    history = wait_history(vm, "booted")
    assert [(h["event"], h["digest"]) for h in history[-2:]] == [("rollback", b["digest"]),
                                                                 ("booted", b["digest"])]
