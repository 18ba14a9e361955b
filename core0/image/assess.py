"""Boot assessment: is the image this boot came from good, and if not, back to the previous one.

Runs as its own process (``python -m core0.image.assess``), started by ``core0 init`` when the
kernel command line names an image (``core0.image=<digest>``: a boot made by the kexec switch),
so a dispatcher that never comes up is still judged. Only the config module, the store and
redis-py are loaded, not the command handlers.

A boot **passes** when ``core.ping`` is answered through the node's Redis (the whole path:
redis-server, the dispatcher's pop loop, a job, its result) and every *protected* startup
service reports ``running`` (``service.list``). It **fails** when that is not so within
``image.boot_deadline`` seconds of the kernel's start (CLOCK_BOOTTIME; at least one check is
made), or when the same pending image has started ``MAX_BOOTS`` times (a crash loop).

On a pass: ``current`` = this image, ``previous`` = the one it came from, history ``booted``.
On a failure: history ``failed`` (with the reason), then ``rollback``: a kexec into the
previous image when it is staged; an ordered reboot (what the machine's firmware boots) when it
is not; nothing when this boot was itself an automatic rollback (no loop) or when this process
is not supervised by the node's init (``rollback-refused``). Every outcome is in
``image.history``: never silent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from core0 import config as configmod
from core0.image import switch
from core0.image.store import Store, booted_digest, images_dir

log = logging.getLogger("core0.image.assess")

MAX_BOOTS = 3
#: exit status that tells core0 init's supervisor not to restart this process
DONE = 125
Check = Callable[[configmod.Config], Awaitable[str | None]]


async def _call(r: Any, prefix: str, name: str, timeout: float) -> dict[str, Any]:
    """Push one command on the default queue and wait for its result."""
    from core0_client.protocol import Command, Keys

    keys = Keys(prefix)
    cmd = Command(name, id=f"image-assess-{uuid.uuid4().hex}")
    await r.rpush(keys.queue("default"), cmd.to_json())
    raw = await r.blmove(keys.result(cmd.id), keys.result(cmd.id), timeout, "RIGHT", "RIGHT")
    if raw is None:
        raise TimeoutError(f"{name}: no result within {timeout:.0f}s")
    return dict(json.loads(raw))


async def health(cfg: configmod.Config) -> str | None:
    """None when the node answers core.ping and every protected service runs; else why not
    (naming the step that failed)."""
    from core0.bus.endpoint import make_client
    from core0.security.acl import internal_config

    r = make_client(internal_config(cfg), single=True)
    # a result wait shorter than the client's socket timeout (bus.block_timeout + 5)
    wait = max(1.0, cfg.bus.block_timeout)
    step = "core.ping"
    try:
        res = await _call(r, cfg.bus.prefix, step, wait)
        if res.get("state") != "SUCCESS":
            return f"{step}: {res.get('state')} {str(res.get('data'))[:200]}"
        step = "service.list"
        res = await _call(r, cfg.bus.prefix, step, wait)
        if res.get("state") != "SUCCESS":
            return f"{step}: {res.get('state')} {str(res.get('data'))[:200]}"
        down = [f"{s['id']} ({s['status']})" for s in json.loads(res["data"])
                if s.get("protected") and s.get("status") != "running"]
        return f"protected services not running: {', '.join(down)}" if down else None
    except Exception as e:  # any failure to reach the node is the answer
        return f"{step}: {type(e).__name__}: {e}"[:300]
    finally:
        await r.aclose()


def since_boot() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


async def judge(cfg: configmod.Config, check: Check = health, step: float = 2.0) -> dict[str, Any]:
    """Assess this boot and act (see the module docstring); → the history entry it ended with
    (``{}`` when this boot names no image or its image was assessed already)."""
    store = Store(images_dir(cfg))
    digest = booted_digest(cfg)
    if digest is None:
        return {}
    state = store.state()
    pending = state["pending"] if isinstance(state["pending"], dict) else None
    if pending is None or pending.get("digest") != digest:
        if state["current"] == digest:
            return {}  # assessed in an earlier run of this process
        # the images dir did not survive the switch (not persistent): judge it all the same
        pending = {"digest": digest, "from": None, "boots": 0, "note": "no earlier state"}
    pending["boots"] = int(pending.get("boots", 0)) + 1
    state["pending"] = pending
    store.save(state)
    version = slot.version if (slot := store.slot(digest)) else ""

    reason: str | None
    if pending["boots"] > MAX_BOOTS:
        reason = f"started {pending['boots']} times without passing"
    else:
        while True:
            reason = await check(cfg)
            if reason is None or since_boot() >= cfg.image.boot_deadline:
                break
            await asyncio.sleep(step)
        if reason is not None:
            reason = f"not healthy {cfg.image.boot_deadline:.0f}s after boot: {reason}"
    state = store.state()
    state["pending"] = None
    seconds = round(since_boot(), 1)
    if reason is None:
        if not pending.get("auto"):
            state["previous"] = pending.get("from") or state["previous"]
        state["current"] = digest
        entry = store.record(state, "booted", digest=digest, version=version, seconds=seconds)
        store.save(state)
        log.info("image %s passed its boot assessment (%.1fs)", digest[:12], seconds)
        return entry
    store.record(state, "failed", digest=digest, version=version, seconds=seconds,
                 reason=reason)
    log.error("image %s failed its boot assessment: %s", digest[:12], reason)
    return await _roll_back(store, state, digest, pending)


async def _roll_back(store: Store, state: dict[str, Any], digest: str,
                     pending: dict[str, Any]) -> dict[str, Any]:
    """Go back to the image this one came from (kexec when staged, else an ordered reboot)."""
    target = pending.get("from")
    slot = store.slot(target)
    if pending.get("auto"):
        entry = store.record(state, "rollback-failed", digest=digest,
                             reason="this boot was an automatic rollback already: staying")
        store.save(state)
        return entry
    try:
        switch.require_node_init()
    except Exception as e:
        entry = store.record(state, "rollback-refused", digest=digest, to=target,
                             reason=str(e))
        store.save(state)
        return entry
    if slot is None:
        entry = store.record(state, "rollback", digest=digest, to=None, how="reboot",
                             note="the previous image is not staged: an ordered reboot into "
                                  "what the machine's firmware boots")
        store.save(state)
        os.kill(1, signal.SIGINT)
        return entry
    from core0.proc import process

    async def run(argv: Sequence[str]) -> process.RunResult:
        return await process.run(argv, timeout=120)

    state["current"] = target
    state["pending"] = {"digest": target, "from": digest, "boots": 0, "auto": True,
                        "time": round(time.time(), 3)}
    entry = store.record(state, "rollback", digest=digest, to=target, how="kexec")
    store.save(state)
    try:
        await switch.load(run, slot, store, [slot])
        await switch.execute(run)
    except Exception as e:  # recorded, and this process ends: no retry loop
        state["pending"] = None
        state["current"] = digest
        entry = store.record(state, "rollback-failed", digest=digest, to=target,
                             reason=str(e)[:300])
        store.save(state)
    return entry  # on success not reached: kexec -e replaced the kernel


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core0.image.assess", description=__doc__)
    ap.add_argument("--config")
    ap.add_argument("--overrides-json", default="{}")
    ns = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="core0.image: %(message)s")
    cfg = configmod.load(ns.config, overrides=json.loads(ns.overrides_json))

    async def go() -> dict[str, Any]:
        from core0.proc import process

        reaper = process.Reaper()
        reaper.install(asyncio.get_running_loop())
        process.set_reaper(reaper)
        return await judge(cfg)

    entry = asyncio.run(go())
    print(json.dumps(entry), flush=True)
    return DONE


if __name__ == "__main__":
    sys.exit(main())
