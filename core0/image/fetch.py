"""Reading an image from where ``core.upgrade`` points: a manifest path on the node (confined
to ``main.filesystem_root``, ``..`` refused, symlinks resolved inside the root) or an http(s)
URL. The artifacts are the manifest's siblings (same directory, or the URL's base).

The manifest and its signature are read into memory (bounded); artifacts are streamed into
the caller's incoming directory with their sha256 computed on the way, and a mismatch or an
oversize is refused at once (the caller removes the directory). Progress goes to the job's
output (level 1: ``fetch <name>: <n>/<total> bytes``), streamed to the caller with
``stream: true``.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import stat
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from core0.errors import BadRequest, CommandError, TooLarge, Unavailable
from core0.fspath import Root, oserror
from core0.streamcopy import copy_hashed, open_url

if TYPE_CHECKING:
    from core0.context import Context

MAX_URL = 2048


class Reader(Protocol):
    """Where one image's files come from."""

    label: str

    def open(self, name: str) -> tuple[BinaryIO, int]:
        """(a binary file object, its size or 0 when unknown) of a file beside the manifest
        ("" = the manifest itself). Blocking: called in a worker thread."""
        ...


def check_url(url: str) -> str:
    """400 unless ``url`` is a plain http(s) URL (no credentials: URLs are logged)."""
    if len(url) > MAX_URL or any(c.isspace() or ord(c) < 32 for c in url):
        raise BadRequest("url: too long or has blanks/control characters", field="url")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest("url: only http:// and https:// URLs with a host", field="url")
    if parts.username is not None or parts.password is not None:
        raise BadRequest("url: credentials in a URL are refused (they would be logged)",
                         field="url")
    if parts.fragment:
        raise BadRequest("url: no #fragment", field="url")
    return url


class UrlReader:
    """Files at ``<base of the manifest URL>/<name>``; redirects only to http(s)."""

    def __init__(self, url: str):
        self.url = check_url(url)
        self.label = url

    def open(self, name: str) -> tuple[BinaryIO, int]:
        url = urllib.parse.urljoin(self.url, name) if name else self.url
        resp, total = open_url(url)  # the scheme was checked
        return resp, total


class PathReader:
    """Files beside a manifest on the node, walked inside ``root`` one component at a time."""

    def __init__(self, root: str, path: str):
        if not path.startswith("/") or ".." in path.split("/"):
            raise BadRequest("path: an absolute path without '..'", field="path")
        self.root = root
        self.path = path
        self.dir = posixpath.dirname(path)
        self.label = path

    def open(self, name: str) -> tuple[BinaryIO, int]:
        path = posixpath.join(self.dir, name) if name else self.path
        try:
            with Root(self.root) as root:  # O_NONBLOCK: a FIFO must not hang the open
                fd = root.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            err = oserror(e, path)
            err.field = "path"
            raise err from None
        except CommandError as e:
            raise type(e)(f"path: {e.message}", field="path") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise BadRequest(f"path: not a regular file: {path}", field="path")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size


def reader(ctx: Context, url: str | None, path: str | None) -> Reader:
    if (url is None) == (path is None):
        raise BadRequest("give exactly one of url and path", field="url")
    if url is not None:
        return UrlReader(url)
    assert path is not None
    return PathReader(ctx.config.main.filesystem_root, path)


async def read_small(ctx: Context, src: Reader, name: str, limit: int, field: str) -> bytes:
    """A whole small file (the manifest, its signature); 413 past ``limit`` bytes."""

    def get() -> bytes:
        f, size = src.open(name)
        with f:
            if size > limit:
                raise TooLarge(f"{field}: {size} bytes is more than {limit}")
            data = f.read(limit + 1)
        if len(data) > limit:
            raise TooLarge(f"{field}: more than {limit} bytes")
        return data

    return await ctx.to_thread(get)


async def fetch_artifact(ctx: Context, src: Reader, name: str, sha256: str, dest: Path,
                         max_bytes: int) -> Path:
    """``name`` into ``dest/name``, its sha256 checked against the signed manifest's (400 on a
    mismatch, 413 past ``max_bytes``); progress on the job's output."""
    loop = asyncio.get_running_loop()
    out_path = dest / name

    def progress(done: int, total: int) -> None:
        loop.call_soon_threadsafe(ctx.emit, 1, f"fetch {name}: {done}/{total or '?'} bytes")

    def copy() -> str:
        f, total = src.open(name)
        with f, out_path.open("xb") as out:
            return copy_hashed(f, out, total, max_bytes, f"{name} (image.max_bytes)", progress)

    try:
        digest = await ctx.long_work(copy)
    except OSError as e:
        raise Unavailable(f"{name}: {e}") from None
    if digest != sha256:
        raise BadRequest(f"{name}: sha256 {digest} does not match the signed manifest's "
                         f"{sha256}: refused", field="sha256")
    return out_path

