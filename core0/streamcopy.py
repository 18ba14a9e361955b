"""Downloads: an http(s) URL opened (redirects only to http(s)), and copied into a file
bounded, hashed, with progress. Shared by ``kvm.*``'s image downloads (core0/virt/fetch.py),
``core.upgrade`` (core0/image/fetch.py) and ``web.download``."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

from core0 import cancel
from core0.errors import BadRequest, TooLarge, Unavailable

CHUNK = 1 << 20


class Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


def copy_hashed(src: Readable, out: BinaryIO, total: int, limit: int, what: str,
                progress: Callable[[int, int], None], chunk: int = CHUNK) -> str:
    """Copy ``src`` into ``out`` until EOF, fsync'd; returns its sha256 (hex). 413 once more
    than ``limit`` bytes come (or ``total``, the announced size, is more); ``progress(done,
    total)`` about ten times (every 16 chunks without a total) and at the end."""
    if total > limit:
        raise TooLarge(f"{what}: {total} bytes is more than {limit}")
    h = hashlib.sha256()
    done, last = 0, -1
    while True:
        cancel.check()  # the job was killed: stop reading (core0/cancel.py)
        data = src.read(chunk)
        if not data:
            break
        done += len(data)
        if done > limit:
            raise TooLarge(f"{what}: more than {limit} bytes")
        h.update(data)
        out.write(data)
        step = done * 10 // total if total else done // (16 * chunk)
        if step != last:
            last = step
            progress(done, total)
    out.flush()
    os.fsync(out.fileno())
    cancel.check()  # not handed on for a rename after the job answered KILLED
    progress(done, total)
    return h.hexdigest()


def open_url(url: str, field: str = "url") -> tuple[Any, int]:
    """GET ``url`` (the caller checked it is http(s)): the open response and its announced
    size (0: unknown). 503 naming the URL when it cannot be had (an HTTP error, a network
    error), 400 for a redirect away from http(s)."""
    req = urllib.request.Request(url, headers={"User-Agent": "core0"})
    try:
        resp = urllib.request.urlopen(req, timeout=30)
    except urllib.error.HTTPError as e:
        raise Unavailable(f"{field}: {url}: HTTP {e.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise Unavailable(f"{field}: {url}: {getattr(e, 'reason', e)}") from None
    if urllib.parse.urlsplit(resp.geturl()).scheme not in ("http", "https"):
        resp.close()
        raise BadRequest(f"{field}: redirected away from http(s)", field=field)
    return resp, int(resp.headers.get("Content-Length") or 0)
