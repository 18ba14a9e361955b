"""The layer rule (docs/developing.md, "Layout"): a module imports only its own layer or layers
below it. Checked on the import statements of every module under core0/ (imports under
``if TYPE_CHECKING:`` are type-only and not counted; imports inside functions are)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: (rank, layer, module prefixes), lowest first. A module belongs to the layer of its longest
#: matching prefix; it may import modules of its own layer or of a lower rank. Two layers of the
#: same rank (init, bus) may not import each other.
LAYERS: list[tuple[int, str, tuple[str, ...]]] = [
    (0, "core", ("core0", "core0.errors", "core0.schema", "core0.fspath", "core0.config",
                 "core0.registry", "core0.docs", "core0.redis_server", "core0.backoff",
                 "core0.mountinfo", "core0.security", "core0.fswalk", "core0.declared",
                 "core0.virtconfig", "core0.sandboxconfig", "core0.segconfig", "core0.streamcopy",
                 "core0.cancel", "core0.faults",
                 "core0.image.config")),  # the [image] section, loaded by core0.config
    (1, "proc", ("core0.proc",)),
    (2, "init", ("core0.init",)),
    (2, "bus", ("core0.bus",)),
    (3, "context", ("core0.context",)),
    (3, "fleet", ("core0.fleet",)),
    (4, "machinery", ("core0.storage", "core0.net", "core0.sandbox", "core0.virt",
                      "core0.image")),
    (5, "jobs", ("core0.jobs",)),
    (6, "boot", ("core0.boot",)),
    (7, "commands", ("core0.commands",)),
    (8, "dispatcher", ("core0.bus.dispatcher", "core0.bus.reconcile")),
    (9, "entry", ("core0.cli", "core0.__main__")),
]

#: the only allowed exceptions, each with its reason
EXEMPT: dict[tuple[str, str], str] = {
    ("core0.registry", "core0.commands"):
        "registry.load_all() discovers the command modules (the one loader of commands/)",
}


def layer_of(module: str) -> tuple[int, str]:
    best: tuple[int, int, str] | None = None
    for rank, name, prefixes in LAYERS:
        for p in prefixes:
            below = module.startswith(p + ".") and p != "core0"  # "core0": the package only
            if (module == p or below) and (best is None or len(p) > best[0]):
                best = (len(p), rank, name)
    if best is None:
        raise LookupError(f"{module} is in no layer: add it to LAYERS and docs/developing.md")
    return best[1], best[2]


def allowed(importer: str, imported: str) -> bool:
    if (importer, imported) in EXEMPT:
        return True
    r1, l1 = layer_of(importer)
    r2, l2 = layer_of(imported)
    return l1 == l2 or r2 < r1


def _type_checking(test: ast.expr) -> bool:
    return "TYPE_CHECKING" in ast.unparse(test)


def imports(module: str, source: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, imported core0 module) for every runtime import in ``source``."""
    out: list[tuple[int, str]] = []
    base = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child.test):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                out.extend((child.lineno, a.name) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                mod = child.module or ""
                if child.level:
                    parts = base.split(".")
                    parent = ".".join(parts[: len(parts) - child.level + 1])
                    mod = f"{parent}.{mod}" if mod else parent
                for a in child.names:
                    # "from core0 import registry" imports the module core0.registry
                    sub = f"{mod}.{a.name}"
                    out.append((child.lineno, sub if _is_module(sub) else mod))
            visit(child)

    visit(ast.parse(source))
    return [(n, m) for n, m in out if m == "core0" or m.startswith("core0.")]


def _is_module(name: str) -> bool:
    path = ROOT / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def modules() -> list[tuple[str, Path]]:
    out = []
    for f in sorted((ROOT / "core0").rglob("*.py")):
        parts = f.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out.append((name, f))
    return out


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    return [f"{module}:{line} imports {imp} ({layer_of(module)[1]} → {layer_of(imp)[1]})"
            for line, imp in imports(module, source, is_package) if not allowed(module, imp)]


def test_every_module_has_a_layer() -> None:
    for name, _ in modules():
        layer_of(name)


def test_no_upward_import() -> None:
    bad: list[str] = []
    for name, f in modules():
        bad += violations(name, f.read_text(), f.name == "__init__.py")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_client_imports_no_core0() -> None:
    for f in sorted((ROOT / "client" / "core0_client").rglob("*.py")):
        found = imports("core0_client.x", f.read_text())
        assert not found, f"{f.name} imports {found}"


@pytest.mark.parametrize(("module", "source"), [
    ("core0.jobs.engine", "from core0.commands.core import SERVICE_COMMAND\n"),
    ("core0.boot.cloudnet", "def f():\n    from core0.commands import core\n"),
    ("core0.commands.service", "from core0.bus import dispatcher\n"),
    ("core0.proc.spawn", "import core0.jobs.engine\n"),
    ("core0.init.supervise", "from core0.bus.store import Bus\n"),
    ("core0.bus.store", "from core0.init import main\n"),
    ("core0.jobs.output", "from ..boot import services\n"),
])
def test_the_check_catches_upward_imports(module: str, source: str) -> None:
    assert violations(module, source)


@pytest.mark.parametrize(("module", "source"), [
    ("core0.jobs.engine", "from core0.proc import process\nfrom core0.bus.store import Bus\n"),
    ("core0.commands.core", "from core0.jobs.env import job_env\n"),
    ("core0.jobs.state", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                         "    from core0.jobs.engine import Job\n"
                         "    from core0.boot import spec\n"),
    ("core0.bus.dispatcher", "from core0.boot.services import ServiceManager\n"),
])
def test_the_check_accepts_downward_imports(module: str, source: str) -> None:
    assert not violations(module, source)


def test_an_unplaced_module_is_reported() -> None:
    with pytest.raises(LookupError):
        layer_of("core0.newthing")
    assert layer_of("core0.mountinfo") == (0, "core")
    assert layer_of("core0.bus.dispatcher") == (8, "dispatcher")
    assert layer_of("core0.bus.resp") == (2, "bus")
