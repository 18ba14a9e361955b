"""A container's ``/.startup.toml`` (core0/sandbox/startup.py): read safely inside the root,
parsed strictly, refused commands and roles (core0/commands/container_startup.py's plan),
the ``startup`` entry of corex.get. No node; the real thing: tests/integration/
test_sandbox_startup.py."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from core0 import registry
from core0.commands.container_startup import ContainerServices
from core0.config import Config
from core0.errors import BadRequest, Forbidden, PreconditionFailed
from core0.registry import Role
from core0.sandbox import dispatch as dsp
from core0.sandbox import startup
from core0.sandbox.store import Record

GOOD = b"""
[startup.entry]
name = "core.system"
after = ["init"]
protected = true

[startup.entry.args]
name = "/bin/app"
args = ["--serve"]
env = {A = "1"}
dir = "/"
"""


def test_reads_the_tables(tmp_path: Path) -> None:
    (tmp_path / ".startup.toml").write_bytes(GOOD)
    tables = startup.read_tables(tmp_path)
    assert tables is not None and list(tables) == ["entry"]
    assert tables["entry"]["__source__"] == "/.startup.toml"
    assert tables["entry"]["args"]["args"] == ["--serve"]


def test_no_file_is_none(tmp_path: Path) -> None:
    assert startup.read_tables(tmp_path) is None


def test_a_symlink_is_never_followed(tmp_path: Path) -> None:
    host = tmp_path / "host.toml"
    host.write_bytes(GOOD)
    root = tmp_path / "root"
    root.mkdir()
    (root / ".startup.toml").symlink_to(host)  # the host's file, by its absolute path
    with pytest.raises(BadRequest, match="symbolic link"):
        startup.read_tables(root)
    (root / ".startup.toml").unlink()
    (root / "real.toml").write_bytes(GOOD)
    (root / ".startup.toml").symlink_to("real.toml")  # inside the root: refused too
    with pytest.raises(BadRequest, match="symbolic link"):
        startup.read_tables(root)


def test_special_files_are_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / ".startup.toml")
    out: list[Any] = []

    def read() -> None:
        try:
            startup.read_tables(tmp_path)
        except BadRequest as e:
            out.append(e.message)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "a FIFO blocked the read"
    assert out and "not a regular file" in out[0]
    os.unlink(tmp_path / ".startup.toml")
    (tmp_path / ".startup.toml").mkdir()
    with pytest.raises(BadRequest, match="not a regular file"):
        startup.read_tables(tmp_path)


def test_size_is_bounded(tmp_path: Path) -> None:
    (tmp_path / ".startup.toml").write_bytes(b"#" * (startup.MAX_BYTES + 1))
    with pytest.raises(BadRequest, match="larger than"):
        startup.read_tables(tmp_path)


@pytest.mark.parametrize("data,why", [
    (b"[startup.x\nname = 1", "not valid TOML"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[extension.x]\nbinary = 'x'", "unknown table or key 'extension'"),
    (b"startup = 3", "must be a table"),
    (b"[startup]\nx = 3", "startup.x must be a table"),
    (b"x = " + b"[" * 5000 + b"]" * 5000, "nested too deeply|unknown table"),
])
def test_bad_files(data: bytes, why: str) -> None:
    with pytest.raises(BadRequest, match=why) as e:
        startup.parse(data)
    assert e.value.message.startswith("/.startup.toml")


def test_services_are_bounded() -> None:
    data = "".join(f"[startup.s{i}]\n" for i in range(startup.MAX_SERVICES + 1)).encode()
    with pytest.raises(BadRequest, match="at most"):
        startup.parse(data)


@pytest.fixture(autouse=True)
def commands() -> None:
    registry.load_all()


def test_refusal_inside_containers() -> None:
    assert dsp.refusal("core.system", Role.ADMIN) is None
    assert isinstance(dsp.refusal("core.system", Role.OPERATOR), Forbidden)
    assert isinstance(dsp.refusal("disk.list", Role.ADMIN), PreconditionFailed)
    assert isinstance(dsp.refusal("core.service", Role.ADMIN), BadRequest)  # internal
    assert dsp.refusal("info.mem", Role.OPERATOR) is None


def _services(tmp_path: Path, role: Role, tables: dict[str, Any],
              scope: str = "") -> ContainerServices:
    cfg = Config()
    cfg = type(cfg)(**{**cfg.__dict__, "main": type(cfg.main)(
        **{**cfg.main.__dict__, "state_dir": str(tmp_path)})})
    rec = Record(id=7, name="", tags=[], root="bb", image="bb", hostname="h", arguments={},
                 runtime_id="core0-7", netns="", cgroups_path="/x", role=int(role),
                 scope=scope)
    ctx: Any = SimpleNamespace(config=cfg, engine=SimpleNamespace(table={}),
                               job=SimpleNamespace(role=role, scope=scope or None))
    return ContainerServices(ctx, rec, 1, tables)


def test_plan_refuses_per_service(tmp_path: Path) -> None:
    tables = startup.parse(b"""
