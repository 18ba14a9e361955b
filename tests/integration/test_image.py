"""Signed images on a real node (``core0 dev``): core.upgrade verifies the minisign signature
and every sha256 before anything is staged, stages beside the current image, keeps history;
hostile sources are refused; the boot assessment judges a boot and records its rollback.

Everything but the kexec itself (tests/e2e/test_upgrade.py boots it under qemu): on this host
every switch must be refused (412), which is tested too.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Node, require, start_node
from wire import cmd, push, result

sys.path.insert(0, str(ROOT / "initramfs-builder"))
import sign  # the image builder's signing step

INITRD = "initramfs.cpio.zst"


def keypair(d: Path, name: str) -> tuple[Path, str]:
    """(secret key file, public key line) made by ``minisign -G -W``."""
    require("minisign")
    sec, pub = d / f"{name}.sec", d / f"{name}.pub"
    subprocess.run(["minisign", "-G", "-W", "-p", str(pub), "-s", str(sec)], check=True,
                   capture_output=True, stdin=subprocess.DEVNULL)
    return sec, sign.public_key(pub)


def make_image(d: Path, version: str, key: Path, *, initrd: str = INITRD,
               tamper: Callable[[Path], None] | None = None, initrd_size: int = 700_000,
               base: dict[str, Any] | None = None) -> Path:
    """An image directory as the builder writes it (artifacts, manifest, signature); the
    artifacts are random bytes (staging never boots them). → the manifest's path."""
    d.mkdir(parents=True, exist_ok=True)
    sums = {}
    for name, size in (("vmlinuz", 300_000), (initrd, initrd_size)):
        data = os.urandom(size)
        if "/" not in name:
            (d / name).write_bytes(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    manifest = d / "manifest.json"
    manifest.write_text(json.dumps({"flavour": "core", "version": version, "kernel": "6.1.0",
                                    "initramfs": initrd, "sha256": sums,
                                    "sizes": {"vmlinuz": 300_000},
                                    **({"base": base} if base is not None else {})}))
    sign.sign(manifest, key, f"core0 image {version} core")
    if tamper is not None:
        tamper(d)
    return manifest


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    d = tmp_path_factory.mktemp("keys")
    return {"trusted": keypair(d, "trusted"), "other": keypair(d, "other")}


@pytest.fixture(scope="module")
def fsroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fsroot")


def node_config(d: Path, trusted: list[str], fsroot: Path, extra: str = "") -> str:
    cfg = d / "core0.toml"
    cfg.write_text(f"[main]\nfilesystem_root = {json.dumps(str(fsroot))}\n"
                   f"[image]\ntrusted_keys = {json.dumps(trusted)}\n{extra}")
    return str(cfg)


@pytest.fixture(scope="module")
def inode(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Any],
          fsroot: Path) -> Iterator[Node]:
    d = tmp_path_factory.mktemp("node")
    n = start_node(d / "state", config=node_config(d, [keys["trusted"][1]], fsroot,
                                                   "max_bytes = 1048576\n"))
    yield n
    n.stop()


def call(node: Node, command: str, args: dict[str, Any] | None = None,
         timeout: float = 60) -> dict[str, Any]:
    r = node.redis()
    c = cmd(command, args or {})
    res = result(r, push(r, c), timeout)
    res["_id"] = c["id"]
    return res


def data(res: dict[str, Any]) -> Any:
    assert res["state"] == "SUCCESS", res
    return json.loads(res["data"])


def images(node: Node) -> Path:
    return node.state_dir / "images"


def nothing_staged(node: Node, before: set[str]) -> None:
    """No new slot, no leftover incoming directory, state unchanged."""
    d = images(node)
    slots = {p.name for p in (d / "slots").iterdir()} if (d / "slots").is_dir() else set()
    assert slots == before
    assert not list(d.glob(".incoming-*"))


def slots_of(node: Node) -> set[str]:
    d = images(node) / "slots"
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


# ---------------------------------------------------------------- staging


def test_upgrade_from_a_path_stages_the_verified_image(inode: Node, keys: dict[str, Any],
                                                        fsroot: Path) -> None:
    manifest = make_image(fsroot / "imgs" / "a", "1.0+a", keys["trusted"][0])
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    out = data(call(inode, "core.upgrade", {"path": "/imgs/a/manifest.json", "sha256": digest,
                                            "switch": "none"}))
    assert out["digest"] == digest and out["version"] == "1.0+a" and out["switch"] == "none"
    slot = images(inode) / "slots" / digest
    assert sorted(p.name for p in slot.iterdir()) == sorted(
        ["vmlinuz", INITRD, "manifest.json", "manifest.json.minisig"])
    for name in ("vmlinuz", INITRD, "manifest.json", "manifest.json.minisig"):
        assert (slot / name).read_bytes() == (manifest.parent / name).read_bytes()
        assert (slot / name).stat().st_mode & 0o777 == 0o400
    listed = data(call(inode, "image.list"))
    entry = next(i for i in listed if i["digest"] == digest)
    assert entry["version"] == "1.0+a" and not entry["running"] and entry["base"] is None
    hist = data(call(inode, "image.history"))
    staged = [h for h in hist["history"] if h["event"] == "staged" and h["digest"] == digest]
    assert staged and staged[-1]["signed"] == "core0 image 1.0+a core"
    # the host booted from outside: no digest on its command line
    cur = data(call(inode, "image.current"))
    assert cur["digest"] is None and cur["staged"] is False
    ver = data(call(inode, "info.version"))
    assert ver["image"]["digest"] is None and ver["version"] == cur["version"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a: Any) -> None:
        pass


