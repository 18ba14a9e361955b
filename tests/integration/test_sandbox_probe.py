"""The OCI runtime probe (core0.sandbox.runtime.choose) with a real runtime, called by many
first creates at once (declared containers coming back together): every caller gets the same
runtime, and no probe cgroup or state is left behind. The choice is kept in the state dir for
the next dispatchers."""

from __future__ import annotations

import asyncio
import glob
import shutil
from pathlib import Path

import pytest
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
        kept = (tmp_path / "sandbox" / runtime.CHOICE).read_text().split("\n")
        assert kept[:2] == [runtime._chosen[""], process.boot_id()] and kept[1]
    finally:
        runtime._chosen.clear()
    assert not glob.glob("/sys/fs/cgroup/*/probe-*"), glob.glob("/sys/fs/cgroup/*/probe-*")
    assert not list((tmp_path / "sandbox").glob("probe-*"))


def test_the_choice_is_kept_for_the_next_dispatcher(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A next dispatcher (a new process: nothing cached in memory) takes the runtime kept in
    the state dir without probing, so a probe that would fail then (a timeout under load)
    cannot switch runtimes under the running containers; a choice naming something else, or
    made in another boot, is ignored and the runtimes are probed again."""
    require("runc")
    runc = shutil.which("runc")
    assert runc
    choice = tmp_path / "sandbox" / runtime.CHOICE
    choice.parent.mkdir(parents=True)
    boot = process.boot_id()
    choice.write_text(f"{runc}\n{boot}\n")
    probed: list[str] = []

    async def failing(binary: str, base: Path, init: str) -> bool:
        probed.append(binary)
        return False

    runtime._chosen.clear()
    monkeypatch.setattr(runtime, "_works", failing)
    try:
        rt = asyncio.run(runtime.choose(tmp_path))
        assert (rt.binary, probed) == (runc, [])
        assert rt.root == tmp_path / "sandbox" / "runc"
        every = [p for p in (shutil.which(n) for n in runtime.CANDIDATES) if p]
        # not a runtime, or one chosen in another boot: probed again (here, none works)
        for text in (f"/bin/sh\n{boot}\n", f"{runc}\nanother-boot\n"):
            runtime._chosen.clear()
            probed.clear()
            choice.write_text(text)
            with pytest.raises(Exception, match="no OCI runtime works"):
                asyncio.run(runtime.choose(tmp_path))
            assert probed == every, text
    finally:
        runtime._chosen.clear()
