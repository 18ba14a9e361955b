"""The image booted under qemu is closed by default and opened by the credential qemu/boot
generates: an unauthenticated RPUSH from the host is refused, the printed CORE0_URL works, and
the password never reaches the console.

``CORE0_E2E_IMAGE=DIR`` reuses an image already built in DIR. Run under
``flock /tmp/core0-vm.lock``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import ROOT, free_port, require, wait_until
from image_fixtures import node_image

sys.path.insert(0, str(ROOT))
from qemu.harness import VM, GuestStalled, VMConfig

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def image_dir() -> Path:
    require("qemu-system-x86_64")
    return node_image("core")


@pytest.fixture(scope="module")
def booted(image_dir: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[str, int, Path]]:
    """``qemu/boot --wait``: (the printed CORE0_URL, the port, the serial log)."""
    tmp = tmp_path_factory.mktemp("vmsec")
    port, pidfile, log = free_port(), tmp / "qemu.pid", tmp / "serial.log"
    p = subprocess.run([sys.executable, str(ROOT / "qemu" / "boot"), "--image-dir",
                        str(image_dir), "--redis-port", str(port), "--wait", "--timeout", "600",
                        "--pidfile", str(pidfile), "--serial-log", str(log)],
                       capture_output=True, text=True, timeout=700, check=False)
    pid = int(pidfile.read_text()) if pidfile.exists() else None
    try:
        assert p.returncode == 0, p.stdout + p.stderr
        urls = re.findall(r"^CORE0_URL=(\S+)$", p.stdout, re.M)
        assert len(urls) == 1, p.stdout
        yield urls[0], port, log
    finally:
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_unauthenticated_rpush_refused(booted: tuple[str, int, Path]) -> None:
    _, port, _ = booted
    r = redis.Redis(port=port, socket_timeout=30)
    with pytest.raises(redis.AuthenticationError):
        r.rpush("core:default", json.dumps({"id": "x", "command": "core.ping"}))
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, password="not-the-password", socket_timeout=30).ping()


def test_printed_url_drives_the_node(booted: tuple[str, int, Path]) -> None:
    url, _, log = booted
    r = redis.Redis.from_url(url, socket_timeout=60)
    jid = uuid.uuid4().hex
    r.rpush("core:default", json.dumps({"id": jid, "command": "core.system",
                                        "arguments": {"name": "id", "args": ["-u"]}}))
    res = json.loads(r.brpoplpush(f"result:{jid}", f"result:{jid}", 60))
    assert res["state"] == "SUCCESS" and res["streams"][0].strip() == "0"
    with pytest.raises(redis.exceptions.NoPermissionError):  # limited to the admin queue
        r.flushall()
    with pytest.raises(redis.exceptions.NoPermissionError):
        r.rpush(f"result:{jid}-forged", "{}")
    # the password is nowhere on the console (only its SHA-256 is on the kernel command line)
    password = url.split("@")[0].rsplit(":", 1)[1]
    console = log.read_text(errors="replace")
    assert "core0.redis.password_sha256=" in console
    assert password not in console
    assert "ACL users on 0.0.0.0" in console
    jid = uuid.uuid4().hex
    r.rpush("core:default", json.dumps({"id": jid, "command": "core.poweroff"}))
    assert r.brpoplpush(f"result:{jid}", f"result:{jid}", 60) is not None
    r.close()


@pytest.mark.flaky(reruns=1, only_rerun=[GuestStalled])  # a VM of its own
def test_no_credential_serves_loopback_only(image_dir: Path, tmp_path: Path) -> None:
    """Booted without a credential, the node's bus is out of the host's reach and the console
    says how to open it."""
    with VM(VMConfig(image_dir=image_dir, password="", serial_log=tmp_path / "serial.log")) as vm:
        vm.start()
        assert wait_until(lambda: "dispatcher up" in vm.tail(10_000) or not vm.running(),
                          600, 0.5), vm.tail()
        assert vm.running(), vm.tail()
        console = vm.tail(10_000)
        assert "no credential configured" in console and "core0.redis.password=" in console
        assert "Ready to accept connections" in console  # redis is up, on loopback only
        assert not vm.redis_ping(5.0)


@pytest.mark.flaky(reruns=1, only_rerun=[GuestStalled])  # a VM of its own
def test_config_drive_credentials(image_dir: Path, tmp_path: Path) -> None:
    """A users table written by cloud-config from the config drive, applied by its runcmd,
    opens a node booted without any credential."""
    pw = "cc-" + uuid.uuid4().hex
    digest = hashlib.sha256(pw.encode()).hexdigest()
    user_data = f"""#cloud-config
write_files:
  - path: /etc/core0/conf.d/50-users.toml
    permissions: "0600"
    content: |
      [users.ops]
      role = "admin"
      password_sha256 = "{digest}"
runcmd:
  - [core0, security, apply]
"""
    drive = {"meta-data": "instance-id: sec-1\n", "user-data": user_data}
    with VM(VMConfig(image_dir=image_dir, password="", config_drive=drive,
                     serial_log=tmp_path / "serial.log")) as vm:
        vm.start()

        def opened() -> bool:
            try:
                return bool(redis.Redis(port=vm.port, username="ops", password=pw,
                                        socket_timeout=3, socket_connect_timeout=3).ping())
            except redis.RedisError:
                return False

        assert wait_until(lambda: opened() or not vm.running(), 600, 1.0), vm.tail()
        assert vm.running(), vm.tail()
        r = redis.Redis(port=vm.port, socket_timeout=30)
        with pytest.raises(redis.AuthenticationError):
            r.rpush("core:default", "{}")
        assert pw not in vm.tail(100_000)
