"""The dispatcher's pop loop on core0's own RESP link (core0/bus/resp.py) vs redis.asyncio with
hiredis, in one run, against the same redis-server, with the same Lua scripts and keys.

One "round" is what the pop loop sends per batch of work: the results of the commands it took
last time (the PUBLISH script each: result, TTLs, release from ``processing``) and the pop of
the next ones (the POP_MORE script), in one write. The queue is filled with N commands first;
each loop drains it, answering every command. Both loops run ``--repeat`` times, interleaved;
the best rate of each is reported, with the ratio. ``--batch 1`` is the latency-bound case
(one command per round trip), the default batch is core0's ``bus.batch``.

    python bench/resp_link.py [-n 20000] [--batch 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from _common import ROOT, start_redis, stop, tmpdir

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "client"))

from core0_client.protocol import Keys

from core0.bus.endpoint import make_client
from core0.bus.store import POP_MORE, PUBLISH, PopLink, Publish
from core0.config import Config, load

RESULT = json.dumps({"state": "SUCCESS", "code": 0, "data": '"PONG"', "level": 20})


def _config(tmp: Path, sock: str, batch: int) -> Config:
    f = tmp / "bench.toml"
    f.write_text(f'[main]\nstate_dir = "{tmp}"\n[redis]\nembedded = false\n'
                 f'url = "unix://{sock}"\n[bus]\nbatch = {batch}\n')
    return load(str(f), cmdline="", env={})


def _fill(cfg: Config, keys: Keys, n: int) -> tuple[str, str]:
    import redis

    queue, processing = keys.queue("bench"), keys.processing(keys.queue("bench"))
    r = redis.Redis(unix_socket_path=cfg.redis.url.removeprefix("unix://"))
    r.delete(queue, processing)
    for k in r.scan_iter(f"{keys.prefix}result:*", count=5000):
        r.delete(k)
    pipe = r.pipeline(transaction=False)
    for _ in range(n):
        pipe.rpush(queue, json.dumps({"id": str(uuid.uuid4()), "command": "core.ping"}))
    pipe.execute()
    r.close()
    return queue, processing


def _results(keys: Keys, raws: list[bytes], processing: str) -> list[Publish]:
    return [Publish(json.loads(raw)["id"], RESULT, raw, processing, "new") for raw in raws]


async def loop_resp(cfg: Config, keys: Keys, queue: str, processing: str, batch: int) -> int:
    """The pop loop as the dispatcher runs it: PopLink.publish_and_pop."""
    link = PopLink(cfg, keys)
    await link.connect()
    done, pending = 0, []
    try:
        while True:
            written, raws = await link.publish_and_pop(pending, queue, processing, batch)
            done += sum(written)
            if not raws:
                return done
            pending = _results(keys, raws, processing)
    finally:
        link.close()


async def loop_asyncio(cfg: Config, keys: Keys, queue: str, processing: str,
                       batch: int) -> int:
    """The same rounds through redis.asyncio (hiredis parser): one pipeline per round."""
    r = make_client(cfg, single=True)
    await r.script_load(POP_MORE.source)
    await r.script_load(PUBLISH.source)
    done, pending = 0, []
    try:
        while True:
            pipe = r.pipeline(transaction=False)
            for p in pending:
                pipe.evalsha(PUBLISH.sha, 3, keys.flag(p.job_id), keys.result(p.job_id),
                             p.processing, p.result_json, cfg.bus.result_ttl, p.raw or b"",
                             p.mode)
            pipe.evalsha(POP_MORE.sha, 2, queue, processing, batch)
            replies: list[Any] = await pipe.execute()
            done += sum(bool(x) for x in replies[:-1])
            raws = list(replies[-1])
            if not raws:
                return done
            pending = _results(keys, raws, processing)
    finally:
        await r.aclose()


def measure(cfg: Config, n: int, batch: int, which: str) -> float:
    keys = Keys("bench:")
    queue, processing = _fill(cfg, keys, n)
    fn = loop_resp if which == "resp" else loop_asyncio
    t = time.perf_counter()
    answered = asyncio.run(fn(cfg, keys, queue, processing, batch))
    elapsed = time.perf_counter() - t
    assert answered == n, f"{which}: {answered} of {n} answered"
    return n / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20000, help="commands per loop")
    ap.add_argument("--batch", type=int, nargs="*", default=[64, 1],
                    help="commands per round trip (default: 64, then 1)")
    ap.add_argument("--repeat", type=int, default=3)
    ns = ap.parse_args()
    tmp = tmpdir("core0-resp-")
    proc, _port, sock = start_redis(tmp)
    try:
        print(f"pop loop, {ns.n} commands, best of {ns.repeat} (commands answered per second)")
        for batch in ns.batch:
            cfg = _config(tmp, sock, batch)
            n = ns.n if batch > 1 else max(1000, ns.n // 10)
            best = {"resp": 0.0, "asyncio": 0.0}
            for _ in range(ns.repeat):
                for which in best:
                    best[which] = max(best[which], measure(cfg, n, batch, which))
            ratio = best["resp"] / best["asyncio"]
            print(f"  batch {batch:3}: core0 resp link {best['resp']:9.0f}/s   "
                  f"redis.asyncio+hiredis {best['asyncio']:9.0f}/s   ratio {ratio:.2f}x")
    finally:
        stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
