"""Job logs reach the disk by the policy of the node's AOF (core0.jobs.logsync): real files on
a real disk (ext4 here), real fsync/syncfs, the real syncing thread."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import unavailable, wait_until

from core0.jobs import logsync
from core0.jobs.state import JobStore, _is_persistent


def _job(job_id: str) -> Any:
    return SimpleNamespace(id=job_id, raw=b'{"id":"%s"}' % job_id.encode(), processing="p",
                           role=SimpleNamespace(label="admin"), starttime=1, protected=False,
                           run=1, pid=None, start_ticks=10, start_max=0, label="true",
                           next_run=None, comm="true", container=0, scope=None)


@pytest.fixture
def disk_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a disk (not a tmpfs), where syncing means something."""
    if _is_persistent(tmp_path):
        yield tmp_path
        return
    for base in ("/var/tmp", str(Path(__file__).resolve().parents[2] / "build")):
        if os.path.isdir(base) and _is_persistent(Path(base)):
            d = Path(tempfile.mkdtemp(prefix="logsync-", dir=base))
            try:
                yield d
            finally:
                shutil.rmtree(d, ignore_errors=True)
            return
    unavailable("no directory on a disk to test syncing in")


def test_always_syncs_each_step_that_matters_before_returning(disk_dir: Path) -> None:
    store = JobStore(disk_dir / "jobs", sync="always")
    assert store.sync.policy == "always"
    job = _job("a")
    store.new_run("a", 1, stdin=False)
    store.save(job, state="spawning")
    assert store.sync.synced == 1
    job.pid = 99
    store.save(job, state="running")  # never worth a sync: no pid outlives a power loss
    assert store.sync.synced == 1
    store.save(job, state="exited", status=0)
    store.save(job, state="done", result="{}")
    assert store.sync.synced == 3
    assert store.sync._thread is None  # no thread for this policy


def test_everysec_syncs_in_a_thread_at_most_once_a_second(disk_dir: Path) -> None:
    store = JobStore(disk_dir / "jobs", sync="everysec")
    sync = store.sync
    jobs = [_job(f"e{i}") for i in range(5)]
    t0 = time.monotonic()
    for job in jobs:  # a burst: the first step starts a pass at once, the rest wait for the next
        store.new_run(job.id, 1, stdin=False)
        store.save(job, state="spawning")
    # written at once, whatever the sync: another reader (a next dispatcher) sees every step
    for job in jobs:
        assert b'"state": "spawning"' in Path(store.log_path(job.id)).read_bytes()
    assert wait_until(lambda: not sync.pending())
    assert sync.synced >= 1
    for _ in range(40):  # 200 steps of the same five logs within ~0.8 s
        for job in jobs:
            store.save(job, state="exited", status=0)
        time.sleep(0.02)
    assert wait_until(lambda: not sync.pending())
    elapsed = time.monotonic() - t0
    # the steps of every log in one pass; passes at most one a second (plus the first)
    assert 2 <= sync.synced <= int(elapsed / logsync.INTERVAL) + 2
    sync.close()
    assert sync._thread is not None and not sync._thread.is_alive()


def test_close_syncs_what_is_pending_and_later_steps_inline(disk_dir: Path) -> None:
    store = JobStore(disk_dir / "jobs", sync="everysec")
    a, b = _job("fa"), _job("fb")
    for job in (a, b):
        store.new_run(job.id, 1, stdin=False)
    store.save(a, state="spawning")
    assert wait_until(lambda: store.sync.synced == 1)
    store.save(b, state="spawning")  # waits for the next pass (a second after the first)
    assert store.sync.pending()
    store.sync.close()  # does not wait for it: syncs now
    assert not store.sync.pending() and store.sync.synced == 2
    thread = store.sync._thread
    assert thread is not None and not thread.is_alive()  # a pass cleared close's wake-up once
    store.save(a, state="exited", status=0)  # after close: synced by the caller
    assert store.sync.synced == 3


def _syncs(root: Path, policy: str) -> tuple[str, int]:
    store = JobStore(root, sync=policy)
    job = _job("n")
    store.new_run("n", 1, stdin=False)
    store.save(job, state="spawning")
    store.save(job, state="exited", status=0)
    time.sleep(0.05)
    assert not store.sync.pending() and store.sync._thread is None
    return store.sync.policy, store.sync.synced


@pytest.mark.parametrize("policy", ["everysec", "always"])
def test_nothing_is_synced_on_a_tmpfs(policy: str) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or _is_persistent(shm):
        unavailable("no tmpfs at /dev/shm")
    tmp = Path(tempfile.mkdtemp(prefix="logsync-", dir=shm))
    try:
        assert _syncs(tmp / "jobs", policy) == ("no", 0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_nothing_is_synced_with_no(disk_dir: Path) -> None:
    assert _syncs(disk_dir / "jobs", "no") == ("no", 0)


def test_syncfs_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        logsync.syncfs(-1)


def test_an_unknown_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown sync policy"):
        logsync.LogSync("sometimes", tmp_path)
