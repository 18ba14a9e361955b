"""Declared workloads that come back after a reboot (``[main] persistent_dir``): the shared part.

A *declaration* is a create command's arguments kept on the persistent disk, so that each
dispatcher start submits that create again, as a job of core0's own. Containers
(:mod:`core0.sandbox.persist`, ``corex.create``) and VMs (:mod:`core0.virt.persist`,
``kvm.create``) each have one :class:`Declarations` kind, a directory
``<persistent_dir>/<kind>/`` of files ``<digest of the name>.json`` (0600, written atomically):
``{name, hash, arguments, …ids}`` where ``hash`` is the sha256 of the canonical JSON of the
arguments (without ``persistent``) and the ids are the kind's (a container's ``id``, a VM's
``uuid``), which the re-creation reuses when they are free. What "the same spec is running
already" means and how a stale one is torn down is the kind's create command's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core0_client.protocol import Command

from core0.errors import PreconditionFailed
from core0.registry import Role

if TYPE_CHECKING:
    from core0.config import Config

log = logging.getLogger(__name__)
#: the most declarations of one kind read at a start (a bound on the directory)
MAX_DECLARED = 1024


def base(cfg: Config) -> Path | None:
    """``main.persistent_dir`` (None when unset); 412 while its ``persistent_device`` is not
    mounted there (nothing is written to the RAM file system below it)."""
    pd = cfg.main.persistent_dir
    if pd and not persistent_ready(cfg):
        raise PreconditionFailed(f"the persistent disk {cfg.main.persistent_device} is not "
                                 f"mounted on {pd} (see {PERSISTENT_STATE} in the state dir)")
    return Path(pd) if pd else None


#: init's word on the persistent disk, in the state dir (core0/init/persistent.py)
PERSISTENT_STATE = "persistent.json"


def persistent_state(cfg: Config) -> dict[str, Any] | None:
    """What ``core0 init`` wrote about ``persistent_device`` (None: nothing yet)."""
    try:
        return dict(json.loads((Path(cfg.state_dir) / PERSISTENT_STATE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def persistent_ready(cfg: Config) -> bool:
    """May ``persistent_dir`` be used? Without ``persistent_device``: yes (a directory the
    operator provides); with one: once init has mounted it."""
    if not cfg.main.persistent_device:
        return True
    st = persistent_state(cfg)
    return bool(st and st.get("mounted"))


def spec_hash(arguments: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a declaration's arguments (``persistent`` left out)."""
    text = json.dumps({k: v for k, v in arguments.items() if k != "persistent"},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def declared_role(declaration: dict[str, Any]) -> Role:
    """The role a declaration is restored with: the declaring queue's (``role`` in its
    record), so that its host paths are resolved again as that queue's were — inside
    ``main.filesystem_root`` below admin, where a component swapped for a symlink meanwhile
    leads nowhere; admin for records without one (made by admin queues or before the field)
    and never above admin."""
    try:
        return Role(min(int(declaration.get("role", Role.ADMIN)), Role.ADMIN))
    except (TypeError, ValueError):
        return Role.READ_ONLY


#: one lock per (kind, declared name) being created, dropped when nobody holds or waits for it
_locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


@dataclass(frozen=True)
class Declarations:
    """One kind of declared workload: its directory under ``persistent_dir``, the create
    command a start submits for each, and the prefix of those jobs' ids."""

    #: directory name under persistent_dir (``containers``, ``vms``)
    kind: str
    #: the create command re-submitted with ``persistent: true``
    command: str
    #: job id prefix of the re-submissions (``<prefix>:<digest of the name>``)
    job_prefix: str
    #: what to call one in the log
    what: str
    #: how many times a failed re-creation is retried (1 s apart), e.g. while a daemon the
    #: command needs is still starting
    retries: int = 0

    @contextlib.asynccontextmanager
    async def name_lock(self, name: str) -> AsyncIterator[None]:
        """Serialise the persistent creates of declared name ``name`` in this dispatcher: a
        second concurrent create of the same name waits, then finds the first one's workload
        running with the same spec hash (and answers its id) or replaces it."""
        key = (self.kind, name)
        lock, users = _locks.get(key) or (asyncio.Lock(), 0)
        _locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = _locks[key]
            if users <= 1:
                del _locks[key]
            else:
                _locks[key] = (lock, users - 1)

    def dir(self, cfg: Config) -> Path:
        b = base(cfg)
        if b is None:
            raise ValueError("main.persistent_dir is not set")
        d = b / self.kind
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        return d

    def file(self, cfg: Config, name: str) -> Path:
        return self.dir(cfg) / (_digest(name)[:32] + ".json")

    def declaration(self, cfg: Config, name: str) -> dict[str, Any] | None:
        """The declaration of ``name`` (None when there is none or it is unreadable)."""
        if base(cfg) is None:
            return None
        with contextlib.suppress(OSError, ValueError):
            d = json.loads(self.file(cfg, name).read_text())
            if isinstance(d, dict) and d.get("name") == name:
                return d
        return None

    def declare(self, cfg: Config, name: str, arguments: dict[str, Any], **ids: Any) -> None:
        """Record (or update) the declaration of ``name``."""
        path = self.file(cfg, name)
        tmp = path.with_suffix(".tmp")
        body = {**ids, "name": name, "hash": spec_hash(arguments), "arguments": arguments}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(body, indent=1, sort_keys=True).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def undeclare(self, cfg: Config, name: str) -> None:
        if base(cfg) is not None:
            with contextlib.suppress(FileNotFoundError):
                self.file(cfg, name).unlink()

    def declared(self, cfg: Config) -> list[dict[str, Any]]:
        """Every readable declaration (unreadable ones are logged and skipped)."""
        out = []
        for p in sorted(self.dir(cfg).glob("*.json"))[:MAX_DECLARED]:
            try:
                d = json.loads(p.read_text())
                if (isinstance(d, dict) and isinstance(d.get("arguments"), dict)
                        and d.get("name")):
                    out.append(d)
                    continue
            except (OSError, ValueError):
                pass
            log.warning("declared %s %s is unreadable: skipped", self.what, p.name)
        return out

    def restore(self, engine: Any, cfg: Config) -> int:
        """Submit the create command of every declaration as a job of core0's own
        (``engine.submit_internal``); returns how many were submitted."""
        if base(cfg) is None:
            return 0
        n = 0
        for d in self.declared(cfg):
            cmd = Command(command=self.command,
                          arguments={**d["arguments"], "persistent": True},
                          id=f"{self.job_prefix}:{_digest(d['name'])[:16]}",
                          max_restart=self.retries or None)
            try:
                job = engine.submit_internal(cmd, role=declared_role(d),
                                             scope=str(d.get("scope") or "") or None)
            except Exception as e:
                log.warning("declared %s %s not restored: %s", self.what, d["name"], e)
                continue

            def report(_job: Any, result: Any, name: str = d["name"]) -> None:
                if result.state.value != "SUCCESS":
                    log.warning("declared %s %s not restored: %s", self.what, name,
                                result.data)
                else:
                    log.info("declared %s %s: %s", self.what, name, result.data)

            job.run_end.append(report)
            n += 1
        return n
