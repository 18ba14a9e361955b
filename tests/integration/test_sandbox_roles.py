"""Queue roles and containers: the inner command of corex.dispatch is checked against the outer
queue's role; privileged containers and host paths outside ``main.filesystem_root`` need the
admin role (symlinks cannot lead an operator's mount source out of the root)."""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import require
from sandbox_fixtures import ContainerNode, busybox_rootfs, container_node

FSROOT = Path(tempfile.gettempdir()) / f"core0-fsroot-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def cnode() -> Iterator[ContainerNode]:
    FSROOT.mkdir()
    cfg = (f'[main]\ninclude = []\nfilesystem_root = "{FSROOT}"\n'
           '[bus]\nqueues = {default = "admin", ops = "operator", ro = "read-only"}\n')
    try:
        with container_node(cfg) as n:
            yield n
    finally:
        shutil.rmtree(FSROOT, ignore_errors=True)


def run(cnode: ContainerNode, queue: str, command: str, args: dict[str, Any]) -> dict[str, Any]:
    r = redis.Redis(unix_socket_path=cnode.socket)
    jid = uuid.uuid4().hex
    r.rpush(f"core:{queue}", json.dumps({"id": jid, "command": command, "arguments": args}))
    raw = r.brpoplpush(f"result:{jid}", f"result:{jid}", 60)
    assert raw is not None, (queue, command)
    return dict(json.loads(raw))


@pytest.fixture(scope="module")
def image(cnode: ContainerNode) -> str:
    busybox_rootfs(FSROOT / "img")
    (FSROOT / "data").mkdir()
    (FSROOT / "data" / "f").write_text("shared")
    (FSROOT / "link").symlink_to("/etc")
    res = run(cnode, "ops", "container.image.import", {"name": "bb", "source": str(FSROOT / "img")})
    assert res["state"] == "SUCCESS", res
    return "bb"


def test_operator_queue(cnode: ContainerNode, image: str) -> None:
    res = run(cnode, "ops", "corex.create", {"root": image, "nics": [],
                                             "mount": {str(FSROOT / "data"): "/data:ro"}})
    assert res["state"] == "SUCCESS", res
    cid = json.loads(res["data"])
    try:
        res = run(cnode, "ops", "corex.dispatch", {"container": cid, "command": {
            "command": "bash", "arguments": {"script": "cat /data/f"}}})
        assert res["code"] == 403, res
        res = run(cnode, "default", "corex.dispatch", {"container": cid, "command": {
            "command": "bash", "arguments": {"script": "cat /data/f"}}})
        assert res["state"] == "SUCCESS"
        inner = redis.Redis(unix_socket_path=cnode.socket).brpoplpush(
            f"result:{json.loads(res['data'])}", "x", 60)
        assert json.loads(inner)["streams"][0] == "shared"
        assert run(cnode, "ro", "corex.list", {})["state"] == "SUCCESS"
        assert run(cnode, "ro", "corex.terminate", {"container": cid})["code"] == 403
    finally:
        assert run(cnode, "ops", "corex.terminate", {"container": cid})["state"] == "SUCCESS"


def test_operator_limits(cnode: ContainerNode, image: str) -> None:
    base = {"root": image, "nics": []}
    assert run(cnode, "ops", "corex.create", {**base, "privileged": True})["code"] == 403
    assert run(cnode, "ops", "corex.create", {**base, "mount": {"/etc": "/x"}})["code"] == 403
    # the symlink resolves inside the root (to <root>/etc, which does not exist)
    res = run(cnode, "ops", "corex.create", {**base, "mount": {str(FSROOT / "link"): "/x"}})
    assert res["code"] == 404, res
    res = run(cnode, "ops", "corex.create", {**base, "mount": {
        str(FSROOT / "data") + "/../../etc": "/x"}})
    assert res["code"] == 403, res
    assert run(cnode, "ops", "container.image.import", {
        "name": "etc", "source": "/etc"})["code"] == 403
    assert run(cnode, "ro", "corex.create", base)["code"] == 403


