"""The persisted part of process jobs: files under ``<state_dir>/jobs`` (see :class:`JobStore`).

Each job has one append-only log, ``j-<id>.log``, of JSON lines. The first line is the whole
job (the command, its role, its queue's processing list, or the private-queue scope of a job
of core0's own that has one…) with its first step, written when the first run is about to
spawn; every later step of a run appends one short line with only what changed: ``spawning``
(the whole run, before the spawn), ``running`` (pid + start time), ``exited`` (wait status,
written the moment the reaper hands it over, before the zombie is reaped), ``scheduled``
(between recurring runs) and ``done`` (the result, before it is published; only when a next
dispatcher could not make the same result from ``exited`` and the output files: a timeout, a
kill, a recurring, restarting or protected job). A line is one ``write`` on a descriptor
kept open for the job's life (``O_APPEND``; synced to a disk as the node's Redis AOF is,
``redis.appendfsync``: core0.jobs.logsync), so a step costs one system call instead of a
temp file, a rename and a directory entry (docs/performance.md). A line torn by a crash is
ignored when loading; the state is the first line updated by every later one. A new
dispatcher re-creates every job from these logs: it follows the output files again, learns
the exit status of a still-running process from the supervisor, and publishes a result that
was saved but not yet sent.
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

from core0 import mountinfo
from core0.jobs.logsync import LogSync

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
    #: the process started at or before this tick (0: exactly at ``start_ticks``)
    start_max: int = 0
    container: int = 0
    #: the private-queue scope of a job of core0's own started with one (a bus job's comes
    #: from its processing list): None when not recorded
    scope: str | None = None


def same_process(saved: Saved, start_ticks: int) -> bool:
    """Whether a live process that started at ``start_ticks`` is the saved job's process (and
    not a later one that got its pid)."""
    if not start_ticks:
        return False
    if saved.start_max:
        return saved.start_ticks <= start_ticks <= saved.start_max
    return start_ticks == saved.start_ticks


def _name(job_id: str) -> str:
    # ids may be "." or ".."; the "j-" prefix keeps every id a plain name
    return "j-" + job_id


class JobStore:
    """The job logs under ``root``: ``j-<id>.log`` and, for a run with stdin, ``j-<id>.<run>.in``;
    the output files ``j-<id>.<run>.out`` / ``.err`` in ``root/out``, one flat directory that
    the dispatcher watches once (inotify events carry the file name), so a job costs no
    directory of its own and no watch of its own."""

    def __init__(self, root: Path, sync: str = "everysec"):
        self.root = root
        self.out = root / "out"
        self.out.mkdir(parents=True, exist_ok=True)
        self._root, self._out = str(root), str(self.out)
        #: ``sync``: when steps reach the disk (``always``/``everysec``/``no``; never on a tmpfs)
        self.sync = LogSync(sync if _is_persistent(root) else "no", root)
        #: job id → the open descriptor of its job log
        self._fds: dict[str, int] = {}
        #: job id → (run, has stdin file) of the run whose files exist
        self._files: dict[str, tuple[int, bool]] = {}
        #: job id → run: published jobs whose files go at the next :meth:`sweep`
        self._doomed: dict[str, int] = {}

    def log_path(self, job_id: str) -> str:
        return f"{self._root}/{_name(job_id)}.log"

    def output_paths(self, job_id: str, run: int) -> tuple[str, str]:
        """The stdout and stderr files of run ``run``."""
        base = f"{self._out}/{_name(job_id)}.{run}"
        return base + ".out", base + ".err"

    def stdin_path(self, job_id: str, run: int) -> str:
        return f"{self._root}/{_name(job_id)}.{run}.in"

    def open_outputs(self, job_id: str, run: int) -> tuple[int, int]:
        """Make run ``run``'s stdout and stderr files; their fds are read-write (the child
        appends to them, the followers read and punch them)."""
        fds = []
        for path in self.output_paths(job_id, run):
            flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
            try:  # a new file: no truncation (which would be an inotify event)
                fds.append(os.open(path, flags | os.O_EXCL, 0o600))
            except FileExistsError:  # left by a run before a crash
                fds.append(os.open(path, flags | os.O_TRUNC, 0o600))
        return fds[0], fds[1]

    def open_stdin(self, job_id: str, run: int, data: bytes) -> int:
        """Write run ``run``'s stdin file (private); a read-only fd of it."""
        path = self.stdin_path(job_id, run)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def new_run(self, job_id: str, run: int, stdin: bool) -> None:
        """Files of run ``run`` are about to be made: those of the run before go."""
        if job_id in self._doomed:  # the same id again before the sweep: its old files go now
            self.remove(job_id, self._doomed.pop(job_id))
        prev = self._files.get(job_id)
        if prev is not None and prev[0] != run:
            self._unlink_run(job_id, *prev)
        self._files[job_id] = (run, stdin)

    def save(self, job: Job, *, state: str, status: int | None = None,
             result: str | None = None) -> None:
        """Record a step of ``job`` (see the module docstring)."""
        fd = self._fds.get(job.id)
        if fd is None:
            fd = os.open(self.log_path(job.id),
                         os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
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
            if job.scope is not None and not job.processing:
                # a job of core0's own with a private queue's scope (a container's startup
                # service): adopted with it, so that only that queue sees and acts on it
                body["scope"] = job.scope
            # the first record: the whole job and its step, one line (one encoding)
            body.update(self._whole(job, state, status, result))
            line = json.dumps(body) + "\n"
        elif state == "running":  # what the spawn added (the steps of every run: no encoder)
            line = f'{{"state": "running", "pid": {int(job.pid or 0)}, ' \
                   f'"start_max": {int(job.start_max)}}}\n'
        elif state == "exited" and status is not None:
            line = f'{{"state": "exited", "status": {int(status)}}}\n'
        elif state == "done":
            line = json.dumps({"state": state, "result": result}) + "\n"
        else:  # a run starts with "spawning": nothing of the last run stays
            line = json.dumps(self._whole(job, state, status, result)) + "\n"
        os.write(fd, line.encode())
        # a written line survives a crash of the dispatcher as it is; a sync is for a power
        # loss, after which no pid means anything any more: the "running" step is not worth one
        if state != "running":
            self.sync.after_write(fd)

    @staticmethod
    def _whole(job: Job, state: str, status: int | None, result: str | None) -> dict[str, Any]:
        return {
            "run": job.run,
            "state": state,
            "pid": job.pid,
            "start_ticks": job.start_ticks,
            "start_max": job.start_max,
            "starttime": job.starttime,
            "label": job.label,
            "status": status,
            "result": result,
            "next_run": job.next_run or 0.0,
            "comm": job.comm,
        }

    def remove_later(self, job_id: str, run: int) -> None:
        """:meth:`remove` at the next :meth:`sweep`: for a job whose result is published, so
        that the unlinks run while the dispatcher waits (for the next job's process), not
        between a result and the next command. A crash before the sweep is harmless: the next
        dispatcher publishes again, and the result already there stands."""
        self._doomed[job_id] = run

    def sweep(self) -> int:
        """Remove what :meth:`remove_later` left; returns how many jobs."""
        n = len(self._doomed)
        while self._doomed:
            job_id, run = self._doomed.popitem()
            self.remove(job_id, run)
        return n

    def remove(self, job_id: str, run: int) -> None:
        """Forget a job: close its log, remove it and the files of its last run."""
        fd = self._fds.pop(job_id, None)
        if fd is not None:
            os.close(fd)
        run, stdin = self._files.pop(job_id, (run, True))
        try:  # the log first: a job whose log is there still has its output files
            os.unlink(self.log_path(job_id))
        except OSError:
            pass
        self._unlink_run(job_id, run, stdin)

    def _unlink_run(self, job_id: str, run: int, stdin: bool) -> None:
        paths = [*self.output_paths(job_id, run)]
        if stdin:
            paths.append(self.stdin_path(job_id, run))
        for path in paths:
            try:
                os.unlink(path)
            except OSError:
                pass

    def load_all(self) -> list[Saved]:
        """Every job a previous dispatcher left (unreadable ones are removed, and so are
        output files no job owns)."""
        out = []
        stdins = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            name = entry.name
            if not name.startswith("j-"):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)  # an older layout: not adoptable
                continue
            if name.endswith(".in"):
                stdins.append(entry)
                continue
            if not name.endswith(".log"):
                continue
            try:
                saved = _load(Path(entry.path))
            except (OSError, ValueError, KeyError, TypeError):
                _unlink(entry.path)
                continue
            out.append(saved)
        keep = {f"{_name(s.id)}.{s.run}" for s in out}
        for entry in [*stdins, *os.scandir(self.out)]:
            if entry.name.rsplit(".", 1)[0] not in keep:  # earlier runs', or no job's
                _unlink(entry.path)
        return out


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _load(path: Path) -> Saved:
    lines = path.read_bytes().split(b"\n")
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
        start_max=int(body.get("start_max") or 0),
        container=int(body.get("container") or 0),
        scope=body.get("scope") if isinstance(body.get("scope"), str) else None,
    )


def _is_persistent(path: Path) -> bool:
    """Sync only where it means something (not on tmpfs)."""
    try:
        mount = mountinfo.containing(str(path.resolve()))
    except OSError:
        return True
    return mount is None or mount.fstype not in ("tmpfs", "ramfs")


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
