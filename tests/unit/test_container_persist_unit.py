"""Declarations of persistent containers (core0.sandbox.persist): the spec hash, the
record files, the image store link; and main.persistent_dir in the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from core0 import config
from core0.config import Config, MainConfig
from core0.declared import declared_role
from core0.registry import Role
from core0.sandbox import persist


def cfg_for(tmp: Path) -> Config:
    return Config(main=MainConfig(state_dir=str(tmp / "state"),
                                  persistent_dir=str(tmp / "persist")))


def test_spec_hash_ignores_persistent_and_order() -> None:
    a = {"root": "bb", "name": "web", "hostname": "h"}
    assert persist.spec_hash(a) == persist.spec_hash({**a, "persistent": True})
    assert persist.spec_hash(a) == persist.spec_hash(dict(reversed(list(a.items()))))
    assert persist.spec_hash(a) != persist.spec_hash({**a, "hostname": "h2"})


def test_declare_roundtrip(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    args = {"root": "bb", "name": "web/1:x"}
    persist.declare(cfg, "web/1:x", args, 3, Role.OPERATOR)
    d = persist.declaration(cfg, "web/1:x")
    assert d is not None and d["id"] == 3 and d["hash"] == persist.spec_hash(args)
    assert declared_role(d) == Role.OPERATOR  # restored with the declaring queue's role
    assert declared_role({}) == Role.ADMIN  # records made before the field: admin's
    assert declared_role({"role": 7}) == Role.ADMIN and declared_role({"role": "x"}) == \
        Role.READ_ONLY  # never above admin; unreadable: the least
    files = list((tmp_path / "persist" / "containers").iterdir())
    assert len(files) == 1 and files[0].stat().st_mode & 0o777 == 0o600
    (files[0].parent / "junk.json").write_text("{not json")
    assert [x["name"] for x in persist.declared(cfg)] == ["web/1:x"]
    persist.undeclare(cfg, "web/1:x")
    assert persist.declaration(cfg, "web/1:x") is None


def test_link_images(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    (tmp_path / "state" / "sandbox" / "images").mkdir(parents=True)  # empty: replaced
    persist.link_images(cfg)
    link = tmp_path / "state" / "sandbox" / "images"
    assert link.is_symlink() and link.resolve() == (tmp_path / "persist" / "images").resolve()
    persist.link_images(cfg)  # idempotent
    assert link.is_symlink()
    other = cfg_for(tmp_path / "b")
    held = tmp_path / "b" / "state" / "sandbox" / "images"
    held.mkdir(parents=True)
    (held / "img").mkdir()
    persist.link_images(other)  # a store holding images stays where it is
    assert not held.is_symlink() and (held / "img").exists()


def test_config_key(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[main]\npersistent_dir = "/data/core0"\n')
    assert config.load(str(p), cmdline="", env={}).main.persistent_dir == "/data/core0"
    p.write_text('[main]\npersistent_dir = "relative"\n')
    with pytest.raises(config.ConfigError, match="persistent_dir"):
        config.load(str(p), cmdline="", env={})
    assert MainConfig().persistent_dir == ""  # none by default
