"""The long fuzz run of tests/chaos/test_fuzz_atheris.py, started in the background as soon as
the session has collected that test (tests/conftest.py), at nice 19: its five minutes overlap
the rest of the suite, which spends much of its time waiting on processes, sockets and VMs."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess  # the fuzzer runs in a process of its own: a crash must not take pytest
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import IN_CI, ROOT

NODEID = "tests/chaos/test_fuzz_atheris.py::test_fuzz_wire_atheris"


class Run:
    """The fuzzer's process, its artifacts directory and its length."""

    def __init__(self) -> None:
        self.seconds = int(os.environ.get("CORE0_FUZZ_SECONDS", "300" if IN_CI else "60"))
        self.dir = Path(tempfile.mkdtemp(prefix="core0-fuzz-"))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), str(ROOT / "client"), env.get("PYTHONPATH", "")])
        self.log = open(self.dir / "fuzz.log", "w+b")
        self.proc = subprocess.Popen(
            ["nice", "-n", "19", sys.executable, str(ROOT / "tests" / "fuzz_atheris.py"),
             f"-max_total_time={self.seconds}", f"-artifact_prefix={self.dir}/",
             "-print_final_stats=1"],
            cwd=self.dir, env=env, stdout=subprocess.DEVNULL, stderr=self.log,
            start_new_session=True)
        RUNS.append(self)

    def verdict(self) -> tuple[int, str, list[str]]:
        """Wait for the end: (exit status, its stderr, crash artifacts)."""
        try:
            code = self.proc.wait(self.seconds + 300)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            code = self.proc.wait()
        self.log.seek(0)
        text = self.log.read().decode(errors="replace")
        self.log.close()
        crashes = sorted(p.name for p in self.dir.iterdir() if p.name.startswith(
            ("crash-", "leak-", "timeout-", "oom-")))
        return code, text, crashes


RUNS: list[Run] = []


def start_background(items: list[pytest.Item]) -> None:
    """Start the fuzzer when this test is among ``items`` (and atheris is there)."""
    if any(i.nodeid.endswith(NODEID.split("/", 1)[1]) for i in items) and \
            importlib.util.find_spec("atheris") is not None:
        Run()


def stop_background() -> None:
    """The session ends without having run the test (-x, interrupt): stop the fuzzer."""
    for run in RUNS:
        if run.proc.poll() is None:
            os.killpg(run.proc.pid, 9)
            run.proc.wait()
        shutil.rmtree(run.dir, ignore_errors=True)
    RUNS.clear()