def test_passthrough_nic_needs_admin(cnode: ContainerNode, image: str) -> None:
    """A passthrough nic takes a link away from the node: 403 for an operator queue (the link
    stays on the node)."""
    res = run(cnode, "ops", "corex.create", {"root": image, "nics": [
        {"type": "passthrough", "id": "lo"}]})
    assert res["state"] == "ERROR" and res["code"] == 403, res
    res = run(cnode, "ops", "corex.create", {"root": image, "nics": []})
    assert res["state"] == "SUCCESS", res
    cid = json.loads(res["data"])
    try:
        res = run(cnode, "ops", "corex.nic-add", {"container": cid, "nic": {
            "type": "passthrough", "id": "lo"}})
        assert res["state"] == "ERROR" and res["code"] == 403, res
        # an admin may not pass lo through either (400), nor give the link another address
        res = run(cnode, "default", "corex.nic-add", {"container": cid, "nic": {
            "type": "passthrough", "id": "lo"}})
        assert res["code"] == 400, res
        res = run(cnode, "default", "corex.nic-add", {"container": cid, "nic": {
            "type": "passthrough", "id": "x0", "hwaddr": "02:00:00:00:00:01"}})
        assert res["code"] == 400, res
    finally:
        assert run(cnode, "ops", "corex.terminate", {"container": cid})["state"] == "SUCCESS"


def test_operator_backup_repository_stays_in_the_root(cnode: ContainerNode, image: str) -> None:
    """An operator's local restic repository is resolved as a mount source is: inside
    ``main.filesystem_root`` (made there when new), 403 outside it or with '..', and a symlink
    in the path leads to the root's own directory of that name, never out."""
    require("restic")
    res = run(cnode, "ops", "corex.create", {"root": image, "nics": []})
    assert res["state"] == "SUCCESS", res
    cid = json.loads(res["data"])
    outside = Path(tempfile.mkdtemp(prefix="core0-repo-"))
    try:
        def backup(path: str) -> dict[str, Any]:  # a path, or a restic repository string
            url = path if path[:1] != "/" else f"file://{path}"
            return run(cnode, "ops", "corex.backup",
                       {"container": cid, "url": f"{url}?password=pw"})

        for path in (str(outside / "repo"), str(FSROOT / "data") + "/../../" + outside.name,
                     f"local:{outside}/repo",
                     # restic's backends that act as the node: ssh with root's keys, rclone
                     # with root's config, the node's cloud credentials
                     "sftp:backup@127.0.0.1:/r", "rclone:remote:r", "s3:s3.example/b",
                     "b2:bucket:r", "azure:c:/r", "gs:b:/r", "swift:c:/r"):
            res = backup(path)
            assert res["state"] == "ERROR" and res["code"] == 403, (path, res)
        assert list(outside.iterdir()) == []
        res = backup(str(FSROOT / "link" / "repo"))  # link → /etc: <root>/etc/repo
        assert res["state"] == "SUCCESS", res
        assert (FSROOT / "etc" / "repo" / "config").is_file()
        assert not Path("/etc/repo").exists()
        res = backup(str(FSROOT / "repos" / "a"))
        assert res["state"] == "SUCCESS", res
        snap = json.loads(res["data"])
        assert (FSROOT / "repos" / "a" / "config").is_file()
        assert oct((FSROOT / "repos").stat().st_mode & 0o777) == "0o700"
        res = run(cnode, "ops", "corex.restore", {"url": f"file://{FSROOT}/repos/a?password=pw#{snap}"})
        assert res["state"] == "SUCCESS", res
        assert run(cnode, "ops", "corex.terminate", {"container": json.loads(res["data"])}
                   )["state"] == "SUCCESS"
    finally:
        assert run(cnode, "ops", "corex.terminate", {"container": cid})["state"] == "SUCCESS"
        shutil.rmtree(outside, ignore_errors=True)
