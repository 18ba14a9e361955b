"""http(s) media: downloaded once into ``<virt dir>/cache``, checked, shared as a base image.

``media[].url = "https://…"`` with an optional ``checksum`` (``sha256:<hex>``): the image is
streamed (urllib, in a worker thread) into a temp file in the cache with progress messages on
the job's output (level 1: ``download <url>: <n>/<total> bytes``), its SHA-256 computed on
the way, checked against ``checksum`` when given (400 on a mismatch, nothing kept), then
renamed to ``cache/<sha256>``. With a checksum whose file is cached already nothing is
downloaded. The cached image is never written: the VM always boots from a qcow2 overlay on
it. Size is capped (``MAX_BYTES``); redirects are followed only to http(s).

The cache is kept to ``[virt] cache_max_mib`` (:func:`evict`, after each create that used
it): the
images used least recently (a use touches the file's mtime) go first, never one a VM still
names (its overlays' backing files, its record's ``cached`` list); a VM made again from its
declaration downloads an evicted image again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core0.errors import BadRequest, Unavailable
from core0.streamcopy import copy_hashed, open_url

if TYPE_CHECKING:
    from core0.context import Context

log = logging.getLogger(__name__)

MAX_BYTES = 64 << 30
CHECKSUM = re.compile(r"sha256:([0-9a-fA-F]{64})")


def is_url(src: str) -> bool:
    return src.startswith(("http://", "https://"))


def parse_checksum(text: str | None, field: str) -> str | None:
    if text is None:
        return None
    m = CHECKSUM.fullmatch(text)
    if not m:
        raise BadRequest(f"{field}: checksum must be sha256:<64 hex digits>", field=field)
    return m.group(1).lower()


#: a download in progress writes at least this often (its socket times out after 30 s)
STALE_PART = 120.0


def sweep_parts(cache: Path, before: float) -> int:
    """Remove the partial downloads (``.part-*``) a killed dispatcher left in the cache: made
    before ``before`` (the dispatcher's start) and not written for :data:`STALE_PART` seconds
    (so not another dispatcher's download in a shared directory); a download can be tens of
    GiB. Returns how many went."""
    gone = 0
    with contextlib.suppress(FileNotFoundError):
        for f in cache.iterdir():
            if not f.name.startswith(".part-"):
                continue
            st = f.lstat()
            if st.st_ctime < before and st.st_mtime < time.time() - STALE_PART:
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
                    gone += 1
    return gone


async def fetch(ctx: Context, url: str, checksum: str | None, cache: Path, field: str) -> Path:
    """The cached image of ``url`` (downloaded now unless ``checksum``'s file is cached)."""
    cache.mkdir(mode=0o711, parents=True, exist_ok=True)
    if checksum and (cache / checksum).is_file():
        ctx.emit(1, f"download {url}: cached ({checksum})")
        with contextlib.suppress(OSError):
            os.utime(cache / checksum)  # used now: the last to be evicted
        return cache / checksum
    part = cache / f".part-{os.urandom(8).hex()}"
    loop = asyncio.get_running_loop()

    def progress(done: int, total: int) -> None:
        loop.call_soon_threadsafe(ctx.emit, 1, f"download {url}: {done}/{total or '?'} bytes")

    def download() -> str:
        resp, total = open_url(url, field)
        try:
            with resp, part.open("wb") as out:
                return copy_hashed(resp, out, total, MAX_BYTES, field, progress)
        except OSError as e:
            raise Unavailable(f"{field}: {url}: {e}") from None

    try:
        digest = await ctx.long_work(download)
        if checksum and digest != checksum:
            raise BadRequest(f"{field}: checksum mismatch: got sha256:{digest}", field=field)
        final = cache / digest
        os.replace(part, final)
        os.chmod(final, 0o400)
        return final
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()


_DIGEST = re.compile(r"[0-9a-f]{64}")


def qcow2_backing(path: Path) -> str:
    """The backing file a qcow2 image's header names ("" for none or not a qcow2), read from
    the header itself (version 2 and 3 keep it at the same place)."""
    try:
        with path.open("rb") as f:
            head = f.read(20)
            if len(head) < 20 or head[:4] != b"QFI\xfb":
                return ""
            offset = int.from_bytes(head[8:16], "big")
            size = int.from_bytes(head[16:20], "big")
            if not offset or not 0 < size <= 1023:
                return ""
            f.seek(offset)
            return f.read(size).decode("utf-8", "replace")
    except OSError:
        return ""


def evict(cache: Path, keep: set[str], limit: int) -> list[str]:
    """Cut the cache back to ``limit`` bytes: the cached images least recently used first
    (mtime), never one whose digest is in ``keep``; returns the digests removed. Nothing
    goes when ``limit`` is 0."""
    if limit <= 0:
        return []
    files = []
    with contextlib.suppress(FileNotFoundError):
        for f in cache.iterdir():
            if _DIGEST.fullmatch(f.name):
                with contextlib.suppress(FileNotFoundError):
                    st = f.lstat()
                    files.append((st.st_mtime, st.st_size, f))
    total = sum(size for _, size, _ in files)
    gone = []
    for _, size, f in sorted(files):
        if total <= limit:
            break
        if f.name in keep:
            continue
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
            gone.append(f.name)
        total -= size
    return gone


def evict_unused(cache: Path, vms: dict[str, tuple[Path, dict[str, Any]]], limit: int
                 ) -> list[str]:
    """:func:`evict`, keeping every image one of ``vms`` (uuid → its directory and record)
    names: its record's ``cached`` list, its overlays' backing files. Run under the VM
    create lock: no create is then between its download and its record."""
    keep: set[str] = set()
    for vmdir, rec in vms.values():
        keep.update(str(d) for d in rec.get("cached", []))
        for ov in vmdir.glob("*.qcow2"):
            backing = qcow2_backing(ov)
            if os.path.dirname(backing) == str(cache):
                keep.add(os.path.basename(backing))
    gone = evict(cache, keep, limit)
    if gone:
        log.info("virt: evicted from the image cache: %s", ", ".join(gone))
    return gone
