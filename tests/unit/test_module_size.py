"""Small modules (none of core0's or the client's over 600 lines) and unique test basenames."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 600


def test_no_module_over_600_lines() -> None:
    big = {}
    for base in (ROOT / "core0", ROOT / "client" / "core0_client"):
        for f in base.rglob("*.py"):
            n = len(f.read_text().splitlines())
            if n > LIMIT:
                big[str(f.relative_to(ROOT))] = n
    assert not big, f"modules over {LIMIT} lines: {big}"


def test_test_module_basenames_are_unique() -> None:
    """pytest's default (rootdir) import mode refuses two test files with one basename."""
    seen: dict[str, list[str]] = {}
    for f in (ROOT / "tests").rglob("test_*.py"):
        seen.setdefault(f.name, []).append(str(f.relative_to(ROOT)))
    dup = {k: v for k, v in seen.items() if len(v) > 1}
    assert not dup, f"test modules sharing a basename: {dup}"
