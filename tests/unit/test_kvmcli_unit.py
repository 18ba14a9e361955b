"""``core0ctl kvm`` argument handling (client/core0_client/kvmcli.py); the commands themselves
run against a real node in tests/integration/test_kvm_client.py."""

from __future__ import annotations

import pytest
from core0_client.cli import _kv
from core0_client.kvmcli import KvmUsageError, create_args, table


def test_create_args() -> None:
    a = create_args(["web", "--disk", "/i/b.qcow2:overlay", "--disk", "/i/c.iso:cdrom",
                     "--cmdline", "console=ttyS0 panic=-1", "--forward", "8080:80",
                     "--forward", "10.0.0.1:53|udp:53", "--nic", "default",
                     "--nic", "bridge:br0:02:00:00:00:00:01", "--vm-tag", "a",
                     "--persistent", "cpu=2", 'kernel="/i/vmlinuz"'], _kv)
    assert a == {
        "name": "web", "cpu": 2, "cmdline": "console=ttyS0 panic=-1", "persistent": True,
        "kernel": "/i/vmlinuz",
        "media": [{"url": "/i/b.qcow2", "overlay": True}, {"url": "/i/c.iso", "type": "cdrom"}],
        "nics": [{"type": "default"},
                 {"type": "bridge", "id": "br0", "hwaddr": "02:00:00:00:00:01"}],
        "port": {"8080": 80, "10.0.0.1:53|udp": 53}, "tags": ["a"]}


@pytest.mark.parametrize("words", [["web", "--nic", "vlan:3"], ["web", "--forward", "80"],
                                   ["web", "--bogus"], [], ["web", "stray"]])
def test_create_args_refused(words: list[str]) -> None:
    with pytest.raises(KvmUsageError):
        create_args(words, _kv)


def test_table() -> None:
    out = table([{"uuid": "u1", "name": "a", "state": "running", "default_ip": "172.19.0.2",
                  "vnc": -1, "tags": ["x", "y"]},
                 {"uuid": "u2", "name": "bb", "state": "paused", "vnc": 5900, "tags": []}])
    assert [line.split() for line in out.splitlines()] == [
        ["UUID", "NAME", "STATE", "IP", "VNC", "TAGS"],
        ["u1", "a", "running", "172.19.0.2", "-", "x,y"],
        ["u2", "bb", "paused", "-", "5900", "-"]]
