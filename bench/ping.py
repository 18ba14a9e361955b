"""Command round trips through Redis: a minimal raw worker vs core0's core.ping vs rq.

All three are measured in the same run on the same machine, with the same client code:
the client RPUSHes 0-core-format command JSON and BLPOPs ``result:<id>``.

* raw worker: a separate process doing BLMOVE → json.loads → RPUSH+EXPIRE (pipelined) — the
  protocol floor, without any of core0's guarantees (no dedupe, no flag, no reliable release);
* core0: ``core0 dev`` (supervisor + embedded redis-server + dispatcher), command core.ping;
* rq: rq's SimpleWorker (no fork per job: rq's fastest mode), ``enqueue`` + ``latest_result``.

Sequential = one command at a time; pipelined = 20,000 commands pushed in one pipeline, then
all results collected. Prints each figure, and core0's ratio to the baselines.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
import uuid

import redis
from _common import ROOT, rate, start_core0, start_redis, stop, table, tmpdir


def raw_worker(sock: str, queue: str) -> None:
    r = redis.Redis(unix_socket_path=sock)
    proc = queue + ":processing"
    while True:
        raw = r.blmove(queue, proc, 0, "LEFT", "RIGHT")
        cmd = json.loads(raw)
        res = json.dumps({"id": cmd["id"], "command": cmd["command"], "data": '"PONG"',
                          "level": 20, "state": "SUCCESS", "code": 0})
        pipe = r.pipeline(transaction=False)
        pipe.rpush(f"result:{cmd['id']}", res)
        pipe.expire(f"result:{cmd['id']}", 300)
        pipe.execute()


def _cmd(jid: str) -> str:
    return json.dumps({"id": jid, "command": "core.ping", "arguments": {}})


def sequential(port: int, n: int) -> float:
    r = redis.Redis(port=port)

    def go() -> None:
        for _ in range(n):
            jid = uuid.uuid4().hex
            r.rpush("core:default", _cmd(jid))
            assert r.blpop([f"result:{jid}"], 10) is not None

    go_rate = rate(n, go)
    r.close()
    return go_rate


def pipelined(port: int, n: int, chunk: int = 1000) -> float:
    r = redis.Redis(port=port, socket_timeout=120)
    ids = [uuid.uuid4().hex for _ in range(n)]

    def go() -> None:
        for i in range(0, n, chunk):
            pipe = r.pipeline(transaction=False)
            for jid in ids[i:i + chunk]:
                pipe.rpush("core:default", _cmd(jid))
            pipe.execute()
        for i in range(0, n, chunk):
            pipe = r.pipeline(transaction=False)
            for jid in ids[i:i + chunk]:
                pipe.blpop([f"result:{jid}"], 60)
            assert all(x is not None for x in pipe.execute())

    go_rate = rate(n, go)
    r.close()
    return go_rate


def rq_sequential(port: int, n: int) -> float:
    from rq import Queue

    r = redis.Redis(port=port)
    q = Queue("bench", connection=r)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "bench"))
    w = subprocess.Popen(
        [sys.executable, "-m", "rq.cli", "worker", "--url", f"redis://127.0.0.1:{port}",
         "--worker-class", "rq.worker.SimpleWorker", "--quiet", "bench"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    sys.path.insert(0, str(ROOT / "bench"))
    from rq_task import ping

    try:
        job = q.enqueue(ping)  # warm up: the worker imports things on its first job
        job.latest_result(timeout=30)

        def go() -> None:
            for _ in range(n):
                job = q.enqueue(ping)
                res = job.latest_result(timeout=10)
                assert res is not None and res.return_value == "PONG"

        return rate(n, go)
    finally:
        stop(w)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000, help="sequential round trips")
    ap.add_argument("--pipelined", type=int, default=20000)
    ap.add_argument("--rq", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best kept)")
    ns = ap.parse_args()
    tmp = tmpdir("bench-ping-")
    srv, rport, rsock = start_redis(tmp)
    ctx = mp.get_context("spawn")
    worker = ctx.Process(target=raw_worker, args=(rsock, "core:default"), daemon=True)
    worker.start()
    node = start_core0(tmp)
    try:
        results: dict[str, float] = {}

        def best(key: str, value: float) -> None:
            results[key] = max(results.get(key, 0.0), value)

        sequential(rport, 200)  # warm up both
        sequential(node.port, 200)
        for _ in range(ns.rounds):
            best("raw_seq", sequential(rport, ns.n))
            best("core0_seq", sequential(node.port, ns.n))
            best("raw_pipe", pipelined(rport, ns.pipelined))
            best("core0_pipe", pipelined(node.port, ns.pipelined))
        best("rq_seq", rq_sequential(rport, ns.rq))
        rows = [("measure", "baseline/s", "core0/s", "core0 ÷ baseline"),
                ("sequential round trip vs raw worker", f"{results['raw_seq']:.0f}",
                 f"{results['core0_seq']:.0f}",
                 f"{results['core0_seq'] / results['raw_seq']:.2f}×"),
                (f"{ns.pipelined} pipelined vs raw worker", f"{results['raw_pipe']:.0f}",
                 f"{results['core0_pipe']:.0f}",
                 f"{results['core0_pipe'] / results['raw_pipe']:.2f}×"),
                ("sequential round trip vs rq (SimpleWorker)", f"{results['rq_seq']:.0f}",
                 f"{results['core0_seq']:.0f}", f"{results['core0_seq'] / results['rq_seq']:.1f}×")]
        print(f"bench/ping.py — best of {ns.rounds} interleaved rounds, {time.strftime('%F')}")
        table(rows)
    finally:
        worker.terminate()
        node.stop()
        stop(srv)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
