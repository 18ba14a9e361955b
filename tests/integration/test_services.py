"""Startup services on real nodes: phases and dependencies, readiness (delay, regex, oneshot),
conditions and {var}, cycles, protected restarts (backoff, exit 125), service.* commands,
core.reload and SIGHUP (drift by hash), and a dispatcher killed in the middle of the boot.

Each service is a small Python program (``svc.py``) that appends "<name> <event> <time> <pid>"
lines to a log file, so ordering and restarts are read from real timestamps and pids.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import psutil
from conftest import Node, start_node, wait_until

SVC = r'''
import os, sys, time
name, log, mode, *rest = sys.argv[1:]
def note(event):
    with open(log, "a") as f:
        f.write(f"{name} {event} {time.time():.6f} {os.getpid()}\n")
note("start")
if mode == "daemon":
    time.sleep(3600)
elif mode == "print":
    time.sleep(float(rest[0]))
    note("printed")
    print(rest[1], flush=True)
    time.sleep(3600)
elif mode == "exit":
    sys.exit(int(rest[0]))
'''


class Svcs:
    """A temp dir with the service program, its log and the node's config file."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.script = tmp / "svc.py"
        self.script.write_text(SVC)
        self.log = tmp / "events.log"
        self.log.touch()
        self.config = tmp / "core0.toml"

    def argv(self, name: str, mode: str = "daemon", *rest: str) -> list[str]:
        return [str(self.script), name, str(self.log), mode, *rest]

    def args(self, name: str, mode: str = "daemon", *rest: str, **extra: Any) -> str:
        return "args = " + _toml({"name": sys.executable, "args": self.argv(name, mode, *rest),
                                  **extra})

    def write(self, services: str, extra: str = "") -> str:
        self.config.write_text("[main]\ninclude = []\n[services]\nready_delay = 1.0\n"
                               + extra + services)
        return str(self.config)

    def events(self) -> list[tuple[str, str, float, int]]:
        out = []
        for line in self.log.read_text().splitlines():
            name, event, t, pid = line.split()
            out.append((name, event, float(t), int(pid)))
        return out

    def first(self, name: str, event: str = "start") -> float:
        return min(t for n, e, t, _ in self.events() if n == name and e == event)

    def count(self, name: str, event: str = "start") -> int:
        return sum(1 for n, e, _, _ in self.events() if n == name and e == event)


def _toml(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return json.dumps(v)


def services(c: Any) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in c.json("service.list")}


def ready_at(c: Any, sid: str) -> float:
    """When core0 found service ``sid`` ready (its own clock, epoch seconds)."""
    return float(c.json("service.get", {"id": sid})["ready_at"])


def started_at(c: Any, sid: str) -> float:
    """When the current run of service ``sid``'s job started (core0's clock, epoch seconds)."""
    return {j["id"]: j["starttime"] for j in c.job.list()}[f"svc:{sid}"] / 1000


#: clock slack of the lower bounds below (ms-rounded start times, NTP slewing): not load
SLACK = 0.01


def wait_status(c: Any, want: dict[str, str], timeout: float = 20) -> dict[str, dict[str, Any]]:
    last: dict[str, dict[str, Any]] = {}

    def ok() -> bool:
        nonlocal last
        last = services(c)
        return all(sid in last and last[sid]["status"] == st for sid, st in want.items())

    assert wait_until(ok, timeout, 0.1), {k: (v["status"], v["message"]) for k, v in last.items()}
    return last


def _start(s: Svcs, cfg: str, cmdline: str = "") -> Node:
    env = {"CORE0_CMDLINE": cmdline} if cmdline else {}
    return start_node(s.tmp / "state", config=cfg, env=env)


# ---------------------------------------------------------------- boot


