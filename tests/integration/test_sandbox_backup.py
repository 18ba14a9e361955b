"""corex.backup / corex.restore with a real restic repository: a container's root and its
create arguments out and back (0-core's commands; 0-core's client side in tests/compat)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import require, wait_until
from sandbox_fixtures import (
    ContainerNode,
    busybox_rootfs,
    call,
    container_node,
    dispatcher_or_zero,
    inside,
    ok,
)

from core0.sandbox import images
from core0.sandbox.store import Store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cnode() -> Iterator[ContainerNode]:
    with container_node() as n:
        os.chmod(n.dir, 0o711)  # (mkdtemp's 0700: a userns container's root must reach it)
        yield n


@pytest.fixture(scope="module")
def image(cnode: ContainerNode) -> str:
    require("restic")
    root = busybox_rootfs(Path(tempfile.mkdtemp(prefix="bb-", dir=cnode.dir)) / "rootfs")
    ok(cnode, "container.image.import", {"name": "bb", "source": str(root)})
    return "bb"


def test_a_container_backed_up_and_restored(cnode: ContainerNode, image: str) -> None:
    secret = "pw-" + uuid.uuid4().hex
    repo = Path(tempfile.mkdtemp(prefix="restic-", dir=cnode.dir)) / "repo"
    url = f"file://{repo}?password={secret}"
    cid = ok(cnode, "corex.create", {"root": image, "nics": [], "hostname": "saved",
                                     "env": {"KEPT": "yes"}, "tags": ["old"]})
    try:
        res = inside(cnode, cid, "mkdir -p /srv && echo kept > /srv/data && echo ok")
        assert res.state.value == "SUCCESS", res
        c = cnode.client()
        try:
            snap = c.container.backup(cid, url, tags=["nightly"], timeout=300)
        finally:
            c.close()
        assert re.fullmatch(r"[0-9a-f]{8,64}", snap), snap
        assert (repo / "config").is_file()  # a new repository is initialised
        # paused for the backup, running again after it
        assert inside(cnode, cid, "echo alive").stdout == "alive\n"
        # a second backup into the same repository
        assert ok(cnode, "corex.backup", {"container": cid, "url": url}) != snap
    finally:
        ok(cnode, "corex.terminate", {"container": cid})

    c = cnode.client()  # core0's client: c.container.backup/restore
    try:
        new = c.container.restore(f"{url}#{snap}", tags=["restored"], timeout=300)
        assert isinstance(new, int)
    finally:
        c.close()
    try:
        got = inside(cnode, new, "cat /srv/data; hostname; echo $KEPT")
        assert got.stdout == "kept\nsaved\nyes\n", got
        info = ok(cnode, "corex.list", {})[str(new)]["container"]
        assert (info["root"], info["image"], info["tags"]) == (
            f"restic-{snap}", f"restic-{snap}", ["restored"])
        assert info["hostname"] == "saved"
        # the repository's password is kept nowhere: not in the records, not in the log
        assert secret not in json.dumps(ok(cnode, "corex.list", {}))
        assert secret not in cnode.log_text()
    finally:
        ok(cnode, "corex.terminate", {"container": new})
    # 0-core's data-only restore: corex.create of root restic:<url>#<id>, the rest as given
    other = ok(cnode, "corex.create", {"root": f"restic:{url}#{snap}", "nics": [],
                                       "hostname": "fresh"})
    try:
        got = inside(cnode, other, "cat /srv/data; hostname; echo ${KEPT:-unset}")
        assert got.stdout == "kept\nfresh\nunset\n", got
        info = ok(cnode, "corex.list", {})[str(other)]["container"]
        assert info["root"] == f"restic-{snap}"
        assert secret not in json.dumps(info) and secret not in cnode.log_text()
    finally:
        ok(cnode, "corex.terminate", {"container": other})


def test_bad_repositories_and_snapshots(cnode: ContainerNode, image: str) -> None:
    repo = Path(tempfile.mkdtemp(prefix="restic-", dir=cnode.dir)) / "repo"
    cid = ok(cnode, "corex.create", {"root": image, "nics": []})
    try:
        snap = ok(cnode, "corex.backup", {"container": cid, "url": f"{repo}?password=a"})
        cases = [
            ("corex.backup", {"container": cid, "url": f"file://{repo}"}, 400),  # no password
            ("corex.backup", {"container": cid, "url": f"file://{repo}?password=b"}, 400),
            ("corex.restore", {"url": f"file://{repo}?password=a"}, 400),  # no snapshot
            ("corex.restore", {"url": f"file://{repo}?password=a#deadbeef"}, 404),
            ("corex.restore", {"url": f"file://{repo}-none?password=a#{snap}"}, 404),
            ("corex.restore", {"url": f"file://{repo}?password=a#not-an-id"}, 400),
            ("corex.backup", {"container": 65000, "url": f"file://{repo}?password=a"}, 404),
            ("corex.backup", {"container": cid, "url": "--repo=x?password=a"}, 400),
        ]
        for command, args, code in cases:
            r = call(cnode, command, args)
            assert (r.state.value, r.code) == ("ERROR", code), (command, args, r.data)
    finally:
        ok(cnode, "corex.terminate", {"container": cid})


def test_a_user_namespace_container_comes_back_with_its_own_ids(cnode: ContainerNode,
                                                                image: str) -> None:
    """Its root is saved as the host sees it (owners shifted into its range); restored, the
    image holds the container's own ids again and the new container (its own range) sees
    root's files as root's."""
    repo = Path(tempfile.mkdtemp(prefix="restic-", dir=cnode.dir)) / "repo"
    url = f"{repo}?password=u"
    cid = ok(cnode, "corex.create", {"root": image, "nics": [], "userns": True})
    try:
        got = inside(cnode, cid, "echo mine > /srv-file; stat -c %u:%g /srv-file")
        assert got.state.value == "SUCCESS" and got.stdout == "0:0\n", got
        snap = ok(cnode, "corex.backup", {"container": cid, "url": url})
    finally:
        ok(cnode, "corex.terminate", {"container": cid})
    new = ok(cnode, "corex.restore", {"url": f"{url}#{snap}"})
    try:
        st = (images.rootfs(cnode.state_dir, f"restic-{snap}") / "srv-file").stat()
        assert (st.st_uid, st.st_gid) == (0, 0)
        got = inside(cnode, new, "cat /srv-file; stat -c %u:%g /srv-file")
        assert got.stdout == "mine\n0:0\n", got
        info = ok(cnode, "corex.list", {})[str(new)]["container"]
        assert info["userns"] is not None
    finally:
        ok(cnode, "corex.terminate", {"container": new})


def test_a_backup_cut_short_leaves_no_frozen_container(cnode: ContainerNode,
                                                      image: str) -> None:
    """The dispatcher killed -9 while restic reads a frozen container: the next dispatcher
    thaws it at its start, and the backup's one result is 503 interrupted (never run
    again)."""
    repo = Path(tempfile.mkdtemp(prefix="restic-", dir=cnode.dir)) / "repo"
    cid = ok(cnode, "corex.create", {"root": image, "nics": []})
    try:
        got = inside(cnode, cid, "dd if=/dev/urandom of=/big bs=1M count=400 2>/dev/null; "
                                 "echo made", timeout=120)
        assert got.stdout == "made\n", got
        mark = Store(cnode.state_dir).dir(cid) / "backup-paused"
        c = cnode.client()
        try:
            job = c.raw("corex.backup", {"container": cid, "url": f"{repo}?password=k"})
            assert wait_until(mark.exists, 60, 0.05)

            def reading() -> bool:  # restic runs once the container is frozen
                return any(p.info["cmdline"] and "restic" in p.info["cmdline"][0]
                           and "backup" in p.info["cmdline"]
                           for p in psutil.process_iter(["cmdline"]))

            assert wait_until(reading, 60, 0.02)
            old = cnode.dispatcher_pid()
            os.kill(old, signal.SIGKILL)
            assert wait_until(lambda: dispatcher_or_zero(cnode) not in (0, old), 60)
            res = job.get(120)
        finally:
            c.close()
        assert (res.state.value, res.code) == ("ERROR", 503), res
        assert "interrupted" in res.data or "interrupted" in (res.critical or ""), res
        assert wait_until(lambda: not mark.exists(), 30)
        assert inside(cnode, cid, "echo thawed").stdout == "thawed\n"
        assert "frozen by a backup cut short, resumed" in cnode.log_text()
    finally:
        ok(cnode, "corex.terminate", {"container": cid})


def test_a_killed_backup_leaves_no_lock(cnode: ContainerNode, image: str) -> None:
    """``job.kill`` while restic reads: KILLED, the container runs again, and restic was
    stopped with SIGINT, on which it removes its lock — before, SIGKILL left a stale lock in
    the repository for every later command to meet."""
    repo = Path(tempfile.mkdtemp(prefix="restic-", dir=cnode.dir)) / "repo"
    url = f"{repo}?password=k"
    cid = ok(cnode, "corex.create", {"root": image, "nics": []})
    try:
        ok(cnode, "corex.backup", {"container": cid, "url": url})  # the repository
        got = inside(cnode, cid, "dd if=/dev/urandom of=/big bs=1M count=400 2>/dev/null; "
                                 "echo made", timeout=120)
        assert got.stdout == "made\n", got
        c = cnode.client()
        try:
            job = c.raw("corex.backup", {"container": cid, "url": url})
            assert wait_until(lambda: any((repo / "locks").iterdir()), 60, 0.02)
            c.json("job.kill", {"id": job.id})
            res = job.get(120)
        finally:
            c.close()
        assert res.state.value == "KILLED", res
        assert list((repo / "locks").iterdir()) == []
        assert inside(cnode, cid, "echo alive").stdout == "alive\n"
    finally:
        ok(cnode, "corex.terminate", {"container": cid})


def test_a_crafted_snapshot_leads_nowhere_outside(cnode: ContainerNode, image: str) -> None:
    """A repository is its user's: a snapshot whose root is a symlink to a host directory
    (made with restic itself) restores nothing from the host — the restored tree is
    resolved inside the restore's own directory (404), and no image holds the host's files."""
    work = Path(tempfile.mkdtemp(prefix="evil-", dir=cnode.dir))
    repo, src = work / "repo", work / "src"
    src.mkdir()
    (src / "root").symlink_to("/etc")
    (src / ".corex.meta").write_text(json.dumps({"arguments": {"root": "x", "nics": []}}))
    env = {**os.environ, "RESTIC_PASSWORD": "e"}
    subprocess.run(["restic", "-r", str(repo), "init"], env=env, check=True,
                   capture_output=True)
    out = subprocess.run(["restic", "-r", str(repo), "backup", "--json",
                          str(src / "root"), str(src / ".corex.meta")], env=env, check=True,
                         capture_output=True, text=True).stdout
    snap = next(json.loads(line)["snapshot_id"] for line in out.splitlines()
                if '"summary"' in line)
    r = call(cnode, "corex.restore", {"url": f"{repo}?password=e#{snap}"})
    assert r.state.value == "ERROR" and r.code == 404, (r.code, r.data)
    assert not images.image_dir(cnode.state_dir, f"restic-{snap}").exists()


def test_a_rest_server_repository(cnode: ContainerNode, image: str) -> None:
    """A remote repository: restic's REST backend (``rest:http://user:pass@host:port/path``)
    against a real REST server (rclone's ``serve restic``, basic auth) in the node's network
    namespace: backup, restore, a wrong REST password refused; the URL's credentials are in
    no argv (restic gets the repository in its environment), record or log."""
    require("restic", "rclone")
    store = Path(tempfile.mkdtemp(prefix="rest-", dir=cnode.dir))
    port, user, word = 18000 + os.getpid() % 1000, "u" + uuid.uuid4().hex[:6], uuid.uuid4().hex
    server = cnode.ns.spawn("rclone", "serve", "restic", str(store), "--addr",
                            f"127.0.0.1:{port}", "--user", user, "--pass", word)
    try:
        assert wait_until(lambda: _listening(cnode, port), 20), "rclone serve restic: no port"
        url = f"rest:http://{user}:{word}@127.0.0.1:{port}/repo?password=pw"
        cid = ok(cnode, "corex.create", {"root": image, "nics": []})
        try:
            assert inside(cnode, cid, "echo remote > /kept && echo ok").state.value == "SUCCESS"
            seen: list[str] = []
            box = {"stop": False}

            def watch() -> None:  # every restic argv while the backup runs
                while not box["stop"]:
                    for p in psutil.process_iter(["name", "cmdline"]):
                        if p.info["name"] == "restic":
                            seen.append(" ".join(p.info["cmdline"] or []))

            t = threading.Thread(target=watch)
            t.start()
            try:
                snap = ok(cnode, "corex.backup", {"container": cid, "url": url})
            finally:
                box["stop"] = True
                t.join()
            assert seen and not any(word in s for s in seen), seen
            assert (store / "repo" / "config").is_file()
            bad = url.replace(word, "nope")
            r = call(cnode, "corex.backup", {"container": cid, "url": bad})
            assert (r.state.value, r.code) == ("ERROR", 403), r  # the server's 401
            assert word not in (r.data or "") and "nope" not in (r.data or ""), r.data
        finally:
            ok(cnode, "corex.terminate", {"container": cid})
        new = ok(cnode, "corex.restore", {"url": f"{url}#{snap}"})
        try:
            assert inside(cnode, new, "cat /kept").stdout == "remote\n"
            listing = json.dumps(ok(cnode, "corex.list", {}))
            assert word not in listing and word not in cnode.log_text()
        finally:
            ok(cnode, "corex.terminate", {"container": new})
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)


def _listening(cnode: ContainerNode, port: int) -> bool:
    out = cnode.ns.run("ss", "-Hltn", f"sport = :{port}", check=False).stdout
    return bool(out.strip())


def test_repository_forms_that_would_escape(cnode: ContainerNode, image: str) -> None:
    """Forms restic would take for a path relative to the dispatcher's directory are refused
    (400), ``local:`` is a local path like ``file://``, and an sftp host or user may not start
    with '-' (ssh would read it as an option), even for admin."""
    cid = ok(cnode, "corex.create", {"root": image, "nics": []})
    probe = Path("/") / f"corex-probe-{uuid.uuid4().hex[:8]}"
    try:
        for url in (f"{probe.name}:x?password=a", f"x:/../..{probe}?password=a",
                    "sftp:-oProxyCommand=true:/r?password=a",
                    "sftp://-lroot@host//r?password=a", "ftp://host/r?password=a",
                    f"rest:unix://{cnode.socket}?password=a"):
            r = call(cnode, "corex.backup", {"container": cid, "url": url})
            assert (r.state.value, r.code) == ("ERROR", 400), (url, r.data)
        assert not probe.exists() and not Path(f"/{probe.name}:x").exists()
        repo = Path(tempfile.mkdtemp(prefix="restic-", dir=cnode.dir)) / "local"
        assert ok(cnode, "corex.backup", {"container": cid, "url": f"local:{repo}?password=a"})
        assert (repo / "config").is_file()
    finally:
        ok(cnode, "corex.terminate", {"container": cid})


def test_a_restore_keeps_the_dispatcher_answering(cnode: ContainerNode, image: str) -> None:
    """A restore of a container of 60,000 files, killed once its image is being made, then
    run to its end: ``core.ping`` is answered within 0.3 s all along, nothing of the killed
    one is left (no hidden work dir) and the restored image is made once. Before, the
    restored tree was removed on the event loop when the restore ended (killed or not):
    every command of the node waited for it (about 0.8 s here); and a killed restore's
    import thread could go on after its answer (it read the tree the restore was removing,
    through a descriptor the restore had closed)."""
    repo = Path(tempfile.mkdtemp(prefix="restic-", dir=cnode.dir)) / "repo"
    url = f"{repo}?password=p"
    cid = ok(cnode, "corex.create", {"root": image, "nics": []})
    try:
        got = inside(cnode, cid, "mkdir /m && cd /m && seq 60000 | xargs touch && echo made",
                     timeout=300)
        assert got.stdout == "made\n", got
        snap = ok(cnode, "corex.backup", {"container": cid, "url": url})
    finally:
        ok(cnode, "corex.terminate", {"container": cid})
    worst = [0.0]
    stop = threading.Event()

    def ping() -> None:
        c = cnode.client()
        try:
            while not stop.is_set():
                t = time.monotonic()
                c.ping()
                worst[0] = max(worst[0], time.monotonic() - t)
                time.sleep(0.01)
        finally:
            c.close()

    pinger = threading.Thread(target=ping)
    pinger.start()
    c = cnode.client()
    try:
        job = c.raw("corex.restore", {"url": f"{url}#{snap}"})
        imports = cnode.state_dir / "sandbox" / "images"
        assert wait_until(lambda: any(p.name.startswith(".import-")
                                      for p in imports.iterdir()), 120, 0.005)
        c.json("job.kill", {"id": job.id})
        res = job.get(120)
        new = c.container.restore(f"{url}#{snap}", timeout=300)
    finally:
        c.close()
        stop.set()
        pinger.join()
    assert res.state.value == "KILLED", res
    ok(cnode, "corex.terminate", {"container": new})
    assert worst[0] < 0.3, f"core.ping waited {worst[0]:.2f} s"
    left = [p.name for p in imports.iterdir() if p.name.startswith(".")]
    assert left == [], left
    assert f"restic-{snap}" in [i["name"] for i in ok(cnode, "container.image.list", {})]
