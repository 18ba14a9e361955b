"""Service specs (parsing, conditions, {var}, ordering, cycles, hashes) and cloud-config
helpers: pure functions, no node (YAML: test_safeyaml.py)."""

from __future__ import annotations

import base64
import gzip
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core0.boot import cloudconfig, cloudfiles, cloudparse
from core0.boot.spec import (
    ServiceSpec,
    SpecError,
    evaluate,
    find_cycles,
    parse_spec,
    plan,
    substitute,
    topo_order,
)
from core0.config import ConfigError, load
from core0.errors import BadRequest
from core0.fspath import Root

FLAGS = {"development": "", "zerotier": "abc", "debug": ""}


@pytest.mark.parametrize("cond,want", [
    ("", True),
    ("development", True),
    ("nosuch", False),
    ("not(nosuch)", True),
    ("and(development, not(zerotier))", False),
    ("or(nosuch, zerotier)", True),
    ("zerotier=abc", True),
    ("zerotier=x", False),
    ("and(development, debug, or(nosuch, zerotier=abc))", True),
    ("NOT(development)", False),
])
def test_conditions(cond: str, want: bool) -> None:
    assert evaluate(cond, FLAGS) is want


@pytest.mark.parametrize("cond", ["and(", "not(a, b)", "foo(a)", "a b", ")", "and(a,,b)", "=x"])
def test_bad_conditions(cond: str) -> None:
    with pytest.raises(SpecError):
        evaluate(cond, FLAGS)


def test_substitution_and_conditional_args() -> None:
    raw = {"__source__": "/etc/x.toml", "args": {
        "name": "zt", "args": ["join", "{zerotier}", "{unknown}"], "env": {"A": "{debug}x"},
        "zerotier|dir": "/zt", "nosuch|dir": "/never", "dir": "/plain",
        "nosuch|stdin": "never"}}
    spec = parse_spec("zt", raw, FLAGS)
    assert spec.args == {"name": "zt", "args": ["join", "abc", "{unknown}"],
                         "env": {"A": "x"}, "dir": "/zt"}
    assert substitute({"a": ["{zerotier}-{zerotier}"]}, FLAGS) == {"a": ["abc-abc"]}


def _spec(sid: str, **kw: Any) -> dict[str, Any]:
    return {"__source__": "/etc/core0/conf.d/s.toml", "args": {"name": "true"}, **kw}


