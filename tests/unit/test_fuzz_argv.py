"""Fuzzing argv building and the client's reply parsing (hypothesis, bounded, derandomized):
user values become single argv items after ``--`` or after their option, never options or
shell words; the client turns any reply into a record/result or one ProtocolError. (Path
resolution under a root has its property in test_fspath.py.)"""

from __future__ import annotations

import json
import shlex
from typing import Any

from core0_client._base import system_args
from core0_client.errors import ProtocolError
from core0_client.replies import parse_record
from hypothesis import given, settings
from hypothesis import strategies as st

from core0.boot.cloudconfig import command_argv
from core0.commands.disk import MkfsArgs, _mkfs_argv
from core0.errors import BadRequest, CommandError
from core0.storage.names import DEVICE_RE, LABEL_RE

FUZZ = settings(max_examples=500, deadline=None, derandomize=True, database=None)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12)
HOSTILE = st.text(max_size=30) | st.sampled_from(
    ["-rf", "--", "-L", "--force", "; rm -rf /", "$(id)", "`id`", "a b", "'", '"', "\\", "*"])


reached: list[int] = []


@FUZZ
@given(fstype=st.sampled_from(["ext4", "xfs", "btrfs", "vfat"]),
       label=HOSTILE | st.from_regex(LABEL_RE, fullmatch=True),
       device=HOSTILE | st.from_regex(DEVICE_RE, fullmatch=True), whole=st.booleans())
def test_mkfs_argv_user_values_never_options(fstype: str, label: str, device: str,
                                             whole: bool) -> None:
    try:  # only what the schema lets through reaches the argv builder
        args = MkfsArgs.parse({"device": device, "fstype": fstype, "label": label})
    except CommandError:
        return
    reached.append(1)
    path = f"/dev/{args.device.removeprefix('/dev/')}"
    argv = _mkfs_argv(args.fstype, path, args.label, whole)
    assert argv[-2:] == ["--", path] and argv.count("--") == 1
    head = argv[:-2]
    assert head[0] == f"mkfs.{fstype}"
    for i, item in enumerate(head[1:], 1):
        # every item before "--" is core0's own flag, or the label right after its option
        assert item.startswith("-") and item in ("-q", "-F", "-f", "-I", "-L", "-n") \
            or head[i - 1] in ("-L", "-n"), argv
    if args.label:
        opt = "-n" if fstype == "vfat" else "-L"
        assert head[head.index(opt) + 1] == (args.label.upper() if fstype == "vfat"
                                             else args.label)


def test_mkfs_argv_reached() -> None:
    """The schema let enough hostile values through for the property above to mean much."""
    if not reached:
        test_mkfs_argv_user_values_never_options()
    assert len(reached) > 50, len(reached)


@FUZZ
@given(entry=JSON | st.lists(HOSTILE, max_size=5) | HOSTILE)
def test_cloudconfig_command_argv(entry: Any) -> None:
    """bootcmd/runcmd: an argv list, or BadRequest; a string is split (never run by a shell),
    a list kept item for item."""
    try:
        argv = command_argv(entry)
    except BadRequest:
        return
    assert argv and all(isinstance(a, str) and "\0" not in a for a in argv)
    if isinstance(entry, str):
        assert argv == shlex.split(entry)
    else:
        assert argv == [str(a) for a in entry]


@FUZZ
@given(argv=st.lists(HOSTILE.filter(lambda s: "\0" not in s), min_size=1, max_size=6))
def test_client_system_args_keep_items(argv: list[str]) -> None:
    """The client's core.system: a list is the argv item for item; a string is split like a
    shell would, so ``shlex.join`` of an argv comes back the same."""
    got = system_args(argv)
    assert [got["name"], *got["args"]] == argv
    again = system_args(shlex.join(argv))
    assert [again["name"], *again["args"]] == argv


@FUZZ
@given(obj=st.fixed_dictionaries({}, optional={
    "core": JSON, "command": JSON | st.text(max_size=5),
    "message": st.fixed_dictionaries({}, optional={"message": JSON, "meta": JSON,
                                                   "epoch": JSON}) | JSON}) | JSON)
def test_client_parse_record(obj: Any) -> None:
    """An output record from Redis: a LogRecord with the right types, or one ProtocolError."""
    try:
        rec = parse_record(json.dumps(obj).encode())
    except ProtocolError:
        return
    assert isinstance(rec.message, str) and isinstance(rec.job, str)
    assert 0 <= rec.level <= 0xFFFF and 0 <= rec.flags <= 0xFFFF
