"""docs/commands.md is generated from the registry and must not be stale."""

from __future__ import annotations

from pathlib import Path

from core0.docs import render

ROOT = Path(__file__).resolve().parents[2]


def test_commands_md_is_current() -> None:
    assert (ROOT / "docs" / "commands.md").read_text() == render(), \
        "docs/commands.md is stale: run `core0 docs`"