@pytest.fixture(scope="module")
def http_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    d = tmp_path_factory.mktemp("www")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                          functools.partial(_Quiet, directory=str(d)))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield d, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_upgrade_from_a_url_streams_progress(inode: Node, keys: dict[str, Any],
                                             http_dir: tuple[Path, str]) -> None:
    d, base = http_dir
    manifest = make_image(d / "b", "1.0+b", keys["trusted"][0])
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    res = call(inode, "core.upgrade", {"url": f"{base}/b/manifest.json", "switch": "none"})
    assert data(res)["digest"] == digest
    assert (images(inode) / "slots" / digest / INITRD).read_bytes() == (d / "b" / INITRD
                                                                        ).read_bytes()
    r = inode.redis()
    lines = [json.loads(f[b"record"]) if b"record" in f else {k.decode(): v.decode()
                                                              for k, v in f.items()}
             for _, f in r.xrange(f"log:{res['_id']}")]
    text = json.dumps(lines)
    assert "signature verified" in text and f"fetch {INITRD}: 700000/700000 bytes" in text


def test_staging_keeps_current_previous_and_the_newest(inode: Node, fsroot: Path) -> None:
    """Staging an image removes the staged images that are neither current, previous nor
    pending (the host has none of those: only the newest stays); the same image staged twice
    is one slot."""
    a = data(call(inode, "core.upgrade", {"path": "/imgs/a/manifest.json", "switch": "none"}))
    assert slots_of(inode) == {a["digest"]}
    again = data(call(inode, "core.upgrade", {"path": "/imgs/a/manifest.json",
                                              "switch": "none"}))
    assert again["digest"] == a["digest"] and slots_of(inode) == {a["digest"]}


# ---------------------------------------------------------------- refusals


def _flip_initrd(d: Path) -> None:
    p = d / INITRD
    b = bytearray(p.read_bytes())
    b[1000] ^= 0xFF
    p.write_bytes(bytes(b))


