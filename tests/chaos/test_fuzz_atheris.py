"""The long, coverage-guided fuzz run of the wire (tests/fuzz_atheris.py: atheris/libFuzzer
over decode → validate → route). ``CORE0_FUZZ_SECONDS`` sets its length: 300 s under CI (the
issue's 5-minute run), 60 s in a local run."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess  # the fuzzer runs in a process of its own: a crash must not take pytest
import sys
from pathlib import Path

import pytest
from conftest import IN_CI, ROOT, unavailable

pytestmark = pytest.mark.slow


def test_fuzz_wire_atheris(tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        unavailable("missing: atheris (pip install -e '.[test]')")
    seconds = int(os.environ.get("CORE0_FUZZ_SECONDS", "300" if IN_CI else "60"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "client"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fuzz_atheris.py"), f"-max_total_time={seconds}",
         f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=seconds + 300)
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(
        ("crash-", "leak-", "timeout-", "oom-")))
    assert proc.returncode == 0 and not crashes, (crashes, proc.stderr[-4000:])
    runs = re.search(r"Done (\d+) runs", proc.stderr)
    assert runs is not None and int(runs.group(1)) > 0, proc.stderr[-2000:]
    print(f"\natheris: {runs.group(1)} inputs in {seconds}s, none broke the invariant")
