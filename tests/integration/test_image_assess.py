"""The boot assessment (``python -m core0.image.assess``) against a real node: a healthy boot
is recorded as ``booted`` (current/previous move on); a node that does not answer, a protected
service that never runs, a boot loop or a dispatcher that keeps dying is a ``failed`` boot,
followed by the rollback's bookkeeping. On this host the rollback itself is refused (not the
machine's init) and recorded as such: never silent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Node, free_port, start_node, wait_until
from test_image import call, data, keypair, make_image


def run_assess(state_dir: Path, config: str, digest: str) -> dict[str, Any]:
    """Run the assessor as core0 init would, for a boot whose command line names ``digest``."""
    env = {**os.environ, "CORE0_CMDLINE": f"console=ttyS0 core0.image={digest}"}
    env.pop("CORE0_PID1", None)
    res = subprocess.run([sys.executable, "-m", "core0.image.assess", "--config", config,
                          "--overrides-json", json.dumps({"main": {"state_dir": str(state_dir)}})],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert res.returncode == 125, res.stderr[-2000:]
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def setup(tmp_path: Path, extra: str = "", deadline: float = 5) -> tuple[Path, str, list[str]]:
    """A config with a trusted key, and two images A and B staged in its state dir through
    core.upgrade on a node of its own. → (state dir, config path, [digest A, digest B])."""
    sec, pub = keypair(tmp_path, "k")
    fsroot = tmp_path / "root"
    digests = []
    for v in ("a", "b"):
        m = make_image(fsroot / v, f"1.0+{v}", sec)
        digests.append(hashlib.sha256(m.read_bytes()).hexdigest())
    cfg = tmp_path / "core0.toml"
    cfg.write_text(f"[main]\nfilesystem_root = {json.dumps(str(fsroot))}\n"
                   f"[image]\ntrusted_keys = [{json.dumps(pub)}]\n"
                   f"boot_deadline = {deadline}\n{extra}")
    return tmp_path / "state", str(cfg), digests


def stage(node: Node, name: str) -> str:
    return str(data(call(node, "core.upgrade", {"path": f"/{name}/manifest.json",
                                                "switch": "none"}))["digest"])


def write_pending(state_dir: Path, pending: dict[str, Any], current: str | None) -> None:
    """What ``core.upgrade`` leaves before ``kexec -e`` (the switch itself cannot run here)."""
    p = state_dir / "images" / "state.json"
    state = json.loads(p.read_text())
    state["pending"] = pending
    state["current"] = current
    p.write_text(json.dumps(state))


def history(node: Node) -> dict[str, Any]:
    return dict(data(call(node, "image.history")))


def test_a_healthy_boot_is_recorded_and_moves_current(tmp_path: Path) -> None:
    state_dir, cfg, (a, b) = setup(tmp_path)
    node = start_node(state_dir, config=cfg)
    try:
        stage(node, "a")
        write_pending(state_dir, {"digest": a, "from": None, "boots": 0}, None)
        entry = run_assess(state_dir, cfg, a)
        assert entry["event"] == "booted" and entry["digest"] == a and entry["version"] == "1.0+a"
        stage(node, "b")  # A is current now: it stays
        write_pending(state_dir, {"digest": b, "from": a, "boots": 0}, a)
        entry = run_assess(state_dir, cfg, b)
        assert entry["event"] == "booted" and entry["digest"] == b
        h = history(node)
        assert h["current"] == b and h["previous"] == a and h["pending"] is None
        assert data(call(node, "image.previous"))["digest"] == a
        # a second run in the same boot has nothing left to judge
        assert run_assess(state_dir, cfg, b) == {}
    finally:
        node.stop()


def test_a_node_that_does_not_answer_fails_and_the_rollback_is_recorded(tmp_path: Path) -> None:
    state_dir, cfg, (a, b) = setup(tmp_path)
    node = start_node(state_dir, config=cfg)
    try:
        stage(node, "a")
        write_pending(state_dir, {"digest": a, "from": None, "boots": 0}, None)
        run_assess(state_dir, cfg, a)
        stage(node, "b")
        write_pending(state_dir, {"digest": b, "from": a, "boots": 0}, a)
    finally:
        node.stop()
    entry = run_assess(state_dir, cfg, b)  # the node is down: B's boot fails
    assert entry["event"] == "rollback-refused" and entry["to"] == a
    assert "not this machine's init" in entry["reason"]
    state = json.loads((state_dir / "images" / "state.json").read_text())
    failed = [h for h in state["history"] if h["event"] == "failed"]
    assert failed and failed[-1]["digest"] == b and "not healthy" in failed[-1]["reason"]
    assert state["pending"] is None and state["current"] == a


def test_a_protected_service_that_never_runs_fails_the_boot(tmp_path: Path) -> None:
    extra = ('[startup.never-ready]\nprotected = true\nrunning_match = "^never printed"\n'
             '[startup.never-ready.args]\nname = "sleep"\nargs = ["1000"]\n')
    state_dir, cfg, (a, _b) = setup(tmp_path, extra)
    node = start_node(state_dir, config=cfg)
    try:
        stage(node, "a")
        write_pending(state_dir, {"digest": a, "from": None, "boots": 0}, None)
        entry = run_assess(state_dir, cfg, a)
        # nothing staged to go back to: the rollback is an ordered reboot, refused here
        assert entry["event"] == "rollback-refused" and entry["to"] is None
        failed = [h for h in history(node)["history"] if h["event"] == "failed"]
        assert "never-ready" in failed[-1]["reason"]
    finally:
        node.stop()


@pytest.mark.parametrize("auto", [False, True])
def test_a_boot_loop_and_a_failed_rollback_stop_there(tmp_path: Path, auto: bool) -> None:
    """A pending image started more than 3 times fails without waiting; a boot that was itself
    an automatic rollback never switches again (no loop)."""
    state_dir, cfg, (a, b) = setup(tmp_path)
    node = start_node(state_dir, config=cfg)
    try:
        stage(node, "a")
        write_pending(state_dir, {"digest": a, "from": None, "boots": 0}, None)
        run_assess(state_dir, cfg, a)
        stage(node, "b")
        write_pending(state_dir, {"digest": b, "from": a, "boots": 3, "auto": auto}, a)
        entry = run_assess(state_dir, cfg, b)
        failed = [h for h in history(node)["history"] if h["event"] == "failed"]
        assert "started 4 times" in failed[-1]["reason"]
        assert entry["event"] == ("rollback-failed" if auto else "rollback-refused")
    finally:
        node.stop()


def start_broken_node(tmp_path: Path, state_dir: Path, config: str) -> Node:
    """``core0 dev`` from a copy of core0 whose dispatcher exits at once (as the broken image
    of tests/e2e/test_upgrade.py), restarted by its supervisor every 0.2 s."""
    tree = tmp_path / "broken"
    shutil.copytree(ROOT / "core0", tree / "core0",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "core0" / "bus" / "dispatcher.py").write_text(
        'raise SystemExit("broken on purpose (tests/integration/test_image_assess.py)")\n')
    log = tmp_path / "broken.log"
    env = {**os.environ, "PYTHONPATH": str(tree), "CORE0_TEST_RESTART_DELAY": "0.2"}
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "core0", "dev", "--state-dir",
                                 str(state_dir), "--redis-port", str(free_port()),
                                 "--config", config],
                                cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return Node(proc.pid, 0, state_dir, log)


def test_a_dispatcher_that_keeps_dying_fails_the_boot_before_the_deadline(
        tmp_path: Path) -> None:
    """The supervisor counts the dispatcher's ends (shim socket, ``services``): at
    ``image.crash_limit`` of them before a passing check the boot fails at once, though its
    deadline is still far off."""
    from core0.proc import shimlink

    # 600 s from now on the boot clock (the deadline's range ends at a day: on a host up for
    # longer the deadline is past, and the reason alone tells the crash loop from it)
    uptime = time.clock_gettime(time.CLOCK_BOOTTIME)
    state_dir, cfg, (a, b) = setup(tmp_path, deadline=min(86400, int(uptime) + 600))
    node = start_node(state_dir, config=cfg)
    try:
        stage(node, "a")
        stage(node, "b")
    finally:
        node.stop()
    write_pending(state_dir, {"digest": b, "from": a, "boots": 0}, a)
    broken = start_broken_node(tmp_path, state_dir, cfg)
    try:
        sock = str(state_dir / "shim.sock")

        def dispatcher() -> dict[str, Any]:
            return next((s for s in shimlink.services(sock) or []
                         if s["name"] == "dispatcher"), {})
        assert wait_until(lambda: dispatcher().get("exits", 0) >= 3, 60), broken.log_text()
        assert dispatcher()["last_exit"] == 1
        t = time.monotonic()
        entry = run_assess(state_dir, cfg, b)
        took = time.monotonic() - t
    finally:
        broken.stop()
    assert took < 60, took  # not the 600 s of its deadline
    assert entry["event"] == "rollback-refused" and entry["to"] == a
    state = json.loads((state_dir / "images" / "state.json").read_text())
    failed = [h for h in state["history"] if h["event"] == "failed"]
    reason = failed[-1]["reason"]
    assert failed[-1]["digest"] == b and "the dispatcher ended" in reason, reason
    assert "(last: status 1)" in reason and "core.ping" in reason, reason
    assert state["pending"] is None and state["current"] == a
