"""cloud-config on real nodes: from a file path (kernel cmdline), an http URL, a real config
drive (vfat and iso9660 images on loop devices), and the network step inside a netns. Files and
ssh keys land under a redirected root (``cloudconfig.root``); the host is never modified."""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require, require_root, start_node, unavailable, wait_until

NOTE = ("import sys\nwith open(sys.argv[1], 'a') as f:\n"
        "    f.write(' '.join(sys.argv[2:]) + '\\n')\n")
KEY1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEKEYONE one@test"
KEY2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEKEYTWO two@test"
OLD_KEY = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQOLD old@test"


def _config(tmp: Path, configdrive: str = "no") -> str:
    p = tmp / "core0.toml"
    p.write_text(f'[main]\ninclude = []\n[cloudconfig]\nroot = "{tmp / "root"}"\n'
                 f'configdrive = "{configdrive}"\n')
    return str(p)


def _user_data(tmp: Path) -> str:
    note = tmp / "note.py"
    note.write_text(NOTE)
    b64 = base64.b64encode(b"secret=1\n").decode()
    gz = base64.b64encode(gzip.compress(b"compressed\n")).decode()
    py = sys.executable
    return f"""#cloud-config
# a comment
hostname: cc-test-node
write_files:
  - path: /etc/motd
    content: |
      hello from cloud-config
      second line
  - path: /opt/app/conf
    encoding: b64
    content: {b64}
    permissions: '0600'
  - path: /opt/app/data
    encoding: gz+b64
    content: {gz}
    permissions: '0640'
    owner: root:root
  - path: relative/bad
    content: x
ssh_authorized_keys:
  - {KEY1}
  - "{KEY2}"
bootcmd:
  - [{py}, {note}, {tmp}/boot.marker, boot]
runcmd:
  - {py} {note} {tmp}/run.marker 'run one'
  - echo hi > {tmp}/redirect
  - [sh, -c, "exit 3"]
users:
  - default
"""


def _steps(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["step"]: s for s in result["steps"]}


def _wait_services(c: Any, want: dict[str, str], timeout: float = 30) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def ok() -> bool:
        nonlocal last
        last = {s["id"]: s for s in c.json("service.list")}
        return all(last.get(k, {}).get("status") == v for k, v in want.items())

    assert wait_until(ok, timeout, 0.1), {k: (v["status"], v["message"]) for k, v in last.items()}
    return last


def test_cloud_config_from_file(tmp_path: Path) -> None:
    ud = tmp_path / "user-data"
    ud.write_text(_user_data(tmp_path))
    root = tmp_path / "root"
    (root / "root" / ".ssh").mkdir(parents=True)
    (root / "root" / ".ssh" / "authorized_keys").write_text(OLD_KEY + "\n")
    host = socket.gethostname()
    node = start_node(tmp_path / "state", config=_config(tmp_path),
                      env={"CORE0_CMDLINE": f"quiet core0.cloud_config={ud}"})
    try:
        c = node.client(timeout=30)
        st = _wait_services(c, {"cloudconfig": "done", "cloudconfig-runcmd": "done"})
        assert st["cloudconfig"]["phase"] == "init" and st["cloudconfig-runcmd"]["phase"] == "boot"
        res = c.json("service.get", {"id": "cloudconfig"})["result"]
        assert res["source"] == str(ud) and res["ignored"] == ["users"]
        steps = _steps(res)
        assert list(steps) == ["bootcmd", "hostname", "write_files", "ssh_authorized_keys"]
        # files, atomically written with their modes; a bad entry is reported, not fatal
        assert (root / "etc/motd").read_text() == "hello from cloud-config\nsecond line\n"
        assert (root / "opt/app/conf").read_bytes() == b"secret=1\n"
        assert (root / "opt/app/conf").stat().st_mode & 0o7777 == 0o600
        assert (root / "opt/app/data").read_bytes() == b"compressed\n"
        assert (root / "opt/app/data").stat().st_mode & 0o7777 == 0o640
        wf = steps["write_files"]
        assert not wf["ok"] and [f["ok"] for f in wf["files"]] == [True, True, True, False]
        assert "absolute path" in wf["files"][3]["error"]
        # the hostname is never set on a developer's host; /etc/hostname under the root is
        assert socket.gethostname() == host
        assert (root / "etc/hostname").read_text() == "cc-test-node\n"
        assert steps["hostname"]["ok"] and "left alone" in steps["hostname"]["detail"]
        # keys merged with the existing ones, mode 600
        keys = root / "root/.ssh/authorized_keys"
        assert keys.read_text().splitlines() == [OLD_KEY, KEY1, KEY2]
        assert keys.stat().st_mode & 0o777 == 0o600
        assert steps["ssh_authorized_keys"]["added"] == 2
        # commands: argv lists and shlex-split strings, never a shell
        assert (tmp_path / "boot.marker").read_text() == "boot\n"
        assert (tmp_path / "run.marker").read_text() == "run one\n"
        assert not (tmp_path / "redirect").exists()
        run = _steps(c.json("service.get", {"id": "cloudconfig-runcmd"})["result"])["runcmd"]
        assert [x["ok"] for x in run["commands"]] == [True, True, False]
        assert run["commands"][1]["stdout"] == f"hi > {tmp_path}/redirect\n"
        assert run["commands"][2]["status"] == 3 and not run["ok"]

        # a second apply changes nothing and runs no command again
        again = c.json("cloudconfig.apply", timeout=60)
        assert all(not s["changed"] for s in again["steps"]), again["steps"]
        assert (tmp_path / "boot.marker").read_text() == "boot\n"
        assert (tmp_path / "run.marker").read_text() == "run one\n"
        assert keys.read_text().splitlines() == [OLD_KEY, KEY1, KEY2]
        # drift is repaired; force runs the commands again
        (root / "etc/motd").write_text("tampered\n")
        (root / "opt/app/conf").chmod(0o644)
        fixed = _steps(c.json("cloudconfig.apply", {"force": True}, timeout=60))
        assert fixed["write_files"]["changed"]
        assert [f.get("changed") for f in fixed["write_files"]["files"]][:3] == [True, True,
                                                                                False]
        assert (root / "etc/motd").read_text().startswith("hello")
        assert (root / "opt/app/conf").stat().st_mode & 0o7777 == 0o600
        assert (tmp_path / "run.marker").read_text() == "run one\nrun one\n"
        c.close()
    finally:
        node.stop()


