"""Declared containers that come back after a reboot (``[main] persistent_dir``).

With ``main.persistent_dir`` set (a mounted disk or dataset):

- the image store is ``<persistent_dir>/images``: the state dir's ``sandbox/images`` is made
  a symlink to it at each dispatcher start (only when it is absent, a symlink already or an
  empty directory), so images survive a wiped tmpfs;
- ``corex.create {persistent: true, name}`` records the container's arguments, the hash of
  its spec and its id in ``<persistent_dir>/containers/<digest of the name>.json`` (0600,
  written atomically). Host paths of ``mount`` are recorded as resolved for the declaring
  queue's role, so a re-declaration at boot (run with the admin role) mounts the same paths;
- each dispatcher start re-submits ``corex.create`` for every record, as a job of core0's own:
  a container of that name running with the same spec hash is kept (a dispatcher restart
  changes nothing), one that is gone or whose spec hash differs is torn down and created
  again, under its recorded id when that id is free;
- ``corex.terminate`` of a declared container deletes its record.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core0_client.protocol import Command

if TYPE_CHECKING:
    from core0.config import Config
    from core0.jobs.engine import JobEngine

log = logging.getLogger(__name__)
#: the most declarations read at a start (a bound on the directory)
MAX_DECLARED = 1024


#: one lock per declared name being created (dropped when nobody holds or waits for it)
_locks: dict[str, tuple[asyncio.Lock, int]] = {}


@contextlib.asynccontextmanager
async def name_lock(name: str) -> AsyncIterator[None]:
    """Serialise the creates of declared name ``name`` in this dispatcher: a second
    concurrent persistent create of the same name waits, then finds the first one's
    container running with the same spec hash (or replaces it)."""
    lock, users = _locks.get(name) or (asyncio.Lock(), 0)
    _locks[name] = (lock, users + 1)
    try:
        async with lock:
            yield
    finally:
        lock, users = _locks[name]
        if users <= 1:
            del _locks[name]
        else:
            _locks[name] = (lock, users - 1)


def base(cfg: Config) -> Path | None:
    pd = cfg.main.persistent_dir
    return Path(pd) if pd else None


def _dir(cfg: Config) -> Path:
    b = base(cfg)
    if b is None:
        raise ValueError("main.persistent_dir is not set")
    d = b / "containers"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


def _file(cfg: Config, name: str) -> Path:
    return _dir(cfg) / (hashlib.sha256(name.encode()).hexdigest()[:32] + ".json")


def spec_hash(arguments: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a declared container's arguments."""
    text = json.dumps({k: v for k, v in arguments.items() if k != "persistent"},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def declaration(cfg: Config, name: str) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        d = json.loads(_file(cfg, name).read_text())
        if isinstance(d, dict) and d.get("name") == name:
            return d
    return None


def declare(cfg: Config, name: str, arguments: dict[str, Any], cid: int) -> None:
    """Record (or update) the declaration of container ``name``."""
    path = _file(cfg, name)
    tmp = path.with_suffix(".tmp")
    body = {"name": name, "id": cid, "hash": spec_hash(arguments), "arguments": arguments}
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(body, indent=1, sort_keys=True).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def undeclare(cfg: Config, name: str) -> None:
    if base(cfg) is not None:
        with contextlib.suppress(FileNotFoundError):
            _file(cfg, name).unlink()


def declared(cfg: Config) -> list[dict[str, Any]]:
    """Every readable declaration (unreadable ones are logged and skipped)."""
    out = []
    for p in sorted(_dir(cfg).glob("*.json"))[:MAX_DECLARED]:
        try:
            d = json.loads(p.read_text())
            if isinstance(d, dict) and isinstance(d.get("arguments"), dict) and d.get("name"):
                out.append(d)
                continue
        except (OSError, ValueError):
            pass
        log.warning("declared container %s is unreadable: skipped", p.name)
    return out


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


def _forget_undeclared(engine: JobEngine, cfg: Config) -> None:
    """Terminate (a ``corex.terminate`` job of core0's own) each running declared container
    whose declaration was removed meanwhile (e.g. while the node was down)."""
    from core0.sandbox.store import Store

    names = {d["name"] for d in declared(cfg)}
    for rec in Store(cfg.state_dir).all():
        if not rec.spec_hash or rec.name in names:
            continue
        cmd = Command(command="corex.terminate", arguments={"container": rec.id},
                      id=f"undeclared:{rec.id}:{rec.created}")
        try:
            engine.submit_internal(cmd)
            log.info("declared container %s (%d): no declaration any more, terminated",
                     rec.name, rec.id)
        except Exception as e:
            log.warning("undeclared container %s not terminated: %s", rec.name, e)


def restore(engine: JobEngine, cfg: Config) -> int:
    """Dispatcher start: link the image store and re-declare every recorded container (a
    ``corex.create`` job of core0's own each). Returns how many were submitted. Also
    re-attaches the teardown of containers run by adopted jobs (:mod:`.foreground`)."""
    from core0.sandbox import foreground

    foreground.reattach(engine, cfg.state_dir)
    if base(cfg) is None:
        return 0
    link_images(cfg)
    n = 0
    _forget_undeclared(engine, cfg)
    for d in declared(cfg):
        cmd = Command(command="corex.create", arguments={**d["arguments"], "persistent": True},
                      id=f"declared:{hashlib.sha256(d['name'].encode()).hexdigest()[:16]}")
        try:
            job = engine.submit_internal(cmd)
        except Exception as e:
            log.warning("declared container %s not restored: %s", d["name"], e)
            continue

        def report(_job: Any, result: Any, name: str = d["name"]) -> None:
            if result.state.value != "SUCCESS":
                log.warning("declared container %s not restored: %s", name, result.data)
            else:
                log.info("declared container %s: id %s", name, result.data)

        job.run_end.append(report)
        n += 1
    return n
