"""Which commands cut short by their dispatcher run again (``CommandSpec.rerun``), and the one
result of those that do not (tests/integration/test_cut_short.py runs it on a node)."""

from __future__ import annotations

import json

from core0_client.protocol import Command

from core0 import registry
from core0.bus.reconcile import interrupted, runs_again
from core0.sandbox.dispatch import INSIDE_ONLY, requeued

registry.load_all()


def _spec(name: str) -> registry.CommandSpec:
    spec = registry.get(name)
    assert spec is not None, name
    return spec


def test_what_changes_nothing_or_builds_a_process_runs_again() -> None:
    for name in ("core.ping", "info.cpu", "zfs.list", "kvm.list", "job.list", "core.subscribe",
                 "filesystem.exists", "filesystem.list", "core.system", "bash",
                 "corex.dispatch", "container.dispatch"):
        assert _spec(name).rerun, name


def test_what_changes_the_node_is_not_run_twice() -> None:
    for name in ("filesystem.move", "filesystem.remove", "filesystem.mkdir", "zfs.destroy",
                 "zfs.create", "kvm.create", "kvm.destroy", "corex.create", "corex.terminate",
                 "ip.link.add", "bridge.create", "disk.mkfs", "job.kill", "container.run"):
        assert not _spec(name).rerun, name


def test_every_read_only_or_inline_command_runs_again() -> None:
    for spec in registry.all_commands():
        if spec.role is registry.Role.READ_ONLY or spec.inline or spec.builds_process:
            assert spec.rerun, spec.name
        assert spec.describe()["rerun"] is spec.rerun


def test_a_repeated_command_runs_again_whatever_it_is() -> None:
    move = _spec("filesystem.move")
    assert not runs_again(Command(id="a", command=move.name), move)
    assert runs_again(Command(id="a", command=move.name, recurring_period=60), move)
    assert runs_again(Command(id="a", command=move.name, max_restart=2), move)


def test_a_containers_inner_builtin_keeps_its_commands_rule() -> None:
    for name, again in (("filesystem.move", False), ("info.cpu", True), ("ip.link.add", False)):
        inner = requeued(Command(id="x", command=f"{INSIDE_ONLY}7:{name}"))
        assert inner is not None
        assert inner[1].rerun is again, name


def test_the_interrupted_result() -> None:
    move = _spec("filesystem.move")
    pub = interrupted("j1", Command(id="j1", command=move.name, tags=["t"]), move, b"raw",
                      "core:default:processing")
    res = json.loads(pub.result_json)
    assert (res["id"], res["state"], res["code"], res["tags"]) == ("j1", "ERROR", 503, ["t"])
    assert "interrupted" in res["critical"] and "filesystem.move" in res["critical"]
    assert pub.mode == "owned"