@contextlib.contextmanager
def _http(tmp: Path) -> Iterator[int]:
    handler = type("H", (http.server.SimpleHTTPRequestHandler,), {
        "log_message": lambda *a: None})
    srv = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: handler(*a, directory=str(tmp)))  # type: ignore[misc]
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield int(srv.server_address[1])
    finally:
        srv.shutdown()
        srv.server_close()


def test_cloud_config_json_http_and_errors(tmp_path: Path) -> None:
    (tmp_path / "ud.json").write_text(json.dumps({
        "write_files": [{"path": "/etc/from-http", "content": "over http\n"}],
        "runcmd": [["true"]]}))
    (tmp_path / "script").write_text("#!/bin/sh\necho no\n")
    (tmp_path / "bad.yaml").write_text("#cloud-config\na: &anchor 1\n")
    node = start_node(tmp_path / "state", config=_config(tmp_path))
    try:
        c = node.client(timeout=30)
        # no source on this node: no cloud-config services at all
        assert not [s for s in c.json("service.list") if s["id"].startswith("cloudconfig")]
        assert c.json("cloudconfig.apply")["source"] is None
        with _http(tmp_path) as port:
            url = f"http://127.0.0.1:{port}/ud.json"
            res = c.json("cloudconfig.apply", {"source": url}, timeout=60)
            assert res["source"] == url and res["ok"], res
            assert (tmp_path / "root/etc/from-http").read_text() == "over http\n"
            assert c.raw("cloudconfig.apply", {"source": url + ".nope"}).get(30).code == 503
        for name, code in (("missing", 404), ("script", 400), ("bad.yaml", 400)):
            res = c.raw("cloudconfig.apply", {"source": str(tmp_path / name)}).get(30)
            assert res.code == code, (name, res.critical)
        assert c.raw("cloudconfig.apply", {"source": "; touch /tmp/x"}).get(30).code == 400
        c.close()
    finally:
        node.stop()


# ---------------------------------------------------------------- config drive


def _other_cidata() -> bool:
    r = subprocess.run(["blkid", "-c", "/dev/null", "-t", "LABEL=cidata", "-o", "device"],
                       capture_output=True, text=True)
    return bool(r.stdout.strip())


