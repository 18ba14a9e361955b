"""The image store's sweep of work directories a killed dispatcher left: only those made
before the dispatcher's start, only work directories, never an image."""

from __future__ import annotations

import os
import time
from pathlib import Path

from core0.sandbox import images


def test_only_work_dirs_older_than_the_start_go(tmp_path: Path) -> None:
    store = images.images_dir(tmp_path)
    old = [store / n for n in (".pull-a", ".import-b", ".restore-c", ".del-d")]
    for d in old:
        (d / "rootfs" / "x").mkdir(parents=True)
    image = store / "0123456789abcdef0123456789abcdef"
    (image / "rootfs").mkdir(parents=True)
    (image / "image.json").write_text("{}")
    target = tmp_path / "outside"
    target.mkdir()
    (store / ".pull-link").symlink_to(target)
    time.sleep(0.05)
    start = time.time()
    time.sleep(0.05)
    new = store / ".pull-new"
    new.mkdir()
    assert images.sweep_leftovers(tmp_path, start) == 4
    assert not any(d.exists() for d in old)
    assert image.is_dir() and new.is_dir() and target.is_dir()
    assert os.path.islink(store / ".pull-link")


def test_partial_downloads_of_a_dead_dispatcher_go(tmp_path: Path) -> None:
    from core0.virt import fetch

    cache = tmp_path / "cache"
    cache.mkdir()
    stale, live, done = cache / ".part-old", cache / ".part-live", cache / ("a" * 64)
    for f in (stale, live, done):
        f.write_bytes(b"x")
    past = time.time() - fetch.STALE_PART - 10
    os.utime(stale, (past, past))
    os.utime(done, (past, past))
    start = time.time() + 1  # (ctimes are now: made "before" this start)
    assert fetch.sweep_parts(cache, start) == 1
    assert not stale.exists() and live.exists() and done.exists()  # live: written just now
    assert fetch.sweep_parts(tmp_path / "none", start) == 0
