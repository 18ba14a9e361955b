"""Declared containers that come back after a reboot (``[main] persistent_dir``).

With ``main.persistent_dir`` set (a mounted disk or dataset):

- the image store is ``<persistent_dir>/images``: the state dir's ``sandbox/images`` is made
  a symlink to it at each dispatcher start (only when it is absent, a symlink already or an
  empty directory), so images survive a wiped tmpfs;
- ``corex.create {persistent: true, name}`` records the container's arguments, the hash of
  its spec and its id in ``<persistent_dir>/containers/<digest of the name>.json`` (0600,
  written atomically), with the declaring queue's role. Host paths of ``mount`` are recorded
  as resolved for that role, and the re-declaration at boot runs with it: below admin they are
  resolved inside ``main.filesystem_root`` again, so a component swapped for a symlink while
  the node was down leads nowhere (the container is then not restored, and the log says why);
- each dispatcher start re-submits ``corex.create`` for every record, as a job of core0's own:
  a container of that name running with the same spec hash is kept (a dispatcher restart
  changes nothing), one that is gone or whose spec hash differs is torn down and created
  again, under its recorded id when that id is free;
- ``corex.terminate`` of a declared container deletes its record.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from core0_client.protocol import Command

from core0.declared import MAX_DECLARED, Declarations, base, spec_hash

if TYPE_CHECKING:
    from core0.config import Config
    from core0.jobs.engine import JobEngine
    from core0.jobs.job import Job
    from core0.sandbox.store import Record

__all__ = ["MAX_DECLARED", "base", "declaration", "declare", "declared", "link_images",
           "name_lock", "restore", "spec_hash", "undeclare"]
log = logging.getLogger(__name__)
#: the declared containers (the record files and their re-submission: core0/declared.py)
CONTAINERS = Declarations(kind="containers", command="corex.create", job_prefix="declared",
                          what="container")

#: serialises the creates of one declared container name (:meth:`Declarations.name_lock`)
name_lock = CONTAINERS.name_lock


def declaration(cfg: Config, name: str) -> dict[str, Any] | None:
    return CONTAINERS.declaration(cfg, name)


def declare(cfg: Config, name: str, arguments: dict[str, Any], cid: int, role: int,
            scope: str = "") -> None:
    """Record (or update) the declaration of container ``name``, made by a queue of
    ``role`` and private-queue ``scope`` (it is restored with both: its paths resolved for
    that role, :func:`core0.declared.declared_role`, and the container owned by that queue
    again, :mod:`.access`)."""
    CONTAINERS.declare(cfg, name, arguments, id=cid, role=int(role), scope=scope)


def undeclare(cfg: Config, name: str) -> None:
    CONTAINERS.undeclare(cfg, name)


def declared(cfg: Config) -> list[dict[str, Any]]:
    """Every readable declaration (unreadable ones are logged and skipped)."""
    return CONTAINERS.declared(cfg)


def link_images(cfg: Config) -> None:
    """Make ``<state_dir>/sandbox/images`` a symlink to ``<persistent_dir>/images``."""
    b = base(cfg)
    if b is None:
        return
    target = b / "images"
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    link = cfg.state_dir / "sandbox" / "images"
    link.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if link.is_symlink():
        if os.readlink(link) == str(target):
            return
        link.unlink()
    elif link.is_dir():
        try:
            link.rmdir()
        except OSError:
            log.warning("%s holds images: the image store stays on the state dir", link)
            return
    os.symlink(target, link)


def restore(engine: JobEngine, cfg: Config, after: Sequence[Job] = ()) -> int:
    """Dispatcher start: link the image store and re-declare every recorded container (a
    ``corex.create`` job of core0's own each). Returns how many were submitted; with
    ``after`` (the terminates of containers a dead dispatcher left half made, one of which
    may be a declared container holding its id), they are submitted once those ended, in
    the background. Also re-attaches the teardown of containers run by adopted jobs
    (:mod:`.foreground`) and the end of adopted inner jobs (:mod:`.dispatch`), and resumes
    the containers' ``/.startup.toml`` services (:mod:`.startup`)."""
    from core0.sandbox import dispatch, foreground, startup

    foreground.reattach(engine, cfg.state_dir)
    dispatch.reattach(engine, cfg.state_dir)
    startup.resume(engine, cfg.state_dir)
    if base(cfg) is None:
        return 0
    link_images(cfg)
    _forget_undeclared(engine, cfg)
    if not after:
        return CONTAINERS.restore(engine, cfg)
    task = asyncio.ensure_future(_restore_after(engine, cfg, after))
    _LATER.add(task)
    task.add_done_callback(_LATER.discard)
    return 0


#: the restores waiting for half-made containers' terminates (referenced until they end)
_LATER: set[asyncio.Task[None]] = set()
#: how long they wait (a terminate gives an init 5 s after TERM)
TERMINATE_WAIT = 120


async def _restore_after(engine: JobEngine, cfg: Config, after: Sequence[Job]) -> None:
    try:
        async with asyncio.timeout(TERMINATE_WAIT):
            for job in after:
                await job.done.wait()
    except TimeoutError:
        log.warning("containers left half made by a dispatcher that died: not all "
                    "terminated within %d s; the declared ones come back anyway",
                    TERMINATE_WAIT)
    try:
        CONTAINERS.restore(engine, cfg)
    except Exception:
        log.exception("declared containers not restored")


def terminate_unfinished(engine: JobEngine, cfg: Config) -> list[Job]:
    """Dispatcher start: terminate the containers a killed dispatcher was making — half made
    (a record, a root, a netns, nics, forwards, maybe a started init), never to be finished:
    their ``corex.create`` is answered 503 interrupted — or tearing down (their
    ``corex.terminate``, answered the same, is finished), and remove container dirs left
    without a record. Returns the terminate jobs (the declared containers come back once
    they ended: a declared one half made holds its id until then)."""
    from core0.sandbox import manager
    from core0.sandbox.store import Store

    jobs = [_terminate(engine, rec, f"unfinished:{rec.id}:{rec.created}",
                       f"its {'create' if rec.state == 'creating' else 'terminate'} was cut "
                       "short by a dispatcher that died")
            for rec in manager.unfinished(cfg.state_dir)]
    for cid in manager.unrecorded(cfg.state_dir):
        made = Store(cfg.state_dir).dir(cid).stat().st_mtime_ns
        cmd = Command(command="corex.terminate", arguments={"container": cid},
                      id=f"unrecorded:{cid}:{made}")
        try:
            jobs.append(engine.submit_internal(cmd))
            log.info("container dir %d without a record (cut short by a dispatcher that "
                     "died): removed", cid)
        except Exception as e:
            log.warning("container dir %d not removed: %s", cid, e)
    return [j for j in jobs if j is not None]


def _terminate(engine: JobEngine, rec: Record, job_id: str, why: str) -> Job | None:
    """Submit a ``corex.terminate`` job of core0's own for ``rec`` (logged); None when it
    could not be submitted."""
    cmd = Command(command="corex.terminate", arguments={"container": rec.id}, id=job_id)
    try:
        job = engine.submit_internal(cmd)
    except Exception as e:
        log.warning("container %s (%d) not terminated: %s", rec.name, rec.id, e)
        return None
    log.info("container %s (%d): %s, terminated", rec.name, rec.id, why)
    return job


def _forget_undeclared(engine: JobEngine, cfg: Config) -> None:
    """Terminate (a ``corex.terminate`` job of core0's own) each running declared container
    whose declaration was removed meanwhile (e.g. while the node was down)."""
    from core0.sandbox.store import Store

    names = {d["name"] for d in declared(cfg)}
    for rec in Store(cfg.state_dir).all():
        if rec.spec_hash and rec.name not in names:
            _terminate(engine, rec, f"undeclared:{rec.id}:{rec.created}",
                       "declared, no declaration any more")
