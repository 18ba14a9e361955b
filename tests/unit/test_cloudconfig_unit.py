"""cloud-config user-data checked by core0.schema (UserData, Network, COMMAND), key by key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core0.boot.cloudconfig import (
    SUPPORTED,
    UserData,
    apply_hostname,
    apply_ssh_keys,
    apply_write_files,
    command_argv,
)
from core0.boot.cloudnet import Ethernet, Match, Network, _check, _nics, _resolv
from core0.config import load
from core0.errors import BadRequest
from core0.fspath import Root
from core0.schema import check_field


def _cfg(tmp_path: Path) -> Any:
    f = tmp_path / "core0.toml"
    f.write_text(f'[main]\ninclude = []\nstate_dir = "{tmp_path}/state"\n'
                 f'[cloudconfig]\nroot = "{tmp_path}/root"\n')
    return load(str(f), cmdline="", env={})


def test_supported_keys_are_the_schema() -> None:
    assert SUPPORTED == {"hostname", "write_files", "ssh_authorized_keys", "bootcmd", "runcmd",
                         "network"}


@pytest.mark.parametrize("key,value,message", [
    ("hostname", "bad_name", "hostname: 'bad_name' is not a valid host name"),
    ("hostname", "-x", "is not a valid host name"),
    ("hostname", 7, "hostname: expected a string, got integer"),
    ("hostname", None, "hostname: expected a string, got null"),
    ("ssh_authorized_keys", ["ssh-ed25519 A", 3], "ssh_authorized_keys[1]: expected a string"),
    ("ssh_authorized_keys", "a\nb", "ssh_authorized_keys: 'a\\nb' is not one line"),
    ("ssh_authorized_keys", {"k": "v"}, "no variant matches"),
    ("write_files", {"path": "/x"}, "write_files: expected an array, got object"),
    ("runcmd", {"a": 1}, "no variant matches"),
    ("network", [], "network: expected an object, got array"),
    ("network", {"version": 1}, "network.version: must be one of 2"),
    ("network", {"bonds": {}}, "network.bonds: unknown key"),
    ("network", {"ethernets": []}, "network.ethernets: expected an object"),
    ("network", {"ethernets": {"e": {"match": "eth0"}}},
     "network.ethernets.e.match: expected an object"),
    ("network", {"ethernets": {"e": {"routes": [{"via": "10.0.0.1"}]}}},
     "network.ethernets.e.routes[0].to: required"),
    ("network", {"ethernets": {"e": {"nameservers": ["1.1.1.1"]}}},
     "network.ethernets.e.nameservers: expected an object"),
    ("network", {"ethernets": {"e": {"mtu": 20}}}, "network.ethernets.e.mtu: must be >= 68"),
])
def test_bad_keys_name_the_key(key: str, value: Any, message: str) -> None:
    with pytest.raises(BadRequest) as e:
        check_field(UserData, key, value)
    assert message in e.value.message


def test_good_keys() -> None:
    assert check_field(UserData, "hostname", "node-1.example") == "node-1.example"
    assert check_field(UserData, "ssh_authorized_keys", "ssh-rsa AAA x\n") == "ssh-rsa AAA x\n"
    net = check_field(UserData, "network", {"version": 2, "renderer": "networkd", "ethernets": {
        "e": {"match": {"name": "en*"}, "addresses": ["10.0.0.2/24"], "mtu": 1400,
              "routes": [{"to": "10.1.0.0/16", "via": "10.0.0.1", "metric": 5}],
              "nameservers": {"addresses": ["10.0.0.1"], "search": ["lan"]}}}})
    assert isinstance(net, Network) and net.ethernets["e"].routes[0].metric == 5
    assert check_field(UserData, "network", {"config": "disabled"}).config == "disabled"


def test_commands_entry_by_entry() -> None:
    assert command_argv(["echo", 1, 2.5]) == ["echo", "1", "2.5"]
    assert command_argv("echo 'a b' > f") == ["echo", "a b", ">", "f"]
    for entry, message in ((["echo", True], "runcmd[2][1]: no variant matches"),
                           (["a\x00b"], "runcmd[2]"), ("", "runcmd[2]: empty command"),
                           ("echo 'open", "No closing quotation"), ({"a": 1}, "runcmd[2]")):
        with pytest.raises(BadRequest) as e:
            command_argv(entry, "runcmd[2]")
        assert message in e.value.message, (entry, e.value.message)


def test_network_semantics_and_nics() -> None:
    with pytest.raises(BadRequest, match="dhcp6: not supported"):
        _check(Network(ethernets={"e": Ethernet(dhcp6=True)}))
    with pytest.raises(BadRequest, match="bad address 'nope'"):
        _check(Network(ethernets={"e": Ethernet(addresses=["nope"])}))
    links = {"eth0": {"mac": "52:54:00:AA:BB:CC"}, "eth1": {"mac": "52:54:00:00:00:01"},
             "lo": {"mac": "00:00:00:00:00:00"}}
    assert _nics("eth1", Ethernet(), links) == ["eth1"]
    assert _nics("x", Ethernet(match=Match()), links) == []
    assert _nics("x", Ethernet(match=Match(name="eth*")), links) == ["eth0", "eth1"]
    assert _nics("x", Ethernet(match=Match(macaddress="52:54:00:aa:bb:cc")), links) == ["eth0"]
    eths = check_field(UserData, "network", {"ethernets": {
        "a": {"nameservers": {"addresses": ["1.1.1.1"], "search": ["lan"]}},
        "b": {"nameservers": {"addresses": ["1.1.1.1", "9.9.9.9"]}}}}).ethernets
    assert _resolv(eths) == "search lan\nnameserver 1.1.1.1\nnameserver 9.9.9.9\n"


def test_a_bad_key_fails_its_step_only(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    (tmp_path / "root").mkdir()
    with Root(str(tmp_path / "root")) as root:
        bad = apply_hostname(cfg, root, "no_underscores")
        assert not bad["ok"] and "not a valid host name" in bad["error"]
        assert not apply_write_files(root, "nope")["ok"]
        good = apply_hostname(cfg, root, "cc-node")
        assert good["ok"] and good["changed"]
        keys = apply_ssh_keys(cfg, root, ["ssh-ed25519 AAAA one\n", "  ", "ssh-ed25519 BBBB"])
        assert keys["ok"] and keys["added"] == 2, keys
        bad_keys = apply_ssh_keys(cfg, root, ["ssh-ed25519 A\nssh-ed25519 B"])
        assert not bad_keys["ok"] and "is not one line" in bad_keys["error"]
    assert (tmp_path / "root/etc/hostname").read_text() == "cc-node\n"
    assert (tmp_path / "root/root/.ssh/authorized_keys").read_text() == \
        "ssh-ed25519 AAAA one\nssh-ed25519 BBBB\n"
