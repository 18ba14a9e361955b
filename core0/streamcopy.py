"""Copying a download into a file: bounded, hashed, with progress. Shared by ``kvm.*``'s
image downloads (core0/virt/fetch.py) and ``core.upgrade`` (core0/image/fetch.py)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import BinaryIO, Protocol

from core0.errors import TooLarge

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
    progress(done, total)
    return h.hexdigest()
