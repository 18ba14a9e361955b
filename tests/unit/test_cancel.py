"""core0/cancel.py: work in a worker thread stops at its next step when the task awaiting it
is cancelled — on real files: a real tar unpacked by the image import, a real tree chowned."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
import threading
import time
from pathlib import Path

import pytest

from core0 import cancel
from core0.sandbox import images, userns


def _tar(path: Path, files: int) -> None:
    """A tar of ``files`` small files in a few directories."""
    with tarfile.open(path, "w") as tf:
        for i in range(files):
            data = b"x" * 64
            info = tarfile.TarInfo(f"d{i % 50}/f{i}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_check_outside_a_job_thread_never_raises() -> None:
    cancel.check()
    threading.Thread(target=cancel.check).start()


def test_the_thread_stops_at_its_next_step() -> None:
    """The awaiting task is cancelled: the thread's next check raises Cancelled; a thread
    of another call (not cancelled) goes on."""
    steps = {"a": 0, "b": 0}
    ended: dict[str, str] = {}

    def work(name: str) -> str:
        try:
            for _ in range(400):
                cancel.check()
                steps[name] += 1
                time.sleep(0.005)
        except cancel.Cancelled:
            ended[name] = "cancelled"
            raise
        ended[name] = "done"
        return name

    async def main() -> None:
        a = asyncio.ensure_future(cancel.in_thread(work, "a"))
        b = asyncio.ensure_future(cancel.in_thread(work, "b"))
        await asyncio.sleep(0.1)
        a.cancel()
        with pytest.raises(asyncio.CancelledError):
            await a
        assert await b == "b"

    asyncio.run(main())
    assert ended == {"a": "cancelled", "b": "done"}
    assert 0 < steps["a"] < 100 and steps["b"] == 400


def test_a_cancelled_import_leaves_nothing(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A container image import cancelled while it unpacks: the unpacking stops, its work
    directory goes, and the image never appears (before: it appeared after the job had
    answered KILLED)."""
    src = tmp_path / "big.tar"
    _tar(src, 30_000)
    state = tmp_path / "state"
    state.mkdir()
    started = threading.Event()
    real = images.unpack.extract_layer

    def watched(*args: object, **kw: object) -> int:
        started.set()
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(images.unpack, "extract_layer", watched)  # (the real one, observed)

    async def main() -> None:
        t = asyncio.ensure_future(cancel.in_thread(
            images.import_blocking, state, "big", str(src)))
        while not started.is_set():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    asyncio.run(main())  # (asyncio.run joins the worker thread before it returns)
    assert not images.image_dir(state, "big").exists()
    assert [p.name for p in images.images_dir(state).iterdir()] == []


def test_a_cancelled_chown_stops(tmp_path: Path) -> None:
    """userns.shift_tree (a user-namespaced container's root made its own) stops too."""
    root = tmp_path / "root"
    for i in range(60):
        d = root / f"d{i}"
        d.mkdir(parents=True)
        for j in range(1000):
            (d / f"f{j}").touch()
    seen: list[int] = []

    async def main() -> None:
        t = asyncio.ensure_future(cancel.in_thread(userns.shift_tree, root, 100_000))
        await asyncio.sleep(0.02)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    asyncio.run(main())
    for dirpath, dirnames, filenames in os.walk(root):
        seen += [os.lstat(os.path.join(dirpath, n)).st_uid for n in dirnames + filenames]
    shifted = sum(1 for uid in seen if uid == 100_000)
    assert shifted < len(seen), "the whole tree was chowned after the cancel"


def test_wait_holds_the_cancelled_task_until_the_thread_ends() -> None:
    """``wait=True`` (a slot being written): the cancelled task goes on only once the thread
    has stopped, a second cancel meanwhile included."""
    ended: list[float] = []

    def work() -> None:
        try:
            while True:
                cancel.check()
                time.sleep(0.05)
        finally:
            time.sleep(0.3)  # clean-up of its own
            ended.append(time.monotonic())

    async def main() -> float:
        t = asyncio.ensure_future(cancel.in_thread(work, wait=True))
        await asyncio.sleep(0.1)
        t.cancel()
        await asyncio.sleep(0.05)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        return time.monotonic()

    back = asyncio.run(main())
    assert len(ended) == 1 and ended[0] <= back


def test_atomic_finishes_the_step_and_then_raises_the_cancel() -> None:
    """A step cancelled meanwhile runs to its end; its result reaches the caller, whose next
    await raises the cancel (so the caller's clean-up knows the step's effect); a failed
    step gives CancelledError; a clean-up (``defer=False``) drops further cancels."""
    log: list[str] = []

    async def step(ok: bool) -> str:
        await asyncio.sleep(0.2)
        log.append("step done")
        if not ok:
            raise RuntimeError("failed")
        return "made"

    async def caller(ok: bool) -> None:
        try:
            got = await cancel.atomic(step(ok))
            log.append(f"got {got}")
            await asyncio.sleep(1)
            log.append("not reached")
        except asyncio.CancelledError:
            log.append("cancelled")

            async def cleanup() -> None:
                await asyncio.sleep(0.2)
                log.append("cleaned")

            await cancel.atomic(cleanup(), defer=False)
            raise

    async def main(ok: bool) -> None:
        t = asyncio.ensure_future(caller(ok))
        await asyncio.sleep(0.05)
        t.cancel()
        await asyncio.sleep(0.3)  # in the clean-up now: a second cancel is dropped
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    asyncio.run(main(True))
    assert log == ["step done", "got made", "cancelled", "cleaned"]
    log.clear()
    asyncio.run(main(False))
    assert log == ["step done", "cancelled", "cleaned"]


def test_atomic_keeps_a_max_time_a_timeout() -> None:
    """asyncio.timeout (a job's max_time) still ends in TimeoutError when its cancel was
    held back by a step: the count of cancels is the one asyncio.timeout expects."""
    async def main() -> str:
        try:
            async with asyncio.timeout(0.05):
                await cancel.atomic(asyncio.sleep(0.2))
                await asyncio.sleep(1)
        except TimeoutError:
            return "timeout"
        return "no"

    assert asyncio.run(main()) == "timeout"
