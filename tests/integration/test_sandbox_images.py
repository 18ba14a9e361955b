"""Images: import from an OCI layout (umoci), a docker save archive, a rootfs tarball; pull from
a real local registry (docker-registry over http on 127.0.0.1) with skopeo; OCI whiteouts;
containment of layer members (reliability T11) and of bind mounts."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from sandbox_fixtures import (
    ContainerNode,
    busybox_rootfs,
    call,
    dispatcher_or_zero,
    oci_layout,
    ok,
    pingable,
    registry,
)


@pytest.fixture(scope="module")
def work(cnode: ContainerNode) -> Path:
    return Path(tempfile.mkdtemp(prefix="img-", dir=cnode.dir))


@pytest.fixture(scope="module")
def rootfs(work: Path) -> Path:
    return busybox_rootfs(work / "rootfs")






def run_in(cnode: ContainerNode, image: str, script: str, **create: Any) -> str:
    cid = ok(cnode, "corex.create", {"root": image, "nics": [], **create})
    try:
        inner = ok(cnode, "corex.dispatch", {"container": cid, "command": {
            "command": "bash", "arguments": {"script": script}}})
        c = cnode.client()
        try:
            res = c.response_for(inner).get(60)
        finally:
            c.close()
        assert res.state.value == "SUCCESS", res
        return str(res.streams[0])
    finally:
        ok(cnode, "corex.terminate", {"container": cid})


def test_oci_layout_with_whiteouts(cnode: ContainerNode, work: Path, rootfs: Path) -> None:
    layout = oci_layout(work / "oci", rootfs)
    # a second image on top of it deleting a file and a directory (umoci writes whiteouts)
    b = work / "oci" / "b2"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:base", str(b)], check=True,
                   capture_output=True)
    os.unlink(b / "rootfs" / "etc" / "group")
    shutil.rmtree(b / "rootfs" / "var")
    subprocess.run(["umoci", "repack", "--image", f"{layout}:v2", str(b)], check=True,
                   capture_output=True)
    meta = ok(cnode, "container.image.import", {"name": "oci-base",
                                                "source": f"{layout}:base"})
    assert meta["kind"] == "oci-layout" and len(meta["layers"]) == 1
    assert "FROM_IMAGE=yes" in meta["env"] and meta["workdir"] == "/root"
    meta2 = ok(cnode, "container.image.import", {"name": "oci-v2", "source": f"{layout}:v2"})
    assert len(meta2["layers"]) == 2
    out = run_in(cnode, "oci-base", "echo env=$FROM_IMAGE; pwd; ls /etc/group /var")
    assert "env=yes" in out and "/root" in out and "/etc/group" in out
    out = run_in(cnode, "oci-v2", "ls /etc/group /var 2>&1; echo done")
    assert "No such file" in out and out.count("No such file") == 2
    names = [m["name"] for m in ok(cnode, "container.image.list", {})]
    assert {"oci-base", "oci-v2"} <= set(names)
    assert ok(cnode, "container.image.inspect", {"name": "oci-v2"})["name"] == "oci-v2"


def test_docker_archive_and_rootfs_tarball(cnode: ContainerNode, work: Path,
                                           rootfs: Path) -> None:
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        t.add(rootfs, arcname=".")
    cfg = json.dumps({"architecture": "amd64", "config": {"Env": ["DOCKER=1"]}}).encode()
    arch = work / "docker.tar"
    with tarfile.open(arch, "w") as t:
        for name, data in (("abc/layer.tar", layer.getvalue()), ("cfg.json", cfg),
                           ("manifest.json", json.dumps([{
                               "Config": "cfg.json", "RepoTags": ["bb:latest"],
                               "Layers": ["abc/layer.tar"]}]).encode())):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    meta = ok(cnode, "container.image.import", {"name": "docker-bb", "source": str(arch)})
    assert meta["kind"] == "docker-archive" and meta["tags"] == ["bb:latest"]
    assert "docker=1" in run_in(cnode, "docker-bb", "echo docker=$DOCKER")
    tgz = work / "rootfs.tar.gz"
    with tarfile.open(tgz, "w:gz") as t:
        t.add(rootfs, arcname=".")
    meta = ok(cnode, "container.image.import", {"name": "tgz-bb", "source": str(tgz)})
    assert meta["kind"] == "rootfs-tar"
    assert "hello" in run_in(cnode, "tgz-bb", "echo hello")
    r = call(cnode, "container.image.import", {"name": "tgz-bb", "source": str(tgz)})
    assert r.code == 409
    ok(cnode, "container.image.delete", {"name": "tgz-bb"})
    assert call(cnode, "container.image.inspect", {"name": "tgz-bb"}).code == 404


def test_pull_from_local_registry(cnode: ContainerNode, work: Path, rootfs: Path) -> None:
    layout = oci_layout(work / "pull", rootfs, tag="latest")
    with registry(work / "reg", cnode.ns.name) as reg:
        ref = reg.push(layout, "latest", "core0/bb:1.0")
        meta = ok(cnode, "container.image.pull", {"ref": ref, "tls_verify": False})
    assert meta["name"] == ref and meta["source"] == f"docker://{ref}"
    assert "pulled" in run_in(cnode, ref, "echo pulled")


def _tar_with(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for ti, data in members:
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "",
            data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes | None]:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = link
    if kind == tarfile.REGTYPE:
        ti.size = len(data)
        return ti, data
    return ti, None


def test_hostile_layer_members_refused(cnode: ContainerNode, work: Path) -> None:
    outside = Path(tempfile.mkdtemp(prefix="outside-"))
    try:
        target = outside / "pwned"
        cases = {
            "absolute": [_member(str(target))],
            "dotdot": [_member("../../../../../../.." + str(target))],
            "abs-link-then-write": [_member("esc", tarfile.SYMTYPE, str(outside)),
                                    _member("esc/pwned")],
            "rel-link-escape": [_member("esc", tarfile.SYMTYPE, "../../../../../../../.."
                                        + str(outside))],
            "hardlink-out": [_member("h", tarfile.LNKTYPE, "../../../../../etc/passwd")],
            "device": [_member("dev/sda", tarfile.BLKTYPE)],
            "chardev": [_member("dev/mem", tarfile.CHRTYPE)],
            "fifo": [_member("fifo", tarfile.FIFOTYPE)],
            "whiteout-dotdot": [_member("../.wh.x")],
        }
        for name, members in cases.items():
            tf = work / f"hostile-{name}.tar"
            tf.write_bytes(_tar_with(members))
            r = call(cnode, "container.image.import", {"name": f"bad-{name}",
                                                       "source": str(tf)})
            assert r.code == 400, (name, r.data)
            assert not target.exists(), name
            assert call(cnode, "container.image.inspect", {"name": f"bad-{name}"}).code == 404
        assert os.listdir(outside) == []
        # an absolute symlink *inside* an image is fine: it is relative to the container root
        tf = work / "abs-link-ok.tar"
        tf.write_bytes(_tar_with([_member("bin", tarfile.DIRTYPE),
                                  _member("bin/sh2", tarfile.SYMTYPE, "/bin/busybox")]))
        ok(cnode, "container.image.import", {"name": "abs-link-ok", "source": str(tf)})
    finally:
        shutil.rmtree(outside, ignore_errors=True)
        call(cnode, "container.image.delete", {"name": "abs-link-ok"})


def test_mount_containment(cnode: ContainerNode, work: Path, rootfs: Path) -> None:
    host = work / f"shared-{uuid.uuid4().hex[:8]}"
    host.mkdir()
    (host / "file").write_text("from-host")
    ok(cnode, "container.image.import", {"name": "bb-mnt", "source": str(rootfs)})
    for target in ("relative/path", "/data/../../etc", "/proc", "/sys/kernel", "/"):
        r = call(cnode, "corex.create", {"root": "bb-mnt", "nics": [],
                                         "mount": {str(host): target}})
        assert r.code == 400, (target, r.data)
    r = call(cnode, "corex.create", {"root": "bb-mnt", "nics": [],
                                     "mount": {str(host / "missing"): "/data"}})
    assert r.code == 404, r.data
    # a symlink inside the image pointing out: the runtime resolves the target in the root
    escape = Path(tempfile.mkdtemp(prefix="escape-"))
    shutil.rmtree(escape)
    (rootfs / "data" / "esc").symlink_to("../../../../../../.." + str(escape))
    try:
        ok(cnode, "container.image.import", {"name": "bb-esc", "source": str(rootfs)})
    finally:
        (rootfs / "data" / "esc").unlink()
    out = run_in(cnode, "bb-esc", "cat " + str(escape) + "/file; echo; "
                 "echo new > /ro/x 2>&1 || echo ro-refused; cat /ro/file",
                 mount={str(host): "/data/esc", str(host) + "/": "/ro:ro"})
    assert "from-host" in out and "ro-refused" in out
    assert not escape.exists()
    assert not (host / "x").exists()


def test_leftovers_of_a_killed_dispatcher_are_swept(cnode: ContainerNode, rootfs: Path) -> None:
    """Work directories a dispatcher killed mid-pull, -import, -restore or -delete leaves in
    the image store (on a persistent disk they would stay for good) are removed by the next
    dispatcher at its start; stored images stay."""
    ok(cnode, "container.image.import", {"name": "kept-img", "source": str(rootfs)})
    store = cnode.state_dir / "sandbox" / "images"
    left = [store / f"{p}{uuid.uuid4().hex[:8]}" for p in
            (".pull-", ".import-", ".restore-", ".del-")]
    for d in left:
        (d / "rootfs" / "usr").mkdir(parents=True)
        (d / "rootfs" / "usr" / "f").write_bytes(b"x" * 4096)
    old = cnode.dispatcher_pid()
    os.kill(old, signal.SIGKILL)
    assert wait_until(lambda: dispatcher_or_zero(cnode) not in (0, old), 60)
    assert wait_until(lambda: pingable(cnode), 60)
    assert wait_until(lambda: not any(d.exists() for d in left), 30), \
        [d.name for d in left if d.exists()]
    names = {i["name"] for i in ok(cnode, "container.image.list", {})}
    assert "kept-img" in names
    ok(cnode, "container.image.delete", {"name": "kept-img"})