def test_boot_order_readiness_conditions_cycles(tmp_path: Path) -> None:
    s = Svcs(tmp_path)
    cfg = s.write(f"""
[startup.a]
{s.args("a")}
after = ["init"]
running_delay = 1
[startup.b]
{s.args("b", "print", "1.5", "READY now")}
after = ["net"]
running_match = "^READY"
[startup.c]
{s.args("c", "exit", "0")}
after = ["b"]
running_delay = -1
[startup.d]
{s.args("d")}
[startup.e]
{s.args("e-{zt}")}
after = ["c"]
condition = "and(devmode, not(absent), zt=abc)"
[startup.f]
{s.args("f")}
condition = "absent"
[startup.g]
{s.args("g-plain", **{"devmode|args": s.argv("g-cond")})}
after = ["init"]
[startup.h]
{s.args("h", "exit", "3")}
running_delay = -1
after = ["init"]
[startup.i]
{s.args("i")}
after = ["h"]
[startup.x]
{s.args("x")}
after = ["y"]
[startup.y]
{s.args("y")}
after = ["x"]
[startup.bad]
{s.args("bad")}
nosuch = 1
""")
    node = _start(s, cfg, "devmode zt=abc")
    try:
        c = node.client(timeout=30)
        st = wait_status(c, {"a": "running", "b": "running", "c": "done", "d": "running",
                             "e": "running", "f": "skipped", "g": "running", "h": "failed",
                             "i": "failed", "x": "error", "y": "error", "bad": "error"})
        assert [st[k]["phase"] for k in "abcdeg"] == ["init", "net", "net", "boot", "net",
                                                        "init"]
        # init before net (a ready after 1 s alive), the regex gates c, the net phase gates d.
        # Lower bounds only, read on core0's clock (a service's own "start" line comes after
        # its interpreter started: later, by how loaded the machine is): a slow machine makes
        # every gap longer, never shorter, so these cannot fail for want of speed.
        ready = {sid: ready_at(c, sid) for sid in "aeg"}
        for sid in "aeg":  # ready by delay: alive 1 s (ready_delay) since its job started
            assert ready[sid] >= started_at(c, sid) + 1.0 - SLACK, sid
        assert s.first("b") >= max(ready["a"], ready["g"])
        assert s.first("c") >= s.first("b", "printed")
        assert s.first("e-abc") >= s.first("c")
        assert s.first("d") >= ready["e"]
        # {var} substitution and conditional arguments; a false condition starts nothing
        assert s.count("e-abc") == 1 and s.count("g-cond") == 1 and s.count("g-plain") == 0
        assert s.count("f") == 0 and st["f"]["message"] == "condition 'absent' is false"
        # a failed oneshot is reported and its dependents never start
        assert st["h"]["last_exit"] == 1003 and "1003" in st["h"]["message"]
        assert s.count("i") == 0 and st["i"]["message"].startswith("dependency h failed")
        # a cycle is refused with a clear message; the rest of the boot went on
        assert "dependency cycle: x → y → x" in st["x"]["message"]
        assert s.count("x") == 0 and s.count("y") == 0
        assert "nosuch: unknown key" in st["bad"]["message"]
        assert str(s.config) in st["bad"]["message"]
        # services are ordinary jobs with their real pids
        jobs = {j["id"]: j for j in c.job.list()}
        for sid in "abdeg":
            pid = st[sid]["pid"]
            assert jobs[f"svc:{sid}"]["pid"] == pid and psutil.pid_exists(pid)
        full = c.json("service.get", {"id": "e"})
        assert full["spec"]["args"]["args"][1] == "e-abc" and full["spec"]["enabled"]
        res = c.raw("service.get", {"id": "nope"}).get(10)
        assert res.code == 404
        c.close()
    finally:
        node.stop()


# ---------------------------------------------------------------- reload