def _make_image(tmp: Path, kind: str, files: dict[str, str]) -> Path:
    src = tmp / "drive"
    src.mkdir()
    for name, text in files.items():
        (src / name).write_text(text)
    img = tmp / f"seed.{kind}"
    if kind == "vfat":
        require("mkfs.vfat", "mcopy")
        with open(img, "wb") as f:
            f.truncate(4 << 20)
        subprocess.run(["mkfs.vfat", "-n", "cidata", str(img)], check=True, capture_output=True)
        for name in files:
            subprocess.run(["mcopy", "-i", str(img), str(src / name), f"::{name}"], check=True,
                           env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    else:
        require("genisoimage", "isoinfo")
        subprocess.run(["genisoimage", "-quiet", "-output", str(img), "-volid", "cidata",
                        "-joliet", "-rock", *[str(src / n) for n in files]], check=True)
    return img


@contextlib.contextmanager
def _loop(img: Path) -> Iterator[str]:
    dev = subprocess.run(["losetup", "-f", "--show", "-r", str(img)], check=True,
                         capture_output=True, text=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@pytest.mark.root
@pytest.mark.parametrize("kind", ["vfat", "iso9660"])
def test_cloud_config_from_config_drive(tmp_path: Path, kind: str) -> None:
    require_root()
    require("losetup", "blkid")
    if _other_cidata():
        unavailable("this host already has a filesystem labelled cidata")
    img = _make_image(tmp_path, kind, {
        "user-data": "#cloud-config\nwrite_files:\n  - path: /etc/drive\n"
                     f"    content: from the {kind} drive\n",
        "meta-data": "instance-id: test-1\n",
        "network-config": "version: 2\nethernets:\n  lo:\n    nameservers:\n"
                          "      addresses: [192.0.2.53]\n      search: [example.test]\n",
    })
    with _loop(img) as dev:
        node = start_node(tmp_path / "state", config=_config(tmp_path, configdrive="yes"))
        try:
            c = node.client(timeout=30)
            _wait_services(c, {"cloudconfig": "done", "cloudconfig-runcmd": "done"})
            res = c.json("service.get", {"id": "cloudconfig"})["result"]
            assert res["source"] == f"configdrive:{dev} ({kind}, label cidata)", res
            assert res["ok"], res
            root = tmp_path / "root"
            assert (root / "etc/drive").read_text() == f"from the {kind} drive"
            assert (root / "etc/resolv.conf").read_text() == (
                "search example.test\nnameserver 192.0.2.53\n")
            again = c.json("cloudconfig.apply", timeout=60)
            assert again["ok"] and not any(s["changed"] for s in again["steps"]), again
            c.close()
        finally:
            node.stop()
    attached = subprocess.run(["losetup", "-j", str(img)], capture_output=True, text=True)
    assert not attached.stdout.strip()


# ---------------------------------------------------------------- network (in a netns)


@pytest.mark.root
def test_cloud_config_network_in_netns(tmp_path: Path) -> None:
    require_root()
    require("ip", "redis-server")
    from conftest import kill_tree
    from core0_client import Client
    from net_fixtures import netns

    ud = tmp_path / "user-data"
    ud.write_text("""#cloud-config
network:
  version: 2
  ethernets:
    lan:
      match:
        name: "cc0"
      addresses: [10.123.0.2/24, "fd00:123::2/64"]
      gateway4: 10.123.0.1
      mtu: 1400
      routes:
        - to: 10.200.0.0/16
          via: 10.123.0.254
      nameservers:
        addresses: [10.123.0.1]
    ghost:
      addresses: [10.9.9.9/24]
    wan:
      match: {name: cc1}
      dhcp4: true
""")
    with netns("cc") as ns:
        ns.run("ip", "link", "add", "cc0", "type", "veth", "peer", "name", "cc1")
        ns.run("ip", "link", "set", "cc1", "up")
        state = tmp_path / "state"
        state.mkdir()
        env = {**os.environ, "CORE0_CMDLINE": f"core0.cloud_config={ud}"}
        with open(tmp_path / "node.log", "wb") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns.name, sys.executable, "-m", "core0", "dev",
                 "--state-dir", str(state), "--redis-port", "0",
                 "--config", _config(tmp_path)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                cwd=str(Path(__file__).resolve().parents[2]))
        try:
            c = Client(unix_socket_path=str(state / "redis.sock"), timeout=30)
            assert wait_until(lambda: _pings(c), 30), (tmp_path / "node.log").read_text()
            _wait_services(c, {"cloudconfig": "done"})
            res = c.json("service.get", {"id": "cloudconfig"})["result"]
            net = _steps(res)["network"]
            eth = {e["id"]: e for e in net["ethernets"]}
            assert eth["lan"]["ok"] and eth["lan"]["nics"] == ["cc0"] and eth["lan"]["changed"]
            assert not eth["ghost"]["ok"] and "no such NIC" in eth["ghost"]["error"]
            assert eth["wan"]["dhcp4"] == ["started (job dhcp:cc1)"]
            dhcp = [j for j in c.job.list() if j["id"] == "dhcp:cc1"]
            assert dhcp and dhcp[0]["pid"] and "udhcpc" in dhcp[0]["label"], dhcp
            show = ns.run("ip", "addr", "show", "cc0").stdout
            assert "10.123.0.2/24" in show and "fd00:123::2/64" in show and "mtu 1400" in show
            routes = ns.run("ip", "route").stdout
            assert "default via 10.123.0.1 dev cc0" in routes
            assert "10.200.0.0/16 via 10.123.0.254 dev cc0" in routes
            assert (tmp_path / "root/etc/resolv.conf").read_text() == "nameserver 10.123.0.1\n"
            again = _steps(c.json("cloudconfig.apply", timeout=60))["network"]
            assert not again["changed"], again
            wan = {e["id"]: e for e in again["ethernets"]}["wan"]
            assert wan["dhcp4"] == ["running (job dhcp:cc1)"]
            c.close()
        finally:
            os.kill(proc.pid, 15)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
            kill_tree(proc.pid)
            proc.wait(5)
    shutil.rmtree(tmp_path / "root", ignore_errors=True)


def _pings(c: Any) -> bool:
    try:
        c.ping()
        return True
    except Exception:
        time.sleep(0.1)
        return False
