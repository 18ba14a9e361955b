"""The OCI runtime probe (core0.sandbox.runtime.choose) with a real runtime, called by many
first creates at once (declared containers coming back together): every caller gets the same
runtime, and no probe cgroup or state is left behind."""

from __future__ import annotations

import asyncio
import glob
import shutil
from pathlib import Path

from conftest import require

from core0.proc import process
from core0.sandbox import runtime


def test_concurrent_first_choices_get_one_runtime(tmp_path: Path) -> None:
    require("runc")
    runtime._chosen.clear()
    try:
        async def many() -> list[runtime.Runtime]:
            reaper = process.Reaper()  # this process's one reaper, as in the dispatcher
            reaper.install(asyncio.get_running_loop())
            process.set_reaper(reaper)
            try:
                return list(await asyncio.gather(*(runtime.choose(tmp_path)
                                                   for _ in range(6))))
            finally:
                reaper.uninstall()

        chosen = asyncio.run(many())
        assert {rt.binary for rt in chosen} == {runtime._chosen[""]}, chosen
        assert runtime._chosen[""] in {shutil.which(n) for n in runtime.CANDIDATES}
    finally:
        runtime._chosen.clear()
    assert not glob.glob("/sys/fs/cgroup/*/probe-*"), glob.glob("/sys/fs/cgroup/*/probe-*")
    assert not list((tmp_path / "sandbox").glob("probe-*"))