def test_reload_restarts_only_changed_services(tmp_path: Path) -> None:
    s = Svcs(tmp_path)
    base = {"p": s.args("p"), "q": s.args("q"), "r": s.args("r")}

    def cfg(svcs: dict[str, str], extra: str = "") -> str:
        return s.write("".join(f"[startup.{k}]\n{v}\n" for k, v in svcs.items()) + extra)

    node = _start(s, cfg(base))
    try:
        c = node.client(timeout=30)
        st = wait_status(c, {"p": "running", "q": "running", "r": "running"})
        pids = {k: v["pid"] for k, v in st.items()}
        hashes = {k: v["hash"] for k, v in st.items()}
        # q changes, r goes, t comes; p untouched
        cfg({"p": base["p"], "q": s.args("q2"), "t": s.args("t")})
        out = c.json("core.reload", timeout=60)
        assert out["restarted"] == ["q"] and out["stopped"] == ["r"]
        assert out["started"] == ["t"] and out["unchanged"] == ["p"]
        st = wait_status(c, {"p": "running", "q": "running", "t": "running"})
        assert "r" not in st
        assert st["p"]["pid"] == pids["p"] and st["p"]["hash"] == hashes["p"]
        assert st["q"]["pid"] != pids["q"] and st["q"]["hash"] != hashes["q"]
        assert wait_until(lambda: not psutil.pid_exists(pids["q"]), 10)
        assert wait_until(lambda: not psutil.pid_exists(pids["r"]), 10)
        assert s.count("q2") == 1 and s.count("p") == 1 and s.count("t") == 1
        pids = {k: v["pid"] for k, v in st.items()}
        # a cycle (or an invalid service) refuses the whole config: 400, nothing changes
        cfg({"p": s.args("p-changed"), "q": s.args("q2"), "t": s.args("t")},
            '[startup.u]\nafter = ["v"]\nargs = {name = "true"}\n'
            '[startup.v]\nafter = ["u"]\nargs = {name = "true"}\n')
        res = c.raw("core.reload").get(30)
        assert res.code == 400 and "dependency cycle" in res.critical, res.critical
        cfg({"p": s.args("p-changed") + "\nbogus = true", "q": s.args("q2")})
        res = c.raw("core.reload").get(30)
        assert res.code == 400 and "bogus: unknown key" in res.critical, res.critical
        st = services(c)
        assert sorted(st) == ["p", "q", "t"]
        assert {k: v["pid"] for k, v in st.items()} == pids
        # SIGHUP to the core0 dev supervisor (forwarded to the dispatcher) does the same
        cfg({"p": s.args("p3"), "q": s.args("q2"), "t": s.args("t")})
        os.kill(node.pid, signal.SIGHUP)
        assert wait_until(lambda: s.count("p3") == 1, 20)
        st = wait_status(c, {"p": "running", "q": "running", "t": "running"})
        assert st["p"]["pid"] != pids["p"]
        assert st["q"]["pid"] == pids["q"] and st["t"]["pid"] == pids["t"]
        c.close()
    finally:
        node.stop()


def test_service_commands(tmp_path: Path) -> None:
    s = Svcs(tmp_path)
    cfg = s.write(f"""
[startup.one]
{s.args("one")}
[startup.two]
{s.args("two", "exit", "0")}
running_delay = -1
[startup.skip]
{s.args("skip")}
condition = "nosuchflag"
""")
    node = _start(s, cfg)
    try:
        c = node.client(timeout=30)
        st = wait_status(c, {"one": "running", "two": "done", "skip": "skipped"})
        pid = st["one"]["pid"]
        assert c.raw("service.start", {"id": "one"}).get(10).code == 409
        out = c.json("service.stop", {"id": "one"})
        assert out["status"] == "stopped" and out["pid"] == 0
        assert wait_until(lambda: not psutil.pid_exists(pid), 10)
        assert not any(j["id"] == "svc:one" for j in c.job.list())
        out = c.json("service.start", {"id": "one"})
        assert out["status"] in ("starting", "running")
        st = wait_status(c, {"one": "running"})
        assert st["one"]["starts"] == 2 and s.count("one") == 2
        pid = st["one"]["pid"]
        c.json("service.restart", {"id": "one"})
        st = wait_status(c, {"one": "running"})
        assert st["one"]["pid"] != pid and s.count("one") == 3
        # a finished oneshot runs again on request; a skipped one cannot be started
        c.json("service.start", {"id": "two"})
        assert wait_until(lambda: s.count("two") == 2, 10)
        wait_status(c, {"two": "done"})
        res = c.raw("service.start", {"id": "skip"}).get(10)
        assert res.code == 412 and "condition" in res.critical
        assert c.raw("service.stop", {"id": "missing"}).get(10).code == 404
        assert c.raw("service.start", {"id": "-x"}).get(10).code == 400
        c.close()
    finally:
        node.stop()


