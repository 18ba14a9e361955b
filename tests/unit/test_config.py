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


@pytest.mark.parametrize("text, message", [
    ("[redis]\nnosuch = 1\n", "redis.nosuch: unknown key"),
    ("[nosuch]\na = 1\n", r"unknown section \[nosuch\]"),
    ('[redis]\nport = "1"\n', "redis.port: expected an integer, got string"),
    ("[redis]\nembedded = 1\n", "redis.embedded: expected a boolean"),
    ("[net]\ndns = \"8.8.8.8\"\n", "net.dns: expected an array"),
    ("[net]\ndns = [1]\n", r"net.dns\[0\]: expected a string"),
    ("[redis]\nport = 70000\n", "redis.port: must be <= 65535"),
    ("[redis]\ntls_port = -1\n", "redis.tls_port: must be >= 0"),
    ("[bus]\nbatch = 0\n", "bus.batch: must be >= 1"),
    ("[bus]\nqueues = {}\n", "bus.queues: length must be >= 1"),
    ("[services]\nstop_timeout = -1\n", "services.stop_timeout: must be >= 0"),
    ('[init]\ncrash_action = "explode"\n', "init.crash_action: must be one of"),
    ('[redis]\nappendfsync = "sometimes"\n', "redis.appendfsync: must be one of"),
    ('[cloudconfig]\nroot = "relative"\n', "cloudconfig.root: .* does not match"),
])
def test_schema_errors_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message) as ei:
        load(str(f), cmdline="", env={})
    assert str(ei.value).startswith(f"{f}: ")


@pytest.mark.parametrize("cmdline, env, message", [
    ("core0.redis.port=x", {}, "kernel cmdline: redis.port: expected an integer, got 'x'"),
    ("core0.redis.nosuch=1", {}, "kernel cmdline: redis.nosuch: unknown key"),
    ("core0.nosuch.a=1", {}, r"kernel cmdline: unknown section \[nosuch\]"),
    ("core0.bus.batch=0", {}, "kernel cmdline: bus.batch: must be >= 1"),
    ("", {"CORE0_REDIS_PORT": "99999"}, "environment: redis.port: must be <= 65535"),
    ("", {"CORE0_REDIS_EMBEDDED": "maybe"}, "environment: redis.embedded: expected a boolean"),
    ("", {"CORE0_BUS_ROLE_MAX_JOBS": "operator:many"},
     "environment: bus.role_max_jobs.operator: expected an integer"),
    ("", {"CORE0_BUS_QUEUES": "default"}, "environment: bus.queues: expected key:value"),
    ("", {"CORE0_INIT_CGROUPS": "v3"}, "environment: init.cgroups: must be one of"),
    ("", {"CORE0_REDIS_NOSUCH": "1"}, "environment: redis.nosuch: unknown key"),
])
def test_schema_errors_name_text_source(cmdline: str, env: dict[str, str],
                                        message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(None, cmdline=cmdline, env=env, overrides={"main": {"include": []}})


def test_flags_are_checked() -> None:
    with pytest.raises(ConfigError, match="flags: redis.port: must be <= 65535"):
        load(None, cmdline="", env={}, overrides={"main": {"include": []},
                                                  "redis": {"port": 65536}})
    with pytest.raises(ConfigError, match="flags: redis.port: expected an integer"):
        load(None, cmdline="", env={}, overrides={"main": {"include": []},
                                                  "redis": {"port": "6379"}})


def test_text_values_converted_by_type() -> None:
    cfg = load(None, cmdline="core0.redis.embedded core0.init.mounts=off "
               "core0.bus.role_max_jobs=operator:7,read-only:3 core0.net.dns=1.1.1.1,9.9.9.9",
               env={"CORE0_BUS_MAX_JOBS": "0x20", "CORE0_NET_WAIT": "2.5",
                    "CORE0_BUS_QUEUES": "default:admin,ro:read-only"},
               overrides={"main": {"include": []}})
    assert cfg.redis.embedded is True and cfg.init.mounts is False
    assert cfg.bus.role_max_jobs == {"operator": 7, "read-only": 3}
    assert cfg.net.dns == ["1.1.1.1", "9.9.9.9"] and cfg.net.wait == 2.5
    assert cfg.bus.max_jobs == 32 and set(cfg.bus.queue_roles()) == {"default", "ro"}


def test_toml_int_is_a_number_and_later_source_wins(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[net]\nwait = 5\n[bus]\nbatch = 3\n")
    cfg = load(str(f), cmdline="core0.bus.batch=4", env={}, overrides={"main": {"include": []}})
    assert cfg.net.wait == 5.0 and isinstance(cfg.net.wait, float) and cfg.bus.batch == 4
