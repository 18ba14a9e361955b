"""End to end: a verified upgrade by kexec under qemu. Two core images, A and B (versions
``+a`` and ``+b``), are built and signed with a key made here; A boots with that key trusted
(``core0.image.trusted_keys=`` on the kernel command line), a signed image with a wrong hash
is refused, then ``core.upgrade`` fetches B from an HTTP server on the host (qemu's user
network reaches the host's loopback as 10.0.2.2), verifies and stages it, and kexecs: the same
qemu process then answers with B's version and digest, and B's boot assessment passes.

Run under ``flock /tmp/core0-vm.lock`` on a shared machine.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, require

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "initramfs-builder"))
import sign  # the image builder's signing step

from qemu.harness import VM, VMConfig, VMError

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(1800)]


def build(out: Path, work: Path, tag: str, key: Path) -> Path:
    res = subprocess.run(["bash", "initramfs-builder/build.sh", "core", "--out", str(out),
                          "--work", str(work), "--version-tag", tag, "--sign-key", str(key)],
                         cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    require("qemu-system-x86_64", "apt-get", "dpkg-deb", "depmod", "zstd", "minisign")
    d = tmp_path_factory.mktemp("images")
    sec, pub = d / "k.sec", d / "k.pub"
    subprocess.run(["minisign", "-G", "-W", "-p", str(pub), "-s", str(sec)], check=True,
                   capture_output=True, stdin=subprocess.DEVNULL)
    out = {"key": sign.public_key(pub)}
    for tag in ("a", "b"):
        img = build(d / tag, d / "work", tag, sec)
        raw = (img / "manifest.json").read_bytes()
        out[tag] = {"dir": img, "digest": hashlib.sha256(raw).hexdigest(),
                    "version": json.loads(raw)["version"]}
    return out


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
                                  "core0.image.boot_deadline=600"]))
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
    t = time.monotonic()
    deadline = t + 600
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
    print(f"\nkexec A → B: B answered {time.monotonic() - t:.1f}s after core.upgrade's result")
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
    assert ("booted", b["digest"]) in events, hist
    assert ok(vm.command("image.current"))["digest"] == b["digest"]
