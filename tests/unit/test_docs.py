"""docs/commands.md is generated from the registry and must not be stale."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_container_verbs_are_registry_aliases_of_corex() -> None:
    """``container.<verb>`` is the ``corex.<verb>`` command under another name: the
    dispatcher gets the same handler, schema and role, and the reference a single line."""
    from core0 import registry

    registry.load_all()
    al = registry.aliases()
    verbs = [s.name.removeprefix("corex.") for s in registry.all_commands()
             if s.name.startswith("corex.")]
    assert len(verbs) == 17  # with the 501s flist-layer and flist.create, and create-sync
    text = render()
    for verb in verbs:
        canonical, alias = registry.get(f"corex.{verb}"), registry.get(f"container.{verb}")
        assert canonical is not None and alias is not None
        assert al[canonical.name] == [alias.name]
        assert alias.alias_of == canonical.name and canonical.alias_of is None
        assert (alias.handler, alias.args, alias.role, alias.inline) == (
            canonical.handler, canonical.args, canonical.role, canonical.inline)
        assert text.count(f"`{alias.name}`") == 1
        assert f"- `{alias.name}` → [`{canonical.name}`](#{canonical.name.replace('.', '')})" \
            in text
    assert al["bridge.add_host"] == ["bridge.host-add"]


def test_alias_registration_rules() -> None:
    from core0 import registry
    from core0.schema import NoArgs

    async def probe(ctx: object, args: NoArgs) -> str:
        """A test command."""
        return "ok"

    try:
        registry.command("zztest.run", role=registry.Role.ADMIN)(probe)
        registry.alias("zztest.go", of="zztest.run")
        registry.alias("zztest.again", of="zztest.go")  # an alias of an alias: the canonical
        spec = registry.get("zztest.again")
        assert spec is not None and spec.alias_of == "zztest.run"
        assert spec.role is registry.Role.ADMIN and spec.handler is probe
        assert registry.aliases()["zztest.run"] == ["zztest.again", "zztest.go"]
        with pytest.raises(RuntimeError, match="registered twice"):
            registry.alias("zztest.go", of="zztest.run")
        with pytest.raises(RuntimeError, match="no command"):
            registry.alias("zztest.other", of="zztest.missing")
    finally:
        for name in ("zztest.run", "zztest.go", "zztest.again"):
            registry._REGISTRY.pop(name, None)
