"""The one mountinfo parser (core0.mountinfo): octal escapes decoded on bytes, non-ASCII and
non-UTF-8 mount points, mount points below a path (with a path-separator boundary), the mount
a path lies on; and its users (sandbox roots, mount ids, the job engine's tmpfs check) on a
real table with tmpfs mounts made by the test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, require, require_root

from core0 import mountinfo
from core0.jobs import state
from core0.sandbox import roots
from core0.storage import mountfd

TABLE = (
    b"22 1 0:21 / / rw - ext4 /dev/vda rw\n"
    b"30 22 0:5 / /mnt/with\\040space rw,nosuid shared:1 - tmpfs my\\040tmp rw,size=4k\n"
    b"31 22 0:6 / /mnt/caf\xc3\xa9\\011tab\\012nl\\134bs rw - tmpfs tmpfs rw\n"
    b"32 22 0:7 /sub /mnt/raw\\303\\251 ro - btrfs /dev/vdb rw\n"
    b"33 22 0:8 / /mnt/latin\xe9 rw - tmpfs tmpfs rw\n"
    b"34 22 0:9 / /mnt/a/b rw - tmpfs tmpfs rw\n"
    b"35 34 0:10 / /mnt/a/b/c rw - ext4 /dev/vdc rw\n"
    b"36 22 0:11 / /mnt/a/b rw - ramfs ramfs rw\n"
    b"garbage line\n"
    b"37 22 0:12 / /short\n"
)


def test_parse_decodes_escapes_on_bytes() -> None:
    table = mountinfo.parse(TABLE)
    assert [m.mount_id for m in table] == [22, 30, 31, 32, 33, 34, 35, 36]  # malformed: skipped
    spaced = table[1]
    assert spaced.mountpoint == "/mnt/with space" and spaced.source == "my tmp"
    assert spaced.options == ["rw", "nosuid"] and spaced.super_options == ["rw", "size=4k"]
    assert spaced.parent_id == 22 and spaced.majmin == "0:5" and spaced.fstype == "tmpfs"
    assert table[2].mountpoint == "/mnt/café\ttab\nnl\\bs"
    # escaped UTF-8 bytes make one character (not two latin-1 ones)
    assert table[3].mountpoint == "/mnt/rawé" and table[3].root == "/sub"
    # a name that is not UTF-8 comes back as os.fsdecode gives it: usable with os functions
    assert table[4].mountpoint == os.fsdecode(b"/mnt/latin\xe9")
    assert os.fsencode(table[4].mountpoint) == b"/mnt/latin\xe9"


def test_parse_takes_text_too() -> None:
    text = TABLE.decode("utf-8", "surrogateescape")
    assert mountinfo.parse(text) == mountinfo.parse(TABLE)
    assert mountinfo.unescape("a\\040b\\134") == "a b\\"
    assert mountinfo.unescape(b"\\303\\251\\777") == "é\\777"  # not a byte: left as it is


def test_below_respects_the_path_separator() -> None:
    table = mountinfo.parse(TABLE)
    assert mountinfo.below("/mnt/a", table) == ["/mnt/a/b/c", "/mnt/a/b"]
    assert mountinfo.below("/mnt/a/b/", table) == ["/mnt/a/b/c", "/mnt/a/b"]
    assert mountinfo.below("/mnt/a/bc", table) == []
    assert mountinfo.below("/mnt/with", table) == []
    everything = mountinfo.below("/", table)
    assert everything[-1] == "/" and len(everything) == len({m.mountpoint for m in table})
    assert mountinfo.is_within("/mnt/a/b", "/mnt/a")
    assert not mountinfo.is_within("/mnt/ab", "/mnt/a")


def test_containing_is_the_deepest_and_the_last_stacked() -> None:
    table = mountinfo.parse(TABLE)

    def on(path: str) -> int | None:
        m = mountinfo.containing(path, table)
        return m.mount_id if m else None

    assert on("/mnt/a/b/file") == 36  # ramfs, mounted over the tmpfs at the same point
    assert on("/mnt/a/b") == 36
    assert on("/mnt/a/b/c/d") == 35
    assert on("/mnt/a/bc/d") == 22  # a sibling with a common prefix is on /
    assert on("/etc") == 22
    assert mountinfo.containing("/x", []) is None


def test_read_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert mountinfo.read(str(tmp_path / "none")) == []
    assert mountinfo.of_pid(2**22 + 1) == []  # above pid_max: no such process


# ------------------------------------------------------------------ on real mounts
# Made in a private mount namespace (a child under unshare -m): other processes never see the
# odd names, and the mounts go away with the child whatever happens.

NAMES = [b"with space", "café\\x".encode(), b"latin\xe9\ttab", b"d"]


def check_real_mounts(base: bytes) -> None:
    """Run in the child: tmpfs mounts at odd names under ``base`` (bytes paths: one is not
    UTF-8), then the parser and its users on the real table."""
    points = [os.path.join(base, n) for n in NAMES]
    for p in points:
        subprocess.run([b"mount", b"-t", b"tmpfs", b"-o", b"size=64k", b"--", b"tmpfs", p],
                       check=True)
    table = mountinfo.read()
    by_point = {os.fsencode(m.mountpoint): m for m in table}
    for p in points:
        assert by_point[p].fstype == "tmpfs", p
        assert os.path.ismount(os.fsdecode(p))  # the decoded name is the real path
    names = sorted(os.fsdecode(p) for p in points)
    assert mountinfo.below(os.fsdecode(base)) == names
    assert mountinfo.below(os.fsdecode(os.path.join(base, b"dd"))) == []
    assert mountinfo.of_pid(os.getpid()) == table
    # its users: sandbox roots, mount ids, the job engine's tmpfs check
    odd = Path(os.fsdecode(points[1]))  # café\x
    assert roots.is_mounted(odd) and not roots.is_mounted(odd / "..")
    assert roots.mounts_below(Path(os.fsdecode(base))) == names
    assert roots.mounts_below(odd) == [str(odd)]
    assert {by_point[p].mount_id for p in points} <= mountfd.mount_ids()
    # state files are fsynced off tmpfs only: <base>/d is tmpfs, <base>/dd (same prefix) not
    plain = Path(os.fsdecode(base))
    assert not state._is_persistent(plain / "d" / "f")
    assert state._is_persistent(plain / "dd" / "f") == state._is_persistent(plain / "f")


def test_real_mounts_with_odd_names(tmp_path: Path) -> None:
    require_root()
    require("unshare", "mount")
    base = os.fsencode(str(tmp_path.resolve()))
    for n in [*NAMES, b"dd"]:
        os.mkdir(os.path.join(base, n))
    here = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), str(ROOT / "client"), str(ROOT / "tests"), str(here),
         os.environ.get("PYTHONPATH", "")]))
    code = f"import test_mountinfo as t; t.check_real_mounts({base!r})"
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "--",
                          sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert not [m for m in mountinfo.read() if m.mountpoint.startswith(str(tmp_path))]
