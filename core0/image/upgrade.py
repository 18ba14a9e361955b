"""``core.upgrade`` and ``image.rollback`` behind the command module: verify, stage, switch.

Order (docs/images.md): the trusted keys and, for a kexec switch, the node's init are checked
first (412 before any byte is fetched); the manifest and its signature are read into memory
and verified; only then are the artifacts fetched into a private ``.incoming-*`` directory with
their sha256 checked against the signed manifest (the directory is removed on any refusal, so
a refused image leaves no slot, no state and no history); then the slot is staged beside the
current one, the history records it, and the switch is loaded (``kexec -l``). The kexec itself
happens after the command's result is written.

On a node booted from the A/B disk image (``core0.slot=`` on the kernel command line,
core0.image.slots) the verified image is written into the **inactive slot partition** instead,
GRUB's environment is set to try it (``image.boot_tries`` boots), and the switch is a reboot
through the firmware (the default there) or a kexec into the written kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import shutil
import signal
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

from core0 import cancel
from core0.errors import NotFound, PreconditionFailed
from core0.image import fetch, slots, switch, verify
from core0.image.store import Slot, Store, booted_digest, images_dir

if TYPE_CHECKING:
    from collections.abc import Sequence

    from core0.context import Context
    from core0.proc.process import RunResult

log = logging.getLogger(__name__)
#: longest wait for the result to be written before kexec -e runs anyway
RESULT_WAIT = 10.0
_pending: set[asyncio.Task[None]] = set()
#: the job writing a slot and the grubenv (one at a time)
_disk_busy: set[str] = set()


def store_of(ctx: Context) -> Store:
    return Store(images_dir(ctx.config))


def _runner(ctx: Context) -> switch.Run:
    async def run(argv: Sequence[str]) -> RunResult:
        return await ctx.run(argv, check=False, timeout=120)
    return run


def _signature_name(src: fetch.Reader) -> str:
    if isinstance(src, fetch.UrlReader):
        base = posixpath.basename(urllib.parse.urlsplit(src.url).path)
    else:
        base = posixpath.basename(src.label)
    return (base or "manifest.json") + ".minisig"


async def upgrade(ctx: Context, *, url: str | None, path: str | None, sha256: str | None,
                  signature: str | None, how: str | None) -> dict[str, Any]:
    """Verify and stage an image, then switch to it (``how``: kexec, reboot or none; None:
    reboot on a node booted from the A/B disk, kexec elsewhere)."""
    cfg = ctx.config
    keys = verify.trusted_keys(cfg.image.trusted_keys)
    disk = slots.booted_slot(cfg)
    how = how or ("reboot" if disk else "kexec")
    if how != "none":
        switch.require_node_init()
        if (disk is None or how == "kexec") and shutil.which(switch.KEXEC) is None:
            raise PreconditionFailed("kexec is not installed on this node")
    src = fetch.reader(ctx, url, path)
    ctx.emit(1, f"upgrade: manifest {src.label}")
    raw = await fetch.read_small(ctx, src, "", verify.MAX_MANIFEST, "manifest")
    if signature is not None:
        sig = signature.encode()
    else:
        sig = await fetch.read_small(ctx, src, _signature_name(src), verify.MAX_SIGNATURE,
                                     "signature")
    v = await verify.verify(ctx, raw, sig, keys, sha256)
    ctx.emit(1, f"upgrade: signature verified ({v.comment}); version {v.version}, "
                f"digest {v.digest}")
    store = store_of(ctx)
    slot = store.slot(v.digest)
    if slot is None:
        incoming = store.incoming()
        try:
            for name, digest in v.artifacts.items():
                await fetch.fetch_artifact(ctx, src, name, digest, incoming, cfg.image.max_bytes)
            (incoming / "manifest.json").write_bytes(v.raw)
            (incoming / "manifest.json.minisig").write_bytes(v.signature)
            slot = store.stage(incoming, v.digest)
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        ctx.emit(1, f"upgrade: staged in {slot.path}")
    else:
        ctx.emit(1, f"upgrade: {v.digest} is staged already")
    state = store.state()
    running = booted_digest(cfg)
    if state["current"] is None:
        state["current"] = running
    store.record(state, "staged", digest=v.digest, version=v.version, source=src.label,
                 signed=v.comment)
    pending = state["pending"]["digest"] if isinstance(state["pending"], dict) else None
    store.prune({state["current"], state["previous"], running, pending, v.digest})
    store.save(state)
    out: dict[str, Any] = {"digest": v.digest, "version": v.version, "path": str(slot.path),
                           "switch": how}
    if how != "none" and disk is not None:
        out.update(await disk_switch(ctx, store, slot, "upgrade", how, disk))
    elif how != "none":
        out["kexec"] = await switch_to(ctx, store, slot, "upgrade", how)
    return out


async def disk_switch(ctx: Context, store: Store, image: Slot | dict[str, str], event: str,
                      how: str, booted: str) -> dict[str, Any]:
    """On the A/B disk: write ``image`` (a staged Slot; or the inactive slot's own slot.env
    for a rollback) into the inactive slot, record the pending switch, set the grubenv trial
    and, once the result is written, reboot through the firmware (``how`` reboot) or kexec
    into the slot's kernel (``how`` kexec)."""
    if _disk_busy:
        raise PreconditionFailed("another switch of the A/B disk is in progress")
    _disk_busy.add(ctx.id)
    try:
        return await _disk_switch(ctx, store, image, event, how, booted)
    finally:
        _disk_busy.discard(ctx.id)


