"""Configuration sources and their precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from core0.config import ConfigError, load, parse_cmdline


def test_precedence(tmp_path: Path) -> None:
    inc = tmp_path / "conf.d"
    inc.mkdir()
    f = tmp_path / "core0.toml"
    f.write_text(f'[main]\ninclude = ["{inc}"]\n[redis]\nport = 1111\n[bus]\nresult_ttl = 10\n'
                 '[startup.one]\nname = "core.system"\n')
    (inc / "10-a.toml").write_text("[bus]\nresult_ttl = 20\nstream_ttl = 5\n")
    cfg = load(str(f), cmdline="quiet core0.bus.stream_ttl=7 core0.redis.port=2222", env={})
    assert cfg.bus.result_ttl == 20 and cfg.bus.stream_ttl == 7 and cfg.redis.port == 2222
    assert "one" in cfg.startup and cfg.cmdline["quiet"] == ""
    cfg = load(str(f), cmdline="core0.redis.port=2222", env={"CORE0_REDIS_PORT": "3333"})
    assert cfg.redis.port == 3333
    cfg = load(str(f), cmdline="", env={"CORE0_REDIS_PORT": "3333"},
               overrides={"redis": {"port": 4444}})
    assert cfg.redis.port == 4444


@pytest.mark.parametrize("text", [
    "[nosuch]\na = 1\n",
    "[redis]\nnosuch = 1\n",
    '[redis]\nport = "1"\n',
    '[bus]\nqueues = {default = "superuser"}\n',
    "[redis]\nport = \n",
])
def test_bad_files(tmp_path: Path, text: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError):
        load(str(f), cmdline="", env={})


def test_remote_plain_tcp_refused() -> None:
    with pytest.raises(ConfigError, match="plain TCP"):
        load(None, cmdline="", env={}, overrides={
            "main": {"include": []},
            "redis": {"embedded": False, "url": "redis://10.1.2.3:6379"}})
    cfg = load(None, cmdline="", env={}, overrides={
        "main": {"include": []},
        "redis": {"embedded": False, "url": "rediss://10.1.2.3:6379"}})
    assert cfg.redis.url.startswith("rediss")


def test_cmdline_parse() -> None:
    assert parse_cmdline('console=ttyS0 quiet core0.main.hostname="a b"') == {
        "console": "ttyS0", "quiet": "", "core0.main.hostname": "a b"}


def test_missing_explicit_file() -> None:
    with pytest.raises(ConfigError):
        load("/nonexistent/core0.toml", cmdline="", env={})
