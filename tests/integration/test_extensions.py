"""0-core's extensions: commands declared in the configuration (core0/boot/extensions.py),
run on a real node, from 0-core's own client and from core0's."""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import Node, start_node, wait_until

CONFIG = r'''
[main]
include = []

[bus]
queues = {default = "admin", op = "operator"}

[extension."test.hello"]
binary = "echo"
args = ["hello {who}", "{count}"]
doc = "Say hello."

[extension."test.cat"]
binary = "cat"

[extension."test.json"]
binary = "sh"
args = ["-c", "printf '20:::\\n{\"n\": %s}\\n:::\\n' \"$1\"", "sh", "{n}"]
patterns = {n = "[0-9]+"}

[extension."test.where"]
binary = "sh"
args = ["-c", "pwd; echo \"$EXT_VAR\""]
cwd = "/tmp"
env = {EXT_VAR = "from-config"}
role = "operator"

[extension."test.argv"]
binary = "printf"
args = ["[%s]", "{a}", "-{b}"]

[extension."test.missing"]
binary = "/nonexistent/program"

[extension."core.system"]
binary = "true"

[extension."zerotier.list"]
binary = "sh"
args = ["-c", "echo 20::: && echo '[{\"id\": \"z1\"}]' && echo :::"]

[startup.ext-svc]
name = "test.hello"
running_delay = -1

[startup.ext-svc.args]
who = "boot"
count = 1

[extension."bad name"]
binary = "true"

[extension."test.badkey"]
binary = "true"
nope = 1
'''


@pytest.fixture(scope="module")
def enode() -> Iterator[tuple[Node, Path]]:
    base = Path(tempfile.mkdtemp(prefix="core0-ext-"))
    cfg = base / "core0.toml"
    cfg.write_text(CONFIG)
    node = start_node(base / "state", config=str(cfg))
    try:
        yield node, cfg
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)


def _send(node: Node, command: str, args: dict[str, Any], queue: str = "default"
          ) -> dict[str, Any]:
    """The result of one command pushed on ``queue`` with plain Redis commands."""
    r = redis.Redis(unix_socket_path=node.socket)
    try:
        jid = f"ext-{uuid.uuid4().hex[:10]}"
        r.rpush(f"core:{queue}", json.dumps({"id": jid, "command": command, "arguments": args}))
        got = r.blpop([f"result:{jid}"], 30)
        assert got is not None, (command, args)
        return dict(json.loads(got[1]))
    finally:
        r.close()


def test_an_extension_runs_as_a_process_job(enode: tuple[Node, Path]) -> None:
    """Its arguments fill the placeholders (a number as 0-core wrote it), its level-20
    output is its JSON data. (0-core's own client: tests/compat/test_compat_core.py.)"""
    node, _ = enode
    c = node.client()
    try:
        res = c.raw("test.hello", {"who": "world", "count": 3}).get(30)
        assert (res.state.value, res.stdout) == ("SUCCESS", "hello world 3\n"), res
        res = c.raw("test.hello", {"who": True, "count": 2.0}).get(30)
        assert res.stdout == "hello true 2\n", res
        assert c.json("test.json", {"n": 42}) == {"n": 42}
    finally:
        c.close()


def test_a_boot_service_runs_an_extension(enode: tuple[Node, Path]) -> None:
    """0-core's services could name an extension (``name = "<extension>"``): so can core0's
    ([startup.ext-svc] above: installed before the boot services start)."""
    node, _ = enode

    def status() -> Any:
        res = _send(node, "service.list", {})
        return {s["id"]: s for s in json.loads(res["data"])}.get("ext-svc")

    assert wait_until(lambda: (status() or {}).get("status") == "done", 30), status()
    assert status()["message"] == "exited 0"


def test_stdin_cwd_env_and_roles(enode: tuple[Node, Path]) -> None:
    """``stdin`` is the program's input; ``cwd`` and ``env`` apply; an extension is admin-only
    unless its table gives a role: an operator queue runs ``test.where`` (operator), not
    ``test.hello`` (403, nothing run)."""
    node, _ = enode
    c = node.client()
    try:
        assert c.raw("test.cat", {"stdin": "piped\n"}).get(30).stdout == "piped\n"
    finally:
        c.close()
    res = _send(node, "test.where", {}, queue="op")
    assert res["state"] == "SUCCESS" and res["streams"][0] == "/tmp\nfrom-config\n", res
    res = _send(node, "test.hello", {"who": "x", "count": 1}, queue="op")
    assert (res["state"], res["code"]) == ("ERROR", 403), res