async def _disk_switch(ctx: Context, store: Store, image: Slot | dict[str, str], event: str,
                       how: str, booted: str) -> dict[str, Any]:
    cfg = ctx.config
    target = slots.other(booted)
    if isinstance(image, dict):
        digest, version = image.get("core0_digest", ""), image.get("core0_version", "")
    else:
        digest, version = image.digest, image.version
        env = await asyncio.to_thread(slots.read_grubenv, cfg)
        if env.get("core0_slot") != booted:
            raise PreconditionFailed(
                f"this boot of slot {booted} is on trial (its assessment has not passed): "
                f"slot {target} holds the known-good image and is not overwritten")
        ctx.emit(1, f"{event}: writing slot {target} ({slots.label(target)})")
        try:
            # a cancel stops the copy at its next chunk and waits for it: _disk_busy is
            # released only once nothing writes the slot any more
            await cancel.in_thread(slots.install, cfg, image, target, wait=True)
        except BaseException as e:
            state = store.state()
            store.record(state, "switch-failed", digest=digest, slot=target,
                         reason=f"writing slot {target}: {e}"[:300])
            store.save(state)
            raise
        ctx.emit(1, f"{event}: slot {target} written and verified")
    state = store.state()
    running = booted_digest(cfg)
    before = dict(state)
    state["pending"] = {"digest": digest, "from": running, "boots": 0, "slot": target,
                        "time": round(time.time(), 3)}
    store.record(state, event, digest=digest, version=version, how=how, slot=target,
                 **{"from": running})
    store.save(state)
    run = _runner(ctx)
    out: dict[str, Any] = {"slot": target, "switch": how}
    try:
        # to its end when the job is killed meanwhile (the kill is taken in this try): cut
        # short, the write went on in its thread and could land after the undoing's below,
        # leaving the next boot on trial in a slot the record says was not switched to
        env = await cancel.atomic(asyncio.to_thread(slots.update_grubenv, cfg,
                                                    core0_try=target,
                                                    core0_tries=str(cfg.image.boot_tries)))
        out["grubenv"] = {k: v for k, v in env.items() if k.startswith("core0_")}
        if how == "kexec" and not isinstance(image, dict):
            cmdline = switch.next_cmdline(switch.current_cmdline(), digest)
            cmdline = slots.with_slot(cmdline, target)
            out["kexec"] = await switch.load(run, image, cmdline=cmdline)
        else:
            await run([switch.KEXEC, "-u"])  # the firmware (GRUB) boots, not a loaded kernel
    except BaseException as e:
        before["history"] = state["history"]
        store.record(before, "switch-failed", digest=digest, reason=str(e)[:300])
        store.save(before)
        with contextlib.suppress(Exception):
            await cancel.atomic(asyncio.to_thread(slots.update_grubenv, cfg, core0_try="",
                                                  core0_tries="0"), defer=False)
        raise
    task = asyncio.ensure_future(_execute_after_result(ctx, run, "kexec" if "kexec" in out
                                                       else "reboot"))
    _pending.add(task)
    task.add_done_callback(_pending.discard)
    return out


