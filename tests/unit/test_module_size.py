"""Small modules: none of core0's or the client's over 600 lines."""

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
