"""0-core's client, filesystem manager: every method, with the client's own encodings
(MIME base64 with line breaks for write, 512 KiB chunks for upload/download)."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["storage_fixtures", "compat_fixtures"]

pytestmark = pytest.mark.root


def test_filesystem_manager(cl: Any, zc: Any, record: Any, tmp_path: Path) -> None:
    fs = cl.filesystem
    d = tmp_path / "fs"
    made = fs.mkdir(str(d / "a" / "b"))
    assert (d / "a" / "b").is_dir()
    record("filesystem.mkdir", f"`{made!r}`; parents made (mkdir -p)")
    assert fs.exists(str(d / "a")) is True and fs.exists(str(d / "nope")) is False
    record("filesystem.exists", "`True`/`False`")

    data = os.urandom(100_000)  # encodebytes: 76-character lines
    fd = fs.open(str(d / "f.bin"), "w")
    assert isinstance(fd, str) and fd
    assert fs.write(fd, data) == len(data)
    record("filesystem.write", "bytes written; MIME base64 with line breaks accepted")
    closed = fs.close(fd)
    record("filesystem.close", f"`{closed!r}`")
    assert (d / "f.bin").read_bytes() == data
    # the client's other modes: a (append), x (create: the file must not exist), + (r/w)
    (d / "app.bin").write_bytes(b"head")
    fd = fs.open(str(d / "app.bin"), "a")
    fs.write(fd, b"tail")
    fs.close(fd)
    assert (d / "app.bin").read_bytes() == b"headtail"
    fd = fs.open(str(d / "new.bin"), "x")
    fs.write(fd, b"new")
    fs.close(fd)
    assert (d / "new.bin").read_bytes() == b"new"
    fd = fs.open(str(d / "new.bin"), "r+")
    assert fs.read(fd) == b"new"
    fs.close(fd)
    with pytest.raises(zc.ResultError) as e:  # the docstring's bare "+": Go's mode parser
        fs.open(str(d / "new.bin"), "+")
    assert e.value.code == 400 and "'r+'" in e.value.message
    record("filesystem.open", "a file token (str); modes r, w, a (append), x (new file), "
           "r+/w+/a+/x+ (read/write); a bare `+` is `ResultError` 400 naming the modes")
    fd = fs.open(str(d / "f.bin"))
    assert fs.read(fd) == data and fs.read(fd) == b""
    fs.close(fd)
    record("filesystem.read", "the next block as bytes (base64 on the wire), b'' at the end")

    big = os.urandom(1_300_000)  # three 512 KiB chunks
    fs.upload(str(d / "up.bin"), io.BytesIO(big))
    assert (d / "up.bin").read_bytes() == big
    record("filesystem.upload", "`None`; the file written in 512 KiB chunks")
    out = io.BytesIO()
    fs.download(str(d / "up.bin"), out)
    assert out.getvalue() == big
    record("filesystem.download", "`None`; the writer got every byte")
    local = tmp_path / "local.bin"
    local.write_bytes(data)
    fs.upload_file(str(d / "up2.bin"), str(local))
    assert (d / "up2.bin").read_bytes() == data
    record("filesystem.upload_file", "`None`; file copied to the node")
    back = tmp_path / "back.bin"
    fs.download_file(str(d / "up2.bin"), str(back))
    assert back.read_bytes() == data
    record("filesystem.download_file", "`None`; file copied from the node")

    names = {e["name"]: e for e in fs.list(str(d))}
    assert {"a", "f.bin", "up.bin"} <= set(names) and names["a"]["is_dir"]
    assert names["f.bin"]["size"] == len(data)
    record("filesystem.list", "[{name, size, is_dir, is_link, mode, uid, gid, mtime}]")
    moved = fs.move(str(d / "f.bin"), str(d / "g.bin"))
    assert (d / "g.bin").exists() and not (d / "f.bin").exists()
    record("filesystem.move", f"`{moved!r}`; renamed")
    got = fs.chmod(str(d / "g.bin"), 0o600)
    assert stat.S_IMODE((d / "g.bin").stat().st_mode) == 0o600
    fs.chmod(str(d / "a"), 0o700, recursive=True)
    assert stat.S_IMODE((d / "a" / "b").stat().st_mode) == 0o700
    record("filesystem.chmod", f"`{got!r}`; mode set (recursive too)")
    got = fs.chown(str(d / "g.bin"), "nobody", "nogroup" if _group("nogroup") else "nobody")
    assert (d / "g.bin").stat().st_uid != 0
    fs.chown(str(d / "a"), "root", "root", recursive=True)
    record("filesystem.chown", f"`{got!r}`; owner set (recursive too)")
    got = fs.remove(str(d / "a"))
    assert not (d / "a").exists()
    fs.remove(str(d / "a"))  # absent: no error
    record("filesystem.remove", f"`{got!r}`; trees removed, absent paths too")
    with pytest.raises(zc.ResultError) as e:
        fs.open(str(d / "missing" / "x"))
    assert e.value.code == 404


def _group(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False
