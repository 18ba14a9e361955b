"""web.download: 0-core's "fetch a URL into a file on the node"."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from core0.context import Context
from core0.errors import BadRequest, Unavailable
from core0.fspath import Root, oserror
from core0.registry import Role, command
from core0.schema import SAFE_TEXT, Doc, Len, Pattern, Schema
from core0.streamcopy import copy_hashed, open_url

#: the most one download may write
MAX_BYTES = 64 << 30


class _Network:
    """The response, whose read errors are the network's (503), not the destination's."""

    def __init__(self, resp: Any, url: str):
        self.resp, self.url = resp, url

    def read(self, n: int, /) -> bytes:
        try:
            return bytes(self.resp.read(n))
        except OSError as e:
            raise Unavailable(f"url: {self.url}: {e}") from None


@dataclass(frozen=True)
class DownloadArgs(Schema):
    url: Annotated[str, Doc("an http(s) URL"), Pattern(r"https?://[^\s\x00]{1,4096}",
                                                      what="an http(s) URL")]
    destination: Annotated[str, Doc("the file to write, inside main.filesystem_root "
                                    "(made, or replaced whole)"), Len(1, 4096), SAFE_TEXT]
    checksum: Annotated[str, Doc("sha256:<64 hex digits>: the download must have it"),
                        Pattern(r"sha256:[0-9a-fA-F]{64}", what="sha256:<64 hex digits>")
                        ] | None = None


@command("web.download", DownloadArgs, role=Role.ADMIN)
async def download(ctx: Context, args: DownloadArgs) -> str:
    """Download ``url`` into the file ``destination``; returns the destination (0-core's).
    The path is resolved inside ``main.filesystem_root`` as filesystem.* paths are (symlinks
    inside it; missing directories are made); the bytes go to a temporary file beside it,
    synced, and replace the destination only when complete (and, with ``checksum``, only if
    their SHA-256 matches: 400 otherwise), so a failed download leaves the old file or
    nothing. http(s) only, redirects too; at most 64 GiB (413); progress on the job's
    output (level 1). A URL the node cannot get is 503 naming it. Admin only: it writes a
    file, as filesystem.write does."""
    loop = asyncio.get_running_loop()

    def progress(done: int, total: int) -> None:
        loop.call_soon_threadsafe(ctx.emit, 1, f"download {args.url}: {done}/{total or '?'} "
                                               "bytes")

    def work() -> str:
        with Root(ctx.config.main.filesystem_root) as root:
            try:
                dfd, name = root.parent(args.destination, create=0o755)
            except OSError as e:
                raise oserror(e, args.destination) from None
            try:
                if not name:
                    raise BadRequest("destination: the root itself", field="destination")
                return _write(dfd, name, progress)
            finally:
                os.close(dfd)

    def _write(dfd: int, name: str, progress: Callable[[int, int], None]) -> str:
        tmp = f".{name[:200]}.download-{os.urandom(6).hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644, dir_fd=dfd)
        try:
            resp, total = open_url(args.url)
            with resp, os.fdopen(fd, "wb") as out:
                fd = -1
                digest = copy_hashed(_Network(resp, args.url), out, total, MAX_BYTES, "url",
                                     progress)
            want = (args.checksum or "").removeprefix("sha256:").lower()
            if want and digest != want:
                raise BadRequest(f"checksum: mismatch: got sha256:{digest}", field="checksum")
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            tmp = ""
            return args.destination
        except OSError as e:
            raise oserror(e, args.destination) from None
        finally:
            if fd >= 0:
                os.close(fd)
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)

    return await ctx.long_work(work)
