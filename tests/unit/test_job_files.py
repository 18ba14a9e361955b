"""The job engine's files: one inotify watch for every output file, the flat job store."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from core0.jobs.state import JobStore, same_process
from core0.proc.output import FileFollower, Inotify, Message, OutputParser


async def _follow_two(tmp: Path) -> tuple[list[str], list[str], int]:
    ino = Inotify()
    ino.watch_dir(str(tmp))
    ino.start(asyncio.get_running_loop())
    got: dict[str, list[str]] = {"a": [], "b": []}
    followers = []
    fds = []
    try:
        for name in ("a", "b"):
            path = str(tmp / name)
            fds.append(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))

            def sink(msgs: list[Message], name: str = name) -> None:
                got[name] += [m.text for m in msgs]

            f = FileFollower(path, OutputParser(1), sink)
            f.start(ino)
            followers.append(f)
        os.write(fds[0], b"one\n")
        os.write(fds[1], b"two\nthree\n")
        for _ in range(100):  # events arrive through the event loop
            if len(got["a"]) == 1 and len(got["b"]) == 2:
                break
            await asyncio.sleep(0.01)
        watches = len(ino._callbacks)
        for f in followers:
            f.finish()
        os.write(fds[0], b"late\n")  # no follower any more: ignored
        await asyncio.sleep(0.05)
        return got["a"], got["b"], watches
    finally:
        for fd in fds:
            os.close(fd)
        ino.close()


def test_one_directory_watch_routes_by_name(tmp_path: Path) -> None:
    a, b, watches = asyncio.run(_follow_two(tmp_path))
    assert a == ["one"]
    assert b == ["two", "three"]
    assert watches == 0  # no watch per file


def _job(job_id: str, run: int = 1) -> Any:
    return SimpleNamespace(id=job_id, raw=b'{"id":"x"}', processing="core:default:processing",
                           role=SimpleNamespace(label="admin"), starttime=1, protected=False,
                           run=run, pid=None, start_ticks=10, start_max=0, label="true",
                           next_run=None, comm="true", container=0, scope=None)


def test_job_store_flat_layout_and_steps(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")
    job = _job("x")
    store.new_run("x", 1, stdin=True)
    for path in (*store.output_paths("x", 1), store.stdin_path("x", 1)):
        Path(path).write_bytes(b"")
    store.save(job, state="spawning")
    job.pid, job.start_max = 4242, 12
    store.save(job, state="running")
    store.save(job, state="exited", status=256)
    (saved,) = JobStore(tmp_path / "jobs").load_all()
    assert (saved.state, saved.pid, saved.status, saved.label) == ("exited", 4242, 256, "true")
    assert (saved.start_ticks, saved.start_max) == (10, 12)
    assert same_process(saved, 11) and not same_process(saved, 13) and not same_process(saved, 0)
    # the next run removes the files of the one before
    store.new_run("x", 2, stdin=False)
    assert sorted(os.listdir(tmp_path / "jobs" / "out")) == []
    assert sorted(os.listdir(tmp_path / "jobs")) == ["j-x.log", "out"]
    store.remove("x", 2)
    assert sorted(os.listdir(tmp_path / "jobs")) == ["out"]


def test_load_removes_files_no_job_owns(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")
    store.new_run("y", 3, stdin=False)
    store.save(_job("y", 3), state="spawning")
    for name in ("j-y.3.out", "j-y.2.out", "j-gone.1.err"):
        (tmp_path / "jobs" / "out" / name).write_bytes(b"")
    (tmp_path / "jobs" / "j-y.2.in").write_bytes(b"")
    (saved,) = JobStore(tmp_path / "jobs").load_all()
    assert saved.run == 3
    assert os.listdir(tmp_path / "jobs" / "out") == ["j-y.3.out"]
    assert sorted(os.listdir(tmp_path / "jobs")) == ["j-y.log", "out"]


def test_a_job_of_core0s_own_keeps_its_private_scope(tmp_path: Path) -> None:
    """A job of core0's own (no processing list) started with a private queue's scope is
    saved with it, so that its adoption restores who may see it; a bus job's scope is its
    queue's and is not written twice."""
    store = JobStore(tmp_path / "jobs")
    own, bus = _job("own"), _job("bus")
    own.processing, own.scope = "", "team."
    bus.scope = "team."
    for job in (own, bus):
        store.new_run(job.id, 1, stdin=False)
        store.save(job, state="spawning")
    saved = {s.id: s for s in JobStore(tmp_path / "jobs").load_all()}
    assert saved["own"].scope == "team."
    assert saved["bus"].scope is None
