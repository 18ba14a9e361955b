"""docs/commands.md is generated from the registry and must not be stale."""

from __future__ import annotations

from pathlib import Path

from core0.docs import render

ROOT = Path(__file__).resolve().parents[2]


def test_commands_md_is_current() -> None:
    assert (ROOT / "docs" / "commands.md").read_text() == render(), \
        "docs/commands.md is stale: run `core0 docs`"


def test_an_alias_is_listed_once() -> None:
    from core0 import registry

    text = render()
    for canonical, names in registry.aliases().items():
        assert text.count(f"### {canonical}\n") == 1
        for alias in names:
            assert f"### {alias}\n" not in text and f"(#{alias.replace('.', '')})" not in text
            assert f"Also accepted as `{alias}`" in text or f"`{alias}`" in text