@pytest.mark.parametrize("raw,msg", [
    (_spec("a", nosuch=1), "[startup.a].nosuch: unknown key"),
    (_spec("a", tags=["x", 1]), "tags[1]: expected a string"),
    (_spec("a", name=""), "name: length must be >= 1"),
    (_spec("a", after="b c"), ".after: 'b c' is not a service id"),
    (_spec("a", before=["ok", "b c"]), ".before[1]: 'b c' is not a service id"),
    (_spec("a", running_delay="1"), "running_delay: expected a number"),
    (_spec("a", running_match="("), "bad regex"),
    (_spec("a", protected="yes"), "protected: expected a boolean"),
    (_spec("a", recurring_period=-1), "must be >= 0"),
    (_spec("a", max_restart=True), "expected an integer"),
    (_spec("a", condition="and("), "condition"),
    (_spec("a", before=["boot"]), "is a phase"),
    (_spec("a", after=["a"]), "depend on itself"),
    (_spec("a", protected=True, running_delay=-1), "oneshot"),
    (_spec("a", name="no.such.command"), "unknown command"),
    ({"__source__": "/f.toml", "args": {"name": "true", "bogus": 1}}, "args.bogus"),
    ({"__source__": "/f.toml", "args": {}}, "args.name: required"),
])
def test_spec_errors_name_file_and_key(raw: dict[str, Any], msg: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_spec("a", raw, FLAGS)
    assert msg in str(e.value) and "[startup.a]" in str(e.value)
    assert raw["__source__"] in str(e.value)


def test_phases_and_order() -> None:
    startup = {
        "redis": _spec("redis", after=["init"]),
        "udev": _spec("udev", after=["init"], before=["redis"]),
        "zt": _spec("zt", after=["net"]),
        "ztjoin": _spec("ztjoin", after=["zt"]),
        "app": _spec("app"),
        "early-dep": _spec("early-dep", after=["redis"]),
        "off": _spec("off", condition="nosuch"),
    }
    p = plan(startup, FLAGS)
    assert not p.errors
    phase = {k: ("init", "net", "boot")[v] for k, v in p.phase.items()}
    assert phase == {"redis": "init", "udev": "init", "zt": "net", "ztjoin": "net",
                     "app": "boot", "early-dep": "init", "off": "boot"}
    assert p.deps["redis"] == ["udev"] and p.deps["ztjoin"] == ["zt"]
    order = p.order
    assert order.index("udev") < order.index("redis") < order.index("early-dep")
    assert order.index("early-dep") < order.index("zt") < order.index("ztjoin") < order.index(
        "app")
    assert not p.specs["off"].enabled


def test_phase_rises_with_dependencies() -> None:
    p = plan({"a": _spec("a", after=["boot"]), "b": _spec("b", after=["init", "a"])}, {})
    assert p.phase == {"a": 2, "b": 2}


def test_cycles_and_unknown_dependencies() -> None:
    startup = {
        "a": _spec("a", after=["b"]), "b": _spec("b", after=["c"]), "c": _spec("c", after=["a"]),
        "d": _spec("d", after=["a"]), "e": _spec("e", after=["ghost"]),
        "f": _spec("f", before=["g"]), "g": _spec("g", before=["f"]), "ok": _spec("ok"),
    }
    p = plan(startup, {})
    assert p.errors["a"] == p.errors["b"] == p.errors["c"] == "dependency cycle: a → b → c → a"
    assert "dependency cycle" in p.errors["f"] and "dependency cycle" in p.errors["g"]
    assert "unknown service 'ghost'" in p.errors["e"]
    assert "d" not in p.errors and "ok" not in p.errors
    assert sorted(map(sorted, find_cycles({"x": ["x2"], "x2": ["x"], "y": []}))) == [["x", "x2"]]


def test_every_independent_cycle_is_reported() -> None:
    """graphlib names one cycle at a time: each is reported (in dependency order, from its
    smallest id), and what merely depends on a cycle is not part of it."""
    deps = {"b": ["c"], "c": ["a"], "a": ["b"], "y": ["x"], "x": ["y"], "z": ["a", "x"],
            "free": []}
    assert sorted(find_cycles(deps)) == [["a", "b", "c"], ["x", "y"]]
    assert find_cycles({"a": [], "b": ["a"]}) == []
    p = plan({"x": _spec("x", after=["y"]), "y": _spec("y", after=["x"]),
              "p": _spec("p", before=["q"]), "q": _spec("q", before=["p"]),
              "dep": _spec("dep", after=["x"])}, {})
    assert p.errors["x"] == p.errors["y"] == "dependency cycle: x → y → x"
    assert p.errors["p"] == p.errors["q"] == "dependency cycle: p → q → p"
    assert "dep" not in p.errors and sorted(p.order) == ["dep", "p", "q", "x", "y"]


def test_reserved_ids_and_phase_names() -> None:
    p = plan({"cloudconfig": _spec("cloudconfig")}, {})
    assert "reserved" in p.errors["cloudconfig"]
    with pytest.raises(SpecError, match="phase name"):
        parse_spec("net", _spec("net"), {})


def test_hash_is_what_runs() -> None:
    a = parse_spec("a", _spec("a", args={"name": "sleep", "args": ["{zerotier}"]}), FLAGS)
    same = parse_spec("a", _spec("a", args={"args": ["abc"], "name": "sleep"}, after=["init"],
                                 running_delay=5, running_match="x"), FLAGS)
    assert a.hash == same.hash  # ordering and readiness do not restart a service
    for change in ({"args": {"name": "sleep", "args": ["2"]}}, {"protected": True},
                   {"tags": ["t"]}, {"max_time": 5}, {"condition": "nosuch"}):
        other = parse_spec("a", {**_spec("a", args={"name": "sleep", "args": ["abc"]}),
                                 **change}, FLAGS)
        assert other.hash != a.hash, change
    assert ServiceSpec.from_dict(a.to_dict()) == a


def test_config_sections_and_cmdline_env(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[services]\nphase_timeout = 5\n[cloudconfig]\nroot = "/tmp/r"\n'
                 'hostname = "no"\n')
    cfg = load(str(f), env={"CORE0_CMDLINE": "dev core0.cloud_config=/x zt=1"})
    assert cfg.services.phase_timeout == 5.0 and cfg.cloudconfig.root == "/tmp/r"
    assert cfg.cmdline == {"dev": "", "core0.cloud_config": "/x", "zt": "1"}
    assert load(str(f), cmdline="a", env={"CORE0_CMDLINE": "b"}).cmdline == {"a": ""}
    f.write_text('[cloudconfig]\nconfigdrive = "maybe"\n')
    with pytest.raises(ConfigError, match="configdrive"):
        load(str(f), env={})


# ---------------------------------------------------------------- cloud-config helpers


def test_cloudconfig_parse_and_decode() -> None:
    assert cloudparse.parse('{"hostname": "x"}') == {"hostname": "x"}
    assert cloudparse.parse("#cloud-config\nhostname: x\n") == {"hostname": "x"}
    assert cloudparse.parse("#cloud-config\n") == {}
    for bad in ("#!/bin/sh\necho", "hostname: x", "[1, 2]", "#cloud-config\n- a\n"):
        with pytest.raises(BadRequest):
            cloudparse.parse(bad)
    gz = base64.b64encode(gzip.compress(b"zz")).decode()
    assert cloudparse.decode_content(gz, "gzip+base64") == b"zz"
    assert cloudparse.decode_content("aGk=", "b64") == b"hi"
    assert cloudparse.decode_content("hi", "text") == b"hi"
    with pytest.raises(BadRequest):
        cloudparse.decode_content("hi", "rot13")
    assert cloudparse.parse_mode("0640") == 0o640 and cloudparse.parse_mode(0o600) == 0o600
    assert cloudparse.parse_mode("755") == 0o755 and cloudparse.parse_mode(None) == 0o644
    with pytest.raises(BadRequest):
        cloudparse.parse_mode("rwx")
    assert cloudconfig.command_argv("echo 'a b' > /x") == ["echo", "a b", ">", "/x"]
    assert cloudconfig.command_argv(["ls", 1]) == ["ls", "1"]
    for bad in ([], "", [["nested"]], "'unterminated"):
        with pytest.raises(BadRequest):
            cloudconfig.command_argv(bad)


def test_ensure_file_is_atomic_idempotent_and_confined(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root_dir = tmp_path / "root"
    (root_dir / "etc").mkdir(parents=True)
    os.symlink(str(outside), root_dir / "etc" / "link")
    os.symlink("../../../../../nowhere", root_dir / "etc" / "dangling")
    (root_dir / str(outside).lstrip("/")).mkdir(parents=True)
    with Root(str(root_dir)) as root:
        assert cloudfiles.ensure_file(root, "/etc/a/b", b"x", 0o600)
        assert not cloudfiles.ensure_file(root, "/etc/a/b", b"x", 0o600)
        assert cloudfiles.ensure_file(root, "/etc/a/b", b"x", 0o644)
        # a symlink to an absolute path is resolved inside the root, never outside it
        assert cloudfiles.ensure_file(root, "/etc/link/f", b"y", 0o644)
        # ".." never climbs above the root
        assert cloudfiles.ensure_file(root, "/etc/dangling/f", b"z", 0o644)
    assert (root_dir / "nowhere/f").read_bytes() == b"z"
    assert (root_dir / "etc/a/b").stat().st_mode & 0o777 == 0o644
    assert not list(outside.iterdir())
    assert (root_dir / str(outside).lstrip("/") / "f").read_bytes() == b"y"
    assert not [p for p in (root_dir / "etc/a").iterdir() if p.name.startswith(".")]


@given(st.dictionaries(st.sampled_from([f"s{i}" for i in range(8)]),
                       st.tuples(st.integers(0, 2), st.sets(st.sampled_from(
                           [f"s{i}" for i in range(8)]), max_size=3)), max_size=8))
def test_service_order_is_the_smallest_topological_order(
        graph: dict[str, tuple[int, set[str]]]) -> None:
    """graphlib's order, lowest (phase, id) first among the ready; cycles and what depends on
    them last."""
    deps = {s: sorted(d for d in ds if d in graph) for s, (_, ds) in graph.items()}
    phase = {s: p for s, (p, _) in graph.items()}
    order = topo_order(deps, phase)
    assert sorted(order) == sorted(deps)
    placed: set[str] = set()
    stuck_from = len(order)
    for i, sid in enumerate(order):
        if not all(d in placed for d in deps[sid]):
            stuck_from = i
            break
        ready = [s for s in deps if s not in placed and all(d in placed for d in deps[s])]
        assert sid == min(ready, key=lambda s: (phase[s], s))
        placed.add(sid)
    rest = order[stuck_from:]
    assert rest == sorted(rest, key=lambda s: (phase[s], s))
    assert not [s for s in rest if all(d in placed for d in deps[s])]


def test_cloudconfig_entries_are_checked_by_schema() -> None:
    from core0.boot.cloudconfig import UserData
    from core0.boot.cloudnet import Network, _check
    from core0.schema import check_field

    def net(ethernets: dict[str, Any]) -> Network:
        n: Network = check_field(UserData, "network", {"ethernets": ethernets})
        _check(n)
        return n

    wf = cloudparse.write_file({"path": "/etc/x", "content": 1, "permissions": 0o600,
                                "append": True}, "write_files[0]")
    assert (wf.path, wf.content, wf.permissions, wf.append) == ("/etc/x", 1, 0o600, True)
    for entry, msg in (({"path": "rel"}, "write_files[0].path: an absolute path is required"),
                       ({"path": "/x", "bogus": 1}, "write_files[0].bogus: unknown key"),
                       ({"content": "x"}, "write_files[0].path: required"),
                       ({"path": "/x", "append": "yes"}, "append: expected a boolean"),
                       ("/x", "write_files[0]: expected an object")):
        with pytest.raises(BadRequest, match=msg.replace("[", r"\[").replace("]", r"\]")):
            cloudparse.write_file(entry, "write_files[0]")
    assert net({"lan": {"match": {"name": "e*"}, "addresses": ["10.0.0.2/24"],
                           "routes": [{"to": "10.1.0.0/16", "via": "10.0.0.1", "metric": 5}],
                           "nameservers": {"addresses": ["10.0.0.1"]}, "mtu": 1400}})
    for eth, msg in (({"bogus": 1}, "lan.bogus: unknown key"),
                     ({"mtu": "1500"}, "lan.mtu: expected an integer"),
                     ({"routes": [{"via": "10.0.0.1"}]}, r"lan.routes\[0\].to: required"),
                     ({"match": {"nam": "x"}}, "lan.match.nam: unknown key"),
                     ({"dhcp6": True}, "dhcp6: not supported"),
                     ({"addresses": ["nope"]}, "bad address")):
        with pytest.raises(BadRequest, match=msg):
            net({"lan": eth})


def test_write_files_onto_a_directory_leaves_no_temp_file(tmp_path: Path) -> None:
    (tmp_path / "etc" / "d").mkdir(parents=True)
    root = Root(str(tmp_path))
    with pytest.raises(OSError):
        cloudfiles.ensure_file(root, "/etc/d", b"x", 0o644)
    assert sorted(os.listdir(tmp_path / "etc")) == ["d"]
    assert os.listdir(tmp_path / "etc" / "d") == []


def test_internal_commands_are_not_service_commands() -> None:
    with pytest.raises(SpecError, match="unknown command"):
        parse_spec("x", {"name": "core.service", "args": {"argv": ["true"]}}, {})
