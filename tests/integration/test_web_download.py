"""web.download (0-core's): a real node fetching from a real HTTP server into its
filesystem root."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import Node, start_rooted_node


@pytest.fixture(scope="module")
def web() -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving a directory: (base URL, the directory)."""
    served = Path(tempfile.mkdtemp(prefix="core0-web-"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        shutil.rmtree(served, ignore_errors=True)


@pytest.fixture(scope="module")
def wnode() -> Iterator[tuple[Node, Path, Path]]:
    """A node whose filesystem root is a directory of its own: (node, root, base dir)."""
    base = Path(tempfile.mkdtemp(prefix="core0-dl-"))
    node, root = start_rooted_node(base)
    try:
        yield node, root, base
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)


def _send(node: Node, args: dict[str, Any], queue: str = "default") -> dict[str, Any]:
    """The result of one web.download, with ``output``: the text of its output records."""
    r = redis.Redis(unix_socket_path=node.socket)
    try:
        jid = f"dl-{uuid.uuid4().hex[:10]}"
        r.rpush(f"core:{queue}", json.dumps({"id": jid, "command": "web.download",
                                              "arguments": args}))
        got = r.blpop([f"result:{jid}"], 60)
        assert got is not None
        res = dict(json.loads(got[1]))
        res["output"] = "".join(json.loads(rec[b"record"])["message"]["message"]
                                for _, rec in r.xrange(f"log:{jid}"))
        return res
    finally:
        r.close()


def _left(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*download-*"))


def test_download_into_the_root(web: tuple[str, Path],
                                wnode: tuple[Node, Path, Path]) -> None:
    """The file arrives whole (missing directories made), with its checksum; the result is
    the destination, as 0-core's; progress went to the job's output."""
    url, served = web
    node, root, _ = wnode
    body = os.urandom(3 << 20)
    (served / "blob.bin").write_bytes(body)
    digest = hashlib.sha256(body).hexdigest()
    res = _send(node, {"url": f"{url}/blob.bin", "destination": "/data/in/blob.bin",
                       "checksum": f"sha256:{digest}"})
    assert res["state"] == "SUCCESS", res
    assert json.loads(res["data"]) == "/data/in/blob.bin"
    assert (root / "data/in/blob.bin").read_bytes() == body
    assert f"download {url}/blob.bin: {len(body)}/{len(body)} bytes" in res["output"], res
    assert _left(root) == []


def test_failures_leave_the_old_file_or_nothing(web: tuple[str, Path],
                                                wnode: tuple[Node, Path, Path]) -> None:
    """A checksum mismatch (400), a URL the server does not have (503), a scheme that is not
    http(s) (400): the destination keeps its old content (or does not appear), and no
    temporary file is left."""
    url, served = web
    node, root, _ = wnode
    (served / "new.txt").write_text("new")
    (root / "keep.txt").write_text("old")
    res = _send(node, {"url": f"{url}/new.txt", "destination": "keep.txt",
                       "checksum": "sha256:" + "0" * 64})
    assert (res["state"], res["code"]) == ("ERROR", 400) and "mismatch" in res["data"], res
    res = _send(node, {"url": f"{url}/missing.txt", "destination": "keep.txt"})
    assert (res["state"], res["code"]) == ("ERROR", 503) and "404" in res["data"], res
    res = _send(node, {"url": f"{url}/missing.txt", "destination": "never.txt"})
    assert res["code"] == 503 and not (root / "never.txt").exists()
    res = _send(node, {"url": "file:///etc/passwd", "destination": "p"})
    assert (res["state"], res["code"]) == ("ERROR", 400), res
    assert (root / "keep.txt").read_text() == "old" and _left(root) == []
    res = _send(node, {"url": f"{url}/new.txt", "destination": "keep.txt"})
    assert res["state"] == "SUCCESS" and (root / "keep.txt").read_text() == "new"


def test_the_destination_stays_in_the_root(web: tuple[str, Path],
                                           wnode: tuple[Node, Path, Path]) -> None:
    """``..`` and a symlink pointing outside are resolved inside the root (nothing is
    written outside); an operator queue may not download (403: it writes files)."""
    url, served = web
    node, root, base = wnode
    (served / "x.txt").write_text("x")
    outside = base / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    for dest in ("../../outside/a.txt", "link/b.txt", "/../outside/c.txt"):
        res = _send(node, {"url": f"{url}/x.txt", "destination": dest})
        assert res["state"] == "SUCCESS", (dest, res)
    assert list(outside.iterdir()) == []
    assert (root / "outside/a.txt").read_text() == "x"  # .. stops at the root
    assert (root / "outside/c.txt").exists()
    res = _send(node, {"url": f"{url}/x.txt", "destination": "op.txt"}, queue="op")
    assert (res["state"], res["code"]) == ("ERROR", 403), res
    assert not (root / "op.txt").exists()
