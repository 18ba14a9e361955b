"""Symlink-swap races (time of check / time of use) against every command that acts on a
user path: 1,000 tries each while a real thread swaps a real directory entry for a symlink to
a place outside ``filesystem_root`` (``renameat2(RENAME_EXCHANGE)``). What lies outside must
never change: its mode, owner, content and entries; for ``disk.mount``, no mount may appear
outside the root."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import Node, require, require_root, start_rooted_node

if TYPE_CHECKING:
    from storage_fixtures import Loops

pytest_plugins = ["storage_fixtures"]

TRIES = 1000
RENAME_EXCHANGE = 2
AT_FDCWD = -100
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def exchange(a: str, b: str) -> bool:
    """renameat2(a, b, RENAME_EXCHANGE): swap two entries atomically."""
    return _libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), RENAME_EXCHANGE) == 0


class Swapper(threading.Thread):
    """Swaps pairs of entries as fast as it can until stopped."""

    def __init__(self, *pairs: tuple[Path, Path]):
        super().__init__(daemon=True)
        self.pairs = pairs
        self.halt = threading.Event()
        self.swaps = 0

    def run(self) -> None:
        while not self.halt.is_set():
            for a, b in self.pairs:
                if exchange(str(a), str(b)):
                    self.swaps += 1

    def __enter__(self) -> Swapper:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self.join(10)


def snapshot(path: Path) -> list[tuple[str, int, int, int, str]]:
    """Everything that must not change under ``path``: (relpath, mode, uid, gid, content)."""
    out = []
    for dirpath, dirs, files in os.walk(path):
        for n in sorted(dirs + files):
            p = Path(dirpath) / n
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(
                st.st_mode) else ""
            out.append((str(p.relative_to(path)), st.st_mode, st.st_uid, st.st_gid, digest))
    st = path.lstat()
    return sorted(out) + [(".", st.st_mode, st.st_uid, st.st_gid, "")]


@pytest.fixture(scope="module")
def race_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Path, Path]]:
    require_root()
    base = tmp_path_factory.mktemp("races")
    node, root = start_rooted_node(base)
    try:
        yield node, root, base
    finally:
        node.stop()


@pytest.fixture
def arena(race_node: tuple[Node, Path, Path]) -> Iterator[tuple[Node, Path, Path]]:
    """(node, a fresh directory inside the root, a fresh one outside it with a victim file)."""
    node, root, base = race_node
    tag = uuid.uuid4().hex[:8]
    inside = root / tag
    outside = base / f"outside-{tag}"
    inside.mkdir()
    outside.mkdir()
    (outside / "victim").write_text("precious\n")
    os.chmod(outside / "victim", 0o600)
    (outside / "vdir").mkdir()
    (outside / "vdir" / "inner").write_text("inner\n")
    try:
        yield node, inside, outside
    finally:
        _sf().umount_below(str(inside))
        _sf().umount_below(str(outside))
        shutil.rmtree(inside, ignore_errors=True)
        shutil.rmtree(outside, ignore_errors=True)


def run_many(node: Node, calls: Callable[[int], tuple[str, dict]], between: Callable[[int], None]
             | None = None, tries: int = TRIES) -> dict[int, int]:
    """Run ``calls(i)`` for i in range(tries) from the admin queue → {result code: count}
    (0: success)."""
    codes: dict[int, int] = {}
    with node.client(timeout=60) as c:
        for i in range(tries):
            cmd, args = calls(i)
            res = c.raw(cmd, args).get(60)
            codes[res.code] = codes.get(res.code, 0) + 1
            assert res.code != 500, f"{cmd}: {res.data}"
            if between is not None:
                between(i)
    return codes


def _layout(inside: Path, outside: Path) -> tuple[Path, Path, Path, Path]:
    """inside/d/f (a file) ⇄ inside/d/s (symlink to the outside victim), and inside/d ⇄
    inside/l (symlink to the outside directory)."""
    d = inside / "d"
    d.mkdir()
    f = d / "f"
    f.write_text("mine\n")
    s = d / "s"
    os.symlink(str(outside / "victim"), s)
    link = inside / "l"
    os.symlink(str(outside), link)
    return d, f, s, link


def _rel(node_root: Path, p: Path) -> str:
    return "/" + str(p.relative_to(node_root))


def test_chmod_races(arena, race_node) -> None:  # type: ignore[no-untyped-def]
    node, inside, outside = arena
    root = race_node[1]
    d, f, s, link = _layout(inside, outside)
    (d / "sub").mkdir()
    os.symlink(str(outside / "vdir"), d / "sub" / "ln")
    before = snapshot(outside)
    with Swapper((f, s), (d, link)) as sw:
        codes = run_many(node, lambda i: ("filesystem.chmod", {
            "path": _rel(root, d / "f"), "mode": 0o777, "recursive": i % 2 == 1}))
    assert sw.swaps > 100, "the swapper did not run"
    assert codes.get(0, 0) > 0, codes
    assert snapshot(outside) == before


def test_chown_races(arena, race_node) -> None:  # type: ignore[no-untyped-def]
    node, inside, outside = arena
    root = race_node[1]
    d, f, s, link = _layout(inside, outside)
    before = snapshot(outside)
    with Swapper((f, s), (d, link)) as sw:
        codes = run_many(node, lambda i: ("filesystem.chown", {
            "path": _rel(root, d / "f") if i % 2 else _rel(root, d), "user": "12345",
            "group": "12345", "recursive": i % 4 == 1}))
    assert sw.swaps > 100
    assert codes.get(0, 0) > 0, codes
    assert snapshot(outside) == before


def test_remove_races(arena, race_node) -> None:  # type: ignore[no-untyped-def]
    node, inside, outside = arena
    root = race_node[1]
    d = inside / "d"
    d.mkdir()
    link = inside / "l"
    os.symlink(str(outside), link)
    target = str(outside / "vdir")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW

    def rebuild(_i: int) -> None:
        """In whichever of d/l is the real directory now: a tree and a symlink named t/s
        (never through a symlink: the test itself must not touch the outside)."""
        for name in ("d", "l"):
            try:
                fd = os.open(inside / name, flags)
            except OSError:
                continue
            try:
                kinds = {}
                for e in ("t", "s"):
                    try:
                        kinds[e] = os.stat(e, dir_fd=fd, follow_symlinks=False).st_mode
                    except FileNotFoundError:
                        pass
                has_link = any(stat.S_ISLNK(m) for m in kinds.values())
                has_dir = any(stat.S_ISDIR(m) for m in kinds.values())
                for e in ("t", "s"):
                    if e in kinds:
                        continue
                    if not has_link:
                        os.symlink(target, e, dir_fd=fd)
                        has_link = True
                    elif not has_dir:
                        os.mkdir(e, dir_fd=fd)
                        sub = os.open(e, flags, dir_fd=fd)
                        os.mkdir("a", dir_fd=sub)
                        os.close(sub)
                        has_dir = True
            except OSError:
                pass
            finally:
                os.close(fd)
    rebuild(0)
    before = snapshot(outside)
    with Swapper((d / "t", d / "s"), (d, link)) as sw:
        codes = run_many(node, lambda i: ("filesystem.remove", {"path": _rel(root, d / "t")}),
                         between=rebuild)
    assert sw.swaps > 100
    assert codes.get(0, 0) > 0, codes
    assert snapshot(outside) == before


def test_move_races(arena, race_node) -> None:  # type: ignore[no-untyped-def]
    node, inside, outside = arena
    root = race_node[1]
    d, f, s, link = _layout(inside, outside)
    before = snapshot(outside)

    def call(i: int) -> tuple[str, dict]:
        a, b = (d / "f", d / "g") if i % 2 == 0 else (d / "g", d / "f")
        return "filesystem.move", {"path": _rel(root, a), "destination": _rel(root, b)}
    with Swapper((f, s), (d, link)) as sw:
        run_many(node, call)
    assert sw.swaps > 100
    assert snapshot(outside) == before


def test_write_and_mkdir_races(arena, race_node) -> None:  # type: ignore[no-untyped-def]
    node, inside, outside = arena
    root = race_node[1]
    d, f, s, link = _layout(inside, outside)
    before = snapshot(outside)
    import base64

    block = base64.b64encode(b"pwned\n").decode()
    with Swapper((f, s), (d, link)) as sw, node.client(timeout=60) as c:
        wrote = 0
        for i in range(TRIES):
            res = c.raw("filesystem.open", {"file": _rel(root, d / "f"), "mode": "w"}).get(60)
            assert res.code != 500, res.data
            if res.code == 0:
                token = res.data.strip('"')
                assert c.raw("filesystem.write", {"fd": token, "block": block}).get(60).code \
                    == 0
                assert c.raw("filesystem.close", {"fd": token}).get(60).code == 0
                wrote += 1
            res = c.raw("filesystem.mkdir", {"path": _rel(root, d / "f" / f"n{i}")}).get(60)
            assert res.code != 500, res.data
            res = c.raw("filesystem.mkdir", {"path": _rel(root, d / f"m{i}")}).get(60)
            assert res.code != 500, res.data
    assert sw.swaps > 100 and wrote > 0
    assert snapshot(outside) == before


def _sf() -> Any:
    """The storage fixtures module (imported once pytest has registered it as a plugin)."""
    import storage_fixtures

    return storage_fixtures


def _outside_mounts(dev: str, root: Path) -> list[str]:
    mountinfo = _sf().mountinfo
    return [mp for _, mp, src in mountinfo()
            if src == dev and not (mp + "/").startswith(str(root) + "/")]


def test_mount_races(arena, race_node, loops: Loops) -> None:  # type: ignore[no-untyped-def]
    require("mkfs.ext4")
    node, inside, outside = arena
    root = race_node[1]
    dev = loops("64M")
    _sf().sh("mkfs.ext4", "-q", "-F", dev)
    t = inside / "t"
    t.mkdir()
    e = inside / "e"
    os.symlink(str(outside / "vdir"), e)
    p = inside / "p"
    p.mkdir()
    pl = inside / "pl"
    os.symlink(str(outside), pl)
    (p / "t").mkdir()
    before = snapshot(outside)
    mounted = 0
    with Swapper((t, e), (p, pl)) as sw, node.client(timeout=60) as c:
        for i in range(TRIES):
            target = t if i % 2 == 0 else p / "t"
            res = c.raw("disk.mount", {"source": dev, "target": _rel(root, target),
                                       "fstype": "ext4"}).get(60)
            assert res.code != 500, res.data
            assert not _outside_mounts(dev, root), f"try {i}: mounted outside the root"
            if res.code == 0:
                mounted += 1
                # the swapper moves the mount's parent around: its path may be stale when
                # read, and the unmount, done by that path inside the root, then says 404
                for _ in range(100):
                    got = c.raw("disk.umount", {"target": dev}).get(60)
                    assert got.code in (0, 404), got.data
                    if not [m for m in _sf().mountinfo() if m[2] == dev]:
                        break
                else:
                    raise AssertionError(f"try {i}: could not unmount {dev}")
    assert sw.swaps > 100 and mounted > 0
    assert not _outside_mounts(dev, root)
    assert snapshot(outside) == before


def test_btrfs_subvolume_races(arena, race_node, loops: Loops) -> None:  # type: ignore[no-untyped-def]
    """The same btrfs is mounted inside the root and outside it: a swapped path must never
    create, delete or snapshot a subvolume in the outside mount."""
    require("mkfs.btrfs", "btrfs")
    node, inside, outside = arena
    root = race_node[1]
    dev = loops("512M")
    _sf().sh("mkfs.btrfs", "-q", "-f", dev)
    bin_ = inside / "bt"
    bout = outside / "bt"
    bin_.mkdir()
    bout.mkdir()
    _sf().sh("mount", dev, str(bin_))
    _sf().sh("mount", dev, str(bout))
    (bin_ / "in").mkdir()
    out1, out2 = bin_ / "out1", bin_ / "out2"
    out1.mkdir()
    out2.mkdir()
    d = bin_ / "in" / "d"
    d.mkdir()
    for victim in ("c", "x"):  # what an escaped delete would hit
        _sf().sh("btrfs", "subvolume", "create", str(out2 / victim))
        (out2 / victim / "data").write_text("precious\n")
    # the outside mount's views of out1 (empty: an escaped create lands there) and out2
    l1, l2 = bin_ / "in" / "l1", bin_ / "in" / "l2"
    os.symlink(str(bout / "out1"), l1)
    os.symlink(str(bout / "out2"), l2)

    def listing() -> tuple[list[str], list[str]]:
        return sorted(os.listdir(bout / "out1")), sorted(os.listdir(bout / "out2"))
    before = listing()
    made = 0
    with Swapper((d, l1), (d, l2)) as sw, node.client(timeout=60) as c:
        for i in range(TRIES):
            res = c.raw("btrfs.subvol_create", {"path": _rel(root, d / "c")}).get(60)
            assert res.code != 500, res.data
            made += res.code == 0
            res = c.raw("btrfs.subvol_snapshot", {"source": _rel(root, d / "c"),
                                                  "destination": _rel(root, d / "x")}).get(60)
            assert res.code != 500, res.data
            for name in ("x", "c"):
                res = c.raw("btrfs.subvol_delete", {"path": _rel(root, d / name)}).get(60)
                assert res.code != 500, res.data
            assert listing() == before, f"try {i}"
    assert sw.swaps > 100 and made > 0
    for victim in ("c", "x"):
        assert (bout / "out2" / victim / "data").read_text() == "precious\n"
    assert listing() == before
