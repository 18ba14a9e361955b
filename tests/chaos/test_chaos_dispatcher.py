"""Chaos: the dispatcher SIGKILLed 20 times at random moments while several clients keep a
steady load of commands on the node.

Every submitted id must end with exactly one result (one on the client's side, one entry in
``result:<id>``), and nothing that started may run twice: each process job appends its id to
a marks file when it starts, so a second run of the same id shows as a second line. The
supervisor restarts the dispatcher after each kill (``CORE0_TEST_RESTART_DELAY`` keeps its
backoff at a fixed 0.2 s, or 20 kills would take many minutes of doubling delays).
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import start_node, wait_until
from core0_client import Client, Command
from wire import keys_without_ttl

pytestmark = pytest.mark.slow

KILLS = 20
CLIENTS = 4
BATCH = 8


def _command(jid: str, seq: int, marks: Path) -> Command:
    """A mix: inline (ping), quick process jobs, and process jobs still running when the
    dispatcher dies (adopted by the next one). The process jobs leave a countable mark."""
    kind = seq % 4
    if kind == 0:
        return Command("core.ping", {}, id=jid)
    if kind == 1:
        return Command("core.system", {"name": "true"}, id=jid)
    script = f"echo {jid} >> {marks}" + ("; sleep 0.4" if kind == 3 else "")
    return Command("bash", {"script": script, "stdin": ""}, id=jid)


def _client(port: int, wid: int, marks: Path, stop: threading.Event,
            out: dict[int, dict[str, Any]]) -> None:
    """Submit pipelined batches until ``stop``; wait for every result of each batch."""
    c = Client("127.0.0.1", port, timeout=120, retries=200)
    states: dict[str, str] = {}
    submitted: list[str] = []
    errors: list[str] = []
    seq = 0
    try:
        while not stop.is_set():
            cmds = []
            for _ in range(BATCH):
                cmds.append(_command(f"chaos-{wid}-{seq}", seq, marks))
                seq += 1
            resps = c.submit_many(cmds)
            submitted += [x.id for x in cmds]
            for resp in resps:
                try:
                    res = resp.get(120)
                    states[resp.id] = res.state.value if res.ok else (
                        f"{res.state.value} {res.code} {res.critical[:200]}")
                except Exception as e:
                    errors.append(f"{resp.id}: {e!r}")
    except Exception as e:  # reported by the test, never swallowed
        errors.append(f"client {wid}: {e!r}")
    finally:
        out[wid] = {"states": states, "submitted": submitted, "errors": errors}
        c.close()


def test_dispatcher_killed_20_times_under_load(tmp_path: Path) -> None:
    node = start_node(tmp_path / "state", env={"CORE0_TEST_RESTART_DELAY": "0.2"})
    marks = tmp_path / "marks"
    rnd = random.Random(14)
    stop = threading.Event()
    out: dict[int, dict[str, Any]] = {}
    threads = [threading.Thread(target=_client, args=(node.port, i, marks, stop, out),
                                daemon=True) for i in range(CLIENTS)]
    r = node.redis()
    kills = 0
    try:
        for t in threads:
            t.start()
        t0 = time.monotonic()
        for _ in range(KILLS):
            old = _dispatcher(node)
            # anywhere in its life: while it starts, reconciles, or serves at full speed
            time.sleep(rnd.uniform(0.1, 2.5))
            try:
                os.kill(old, signal.SIGKILL)  # the supervisor's child: a zombie until reaped
            except ProcessLookupError:
                pytest.fail("the dispatcher died on its own:\n" + node.log_text()[-3000:])
            kills += 1
            assert wait_until(lambda old=old: _restarted(node, old), 30), \
                "the supervisor did not restart the dispatcher"
        chaos_s = time.monotonic() - t0
        # one more full start: the last dispatcher serves the load for a while
        assert wait_until(lambda: _ok(lambda: node.client(timeout=5).ping()), 60)
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join(300)
            assert not t.is_alive(), "a client is stuck"
        errors = [e for w in out.values() for e in w["errors"]]
        assert not errors, errors[:10]
        submitted = [i for w in out.values() for i in w["submitted"]]
        states: dict[str, str] = {}
        for w in out.values():
            states.update(w["states"])
        assert len(submitted) == len(set(submitted))
        # exactly one result per id: on the client's side and in Redis
        assert set(states) == set(submitted), set(submitted) ^ set(states)
        many = [i for i in submitted if r.llen(f"result:{i}") != 1]
        assert not many, [(i, r.llen(f"result:{i}")) for i in many[:10]]
        bad = {k: v for k, v in states.items() if v != "SUCCESS"}
        assert not bad, list(bad.items())[:10]
        # nothing that started ran twice; every process job that succeeded ran once
        ran = Counter(marks.read_text().split()) if marks.exists() else Counter()
        twice = {k: n for k, n in ran.items() if n > 1}
        assert not twice, twice
        marked = {i for i in submitted if int(i.rsplit("-", 1)[1]) % 4 in (2, 3)}
        assert set(ran) == marked, marked ^ set(ran)
        # nothing left behind
        assert wait_until(lambda: r.llen("core:default:processing") == 0, 20), \
            r.lrange("core:default:processing", 0, 5)
        assert r.llen("core:default") == 0
        assert wait_until(lambda: not keys_without_ttl(r), 20), keys_without_ttl(r)[:10]
        # the supervisor counted every end, and how the last one came (what the boot
        # assessment reads to tell a crash loop: core0/image/assess.py)
        from core0.proc import shimlink

        disp = next(s for s in shimlink.services(str(node.state_dir / "shim.sock")) or []
                    if s["name"] == "dispatcher")
        assert (disp["exits"], disp["last_exit"], disp["starts"]) == (KILLS, -9, KILLS + 1), disp
        print(f"\n{kills} dispatcher kills in {chaos_s:.0f}s under {CLIENTS} clients: "
              f"{len(submitted)} commands ({len(marked)} process jobs), each exactly one "
              f"result, none run twice")
    finally:
        stop.set()
        node.stop()


def _dispatcher(node: Any) -> int:
    """The pid of the dispatcher the supervisor started last (from its log: a process job
    orphaned by a killed dispatcher may still carry the dispatcher's command line for the
    instant before its exec, so command lines cannot tell)."""
    found = re.findall(r"dispatcher started \(pid (\d+)\)", node.log_text())
    return int(found[-1])


def _restarted(node: Any, old: int) -> bool:
    """The killed dispatcher is reaped and a new one runs."""
    return _dispatcher(node) != old and not psutil.pid_exists(old)


def _ok(fn: Any) -> bool:
    try:
        return bool(fn())
    except Exception:
        return False
