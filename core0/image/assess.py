"""Boot assessment: is the image this boot came from good, and if not, back to the previous one.

Runs as its own process (``python -m core0.image.assess``), started by ``core0 init`` when the
kernel command line names an image (``core0.image=<digest>``: a boot made by the kexec switch),
so a dispatcher that never comes up is still judged. Only the config module, the store and
redis-py are loaded, not the command handlers.

A boot **passes** when ``core.ping`` is answered through the node's Redis (the whole path:
redis-server, the dispatcher's pop loop, a job, its result) and every *protected* startup
service reports ``running`` (``service.list``). It **fails** when that is not so within
``image.boot_deadline`` seconds of the kernel's start (CLOCK_BOOTTIME; at least one check is
made), or as soon as the supervisor reports a crash loop: the dispatcher or the embedded
redis-server ended ``image.crash_limit`` times before the first passing check, or ended with
"do not restart" (asked over the shim socket; a broken image is rolled back in seconds, not
after the deadline), or when the same pending image has started ``MAX_BOOTS`` times (a boot
loop).

On a pass: ``current`` = this image, ``previous`` = the one it came from, history ``booted``.
On a failure: history ``failed`` (with the reason), then ``rollback``: a kexec into the
previous image when it is staged; an ordered reboot (what the machine's firmware boots) when it
is not; nothing when this boot was itself an automatic rollback (no loop) or when this process
is not supervised by the node's init (``rollback-refused``). Every outcome is in
``image.history``: never silent.

On a node booted from the A/B disk image (``core0.slot=``, core0.image.slots) the state lives
on the persistent partition (this process waits for init to mount it); a pass makes the slot
the known-good one in GRUB's environment, a failure ends the trial there and reboots through
the firmware, so GRUB boots the other slot; a trial GRUB gave up on (its boots spent before an
assessment could act: a kernel that does not start) is recorded as ``failed`` by the next boot.
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
from core0.image import slots, switch
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


#: the supervised processes a passing check needs
CORE_SERVICES = ("dispatcher", "redis-server")


def crash_loop(cfg: configmod.Config) -> str | None:
    """Why the node cannot become healthy, from its supervisor's counts (None: no crash loop,
    or no supervisor to ask)."""
    from core0.proc import shimlink

    services = shimlink.services(shimlink.socket_path(cfg.state_dir))
    for svc in services or []:
        if svc.get("name") not in CORE_SERVICES:
            continue
        exits, last = int(svc.get("exits") or 0), svc.get("last_exit")
        how = "" if last is None else \
            f" (last: {f'status {last}' if last >= 0 else f'signal {-last}'})"
        if svc.get("permanent"):
            return f"the {svc['name']} stopped for good{how}"
        if cfg.image.crash_limit and exits >= cfg.image.crash_limit:
            return f"the {svc['name']} ended {exits} times{how}"
    return None


def since_boot() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


async def judge(cfg: configmod.Config, check: Check = health, step: float = 2.0) -> dict[str, Any]:
    """Assess this boot and act (see the module docstring); → the history entry it ended with
    (``{}`` when this boot names no image or its image was assessed already)."""
    disk = slots.booted_slot(cfg)
    if cfg.main.persistent_device:
        await wait_persistent(cfg)
    store = Store(images_dir(cfg))
    digest = booted_digest(cfg)
    if digest is None:
        return {}
    state = store.state()
    pending = state["pending"] if isinstance(state["pending"], dict) else None
    given_up: dict[str, Any] = {}
    if disk is not None and pending is not None and pending.get("digest") != digest:
        given_up = _trial_given_up(cfg, store, state, pending, disk)
        pending = None
    if pending is None or pending.get("digest") != digest:
        if state["current"] == digest:
            return given_up  # assessed in an earlier run of this process
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
            crashed = await asyncio.to_thread(crash_loop, cfg)
            reason = await check(cfg)
            if reason is None or crashed or since_boot() >= cfg.image.boot_deadline:
                break
            await asyncio.sleep(step)
        if reason is not None and crashed:
            reason = f"not healthy {since_boot():.0f}s after boot: {crashed}; {reason}"
        elif reason is not None:
            reason = f"not healthy {cfg.image.boot_deadline:.0f}s after boot: {reason}"
    state = store.state()
    state["pending"] = None
    seconds = round(since_boot(), 1)
    if reason is None:
        if not pending.get("auto"):
            state["previous"] = pending.get("from") or state["previous"]
        state["current"] = digest
        entry = store.record(state, "booted", digest=digest, version=version, seconds=seconds)
        if disk is not None:
            entry.update(slot=disk, **_commit(cfg, disk))
        store.save(state)
        log.info("image %s passed its boot assessment (%.1fs)", digest[:12], seconds)
        return entry
    store.record(state, "failed", digest=digest, version=version, seconds=seconds,
                 reason=reason)
    log.error("image %s failed its boot assessment: %s", digest[:12], reason)
    return await _roll_back(cfg, store, state, digest, pending)


async def _roll_back(cfg: configmod.Config, store: Store, state: dict[str, Any], digest: str,
                     pending: dict[str, Any]) -> dict[str, Any]:
    """Go back to the image this one came from (kexec when staged, else an ordered reboot)."""
    target = pending.get("from")
    slot = store.slot(target)
    disk = slots.booted_slot(cfg)
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
    if disk is not None:
        return _disk_roll_back(cfg, store, state, digest, target, disk)
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


async def wait_persistent(cfg: configmod.Config, timeout: float = 120.0) -> None:
    """Until init has tried to mount the persistent disk (the images' state lives there)."""
    from core0.declared import persistent_state

    deadline = time.monotonic() + timeout
    while persistent_state(cfg) is None and time.monotonic() < deadline:
        await asyncio.sleep(0.5)


def _commit(cfg: configmod.Config, disk: str) -> dict[str, Any]:
    """A passed boot of slot ``disk``: GRUB's known-good slot from now on."""
    try:
        env = slots.read_grubenv(cfg)
        # what GRUB left: a trial boot shows its boots left after GRUB's countdown
        seen = {"grubenv": {k: v for k, v in env.items() if k.startswith("core0_")}}
        if env.get("core0_try", "") not in ("", disk):
            return {**seen, "note": "another slot is on trial: grubenv left as it is"}
        slots.update_grubenv(cfg, core0_slot=disk, core0_try="", core0_tries="0")
        return seen
    except Exception as e:
        log.error("grubenv: slot %s not made the known-good one: %s", disk, e)
        return {"grubenv_error": str(e)[:300]}


def _trial_given_up(cfg: configmod.Config, store: Store, state: dict[str, Any],
                    pending: dict[str, Any], disk: str) -> dict[str, Any]:
    """GRUB booted slot ``disk`` while another image was pending: its trial boots were spent
    before an assessment could end it (a kernel or an init that did not start)."""
    entry = store.record(state, "failed", digest=pending.get("digest"),
                         slot=pending.get("slot"),
                         reason=f"slot {pending.get('slot')}: no boot of it passed its "
                                f"assessment; GRUB went back to slot {disk}")
    state["pending"] = None
    store.save(state)
    try:
        env = slots.read_grubenv(cfg)
        if env.get("core0_try") and env.get("core0_try") != disk:
            slots.update_grubenv(cfg, core0_try="", core0_tries="0")
    except Exception as e:
        log.error("grubenv: %s", e)
    return entry


def _disk_roll_back(cfg: configmod.Config, store: Store, state: dict[str, Any], digest: str,
                    target: str | None, disk: str) -> dict[str, Any]:
    """End this slot's trial in the grubenv and reboot: GRUB boots the known-good slot."""
    try:
        env = slots.read_grubenv(cfg)
        if env.get("core0_slot") == disk:
            raise RuntimeError(f"slot {disk} is the known-good slot itself: nothing to go "
                               "back to")
        slots.update_grubenv(cfg, core0_try="", core0_tries="0")
    except Exception as e:
        entry = store.record(state, "rollback-failed", digest=digest, slot=disk,
                             reason=str(e)[:300])
        store.save(state)
        return entry
    back = slots.other(disk)
    state["current"] = target
    state["pending"] = {"digest": target, "from": digest, "boots": 0, "auto": True,
                        "slot": back, "time": round(time.time(), 3)}
    entry = store.record(state, "rollback", digest=digest, to=target, how="reboot", slot=back)
    store.save(state)
    os.kill(1, signal.SIGINT)  # an ordered reboot: GRUB boots slot ``back``
    return entry


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
