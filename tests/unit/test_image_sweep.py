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
