"""The persisted part of process jobs: one directory per job under ``<state_dir>/jobs``.

``job.json`` is written atomically (temp file, fsync, rename) at each step of a run:
``spawning`` (before posix_spawn), ``running`` (pid + start time), ``exited`` (wait status,
written the moment the reaper hands it over), ``scheduled`` (between recurring runs) and
``done`` (the result, before it is published). A new dispatcher re-creates every job from
these files: it follows the output files again, learns the exit status of a still-running
process from the supervisor, and publishes a result that was saved but not yet sent.
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


def _dirname(job_id: str) -> str:
    # ids may be "." or ".."; the "j-" prefix keeps every id a plain name
    return "j-" + job_id


class JobStore:
    """The job directories under ``<state_dir>/jobs``: ``save`` a job's step atomically (fsync
    when the directory is persistent), ``load_all`` what a crashed dispatcher left, ``remove``
    a finished job's directory."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.fsync = _is_persistent(root)

    def dir(self, job_id: str) -> Path:
        return self.root / _dirname(job_id)

    def save(self, job: Job, *, state: str, status: int | None = None,
             result: str | None = None) -> None:
        d = self.dir(job.id)
        d.mkdir(exist_ok=True)
        try:
            raw_text = job.raw.decode("utf-8")
            raw: dict[str, Any] = {"raw": raw_text}
        except UnicodeDecodeError:
            raw = {"raw_b64": base64.b64encode(job.raw).decode()}
        body = {
            "id": job.id,
            **raw,
            "processing": job.processing,
            "role": job.role.label,
            "run": job.run,
            "state": state,
            "pid": job.pid,
            "start_ticks": job.start_ticks,
            "starttime": job.starttime,
            "label": job.label,
            "status": status,
            "result": result,
            "next_run": job.next_run or 0.0,
            "protected": job.protected,
            "comm": job.comm,
        }
        tmp = d / "job.json.tmp"
        with open(tmp, "w") as f:
            json.dump(body, f)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, d / "job.json")

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.dir(job_id), ignore_errors=True)

    def load_all(self) -> list[Saved]:
        out = []
        for d in sorted(self.root.glob("j-*")):
            try:
                body = json.loads((d / "job.json").read_text())
                raw = (
                    body["raw"].encode("utf-8")
                    if "raw" in body
                    else base64.b64decode(body["raw_b64"])
                )
                out.append(
                    Saved(
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
                    )
                )
            except (OSError, ValueError, KeyError):
                shutil.rmtree(d, ignore_errors=True)
        return out


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
