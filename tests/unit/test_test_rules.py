"""The test suite's own rules (docs/developing.md, "Testing"), checked on its source.

A test that cannot run here goes through tests/conftest.py's helpers (``require``,
``require_root``, ``unavailable``: skip locally, fail under CI=true; ``kernel_lacks``: the
host's kernel has no such driver, a twin runs under qemu). Nothing else in tests/ may skip: no
``pytest.skip(...)``, ``pytest.mark.skip``/``skipif``, ``pytest.importorskip`` or unittest's
skips, which would silently turn a missing component into a green run in CI.
"""

from __future__ import annotations

import ast
from collections.abc import Collection
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
#: the only functions allowed to skip, and where they live
HELPERS = {"unavailable", "kernel_lacks"}
HELPERS_HOME = TESTS / "conftest.py"
#: attribute names that skip a test, on ``pytest``, ``pytest.mark`` or ``unittest``
SKIPPERS = {"skip", "skipif", "importorskip", "skipIf", "skipUnless", "SkipTest"}
MODULES = {"pytest", "unittest"}


def _root_name(node: ast.expr) -> str | None:
    """``pytest`` for ``pytest.mark.skipif`` (the leftmost name of an attribute chain)."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def skips_in(source: str, allowed: Collection[str] = ()) -> list[tuple[int, str]]:
    """(line, what) of every skip in ``source`` outside the functions named in ``allowed``."""
    tree = ast.parse(source)
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, inside: str | None) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            inside = node.name if inside is None else inside
        if inside not in allowed:
            if (isinstance(node, ast.Attribute) and node.attr in SKIPPERS
                    and _root_name(node.value) in MODULES):
                found.append((node.lineno, ast.unparse(node)))
            elif (isinstance(node, ast.ImportFrom) and node.module
                  and node.module.split(".")[0] in MODULES):
                found.extend((node.lineno, f"from {node.module} import {a.name}")
                             for a in node.names if a.name in SKIPPERS)
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, None)
    return sorted(found)


def test_the_checker_sees_every_kind_of_skip() -> None:
    """The scan itself (a checker that finds nothing would pass any suite)."""
    bad = (
        "import pytest, unittest\n"
        "from pytest import skip\n"
        "@pytest.mark.skipif(True, reason='x')\n"
        "def test_a():\n"
        "    pytest.skip('no')\n"
        "m = pytest.mark.skip\n"
        "np = pytest.importorskip('numpy')\n"
        "@unittest.skipUnless(False, 'x')\n"
        "def test_b():\n"
        "    raise unittest.SkipTest('x')\n"
    )
    assert [line for line, _ in skips_in(bad)] == [2, 3, 5, 6, 7, 8, 10]
    helper = "import pytest\ndef unavailable(r):\n    def inner():\n        pytest.skip(r)\n"
    assert skips_in(helper, {"unavailable"}) == []
    assert skips_in(helper) == [(4, "pytest.skip")]
    fine = "import pytest\n@pytest.mark.slow\ndef test_c(plan):\n    assert plan.skip\n"
    assert skips_in(fine) == []


def test_no_skip_outside_the_conftest_helpers() -> None:
    found = {}
    for f in sorted(TESTS.rglob("*.py")):
        allowed = HELPERS if f == HELPERS_HOME else set()
        hits = skips_in(f.read_text(), allowed)
        if hits:
            found[str(f.relative_to(TESTS.parent))] = hits
    assert not found, ("skip through tests/conftest.py's require()/unavailable() (fails under "
                       f"CI=true) or kernel_lacks(), never directly: {found}")


def test_the_helpers_exist() -> None:
    """The allowed helpers are where the rule says (renaming one must update this test)."""
    names = {n.name for n in ast.parse(HELPERS_HOME.read_text()).body
             if isinstance(n, ast.FunctionDef)}
    assert HELPERS <= names


def reruns_in(source: str) -> list[tuple[int, str]]:
    """(line, call) of every ``flaky(...)`` marker that is not exactly one rerun on
    ``GuestStalled`` (pytest-rerunfailures; docs/developing.md, "Tests under qemu")."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "flaky"):
            kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if node.args or kw != {"reruns": "1", "only_rerun": "[GuestStalled]"}:
                bad.append((node.lineno, ast.unparse(node)))
    return bad


def test_a_test_is_run_again_only_for_a_guest_stall() -> None:
    """A rerun hides whatever it reruns: the one allowed is a VM test's single rerun after its
    guest kernel stalled under the emulator; nothing in the suite reruns on any other error."""
    assert reruns_in("import pytest\nm = pytest.mark.flaky(reruns=3)\n"
                     "n = pytest.mark.flaky(reruns=1, only_rerun=[GuestStalled])\n") \
        == [(2, "pytest.mark.flaky(reruns=3)")]
    found = {str(f.relative_to(TESTS.parent)): hits for f in sorted(TESTS.rglob("*.py"))
             if (hits := reruns_in(f.read_text()))}
    assert not found, found
    config = (TESTS.parent / "setup.cfg").read_text()
    assert "--reruns" not in config and "only_rerun" not in config
