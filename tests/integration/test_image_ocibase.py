"""A node image built on an OCI image (``build.sh core --base oci:<layout>:<tag>``).

A small root (a marker file, a tool under /usr/local/bin, a real /bin that the builder merges
into /usr, an absolute symlink) is made into an OCI layout with umoci; the real builder puts
core0, Python, busybox and the kernel modules on top; the initramfs it writes is read back
(its newc cpio parsed here) and the manifest must record the base's manifest digest. Hostile
layers (``..``, a link out through an absolute symlink) and bad references are refused with
a clear ``--base`` error before anything is fetched; ``oci-archive:`` and ``docker-archive:``
bases go through skopeo into a layout and the same unpacker.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, require
from image_fixtures import TEST_BUILD_ENV
from sandbox_fixtures import oci_layout

sys.path.insert(0, str(ROOT / "initramfs-builder"))
import ocibase  # the builder's base-image step

pytestmark = [pytest.mark.timeout(1800)]
MARKER = b"this root came from an OCI image\n"
TOOL = b"#!/bin/sh\necho base-tool ran\n"


def builder(*args: str, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "initramfs-builder/build.sh", "core", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env=TEST_BUILD_ENV)


def base_root(d: Path) -> Path:
    """The base's files: a marker, a tool, a real /bin, an absolute symlink, a sticky /tmp."""
    root = d / "base-root"
    for sub in ("etc", "usr/local/bin", "bin", "tmp"):
        (root / sub).mkdir(parents=True)
    (root / "etc/ocibase-marker").write_bytes(MARKER)
    tool = root / "usr/local/bin/base-tool"
    tool.write_bytes(TOOL)
    tool.chmod(0o755)
    (root / "bin/legacy-tool").write_bytes(TOOL)
    (root / "bin/legacy-tool").chmod(0o755)
    os.symlink("/usr/local/bin/base-tool", root / "usr/local/bin/abs-link")
    return root


