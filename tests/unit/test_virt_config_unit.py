"""``[virt]`` (core0/virtconfig.py), the embedded libvirtd's URI and the declared VMs' records
(core0/virt/persist.py on core0/declared.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core0 import config
from core0.config import Config, MainConfig
from core0.declared import declared_role
from core0.init import libvirtd
from core0.registry import Role
from core0.virt import persist
from core0.virt.spec import CreateArgs


def test_libvirtd_key(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[main]\nstate_dir = "/run/x"\n[virt]\nlibvirtd = "embedded"\n'
                 'uri = "qemu+tcp://h/system"\n')
    cfg = config.load(str(p), cmdline="", env={})
    assert cfg.virt.libvirtd == "embedded"
    assert libvirtd.uri(cfg) == "qemu:///system?socket=/run/x/libvirt/run/libvirt-sock"
    p.write_text('[virt]\nuri = "qemu+tcp://h/system"\n')
    cfg = config.load(str(p), cmdline="", env={})
    assert cfg.virt.libvirtd == "external" and libvirtd.uri(cfg) == "qemu+tcp://h/system"
    assert libvirtd.services(cfg) == []
    p.write_text('[virt]\nlibvirtd = "mine"\n')
    with pytest.raises(config.ConfigError):
        config.load(str(p), cmdline="", env={})
    p.write_text('[virt]\nlibvirt = "embedded"\n')  # a typo is an unknown key
    with pytest.raises(config.ConfigError):
        config.load(str(p), cmdline="", env={})


def test_vm_declaration(tmp_path: Path) -> None:
    cfg = Config(main=MainConfig(state_dir=str(tmp_path / "s"),
                                 persistent_dir=str(tmp_path / "p")))
    a = CreateArgs.parse({"name": "vm", "memory": 256, "media": [{"url": "/i/a.qcow2"}],
                          "persistent": True})
    b = CreateArgs.parse({"name": "vm", "memory": 256, "media": [{"url": "/i/a.qcow2"}]})
    assert persist.hash_of(a) == persist.hash_of(b)
    assert persist.hash_of(a) != persist.hash_of(CreateArgs.parse({"name": "vm",
                                                                   "memory": 512}))
    assert "persistent" not in persist.arguments(a)
    assert persist.arguments(a)["media"] == [{"url": "/i/a.qcow2", "overlay": False}]
    persist.declare(cfg, a, "0b7e3c4e-0000-4000-8000-000000000001", Role.OPERATOR)
    d = persist.declaration(cfg, "vm")
    assert d is not None and d["uuid"].endswith("01") and d["hash"] == persist.hash_of(a)
    assert declared_role(d) == Role.OPERATOR  # restored with the declaring queue's role
    assert CreateArgs.parse({**d["arguments"], "persistent": True}) == a  # re-submittable
    assert (tmp_path / "p" / "vms").is_dir()
    persist.undeclare(cfg, "vm")
    assert persist.declaration(cfg, "vm") is None
    assert persist.declaration(Config(), "vm") is None  # no persistent_dir
