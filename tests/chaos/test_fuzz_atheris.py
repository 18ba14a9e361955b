"""The long, coverage-guided fuzz run of the wire (tests/fuzz_atheris.py: atheris/libFuzzer
over decode → validate → route). ``CORE0_FUZZ_SECONDS`` sets its length: 300 s under CI (the
issue's 5-minute run), 60 s in a local run. The fuzzer starts at nice 19 as soon as the session
has collected this test (tests/fuzz_background.py); this test, moved to the end of the session,
collects its verdict.
"""

from __future__ import annotations

import importlib.util
import re

import pytest
from conftest import unavailable
from fuzz_background import RUNS, Run

pytestmark = pytest.mark.slow


def test_fuzz_wire_atheris() -> None:
    if importlib.util.find_spec("atheris") is None:
        unavailable("missing: atheris (pip install -e '.[test]')")
    run = RUNS[0] if RUNS else Run()
    code, text, crashes = run.verdict()
    assert code == 0 and not crashes, (crashes, text[-4000:])
    runs = re.search(r"Done (\d+) runs", text)
    assert runs is not None and int(runs.group(1)) > 0, text[-2000:]
    print(f"\natheris: {runs.group(1)} inputs in {run.seconds}s (nice 19, beside the suite), "
          "none broke the invariant")