def read_cpio(path: Path) -> dict[str, tuple[int, bytes]]:
    """{path: (mode, data)} of a gzip'd newc cpio (symlinks: data is the target)."""
    raw = gzip.decompress(path.read_bytes())
    out: dict[str, tuple[int, bytes]] = {}
    off = 0
    while off + 110 <= len(raw):
        assert raw[off:off + 6] == b"070701", off
        fields = [int(raw[off + 6 + 8 * i: off + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_end = off + 110 + namesize
        name = raw[off + 110: name_end - 1].decode()
        data_at = (name_end + 3) & ~3
        if name == "TRAILER!!!":
            break
        out[name] = (mode, raw[data_at:data_at + size])
        off = (data_at + size + 3) & ~3
    return out


def manifest_digest(layout: Path, tag: str) -> str:
    index = json.loads((layout / "index.json").read_text())
    desc = next(m for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    blob = (layout / "blobs/sha256" / desc["digest"].split(":")[1]).read_bytes()
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == desc["digest"]
    return str(desc["digest"])


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ocibase")
    return oci_layout(d, base_root(d), tag="node")


@pytest.fixture(scope="module")
def built(layout: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    require("apt-get", "dpkg-deb", "depmod", "gzip")
    d = tmp_path_factory.mktemp("built")
    res = builder("--base", f"oci:{layout}:node", "--out", str(d / "out"), "--work",
                  str(d / "work"), "--compress", "gzip")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    man = json.loads((d / "out/manifest.json").read_text())
    return {"manifest": man, "files": read_cpio(d / "out" / man["initramfs"]),
            "out": d / "out", "log": res.stdout}


def test_the_base_files_are_in_the_initramfs(built: dict[str, Any]) -> None:
    files = built["files"]
    assert files["etc/ocibase-marker"][1] == MARKER
    mode, data = files["usr/local/bin/base-tool"]
    assert data == TOOL and stat.S_ISREG(mode) and mode & 0o111
    # the base's real /bin was merged into /usr/bin; /bin is the builder's symlink
    assert files["usr/bin/legacy-tool"][1] == TOOL
    assert stat.S_ISLNK(files["bin"][0]) and files["bin"][1] == b"usr/bin"
    # an absolute symlink of the base means the same inside the root, written relative
    assert files["usr/local/bin/abs-link"][1] == b"base-tool"
    assert stat.S_IMODE(files["tmp"][0]) == 0o1777


def test_core0_is_on_top_and_stays_the_init(built: dict[str, Any]) -> None:
    files = built["files"]
    init = files["init"][1]
    assert init == (ROOT / "initramfs-builder/rootfs/init").read_bytes()
    assert "usr/lib/python3/dist-packages/core0/__init__.py" in files
    assert stat.S_ISREG(files["usr/bin/busybox"][0])
    assert any(n.startswith("usr/lib/modules/") and n.endswith(".ko") for n in files)
    assert "boot/vmlinuz" not in " ".join(files)  # the kernel is an artifact, not in the root


def test_the_manifest_records_the_base(built: dict[str, Any], layout: Path) -> None:
    man, out = built["manifest"], built["out"]
    base = man["base"]
    assert base["reference"] == f"oci:{layout}:node"
    assert base["digest"] == manifest_digest(layout, "node")
    assert base["kernel_from"] == "debian" and len(base["layers"]) == 1
    for name, digest in man["sha256"].items():  # a sha256 per artifact, as without a base
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    listed = {f["path"] for f in man["files"]}
    assert {"/etc/ocibase-marker", "/usr/local/bin/base-tool", "/init"} <= listed
    assert f"base oci:{layout}:node" in built["log"]


# ---------------------------------------------------------------- refusals


def hand_layout(d: Path, members: list[tuple[tarfile.TarInfo, bytes]], tag: str = "x") -> Path:
    """An OCI layout whose one layer holds exactly ``members`` (what umoci would refuse to
    write)."""
    blobs = d / "blobs/sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> dict[str, Any]:
        h = hashlib.sha256(data).hexdigest()
        (blobs / h).write_bytes(data)
        return {"digest": f"sha256:{h}", "size": len(data)}

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data else None)
    layer = blob(buf.getvalue())
    cfg = blob(json.dumps({"architecture": "amd64", "os": "linux",
                           "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}}).encode())
    man = blob(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer}]}).encode())
    (d / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (d / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", **man,
         "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return d


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "",
           data: bytes = b"x\n") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else b""


def refused(tmp: Path, reference: str) -> str:
    res = builder("--base", reference, "--out", str(tmp / "out"), "--work", str(tmp / "work"),
                  timeout=300)
    assert res.returncode != 0, res.stdout[-2000:]
    assert not (tmp / "out/manifest.json").exists()
    return res.stderr


def test_a_layer_with_dotdot_is_refused(tmp_path: Path) -> None:
    lay = hand_layout(tmp_path / "lay", [member("etc/ok"), member("../escaped")])
    err = refused(tmp_path, f"oci:{lay}:x")
    assert f"--base oci:{lay}:x" in err and "'..'" in err, err
    assert not (tmp_path / "work/core/escaped").exists()
    assert not (tmp_path / "work/escaped").exists()


def test_a_link_out_through_an_absolute_symlink_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    lay = hand_layout(tmp_path / "lay", [member("etc/ok"),
                                         member("up", tarfile.SYMTYPE, str(outside)),
                                         member("up/planted")])
    err = refused(tmp_path, f"oci:{lay}:x")
    assert "--base" in err and "refused layer member" in err, err
    assert not (outside / "planted").exists()


def test_a_relative_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    lay = hand_layout(tmp_path / "lay", [member("etc/up", tarfile.SYMTYPE, "../../../..")])
    err = refused(tmp_path, f"oci:{lay}:x")
    assert "refused layer member 'etc/up'" in err, err


@pytest.mark.parametrize(("reference", "says"), [
    ("oci:{tmp}/nothing-here:x", "no OCI layout directory"),
    ("oci:{layout}:no-such-tag", "no image 'no-such-tag'"),
    ("ftp://example.invalid/img", "not a base reference"),
    ("docker-archive:{tmp}/missing.tar", "skopeo copy failed"),
])
def test_a_bad_reference_fails_clearly(tmp_path: Path, layout: Path, reference: str,
                                       says: str) -> None:
    require("skopeo")
    ref = reference.format(tmp=tmp_path, layout=layout)
    err = refused(tmp_path, ref)
    assert f"--base {ref}: " in err and says in err, err


@pytest.mark.parametrize("transport", ["oci-archive", "docker-archive"])
def test_archives_go_through_skopeo_and_the_same_unpacker(tmp_path: Path, layout: Path,
                                                          transport: str) -> None:
    require("skopeo")
    archive = tmp_path / f"{transport}.tar"
    dst = f"{transport}:{archive}" + (":node:latest" if transport == "docker-archive" else "")
    subprocess.run(["skopeo", "copy", "--quiet", f"oci:{layout}:node", dst], check=True,
                   capture_output=True)
    base = ocibase.unpack(f"{transport}:{archive}", tmp_path / "work", keep_kernel=False)
    assert (base.root / "etc/ocibase-marker").read_bytes() == MARKER
    assert os.readlink(base.root / "usr/local/bin/abs-link") == "base-tool"
    assert base.meta["digest"].startswith("sha256:") and len(base.meta["layers"]) == 1
    assert not (tmp_path / "work/base-layout").exists()  # the temporary layout is gone
    if transport == "oci-archive":  # copied as is: the same manifest
        assert base.meta["digest"] == manifest_digest(layout, "node")



def test_kernel_from_base_needs_a_kernel_in_the_base(tmp_path: Path, layout: Path) -> None:
    res = builder("--base", f"oci:{layout}:node", "--kernel-from", "base", "--out",
                  str(tmp_path / "out"), "--work", str(tmp_path / "work"), timeout=300)
    assert res.returncode != 0 and "holds no /boot/vmlinuz-<release>" in res.stderr, res.stderr
    assert not (tmp_path / "out/manifest.json").exists()


def test_kernel_from_base(built: dict[str, Any], tmp_path: Path) -> None:
    """A base holding a kernel (Debian's, from the builder's package cache, with its
    filesystem modules only): its vmlinuz is the image's, its modules stay, depmod ran."""
    import imagelib

    trees = sorted((imagelib.default_cache() / "x").glob("linux-image-*"))
    if not trees:
        pytest.fail("the builder's cache holds no extracted kernel package after a build")
    ktree = trees[-1]
    release = next((ktree / "lib/modules").iterdir()).name
    root = tmp_path / "k-root"
    mods = root / "usr/lib/modules" / release
    (root / "boot").mkdir(parents=True)
    (mods / "kernel").mkdir(parents=True)
    os.symlink("usr/lib", root / "lib")
    shutil.copy2(ktree / f"boot/vmlinuz-{release}", root / "boot")
    for f in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        shutil.copy2(ktree / "lib/modules" / release / f, mods)
    shutil.copytree(ktree / "lib/modules" / release / "kernel/fs/btrfs", mods / "kernel/fs/btrfs")
    lay = oci_layout(tmp_path, root, tag="k")
    res = builder("--base", f"oci:{lay}:k", "--kernel-from", "base", "--compress", "gzip",
                  "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    man = json.loads((tmp_path / "out/manifest.json").read_text())
    assert man["kernel"] == release and man["base"]["kernel_from"] == "base"
    vmlinuz = (tmp_path / "out/vmlinuz").read_bytes()
    assert vmlinuz == (ktree / f"boot/vmlinuz-{release}").read_bytes()
    files = read_cpio(tmp_path / "out" / man["initramfs"])
    assert f"usr/lib/modules/{release}/kernel/fs/btrfs/btrfs.ko" in files
    dep = files[f"usr/lib/modules/{release}/modules.dep"][1].decode()
    assert "kernel/fs/btrfs/btrfs.ko:" in dep  # depmod ran on the final root
    assert not any(n.startswith("boot/") for n in files)
