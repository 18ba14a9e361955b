"""The suite's own check: after a full run, a method not recorded or a row of docs/compat.md
that differs from the recording fails the session under ``CI=true``."""

from __future__ import annotations

import types
from pathlib import Path

import compat_fixtures as f
import pytest

pytest_plugins = ["compat_fixtures"]


def _session() -> types.SimpleNamespace:
    items = [types.SimpleNamespace(fspath=str(p), nodeid=p.name)
             for p in Path(f.__file__).parent.glob("test_compat_*.py")]
    return types.SimpleNamespace(items=items, exitstatus=0,
                                 config=types.SimpleNamespace(args=["tests/compat"]))


def _committed() -> dict[str, tuple[str, bool]]:
    rows = f._rows(f._committed_table(f.TABLE))
    return {m: (rows[m].split(" | ", 1)[1].rsplit(" |", 1)[0].replace("\\|", "|"), True)
            for m in f.METHODS}


def test_table_has_every_method_and_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = f._rows(f._committed_table(f.TABLE))
    assert list(rows) == f.METHODS
    monkeypatch.setattr(f, "_RESULTS", _committed())
    assert f._rows(f.render_table()) == rows


def test_drift_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.delenv("CORE0_COMPAT_TABLE", raising=False)
    monkeypatch.setattr(f, "_DESELECTED", [])
    monkeypatch.setattr(f, "_RESULTS", _committed())
    s = _session()
    f.pytest_sessionfinish(s, 0)  # type: ignore[arg-type]
    assert s.exitstatus == 0
    changed = _committed()
    changed["kvm.add_nic"] = ("something else", True)
    monkeypatch.setattr(f, "_RESULTS", changed)
    f.pytest_sessionfinish(s, 0)  # type: ignore[arg-type]
    assert s.exitstatus == pytest.ExitCode.TESTS_FAILED
    missing = _committed()
    del missing["ping"]
    monkeypatch.setattr(f, "_RESULTS", missing)
    s = _session()
    f.pytest_sessionfinish(s, 0)  # type: ignore[arg-type]
    assert s.exitstatus == pytest.ExitCode.TESTS_FAILED