# ---------------------------------------------------------------- restarts


def test_protected_restarts_and_exit_125(tmp_path: Path) -> None:
    s = Svcs(tmp_path)
    cfg = s.write(f"""
[startup.perm]
{s.args("perm", "exit", "125")}
protected = true
[startup.flaky]
{s.args("flaky", "exit", "1")}
protected = true
[startup.retry]
{s.args("retry", "exit", "2")}
max_restart = 2
""")
    node = _start(s, cfg)
    try:
        c = node.client(timeout=30)
        st = wait_status(c, {"perm": "failed", "retry": "failed"}, 20)
        assert "exit 125" in st["perm"]["message"] and st["perm"]["last_exit"] == 1125
        # perm and retry are failed: their jobs are over. Their restart, were there one, would
        # come from the same backoff as flaky's (1 s, then 2 s); flaky restarted twice shows
        # that machinery ran well past the point where theirs was due (no sleep)
        assert wait_until(lambda: s.count("flaky") >= 3, 30)
        assert s.count("perm") == 1 and services(c)["perm"]["starts"] == 1
        assert s.count("retry") == 3 and services(c)["retry"]["starts"] == 3
        st = services(c)
        assert st["flaky"]["status"] == "starting" and "restarting" in st["flaky"]["message"]
        c.close()
    finally:
        node.stop()


# ---------------------------------------------------------------- dispatcher restarts


def test_dispatcher_killed_during_boot(tmp_path: Path) -> None:
    s = Svcs(tmp_path)
    cfg = s.write(f"""
[startup.early]
{s.args("early")}
after = ["init"]
running_delay = 4
[startup.mid]
{s.args("mid", "print", "1", "up")}
after = ["early"]
running_match = "up"
[startup.once]
{s.args("once", "exit", "0")}
after = ["mid"]
running_delay = -1
[startup.late]
{s.args("late")}
""")
    node = _start(s, cfg)
    try:
        assert wait_until(lambda: s.count("early") == 1, 10)
        early_pid = [p for n, _, _, p in s.events() if n == "early"][0]
        old = node.dispatcher_pid()
        os.kill(old, signal.SIGKILL)  # early is not ready yet: the boot is in its init phase
        assert wait_until(lambda: node.pids().get("dispatcher", old) != old, 30)
        c = node.client(timeout=30)
        st = wait_status(c, {"early": "running", "mid": "running", "once": "done",
                             "late": "running"}, 30)
        assert st["early"]["pid"] == early_pid and psutil.pid_exists(early_pid)
        assert {n: s.count(n) for n in ("early", "mid", "once", "late")} == {
            "early": 1, "mid": 1, "once": 1, "late": 1}
        # the new dispatcher kept early's 4 s delay from its job's start (a lower bound, on
        # core0's clock: see test_boot_order_readiness_conditions_cycles)
        assert ready_at(c, "early") >= started_at(c, "early") + 4 - SLACK
        assert s.first("mid") >= ready_at(c, "early")
        before = {k: (v["status"], v["pid"], v["starts"]) for k, v in st.items()}
        # once the boot is done, another crash changes nothing: no oneshot runs again
        old = node.dispatcher_pid()
        os.kill(old, signal.SIGKILL)
        assert wait_until(lambda: node.pids().get("dispatcher", old) != old, 30)
        # No sleep: the new dispatcher restores the services and launches whatever it would
        # run again before its queue loops take their first command, and a launch marks the
        # service starting at once. So its first answer shows a re-run, if there were one.
        st = services(c)
        assert {k: (v["status"], v["pid"], v["starts"]) for k, v in st.items()} == before
        assert st["once"]["status"] == "done" and s.count("once") == 1
        assert all(s.count(n) == 1 for n in ("early", "mid", "late"))
        c.close()
    finally:
        node.stop()
