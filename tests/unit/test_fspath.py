"""Path resolution confined to a root, symlinks included."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core0.errors import NotFound
from core0.fspath import Root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_text("inside")
    (tmp_path / "secret").write_text("outside")
    os.symlink("/", root / "abs")
    os.symlink("../../..", root / "a" / "up")
    os.symlink(str(tmp_path / "secret"), root / "to-secret")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    return root


def _read(root: Path, path: str) -> str:
    with Root(str(root)) as r:
        fd = r.open(path, os.O_RDONLY)
        try:
            return os.read(fd, 100).decode()
        finally:
            os.close(fd)


def test_plain_and_dotdot(tree: Path) -> None:
    assert _read(tree, "a/b/f") == "inside"
    assert _read(tree, "/../../a/b/../b/f") == "inside"
    assert _read(tree, "a/up/a/b/f") == "inside"  # ../../.. clamps at the root
    assert _read(tree, "abs/a/b/f") == "inside"  # "/" means the root


def test_symlink_to_outside_stays_inside(tree: Path) -> None:
    with pytest.raises((NotFound, FileNotFoundError)):
        _read(tree, "to-secret")


def test_symlink_loop(tree: Path) -> None:
    with Root(str(tree)) as r, pytest.raises(Exception) as e:
        r.open("loop1", os.O_RDONLY)
    assert "symbolic links" in str(e.value)


def test_remove_does_not_follow(tree: Path, tmp_path: Path) -> None:
    with Root(str(tree)) as r:
        r.remove("to-secret")
        r.remove("abs")
    assert (tmp_path / "secret").exists() and Path("/etc").exists()


segment = st.sampled_from(["a", "b", "f", "..", ".", "up", "abs", "to-secret", "x", ""])


@settings(max_examples=2000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(segment, min_size=1, max_size=8), st.booleans())
def test_property_never_escapes(tree: Path, parts: list[str], absolute: bool) -> None:
    path = ("/" if absolute else "") + "/".join(parts)
    if not path.strip("/"):
        return
    with Root(str(tree)) as r:
        try:
            dfd, name = r.parent(path)
        except Exception:
            return
        try:
            where = os.readlink(f"/proc/self/fd/{dfd}")
        finally:
            os.close(dfd)
    assert where == str(tree) or where.startswith(str(tree) + "/")
