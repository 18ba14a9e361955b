"""web.download (0-core's): a real node fetching from a real HTTP server into its
filesystem root."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import signal
import tempfile
import threading
import time
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


class _Slow(http.server.BaseHTTPRequestHandler):
    """64 MiB at about 16 MiB/s (a chunk every 60 ms, or every ``?pace=<seconds>``): a
    download that takes 4 s; counts what it sent in ``sent`` (the server's dict) until the
    client goes."""

    SIZE = 64 << 20
    CHUNK = 1 << 20

    def do_GET(self) -> None:
        sent: dict[str, int] = self.server.sent  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(self.SIZE))
        self.end_headers()
        block = b"x" * self.CHUNK
        pace = float(self.path.partition("?pace=")[2] or 0.06)
        try:
            for _ in range(self.SIZE // self.CHUNK):
                self.wfile.write(block)
                self.wfile.flush()
                sent[self.path] = sent.get(self.path, 0) + self.CHUNK
                time.sleep(pace)
        except OSError:
            sent[self.path + ":closed"] = 1

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture()
def slow() -> Iterator[tuple[str, dict[str, int]]]:
    """An HTTP server whose every file is a slow 64 MiB: (base URL, bytes sent per path)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    httpd.daemon_threads = True
    httpd.sent = {}  # type: ignore[attr-defined]
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.sent  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_killed_download_stops(slow: tuple[str, dict[str, int]],
                                 wnode: tuple[Node, Path, Path]) -> None:
    """job.kill of a download in progress: KILLED at once, and the download stops there — the
    node reads no more from the server, no file appears later (not even once the server
    would have finished) and no temporary file is left. (Before: the worker thread went on
    to the end and renamed the file into place after the job had answered KILLED.)"""
    url, sent = slow
    node, root, _ = wnode
    r = redis.Redis(unix_socket_path=node.socket)
    try:
        jid = f"dl-{uuid.uuid4().hex[:10]}"
        r.rpush("core:default", json.dumps({"id": jid, "command": "web.download", "arguments": {
            "url": f"{url}/big.bin", "destination": "big.bin"}}))
        deadline = time.monotonic() + 20
        while sent.get("/big.bin", 0) < (8 << 20):
            assert time.monotonic() < deadline, sent
            time.sleep(0.05)
        kill = f"kill-{jid}"
        r.rpush("core:default", json.dumps({"id": kill, "command": "job.kill",
                                            "arguments": {"id": jid}}))
        killed_at = time.monotonic()
        got = r.blpop([f"result:{jid}"], 20)
        assert got is not None
        assert json.loads(got[1])["state"] == "KILLED", got
        assert time.monotonic() - killed_at < 5
        # the server notices the closed connection at its next write
        deadline = time.monotonic() + 10
        while "/big.bin:closed" not in sent:
            assert time.monotonic() < deadline, f"the node still reads: {sent}"
            time.sleep(0.05)
        assert sent["/big.bin"] < _Slow.SIZE
        time.sleep(5)  # longer than the rest of the download would have taken
        assert not (root / "big.bin").exists()
        assert _left(root) == []
    finally:
        r.close()


def test_the_dispatcher_stops_during_a_download(slow: tuple[str, dict[str, int]],
                                                tmp_path: Path) -> None:
    """SIGTERM to a dispatcher while a download runs: it exits within seconds (it waited for
    its worker thread, i.e. for the whole download, before), the download stops, no file
    appears, and the next dispatcher answers the command 503 (interrupted)."""
    url, sent = slow
    node, root = start_rooted_node(tmp_path)
    r = redis.Redis(unix_socket_path=node.socket)
    try:
        jid = f"dl-{uuid.uuid4().hex[:10]}"
        path = "/big.bin?pace=0.25"  # 16 s in all
        r.rpush("core:default", json.dumps({"id": jid, "command": "web.download", "arguments": {
            "url": f"{url}{path}", "destination": "big.bin"}}))
        deadline = time.monotonic() + 20
        while sent.get(path, 0) < (2 << 20):
            assert time.monotonic() < deadline, sent
            time.sleep(0.05)
        pid = node.dispatcher_pid()
        os.kill(pid, signal.SIGTERM)
        stopped = time.monotonic()
        while os.path.exists(f"/proc/{pid}") and time.monotonic() - stopped < 30:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.05)
        assert time.monotonic() - stopped < 8, "the dispatcher waited for the download"
        got = r.blpop([f"result:{jid}"], 60)  # from the next dispatcher
        assert got is not None
        res = json.loads(got[1])
        assert (res["state"], res["code"]) == ("ERROR", 503), res
        assert sent[path] < _Slow.SIZE
        assert not (root / "big.bin").exists() and _left(root) == []
    finally:
        r.close()
        node.stop()


def test_slow_downloads_hold_up_no_other_command(slow: tuple[str, dict[str, int]],
                                                 wnode: tuple[Node, Path, Path]) -> None:
    """Eight slow downloads at once (more than the loop's default thread pool has workers on
    a small machine): an ``ip.link.list`` (netlink in a worker thread) still answers at
    once — before, it waited for a download to end (30 s here). Then all eight are killed."""
    url, sent = slow
    node, root, _ = wnode
    r = redis.Redis(unix_socket_path=node.socket)
    ids = [f"dl-{uuid.uuid4().hex[:10]}" for _ in range(8)]
    try:
        for i, jid in enumerate(ids):
            r.rpush("core:default", json.dumps({"id": jid, "command": "web.download",
                                                "arguments": {"url": f"{url}/m{i}?pace=0.5",
                                                              "destination": f"m{i}"}}))
        deadline = time.monotonic() + 30
        while sum(1 for k in sent if k.startswith("/m")) < len(ids):
            assert time.monotonic() < deadline, sent
            time.sleep(0.05)
        asked = time.monotonic()
        r.rpush("core:default", json.dumps({"id": "links-" + ids[0], "command": "ip.link.list",
                                            "arguments": {}}))
        got = r.blpop([f"result:links-{ids[0]}"], 30)
        assert got is not None and json.loads(got[1])["state"] == "SUCCESS", got
        assert time.monotonic() - asked < 5, "ip.link.list waited for the downloads"
    finally:
        for jid in ids:
            r.rpush("core:default", json.dumps({"id": f"kill-{jid}", "command": "job.kill",
                                                "arguments": {"id": jid}}))
        states = [json.loads(got[1])["state"] if (got := r.blpop([f"result:{jid}"], 20))
                  else None for jid in ids]
        r.close()
    assert states == ["KILLED"] * len(ids)
    assert not any((root / f"m{i}").exists() for i in range(len(ids)))
