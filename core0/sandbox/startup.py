"""0-core's ``/.startup.toml``: the startup services a container's root declares.

0-core's coreX (the init of every 0-core container) ran the ``[startup.<name>]`` services of
the flist's ``/.startup.toml`` at its start; the 0-hub's docker-convert writes one (``[startup.
entry] name = "core.system"`` with the image's entrypoint). core0's containers have no coreX
(PID 1 is catatonit), so core0 does it from the node's side:

* :func:`read_tables` reads the file **inside the container's root clone**: the last
  component opened with ``O_NOFOLLOW`` from the root's descriptor (a symlink is refused, never
  followed, also not to the container's own files), only a regular file (a FIFO or a device:
  refused, opened non-blocking), at most :data:`MAX_BYTES`, TOML with ``[startup.<name>]``
  tables only. Every problem is a :class:`~core0.errors.BadRequest` whose message names the
  file; the container runs anyway (as under coreX) and the message is its ``startup.error``
  in ``corex.get``/``corex.list``.
* :func:`begin` (the container's init runs: ``corex.create``, and so a declared container's
  re-creation and ``corex.restore``; ``corex.create-sync`` once its init runs,
  :func:`after_start`) keeps the tables in ``<container dir>/startup.json`` and submits
  :data:`COMMAND`, a job of core0's own with the creating queue's role and private-queue
  scope, which runs them (core0/commands/container_startup.py: the node's startup machinery,
  core0.boot) as inner jobs of the container with ids :func:`job_prefix` + name.
* :func:`stop` (every teardown: terminate, a service container's end, a create undone) stops
  that job first, then the container's startup jobs; :func:`resume` (a dispatcher's start)
  submits it again for each container it ran for, which re-attaches to the adopted jobs.
* :func:`describe`: the ``startup`` entry of a container in ``corex.get``/``corex.list``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import stat
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core0_client.protocol import Command

from core0.errors import BadRequest, CommandError, NotFound
from core0.fspath import Root
from core0.sandbox.access import owner_role
from core0.sandbox.store import Record, Store

if TYPE_CHECKING:
    from core0.config import Config
    from core0.jobs.engine import JobEngine
    from core0.jobs.job import Job

log = logging.getLogger(__name__)

#: the file, at the root of the container's root file system
FILE = ".startup.toml"
#: where its problems are reported, as a container's user names it
WHERE = "/" + FILE
#: the largest file read (0-core's converted images write a few hundred bytes)
MAX_BYTES = 64 * 1024
#: services in one file at most (each is a job of the node)
MAX_SERVICES = 64
#: the state of a container's startup services, in its container dir
STATE = "startup.json"
#: the internal command that runs them (core0/commands/container_startup.py)
COMMAND = "container.startup"
#: seconds a stopped startup job has between TERM and KILL (the container goes next)
STOP_TIMEOUT = 3.0


def rootfs(cdir: Path) -> Path:
    """The container's root clone (a ZFS clone's is mounted one level down)."""
    plain = cdir / "rootfs"
    return plain if plain.is_dir() or not (cdir / "zroot").is_dir() else cdir / "zroot" / "rootfs"


def read_tables(root: Path) -> dict[str, dict[str, Any]] | None:
    """The ``[startup.<name>]`` tables of ``<root>/.startup.toml`` (each with its
    ``__source__``), None when there is no such file; BadRequest naming the file for one
    that cannot be used (see the module docstring)."""
    try:
        with Root(str(root)) as r, r.at(WHERE, follow=False) as (dfd, name):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                         | os.O_CLOEXEC, dir_fd=dfd)
    except (FileNotFoundError, NotFound):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise BadRequest(f"{WHERE} is a symbolic link: not followed (make it a regular "
                             "file)") from None
        raise BadRequest(f"{WHERE}: cannot be opened: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadRequest(f"{WHERE} is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_BYTES and (chunk := os.read(fd, MAX_BYTES + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > MAX_BYTES:
        raise BadRequest(f"{WHERE} is larger than {MAX_BYTES} bytes")
    return parse(b"".join(chunks))


def parse(data: bytes) -> dict[str, dict[str, Any]]:
    """The startup tables of a ``/.startup.toml``'s bytes (BadRequest naming the file)."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BadRequest(f"{WHERE}: not UTF-8 text (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise BadRequest(f"{WHERE}: not valid TOML: {e}") from None
    except RecursionError:
        raise BadRequest(f"{WHERE}: nested too deeply") from None
    other = sorted(k for k in doc if k != "startup")
    if other:
        raise BadRequest(f"{WHERE}: unknown table or key {other[0]!r} (only [startup.<name>] "
                         "tables are read)")
    tables = doc.get("startup", {})
    if not isinstance(tables, dict):
        raise BadRequest(f"{WHERE}: startup must be a table of [startup.<name>] tables")
    if len(tables) > MAX_SERVICES:
        raise BadRequest(f"{WHERE}: {len(tables)} services; at most {MAX_SERVICES}")
    out: dict[str, dict[str, Any]] = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise BadRequest(f"{WHERE}: startup.{name} must be a table")
        out[name] = {**table, "__source__": WHERE}
    return out


def job_prefix(rec: Record) -> str:
    """The start of the job ids of ``rec``'s startup services (+ the service's name): the
    creating private queue's prefix, so its results and output keys are that queue's."""
    return f"{rec.scope}startup:{rec.id}:"


def manager_id(state_dir: Path, cid: int) -> str:
    """The id of the :data:`COMMAND` job of container ``cid``."""
    return f"core0.startup.{Store(state_dir).tag}.{cid}"