[startup.app]
name = "core.system"
[startup.app.args]
name = "/bin/app"

[startup.disk]
name = "disk.list"

[startup.mem]
name = "info.mem"
running_delay = -1

[startup.later]
name = "info.mem"
after = ["app"]

[startup.loop1]
name = "info.cpu"
after = ["loop2"]

[startup.loop2]
name = "info.cpu"
after = ["loop1"]
""")
    op = _services(tmp_path, Role.OPERATOR, tables)
    p = op._plan(op.cfg)
    assert "not permitted for the role" in p.errors["app"] and "(operator)" in p.errors["app"]
    assert "cannot run inside a container" in p.errors["disk"]
    assert "mem" not in p.errors and "later" not in p.errors  # (fails at run: its dependency)
    assert "dependency cycle" in p.errors["loop1"]
    assert p.order.index("app") < p.order.index("later")
    admin = _services(tmp_path, Role.ADMIN, tables, scope="")
    assert "app" not in admin._plan(admin.cfg).errors


def test_job_ids_carry_the_private_prefix(tmp_path: Path) -> None:
    s = _services(tmp_path, Role.OPERATOR, {}, scope="team.")
    assert s.job_prefix == "team.startup:7:"
    long = {"x" * 100: {"name": "info.mem", "__source__": "/.startup.toml"}}
    s = _services(tmp_path, Role.OPERATOR, long, scope="a-long-private-queue-name.")
    assert "too long" in s._plan(s.cfg).errors["x" * 100]


def test_describe_redacts_messages(tmp_path: Path) -> None:
    state = {"prefix": "startup:3:", "error": "", "services": [
        {"id": "entry", "status": "failed", "message": "secret output", "pid": 0,
         "starts": 2, "last_exit": 1003, "spec": {"name": "core.system", "protected": True}}]}
    (tmp_path / startup.STATE).write_text(json.dumps(state))
    seen = startup.describe(tmp_path, True)
    assert seen is not None
    svc = seen["services"][0]
    assert svc["job"] == "startup:3:entry" and svc["message"] == "secret output"
    assert svc["command"] == "core.system" and svc["protected"] is True
    hidden = startup.describe(tmp_path, False)
    assert hidden is not None and hidden["services"][0]["message"] == ""
    assert startup.describe(tmp_path / "none", True) is None


def test_startup_jobs_count_against_the_role(tmp_path: Path) -> None:
    cfg = Config()
    inner = SimpleNamespace(internal=True, container=3, role=Role.OPERATOR)
    engine: Any = SimpleNamespace(cfg=cfg, table={}, by_role={r: 0 for r in Role},
                                  free_slots=lambda role: 10)
    cap = cfg.bus.role_cap(Role.OPERATOR)
    assert cap is not None
    engine.by_role[Role.OPERATOR] = cap - 2
    assert dsp._room(engine, Role.OPERATOR)
    engine.table = {"a": inner, "b": inner}
    assert not dsp._room(engine, Role.OPERATOR)
    assert dsp._room(engine, Role.ADMIN)
    engine.free_slots = lambda role: 0
    assert not dsp._room(engine, Role.ADMIN)
