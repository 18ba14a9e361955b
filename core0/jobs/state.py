"""The persisted part of process jobs: one directory per job under ``<state_dir>/jobs``.

Each job has one append-only log, ``job.log``, of JSON lines. The first line is the whole job
(the command, its role, its queue's processing list…), written when the first run is about to
spawn; every later step of a run appends one short line with what changed: ``spawning`` (before
the spawn), ``running`` (pid + start time), ``exited`` (wait status, written the moment the
reaper hands it over, before the zombie is reaped), ``scheduled`` (between recurring runs) and
``done`` (the result, before it is published). A line is one ``write`` on a descriptor kept
open for the job's life (``O_APPEND``; fsync only off tmpfs), so a step costs one system call
instead of a temp file, a rename and a directory entry (issue 11). A line torn by a crash is
ignored when loading; the state is the first line updated by every later one. A new dispatcher
re-creates every job from these logs: it follows the output files again, learns the exit
status of a still-running process from the supervisor, and publishes a result that was saved
but not yet sent.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import select
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core0.jobs.job import Job


@dataclass
class Saved:
    id: str
    raw: bytes
    processing: str
    role: str
    run: int
    state: str
    pid: int | None
    start_ticks: int
    starttime: int
    label: str
    status: int | None = None
    result: str | None = None
    next_run: float = 0.0
    protected: bool = False
    comm: str = ""
    container: int = 0


def _dirname(job_id: str) -> str:
    # ids may be "." or ".."; the "j-" prefix keeps every id a plain name
    return "j-" + job_id


class JobStore:
    """The job logs under ``<state_dir>/jobs`` (one directory per process job): ``save`` a
    job's step (one append; fsync when the directory is persistent), ``load_all`` what a
    crashed dispatcher left, ``remove`` a finished job's directory."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.fsync = _is_persistent(root)
        #: job id → the open descriptor of its job.log
        self._fds: dict[str, int] = {}

    def dir(self, job_id: str) -> Path:
        return self.root / _dirname(job_id)

    def ensure_dir(self, job_id: str) -> Path:
        """The job's directory, made on first use (once per job, not once per step)."""
        d = self.dir(job_id)
        if job_id not in self._fds:
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                pass
        return d

    def save(self, job: Job, *, state: str, status: int | None = None,
             result: str | None = None) -> None:
        """Record a step of ``job`` (see the module docstring)."""
        fd = self._fds.get(job.id)
        if fd is None:
            d = self.ensure_dir(job.id)
            fd = os.open(d / "job.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                         0o600)
            self._fds[job.id] = fd
            try:
                raw: dict[str, Any] = {"raw": job.raw.decode("utf-8")}
            except UnicodeDecodeError:
                raw = {"raw_b64": base64.b64encode(job.raw).decode()}
            body: dict[str, Any] = {
                "id": job.id, **raw, "processing": job.processing, "role": job.role.label,
                "starttime": job.starttime, "protected": job.protected,
            }
            if job.container:  # a job dispatched into a container (its results name it)
                body["container"] = job.container
            head = json.dumps(body) + "\n"
        else:
            head = ""
        step = {
            "run": job.run,
            "state": state,
            "pid": job.pid,
            "start_ticks": job.start_ticks,
            "starttime": job.starttime,
            "label": job.label,
            "status": status,
            "result": result,
            "next_run": job.next_run or 0.0,
            "comm": job.comm,
        }
        os.write(fd, (head + json.dumps(step) + "\n").encode())
        if self.fsync:
            os.fsync(fd)

    def remove(self, job_id: str) -> None:
        """Forget a job: close its log and remove its directory."""
        fd = self._fds.pop(job_id, None)
        if fd is not None:
            os.close(fd)
        d = self.dir(job_id)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return
        except OSError:
            shutil.rmtree(d, ignore_errors=True)
            return
        for name in names:
            try:
                os.unlink(d / name)
            except IsADirectoryError:
                shutil.rmtree(d / name, ignore_errors=True)
            except OSError:
                pass
        try:
            os.rmdir(d)
        except OSError:
            shutil.rmtree(d, ignore_errors=True)

    def load_all(self) -> list[Saved]:
        """Every job a previous dispatcher left (unreadable ones are removed)."""
        out = []
        for d in sorted(self.root.glob("j-*")):
            try:
                out.append(_load(d))
            except (OSError, ValueError, KeyError, TypeError):
                shutil.rmtree(d, ignore_errors=True)
        return out


def _load(d: Path) -> Saved:
    lines = (d / "job.log").read_bytes().split(b"\n")
    body = json.loads(lines[0])
    for line in lines[1:]:
        try:
            body.update(json.loads(line))
        except ValueError:
            continue  # torn by a crash (the last line) or empty
    if "state" not in body:
        raise ValueError("no step recorded")
    raw = body["raw"].encode("utf-8") if "raw" in body else base64.b64decode(body["raw_b64"])
    return Saved(
        id=body["id"],
        raw=raw,
        processing=body["processing"],
        role=body["role"],
        run=int(body["run"]),
        state=body["state"],
        pid=body.get("pid"),
        start_ticks=int(body.get("start_ticks") or 0),
        starttime=int(body.get("starttime") or 0),
        label=body.get("label") or "",
        status=body.get("status"),
        result=body.get("result"),
        next_run=float(body.get("next_run") or 0.0),
        protected=bool(body.get("protected")),
        comm=body.get("comm") or "",
        container=int(body.get("container") or 0),
    )


def _is_persistent(path: Path) -> bool:
    """fsync only where it means something (not on tmpfs)."""
    try:
        with open("/proc/self/mounts") as f:
            best, fstype = "", ""
            p = str(path.resolve())
            for line in f:
                parts = line.split()
                if len(parts) > 2 and p.startswith(parts[1]) and len(parts[1]) >= len(best):
                    best, fstype = parts[1], parts[2]
        return fstype not in ("tmpfs", "ramfs")
    except OSError:
        return True


def data_start(path: Path) -> int:
    """Where readable output starts in a file whose consumed head was punched out."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        try:
            off = os.lseek(fd, 0, os.SEEK_DATA)
        except OSError:
            return 0
        if off == 0:
            return 0
        chunk = os.pread(fd, 1 << 16, off)
        return off + (len(chunk) - len(chunk.lstrip(b"\0")))
    finally:
        os.close(fd)


def find_writer(path: Path) -> int | None:
    """The pid of a process that has ``path`` open (a job spawned just before a crash)."""
    target = str(path)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                try:
                    if os.readlink(fd.path) == target:
                        return int(entry.name)
                except OSError:
                    continue
        except OSError:
            continue
    return None


async def wait_gone(pid: int) -> None:
    """Wait for a process that is not our child to end (pidfd; no polling). Status unknown."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    loop = asyncio.get_running_loop()
    ev = asyncio.Event()
    loop.add_reader(fd, ev.set)
    try:
        # readable when the process has exited
        if not select.select([fd], [], [], 0)[0]:
            await ev.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return None