def load_state(cdir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((cdir / STATE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_state(cdir: Path, data: dict[str, Any]) -> None:
    """Write ``startup.json`` atomically (OSError: the container dir is going)."""
    tmp = cdir / (STATE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(data, default=str).encode())
    finally:
        os.close(fd)
    os.replace(tmp, cdir / STATE)


def begin(engine: JobEngine, cfg: Config, cid: int) -> bool:
    """Container ``cid``'s init runs: read its ``/.startup.toml`` and submit the job that
    runs its services (True), or record why it cannot be used (False; the container runs
    on). No file: nothing (False). Never raises, never awaits."""
    st = Store(cfg.state_dir)
    cdir = st.dir(cid)
    try:
        rec = st.load(cid)
        tables = read_tables(rootfs(cdir))
    except CommandError as e:
        log.warning("container %d: startup services not run: %s", cid, e.message)
        with contextlib.suppress(OSError):
            write_state(cdir, {"error": e.message, "services": []})
        return False
    except OSError as e:
        log.warning("container %d: %s not read: %s", cid, WHERE, e)
        with contextlib.suppress(OSError):
            write_state(cdir, {"error": f"{WHERE}: cannot be read: {e}", "services": []})
        return False
    if not tables:
        return False
    try:
        write_state(cdir, {"tables": tables, "services": []})
        submit(engine, cfg.state_dir, rec, resume=False)
    except Exception as e:  # (a job of that id: a squatted id, a dispatcher bug)
        log.warning("container %d: startup services not run: %s", cid, e)
        with contextlib.suppress(OSError):
            write_state(cdir, {"error": f"not started: {e}", "services": []})
        return False
    return True


def submit(engine: JobEngine, state_dir: Path, rec: Record, resume: bool) -> Job:
    """Submit :data:`COMMAND` for ``rec`` with its creating queue's role and scope."""
    cmd = Command(command=COMMAND, arguments={"container": rec.id, "resume": resume},
                  id=manager_id(state_dir, rec.id))
    return engine.submit_internal(cmd, role=owner_role(rec), scope=rec.scope or None)


#: waits for the init of a corex.create-sync's container (referenced until they end)
_WAITING: set[asyncio.Task[None]] = set()


def after_start(engine: JobEngine, cfg: Config, job: Job, cid: int) -> None:
    """:func:`begin` once the init of container ``cid`` runs, started by ``job``'s process
    (``corex.create-sync``: the runtime's foreground run; its pid file names the init)."""
    async def wait() -> None:
        from core0.sandbox import runtime
        from core0.sandbox.manager import init_pid

        done = asyncio.ensure_future(job.done.wait())
        spawned = asyncio.ensure_future(job.spawned.wait())
        try:
            await asyncio.wait([spawned, done], return_when=asyncio.FIRST_COMPLETED)
            st = Store(cfg.state_dir)
            for _ in range(400):  # 20 s: runc writes the pid file once the init runs
                if job.done.is_set():
                    return
                with contextlib.suppress(NotFound):
                    if runtime.alive(init_pid(st.dir(cid), st.load(cid))):
                        begin(engine, cfg, cid)
                        return
                await asyncio.sleep(0.05)
            log.warning("container %d: its init did not start; no startup services", cid)
        finally:
            done.cancel()
            spawned.cancel()

    task = asyncio.ensure_future(wait())
    _WAITING.add(task)
    task.add_done_callback(_WAITING.discard)


def startup_jobs(engine: JobEngine, cid: int) -> list[Job]:
    """The jobs of core0's own running inside container ``cid`` (its startup services)."""
    return [j for j in engine.table.values() if j.internal and j.container == cid]


async def stop(engine: JobEngine, state_dir: Path, cid: int) -> None:
    """Stop container ``cid``'s startup services: the job running them first (it would
    start more), then their jobs, all at once (TERM, KILL after :data:`STOP_TIMEOUT`)."""
    await engine.stop_service(manager_id(state_dir, cid), STOP_TIMEOUT)
    jobs = startup_jobs(engine, cid)
    if jobs:
        await asyncio.gather(*(engine.stop_service(j.id, STOP_TIMEOUT) for j in jobs),
                             return_exceptions=True)


def resume(engine: JobEngine, state_dir: Path) -> int:
    """A dispatcher's start: :data:`COMMAND` again (``resume``) for every running
    container whose startup services it ran; returns how many."""
    st = Store(state_dir)
    n = 0
    for rec in st.all():
        if rec.state != "running" or manager_id(state_dir, rec.id) in engine.table:
            continue
        data = load_state(st.dir(rec.id))
        if not data or data.get("error") or not (data.get("services") or data.get("tables")):
            continue
        try:
            submit(engine, state_dir, rec, resume=True)
            n += 1
        except Exception as e:
            log.warning("container %d: startup services not resumed: %s", rec.id, e)
    return n


#: fields of a service shown in a container's ``startup`` entry
_SHOWN = ("id", "status", "message", "pid", "starts", "last_exit", "deps")


def describe(cdir: Path, visible: bool) -> dict[str, Any] | None:
    """The container's ``startup`` entry (None: its root has no ``/.startup.toml``):
    ``{error, services: [{id, status, message, job, pid, starts, last_exit, …}]}``; a viewer
    who may not see the creator's jobs (``visible`` False) gets no messages (they quote the
    services' output)."""
    data = load_state(cdir)
    if data is None:
        return None
    services = []
    for s in data.get("services") or []:
        if not isinstance(s, dict):
            continue
        entry = {k: s.get(k) for k in _SHOWN if k in s}
        spec = s.get("spec") or {}
        entry["command"] = spec.get("name", "")
        entry["protected"] = bool(spec.get("protected"))
        entry["job"] = str(data.get("prefix", "")) + str(s.get("id", ""))
        if not visible:
            entry["message"] = ""
        services.append(entry)
    return {"file": WHERE, "error": str(data.get("error") or ""), "services": services}
