"""Hostile input: every command with a recoverable id gets exactly one error result, fast;
the rest is dead-lettered and counted; the dispatcher never dies; no shell ever runs."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from conftest import start_node
from wire import wait_for

MARKER = "/tmp/core0-pwned"
META = [
    f"; touch {MARKER}",
    f"$(touch {MARKER})",
    f"`touch {MARKER}`",
    f"| touch {MARKER}",
    f"&& touch {MARKER}",
    f"> {MARKER}",
    f"< /etc/passwd; touch {MARKER}",
    f"\ntouch {MARKER}",
    f"' ; touch {MARKER}; '",
    f'" ; touch {MARKER}; "',
]


def _id() -> str:
    return "h-" + uuid.uuid4().hex[:12]


def build_cases(fsroot: Path) -> list[tuple[str, bytes, str | None, set[str]]]:
    """(label, raw bytes, id or None (dead letter), acceptable states)."""
    cases: list[tuple[str, bytes, str | None, set[str]]] = []
    err = {"ERROR"}

    def add(label: str, obj: object, states: set[str] = err, job_id: str | None = "auto") -> None:
        if job_id == "auto":
            assert isinstance(obj, dict)
            job_id = obj["id"]
        raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        cases.append((label, raw, job_id, states))

    def dead(label: str, raw: bytes) -> None:
        cases.append((label, raw, None, set()))

    # 1. shape: nothing recoverable → dead letters
    dead("not json", b"hello world")
    dead("invalid utf-8", b"\xff\xfe\xfd")
    dead("utf-8 surrogates", b'{"id": "\xed\xa0\x80"}')
    dead("scalar int", b"42")
    dead("scalar string", b'"core.ping"')
    dead("scalar null", b"null")
    dead("scalar true", b"true")
    dead("array", b'[{"id": "x", "command": "core.ping"}]')
    dead("empty", b"")
    dead("whitespace", b"   \n\t ")
    dead("deep nesting no id", b"[" * 100_000 + b"]" * 100_000)
    dead("deep object nesting no id", b'{"a":' * 50_000 + b"1" + b"}" * 50_000)
    dead("NUL bytes", b"\x00\x00\x00")
    dead("NUL in json", b'{"command": "core.ping"}\x00')
    # 2. ids
    dead("missing id", json.dumps({"command": "core.ping"}).encode())
    dead("empty id", json.dumps({"id": "", "command": "core.ping"}).encode())
    dead("int id", json.dumps({"id": 17, "command": "core.ping"}).encode())
    dead("null id", json.dumps({"id": None, "command": "core.ping"}).encode())
    dead("list id", json.dumps({"id": ["a"], "command": "core.ping"}).encode())
    dead("huge id", json.dumps({"id": "x" * 10_240, "command": "core.ping"}).encode())
    dead("id with space", json.dumps({"id": "a b", "command": "core.ping"}).encode())
    dead("id with slash", json.dumps({"id": "../../x", "command": "core.ping"}).encode())
    dead("id nested only", json.dumps({"arguments": {"id": "nested-1"}, "command": "x"}).encode())
    for i, m in enumerate(META[:4]):
        dead(f"metachar id {i}", json.dumps({"id": m, "command": "core.ping"}).encode())
    # recoverable ids with broken bodies → 400
    jid = _id()
    add("truncated json", f'{{"id": "{jid}", "command": "core.ping", "argu'.encode(), err, jid)
    jid = _id()
    add("deep nesting after id",
        f'{{"id": "{jid}", "command": "core.ping", "arguments": '.encode() + b"[" * 100_000
        + b"]" * 100_000 + b"}", err, jid)
    jid = _id()
    add("NUL after id", f'{{"id": "{jid}", "command": "core.ping"}}\x00'.encode(), err, jid)
    jid = _id()
    add("16 MiB payload", json.dumps({"id": jid, "command": "core.system", "arguments": {
        "name": "echo", "args": ["x" * (16 << 20)]}}).encode(), err, jid)
    jid = _id()
    add("invalid utf-8 in args",
        f'{{"id": "{jid}", "command": "core.ping", "arguments": {{"a": "'.encode()
        + b"\xff\xfe" + b'"}}', err, jid)
    # 3. envelope types
    for field, value in [("command", 5), ("command", ""), ("command", None), ("arguments", []),
                         ("arguments", "x"), ("arguments", 1), ("queue", 5), ("queue", "a b"),
                         ("queue", "../q"), ("max_time", "10"), ("max_time", -1),
                         ("max_time", 1.5), ("max_time", True), ("max_restart", "2"),
                         ("recurring_period", "x"), ("stream", "yes"), ("stream", 1),
                         ("tags", "a,b"), ("tags", [1, 2]), ("tags", ["x" * 1000]),
                         ("log_levels", "x"), ("unknown_field", 1), ("__proto__", {})]:
        obj = {"id": _id(), "command": "core.ping"}
        obj[field] = value
        add(f"envelope {field}={str(value)[:20]}", obj)
    # unknown command / argument / types of arguments
    for name in ["no.such", "core", "core.", ".ping", "CORE.PING", "core.ping ", "x" * 500,
                 "core.service"]:
        add(f"unknown command {name[:20]}", {"id": _id(), "command": name},
            {"UNKNOWN_CMD", "ERROR"})
    bad_args = [
        ("core.ping", {"x": 1}),
        ("core.system", {}),
        ("core.system", {"name": 5}),
        ("core.system", {"name": "echo", "args": "a b"}),
        ("core.system", {"name": "echo", "args": [1, 2]}),
        ("core.system", {"name": "echo", "env": {"A": 1}}),
        ("core.system", {"name": "echo", "env": ["A=1"]}),
        ("core.system", {"name": "echo", "env": {"A B": "1"}}),
        ("core.system", {"name": "echo", "env": {"1A": "1"}}),
        ("core.system", {"name": "echo", "dir": 5}),
        ("core.system", {"name": "echo", "stdin": ["x"]}),
        ("core.system", {"name": ""}),
        ("core.system", {"name": "echo\x00rm"}),
        ("core.system", {"name": "echo", "args": ["a\x00b"]}),
        ("core.system", {"name": "echo", "dir": "/nonexistent-dir-xyz"}),
        ("core.system", {"name": "/nonexistent/binary"}),
        ("bash", {}),
        ("bash", {"script": 1}),
        ("bash", {"script": "echo", "extra": True}),
        ("job.kill", {}),
        ("job.kill", {"id": "x", "signal": "TERM"}),
        ("job.kill", {"id": "x", "signal": 999}),
        ("job.kill", {"id": "x", "signal": True}),
        ("job.kill", {"id": "../../etc"}),
        ("job.list", {"id": 5}),
        ("job.unschedule", {"id": "no-such-job"}),
        ("process.kill", {"pid": 1}),
        ("process.kill", {"pid": "1"}),
        ("process.kill", {"pid": 0}),
        ("process.kill", {"pid": -1}),
        ("process.kill", {"pid": 2_000_000_000}),
        ("process.list", {"pid": "self"}),
        ("core.subscribe", {}),
        ("core.subscribe", {"id": "no-such-job-output"}),
        ("filesystem.open", {"file": "/x", "mode": "rw+x"}),
        ("filesystem.open", {"file": "../../../../etc/shadow"}),
        ("filesystem.open", {"file": "/etc/shadow"}),
        ("filesystem.open", {"file": "link-out/etc/shadow"}),
        ("filesystem.open", {"file": "a\x00b"}),
        ("filesystem.open", {"file": "x" * 5000}),
        ("filesystem.read", {"fd": "0123"}),
        ("filesystem.read", {"fd": "0" * 32}),
        ("filesystem.write", {"fd": "0" * 32, "block": "!!!"}),
        ("filesystem.list", {"path": "../../../etc/nope"}),
        ("filesystem.remove", {"path": "/"}),
        ("filesystem.remove", {"path": "../.."}),
        ("filesystem.chmod", {"path": "/x", "mode": "777"}),
        ("filesystem.chmod", {"path": "/x", "mode": 99999}),
        ("filesystem.chown", {"path": "/", "user": "-rf"}),
        ("filesystem.chown", {"path": "/", "user": "no-such-user-xyz"}),
        ("filesystem.move", {"path": "/nope", "destination": "/nope2"}),
        ("filesystem.mkdir", {"path": "file-here/sub"}),
    ]
    for command, args in bad_args:
        add(f"bad args {command} {json.dumps(args)[:40]}",
            {"id": _id(), "command": command, "arguments": args})
    # 6. shell metacharacters in string fields that must not run anything
    for i, m in enumerate(META):
        add(f"metachar name {i}", {"id": _id(), "command": "core.system",
                                   "arguments": {"name": m}})
        add(f"metachar dir {i}", {"id": _id(), "command": "core.system",
                                  "arguments": {"name": "true", "dir": m}})
        add(f"metachar path {i}", {"id": _id(), "command": "filesystem.open",
                                   "arguments": {"file": m}})
        add(f"metachar job {i}", {"id": _id(), "command": "job.kill", "arguments": {"id": m}})
        add(f"metachar command {i}", {"id": _id(), "command": m}, {"UNKNOWN_CMD", "ERROR"})
        add(f"metachar queue {i}", {"id": _id(), "command": "core.ping", "queue": m})
    return cases


@pytest.fixture(scope="module")
def hostile_node(tmp_path_factory):  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("hostile")
    root = base / "fsroot"
    (root / "data").mkdir(parents=True)
    (root / "file-here").write_text("x")
    (root / "tmp").mkdir()
    os.symlink("/", root / "link-out")  # resolved inside the root, never to the real /
    cfg = base / "core0.toml"
    cfg.write_text(f'[main]\nfilesystem_root = "{root}"\ninclude = []\n')
    n = start_node(base / "state", config=str(cfg))
    yield n, root
    n.stop()


def test_hostile_corpus(hostile_node) -> None:
    node, root = hostile_node
    r = node.redis()
    if os.path.exists(MARKER):
        os.unlink(MARKER)
    cases = build_cases(root)
    answered = [c for c in cases if c[2] is not None]
    assert len(cases) >= 100 and len(answered) >= 100
    pid = node.dispatcher_pid()
    dead_before = int(r.hget("core0:stats", "dead_letters") or 0)
    for label, raw, job_id, states in cases:
        for _ in range(3):  # every case three times: still exactly one result
            r.rpush("core:default", raw)
        if job_id is None:
            continue
        got = r.brpoplpush(f"result:{job_id}", f"result:{job_id}", 5)
        assert got is not None, f"{label}: no result"
        res = json.loads(got)
        assert res["state"] in states, f"{label}: {res['state']} {res['data'][:200]}"
        assert res["code"] >= 400, label
        assert res["id"] == job_id
    n_dead = sum(1 for c in cases if c[2] is None) * 3
    assert wait_for(lambda: int(r.hget("core0:stats", "dead_letters") or 0) - dead_before
                    == n_dead, 10), "dead letters not all counted"
    assert r.llen("core:default:dead") <= 1000 and r.ttl("core:default:dead") > 0
    assert wait_for(lambda: r.llen("core:default:processing") == 0
                    and r.llen("core:default") == 0, 10)
    # every copy has been taken and answered or dropped: any second result would be there now
    for label, _raw, job_id, _ in answered:
        assert r.llen(f"result:{job_id}") == 1, f"{label}: more than one result"
    assert node.dispatcher_pid() == pid, "the dispatcher restarted"
    assert not os.path.exists(MARKER), "a shell ran"
    # the dispatcher is healthy afterwards
    r.rpush("core:default", json.dumps({"id": "after-hostile", "command": "core.ping"}))
    assert r.brpoplpush("result:after-hostile", "result:after-hostile", 5) is not None


def test_metachars_are_literal_arguments(hostile_node) -> None:
    """Values with shell syntax are passed as plain argv items (no shell, no expansion)."""
    node, _ = hostile_node
    r = node.redis()
    for i, m in enumerate(META):
        jid = f"lit-{i}-{uuid.uuid4().hex[:6]}"
        r.rpush("core:default", json.dumps({"id": jid, "command": "core.system",
                                            "arguments": {"name": "echo", "args": [m]}}))
        res = json.loads(r.brpoplpush(f"result:{jid}", f"result:{jid}", 5))
        assert res["state"] == "SUCCESS"
        assert res["streams"][0] == m + "\n"
    assert not os.path.exists(MARKER)


def test_filesystem_confined_to_root(hostile_node) -> None:
    """Paths resolve inside the configured root: .., absolute and symlinks included."""
    from core0_client import Client

    node, root = hostile_node
    c = Client("127.0.0.1", node.port)
    c.upload("/data/f.txt", b"hello")
    assert (root / "data" / "f.txt").read_bytes() == b"hello"
    c.upload("../../../../escape.txt", b"x")  # lands at the root, not above it
    assert (root / "escape.txt").exists()
    assert not Path("/escape.txt").exists()
    c.upload("/link-out/tmp/via-link.txt", b"y")  # link-out → / inside the root
    assert (root / "tmp" / "via-link.txt").read_bytes() == b"y"
    assert not Path("/tmp/via-link.txt").exists()
    assert c.download("/data/f.txt") == b"hello"
    names = [e["name"] for e in c.filesystem.list("/")]
    assert "data" in names and "link-out" in names
    c.close()