async def switch_to(ctx: Context, store: Store, slot: Slot, event: str,
                    how: str = "kexec") -> list[str]:
    """Record the pending switch to ``slot``, load it with kexec (the images carried along
    when they live in the initramfs: the target and the running image), and start it once the
    command's result is written: ``kexec -e`` at once (``how`` kexec), or an ordered reboot
    through PID 1 that ends in the loaded kernel (``how`` reboot). Returns the kexec argv."""
    run = _runner(ctx)
    state = store.state()
    running = booted_digest(ctx.config)
    before = dict(state)
    state["pending"] = {"digest": slot.digest, "from": running, "boots": 0,
                        "time": round(time.time(), 3)}
    store.record(state, event, digest=slot.digest, version=slot.version, how=how,
                 **{"from": running})
    store.save(state)
    carry = [s for s in (slot, store.slot(running)) if s is not None]
    try:
        argv = await switch.load(run, slot, store, carry)
    except BaseException as e:
        before["history"] = state["history"]
        store.record(before, "switch-failed", digest=slot.digest, reason=str(e)[:300])
        store.save(before)
        raise
    task = asyncio.ensure_future(_execute_after_result(ctx, run, how))
    _pending.add(task)
    task.add_done_callback(_pending.discard)
    return argv


async def _execute_after_result(ctx: Context, run: switch.Run, how: str) -> None:
    deadline = time.monotonic() + RESULT_WAIT
    while ctx.id not in ctx.engine.recent and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    log.warning("%s: %s", ctx.job.cmd.command,
                "kexec -e" if how == "kexec" else "ordered reboot into the loaded kernel")
    try:
        if how == "kexec":
            await switch.execute(run)
        else:
            switch.require_node_init()
            os.kill(1, signal.SIGINT)  # core.reboot's path: PID 1 ends it with reboot(KEXEC)
            return
    except Exception as e:  # the result is out already: log and record it
        log.error("switch failed: %s", e)
        await run([switch.KEXEC, "-u"])  # a later core.reboot must not boot it
        store = store_of(ctx)
        state = store.state()
        state["pending"] = None
        store.record(state, "switch-failed", reason=str(e)[:300])
        store.save(state)


async def rollback(ctx: Context) -> dict[str, Any]:
    """Switch to the previous image by kexec (404 when none is staged; 412 off the node);
    on the A/B disk: to the other slot's image by the grubenv and a reboot."""
    switch.require_node_init()
    store = store_of(ctx)
    booted = slots.booted_slot(ctx.config)
    if booted is not None:
        env = await asyncio.to_thread(slots.slot_env, ctx.config, slots.other(booted))
        if not env.get("core0_initrd"):
            raise NotFound(f"slot {slots.other(booted)} holds no image")
        return {"digest": env.get("core0_digest"), "version": env.get("core0_version"),
                **await disk_switch(ctx, store, env, "rollback", "reboot", booted)}
    target = store.slot(store.state()["previous"])
    if target is None:
        raise NotFound("no previous image staged (image.previous)")
    return {"digest": target.digest, "version": target.version, "switch": "kexec",
            "kexec": await switch_to(ctx, store, target, "rollback")}