@pytest.mark.parametrize("args, field", [
    ({"who": "world"}, "arguments.count"),  # every placeholder is required
    ({"who": "w", "count": 1, "extra": 2}, "arguments.extra"),  # unknown argument
    ({"who": "w", "count": [1]}, "arguments.count"),  # not a string, number or boolean
    ({"who": "w\u0000x", "count": 1}, "arguments.who"),  # NUL
])
def test_bad_arguments_are_400(enode: tuple[Node, Path], args: dict[str, Any],
                               field: str) -> None:
    res = _send(enode[0], "test.hello", args)
    assert (res["state"], res["code"]) == ("ERROR", 400), res
    assert field in res["data"], res


def test_values_never_become_options(enode: tuple[Node, Path]) -> None:
    """A value that would begin an argv element with '-' is refused (400, nothing runs);
    inside an element, or after the template's own '-', it is text like any other."""
    node, _ = enode
    res = _send(node, "test.argv", {"a": "--version", "b": "x"})
    assert (res["state"], res["code"]) == ("ERROR", 400) and "arguments.a" in res["data"], res
    res = _send(node, "test.argv", {"a": "a b;$(id)", "b": "-y"})
    assert res["state"] == "SUCCESS", res
    assert res["streams"][0] == "[a b;$(id)][--y]", res
    res = _send(node, "test.json", {"n": "1; rm -rf /"})  # its pattern: digits only
    assert (res["state"], res["code"]) == ("ERROR", 400) and "arguments.n" in res["data"], res


def test_refused_declarations_leave_the_rest(enode: tuple[Node, Path]) -> None:
    """A built-in's name, a bad name or an unknown key: that extension is not installed
    (logged), the others are; a 501 stand-in's name (zerotier.*) is replaced; a missing
    program is 404 at run time."""
    node, _ = enode
    res = _send(node, "core.system", {"name": "echo", "args": ["builtin"]})
    assert res["streams"][0] == "builtin\n", res  # the built-in, not `true`
    for name in ("bad name", "test.badkey"):
        assert _send(node, name, {})["state"] == "UNKNOWN_CMD"
    res = _send(node, "test.missing", {})
    assert (res["state"], res["code"]) == ("ERROR", 404), res
    # a 501 stand-in (0-core's zerotier.toml declares zerotier.* as extensions) is replaced
    res = _send(node, "zerotier.list", {})
    assert res["state"] == "SUCCESS" and json.loads(res["data"]) == [{"id": "z1"}], res
    assert _send(node, "rtinfo.list", {})["code"] == 501
    log = node.log_text()
    assert 'extension "core.system": a built-in command has this name' in log
    assert 'extension."bad name"' in log and 'extension."test.badkey".nope' in log


def test_listed_redacted_and_reloaded(enode: tuple[Node, Path]) -> None:
    """``core.commands`` lists an extension with its doc and arguments; ``config.get`` hides
    its environment's values; ``core.reload`` installs the file's new set (one added, one
    gone, a replaced stand-in back), and a reload the boot services refuse leaves the set as
    it was."""
    node, cfg = enode
    res = _send(node, "core.commands", {})
    cmds = {c["name"]: c for c in json.loads(res["data"])}
    hello = cmds["test.hello"]
    assert hello["doc"].startswith("Say hello.") and hello["role"] == "admin"
    assert set(hello["arguments"]["required"]) == {"who", "count"}
    conf = json.loads(_send(node, "config.get", {})["data"])
    assert conf["extension"]["test.where"]["env"] == {"EXT_VAR": "***"}
    text = cfg.read_text()
    zt = text[text.index('[extension."zerotier.list"]'):text.index('[startup.ext-svc]')]
    cfg.write_text(text.replace('[extension."test.cat"]\nbinary = "cat"\n', "").replace(zt, "")
                   + '\n[extension."test.later"]\nbinary = "echo"\nargs = ["later"]\n')
    try:
        assert _send(node, "core.reload", {})["state"] == "SUCCESS"
        assert wait_until(lambda: _send(node, "test.later", {})["state"] == "SUCCESS", 10)
        assert _send(node, "test.later", {})["streams"][0] == "later\n"
        assert _send(node, "test.cat", {})["state"] == "UNKNOWN_CMD"
        assert _send(node, "zerotier.list", {})["code"] == 501  # the stand-in is back
        # a reload the services refuse (a service naming no command) changes nothing
        cfg.write_text(text + '\n[extension."test.never"]\nbinary = "true"\n'
                       '\n[startup.broken]\nname = "no.such.command"\n')
        res = _send(node, "core.reload", {})
        assert (res["state"], res["code"]) == ("ERROR", 400), res
        assert _send(node, "test.never", {})["state"] == "UNKNOWN_CMD"
        assert _send(node, "test.later", {})["state"] == "SUCCESS"
    finally:
        cfg.write_text(text)
        _send(node, "core.reload", {})
