"""Pure parts of core0.image: the kexec command line, manifest checks, URL checks, the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core0 import config as configmod
from core0.errors import BadRequest
from core0.image.fetch import check_url
from core0.image.store import Store, booted_digest, images_dir
from core0.image.switch import next_cmdline
from core0.image.verify import parse_manifest

D = "ab" * 32


def test_next_cmdline_replaces_the_mark_and_keeps_the_rest() -> None:
    cur = 'console=ttyS0 core0.image=old foo="a b" core0.image.trusted_keys=RWx core0.image=x'
    assert next_cmdline(cur, D) == (f'console=ttyS0 foo="a b" core0.image.trusted_keys=RWx '
                                    f"core0.image={D}")
    assert next_cmdline("", D) == f"core0.image={D}"


def _manifest(**kw: object) -> bytes:
    m = {"version": "1.0+a", "initramfs": "initramfs.cpio.zst",
         "sha256": {"vmlinuz": "0" * 64, "initramfs.cpio.zst": "1" * 64}}
    m.update(kw)
    return json.dumps(m).encode()


def test_parse_manifest() -> None:
    _m, arts = parse_manifest(_manifest())
    assert arts == {"vmlinuz": "0" * 64, "initramfs.cpio.zst": "1" * 64}
    for bad in (_manifest(version=None), _manifest(version="1 0"),
                _manifest(initramfs="../initramfs.cpio.zst"), _manifest(initramfs="x/y"),
                _manifest(sha256={"vmlinuz": "0" * 64}),
                _manifest(sha256={"vmlinuz": "XY", "initramfs.cpio.zst": "1" * 64}),
                b"[]", b"not json"):
        with pytest.raises(BadRequest):
            parse_manifest(bad)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://h/m", "http:///m",
                                 "http://u:p@h/m", "http://h/m#f", "http://h/a b",
                                 "http://h/" + "a" * 3000, "gopher://h/"])
def test_check_url_refuses(url: str) -> None:
    with pytest.raises(BadRequest):
        check_url(url)


def test_check_url_accepts() -> None:
    assert check_url("https://images.example.org/v1/manifest.json?x=1")


def test_images_dir_and_booted_digest(tmp_path: Path) -> None:
    cfg = configmod.load(None, cmdline="quiet",
                         env={}, overrides={"main": {"state_dir": str(tmp_path)}})
    assert images_dir(cfg) == tmp_path / "images" and booted_digest(cfg) is None
    cfg = configmod.load(None, cmdline=f"core0.image={D} core0.image.dir=/data/img", env={},
                         overrides={"main": {"state_dir": str(tmp_path)}})
    assert booted_digest(cfg) == D and images_dir(cfg) == Path("/data/img")
    cfg = configmod.load(None, cmdline="core0.image.dir=/data/img", env={},
                         overrides={"main": {"persistent_dir": "/p"}})
    assert images_dir(cfg) == Path("/p/images")  # a disk wins
    cfg = configmod.load(None, cmdline="core0.image=../../etc", env={},
                         overrides={"main": {"persistent_dir": "/p"}})
    assert booted_digest(cfg) is None and images_dir(cfg) == Path("/p/images")


def test_store_stage_prune_and_history_bound(tmp_path: Path) -> None:
    store = Store(tmp_path / "images")
    digests = []
    for i in range(3):
        inc = store.incoming()
        (inc / "manifest.json").write_text(json.dumps({"version": f"v{i}",
                                                       "initramfs": "initramfs.cpio.zst"}))
        digests.append(f"{i:064x}")
        assert store.stage(inc, digests[-1]).version == f"v{i}"
    leftover = store.incoming()
    assert store.prune({digests[0], None}) == digests[1:]
    assert [s.digest for s in store.slots_list()] == digests[:1] and not leftover.exists()
    state = store.state()
    for i in range(250):
        store.record(state, "staged", n=i)
    store.save(state)
    hist = store.state()["history"]
    assert len(hist) == 200 and hist[-1]["n"] == 249
    with pytest.raises(ValueError):
        store.stage(store.incoming(), "../x")


def _newc_entries(data: bytes) -> dict[str, tuple[int, bytes]]:
    """name → (mode, contents) of a newc archive (the kernel's reading of it)."""
    out: dict[str, tuple[int, bytes]] = {}
    off = 0
    while True:
        assert data[off:off + 6] == b"070701", off
        f = [int(data[off + 6 + 8 * i: off + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        name = data[off + 110: off + 110 + namesize - 1].decode()
        off += 110 + namesize
        off += -off % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, data[off: off + size])
        off += size + (-size % 4)


def test_carried_initrd_is_the_initramfs_then_a_cpio_of_the_store(tmp_path: Path) -> None:
    from core0.image.carry import initrd_with

    store = Store(tmp_path / "var/lib/core0/images")
    inc = store.incoming()
    (inc / "manifest.json").write_text(json.dumps({"version": "v", "initramfs": "i.cpio.zst"}))
    (inc / "i.cpio.zst").write_bytes(b"x" * 1001)
    slot = store.stage(inc, D)
    state = store.state()
    store.record(state, "staged", digest=D)
    store.save(state)
    out = initrd_with(slot.initramfs, tmp_path / "initrd", store, [slot, slot])
    data = out.read_bytes()
    assert data[:1001] == b"x" * 1001 and data[1001:1004] == b"\0\0\0"  # 4-byte boundary
    entries = _newc_entries(data[1004:])
    rel = str(store.root.relative_to("/"))
    assert json.loads(entries[f"{rel}/state.json"][1])["history"][0]["digest"] == D
    assert entries[f"{rel}/slots/{D}/i.cpio.zst"][1] == b"x" * 1001
    assert entries[f"{rel}/slots/{D}/manifest.json"][0] == 0o100400
    assert entries[rel.split("/")[0]][0] == 0o40755  # parents first, as images have them
    assert entries[rel][0] == entries[f"{rel}/slots/{D}"][0] == 0o40700


def test_init_starts_the_assessment_only_for_a_switched_boot() -> None:
    from core0.init.dev import assess_service, dispatcher_argv
    from core0.init.supervise import Service

    disp = Service("dispatcher", dispatcher_argv("/etc/c.toml", {"main": {"debug": True}}),
                   env={"CORE0_PID1": "1"})
    plain = configmod.load(None, cmdline="console=ttyS0", env={})
    assert assess_service(plain, disp) is None
    switched = configmod.load(None, cmdline=f"console=ttyS0 core0.image={D}", env={})
    svc = assess_service(switched, disp)
    assert svc is not None and svc.env == {"CORE0_PID1": "1"}
    assert svc.argv[1:3] == ["-m", "core0.image.assess"]
    assert svc.argv[3:] == disp.argv[4:] and "--config" in svc.argv