def _edit_manifest(d: Path) -> None:
    m = json.loads((d / "manifest.json").read_text())
    m["version"] = "9.9.9"
    (d / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("case", ["tampered-artifact", "tampered-manifest", "untrusted-key",
                                  "wrong-sha256", "garbage-signature", "signature-of-other"])
def test_refused_before_anything_is_staged(inode: Node, keys: dict[str, Any], fsroot: Path,
                                           case: str) -> None:
    key = keys["other"][0] if case == "untrusted-key" else keys["trusted"][0]
    tamper = {"tampered-artifact": _flip_initrd, "tampered-manifest": _edit_manifest}.get(case)
    manifest = make_image(fsroot / "bad" / case, f"2.0+{case.replace('-', '.')}", key,
                          tamper=tamper)
    args: dict[str, Any] = {"path": f"/bad/{case}/manifest.json", "switch": "none"}
    if case == "wrong-sha256":
        args["sha256"] = "0" * 64
    if case == "garbage-signature":
        args["signature"] = "untrusted comment: x\nRWQ\ntrusted comment: y\nZZZ\n"
    if case == "signature-of-other":
        other = make_image(fsroot / "bad" / "other", "2.0+other", keys["trusted"][0])
        args["signature"] = (other.parent / "manifest.json.minisig").read_text()
    before = slots_of(inode)
    state_file = images(inode) / "state.json"
    state_before = state_file.read_bytes() if state_file.exists() else None
    res = call(inode, "core.upgrade", args)
    assert res["state"] == "ERROR" and res["code"] == 400, res
    nothing_staged(inode, before)
    assert (state_file.read_bytes() if state_file.exists() else None) == state_before
    assert hashlib.sha256(manifest.read_bytes()).hexdigest() not in slots_of(inode)


@pytest.mark.parametrize(("args", "code"), [
    ({"path": "/../../etc/passwd"}, 400),
    ({"path": "/imgs/../../../etc/shadow"}, 400),
    ({"path": "relative/manifest.json"}, 400),
    ({"path": "/escape/manifest.json"}, 404),  # a symlink to / resolves inside the root
    ({"path": "/imgs"}, 400),  # a directory
    ({"path": "/fifo"}, 400),  # never opened for reading (it would block)
    ({"url": "file:///etc/passwd"}, 400),
    ({"url": "ftp://example.org/manifest.json"}, 400),
    ({"url": "http://user:secret@127.0.0.1:1/manifest.json"}, 400),
    ({"url": "http:///manifest.json"}, 400),
    ({"url": "http://127.0.0.1:1/m.json\nX: y"}, 400),
    ({"url": "http://127.0.0.1:1/manifest.json"}, 503),  # nothing listens
    ({}, 400),
    ({"url": "http://127.0.0.1:1/m.json", "path": "/imgs/a/manifest.json"}, 400),
    ({"path": "/imgs/a/manifest.json", "sha256": "not-hex"}, 400),
    ({"path": "/imgs/a/manifest.json", "switch": "firmware"}, 400),
])
def test_hostile_sources_are_refused(inode: Node, fsroot: Path, args: dict[str, Any],
                                     code: int) -> None:
    if not (fsroot / "fifo").exists():
        os.mkfifo(fsroot / "fifo")
    esc = fsroot / "escape"
    esc.mkdir(exist_ok=True)
    if not (esc / "manifest.json").is_symlink():
        (esc / "manifest.json").symlink_to("/etc/passwd")
    before = slots_of(inode)
    res = call(inode, "core.upgrade", {"switch": "none", **args})
    assert res["state"] == "ERROR" and res["code"] == code, res
    nothing_staged(inode, before)


def test_artifact_names_from_a_signed_manifest_cannot_leave_the_directory(
        inode: Node, keys: dict[str, Any], fsroot: Path) -> None:
    """A trusted key signs an image, not paths: ``../`` in an artifact name is refused."""
    make_image(fsroot / "evil", "3.0", keys["trusted"][0], initrd="../../initramfs.cpio.zst")
    before = slots_of(inode)
    res = call(inode, "core.upgrade", {"path": "/evil/manifest.json", "switch": "none"})
    assert res["code"] == 400 and "initramfs" in res["data"], res
    nothing_staged(inode, before)


def test_an_artifact_over_max_bytes_is_refused(inode: Node, keys: dict[str, Any],
                                               http_dir: tuple[Path, str]) -> None:
    d, base = http_dir
    make_image(d / "big", "5.0", keys["trusted"][0], initrd_size=(1 << 20) + 1)
    before = slots_of(inode)
    res = call(inode, "core.upgrade", {"url": f"{base}/big/manifest.json", "switch": "none"})
    assert res["code"] == 413 and "max_bytes" in res["data"], res
    nothing_staged(inode, before)


def test_a_switch_is_refused_on_a_host(inode: Node, fsroot: Path) -> None:
    """core0 dev is not the machine's init: kexec (upgrade or rollback) is refused with 412
    before anything is fetched or loaded."""
    before = slots_of(inode)
    res = call(inode, "core.upgrade", {"path": "/imgs/a/manifest.json"})
    assert res["code"] == 412 and "kexec" in res["data"], res
    res = call(inode, "core.upgrade", {"path": "/imgs/a/manifest.json", "switch": "reboot"})
    assert res["code"] == 412 and "kexec" in res["data"], res
    assert call(inode, "image.rollback")["code"] == 412
    nothing_staged(inode, before)


def test_no_trusted_key_refuses_every_image(tmp_path: Path, fsroot: Path) -> None:
    n = start_node(tmp_path / "state", config=node_config(tmp_path, [], fsroot))
    try:
        res = call(n, "core.upgrade", {"path": "/imgs/a/manifest.json", "switch": "none"})
        assert res["code"] == 412 and "trusted_keys" in res["data"], res
        assert not images(n).exists()
    finally:
        n.stop()


def test_malformed_trusted_key_is_refused(tmp_path: Path, fsroot: Path) -> None:
    n = start_node(tmp_path / "state", config=node_config(tmp_path, ["RWnot-a-key"], fsroot))
    try:
        res = call(n, "core.upgrade", {"path": "/imgs/a/manifest.json", "switch": "none"})
        assert res["code"] == 412 and "not a minisign public key" in res["data"], res
    finally:
        n.stop()


def test_an_image_built_on_an_oci_base_names_it(inode: Node, keys: dict[str, Any],
                                                fsroot: Path) -> None:
    """The base recorded in the signed manifest (build.sh --base) is listed beside the image:
    which OCI image (reference, manifest digest) the node's root came from."""
    base = {"reference": "oci:/src/node:1", "digest": "sha256:" + "ab" * 32,
            "config": "sha256:" + "cd" * 32, "layers": [], "kernel_from": "debian"}
    manifest = make_image(fsroot / "imgs" / "based", "1.0+based", keys["trusted"][0], base=base)
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    data(call(inode, "core.upgrade", {"path": "/imgs/based/manifest.json", "sha256": digest,
                                      "switch": "none"}))
    entry = next(i for i in data(call(inode, "image.list")) if i["digest"] == digest)
    assert entry["base"] == {"reference": "oci:/src/node:1", "digest": "sha256:" + "ab" * 32}
