"""core0.sandbox's pure parts: the seccomp profile resolution, the OCI spec defaults, safe layer
extraction with whiteouts. (The containers themselves are tested in tests/integration.)"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from conftest import unavailable

from core0.sandbox import seccomp, spec, unpack


@pytest.fixture
def profile() -> None:
    """The tests resolving the seccomp profile need containers-common's seccomp.json (skipped
    locally without it, failed under CI=true)."""
    if not os.path.exists(seccomp.PROFILE):
        unavailable(f"containers-common's seccomp profile is not installed ({seccomp.PROFILE})")


def _names(profile: dict, action: str) -> set[str]:
    return {n for r in profile["syscalls"] if r["action"] == action and not r.get("args")
            for n in r["names"]}


@pytest.mark.usefixtures("profile")
def test_seccomp_resolved_for_arch_and_caps() -> None:
    plain = seccomp.resolve(spec.DEFAULT_CAPS)
    assert plain["defaultAction"] == "SCMP_ACT_ERRNO"
    allowed = _names(plain, "SCMP_ACT_ALLOW")
    if seccomp.host_arch() == "amd64":
        assert "arch_prctl" in allowed and "SCMP_ARCH_X86_64" in plain["architectures"]
    assert "s390_runtime_instr" not in allowed
    assert "bpf" not in allowed and "bpf" in _names(plain, "SCMP_ACT_ERRNO")
    admin = seccomp.resolve([*spec.DEFAULT_CAPS, "CAP_SYS_ADMIN"])
    assert "bpf" in _names(admin, "SCMP_ACT_ALLOW")
    for r in plain["syscalls"]:
        assert "includes" not in r and "excludes" not in r


@pytest.mark.usefixtures("profile")
def test_seccomp_hardened() -> None:
    prof = seccomp.default(spec.DEFAULT_CAPS)
    allowed = _names(prof, "SCMP_ACT_ALLOW")
    denied = {n for r in prof["syscalls"] if r["action"] == "SCMP_ACT_ERRNO"
              and r.get("errnoRet") == seccomp.EPERM for n in r["names"]}
    for call in ("keyctl", "add_key", "unshare", "setns", "mount", "umount2", "pivot_root",
                 "ptrace", "syslog"):
        assert call in denied and call not in allowed, call
    clone = [r for r in prof["syscalls"] if "clone" in r["names"]]
    assert clone == [{"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [
        {"index": 0, "value": seccomp.CLONE_NS_FLAGS, "valueTwo": 0,
         "op": "SCMP_CMP_MASKED_EQ"}]}]
    # every name appears in one rule kind only (libseccomp refuses conflicting rules)
    seen: dict[str, str] = {}
    for r in prof["syscalls"]:
        if r.get("args"):
            continue
        for n in r["names"]:
            assert seen.setdefault(n, r["action"]) == r["action"], n
    ptr = seccomp.default([*spec.DEFAULT_CAPS, "CAP_SYS_PTRACE"])
    assert "ptrace" in _names(ptr, "SCMP_ACT_ALLOW")


@pytest.mark.usefixtures("profile")
def test_spec_defaults() -> None:
    sb = spec.Sandbox(rootfs="/r", init="/usr/bin/catatonit", args=[], hostname="h",
                      cgroups_path="/c", netns="/run/netns/x",
                      limits=spec.Limits(memory=1 << 26, pids=10, cpu_quota=50000))
    c = spec.build(sb)
    p = c["process"]
    assert p["args"] == [spec.INIT_PATH, "-P"]
    assert p["noNewPrivileges"] is True and p["terminal"] is False
    assert p["capabilities"]["bounding"] == spec.DEFAULT_CAPS
    assert "inheritable" not in p["capabilities"] and "ambient" not in p["capabilities"]
    lx = c["linux"]
    assert len(lx["maskedPaths"]) == 11 and len(lx["readonlyPaths"]) == 5
    kinds = {n["type"]: n.get("path") for n in lx["namespaces"]}
    assert kinds == {"pid": None, "ipc": None, "uts": None, "mount": None, "cgroup": None,
                     "network": "/run/netns/x"}
    assert lx["resources"]["memory"] == {"limit": 1 << 26}
    assert lx["resources"]["pids"] == {"limit": 10}
    assert lx["resources"]["cpu"] == {"quota": 50000, "period": 100000}
    assert lx["resources"]["devices"] == [{"allow": False, "access": "rwm"}]
    mounts = {m["destination"]: m for m in c["mounts"]}
    assert "ro" in mounts["/sys"]["options"] and "ro" in mounts[spec.INIT_PATH]["options"]
    assert "seccomp" in lx


def test_spec_privileged_and_host_network() -> None:
    sb = spec.Sandbox(rootfs="/r", init="/i", args=["/bin/app", "x"], hostname="h",
                      cgroups_path="/c", netns="host", privileged=True)
    c = spec.build(sb)
    lx = c["linux"]
    assert "seccomp" not in lx and "maskedPaths" not in lx and "readonlyPaths" not in lx
    assert c["process"]["noNewPrivileges"] is False
    assert c["process"]["args"] == [spec.INIT_PATH, "--", "/bin/app", "x"]
    assert set(c["process"]["capabilities"]["bounding"]) == set(spec.host_caps())
    assert "network" not in {n["type"] for n in lx["namespaces"]} and "sysctl" not in lx
    assert lx["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    mounts = {m["destination"]: m for m in c["mounts"]}
    assert "ro" not in mounts["/sys"]["options"]


def _tar(members: list[tuple[str, bytes, str | None]]) -> io.BytesIO:
    """(name, type, linkname or data)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, kind, extra in members:
            ti = tarfile.TarInfo(name)
            ti.type = kind
            data = None
            if kind == tarfile.REGTYPE:
                data = (extra or "").encode()
                ti.size = len(data)
            elif extra is not None:
                ti.linkname = extra
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return buf


def test_layers_with_whiteouts(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    unpack.extract_layer(_tar([("etc", tarfile.DIRTYPE, None),
                               ("etc/a", tarfile.REGTYPE, "a"), ("etc/b", tarfile.REGTYPE, "b"),
                               ("opq", tarfile.DIRTYPE, None), ("opq/old", tarfile.REGTYPE, "o"),
                               ("bin", tarfile.DIRTYPE, None),
                               ("bin/sh", tarfile.SYMTYPE, "/bin/busybox"),
                               ("f", tarfile.REGTYPE, "file")]), root)
    unpack.extract_layer(_tar([("etc/.wh.a", tarfile.REGTYPE, ""),
                               ("opq/.wh..wh..opq", tarfile.REGTYPE, ""),
                               ("opq/new", tarfile.REGTYPE, "n"),
                               ("f", tarfile.DIRTYPE, None)]), root)
    assert sorted(os.listdir(root / "etc")) == ["b"]
    assert sorted(os.listdir(root / "opq")) == ["new"]
    assert os.readlink(root / "bin" / "sh") == "/bin/busybox"
    assert (root / "f").is_dir()


ESC = "core0-unpack-escape-probe"


@pytest.mark.parametrize("members", [
    [("/abs", tarfile.REGTYPE, "x")],
    [("a/../../" + ESC, tarfile.REGTYPE, ESC)],
    [("l", tarfile.SYMTYPE, "../../.."), ("l/" + ESC, tarfile.REGTYPE, ESC)],
    [("l", tarfile.SYMTYPE, "/"), ("l/../../" + ESC, tarfile.REGTYPE, ESC)],
    [("l", tarfile.SYMTYPE, "/tmp"), ("l/" + ESC, tarfile.REGTYPE, ESC)],
    [("h", tarfile.LNKTYPE, "/etc/passwd")],
    [("d", tarfile.CHRTYPE, None)],
    [("d", tarfile.BLKTYPE, None)],
    [("p", tarfile.FIFOTYPE, None)],
    [("a/.wh...", tarfile.REGTYPE, "")],
])
def test_hostile_members(tmp_path: Path, members: list[tuple[str, bytes, str | None]]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(unpack.UnsafeMember):
        unpack.extract_layer(_tar(members), root)
    assert not (tmp_path / ESC).exists() and not (Path("/tmp") / ESC).exists()


def test_copy_tree_refuses_special_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("x")
    os.symlink("/etc", src / "link")
    dest = tmp_path / "dest"
    dest.mkdir()
    assert unpack.copy_tree(src, dest) == 3
    assert os.readlink(dest / "link") == "/etc" and (dest / "d" / "f").read_text() == "x"
    os.mkfifo(src / "fifo")
    dest2 = tmp_path / "dest2"
    dest2.mkdir()
    with pytest.raises(unpack.UnsafeMember):
        unpack.copy_tree(src, dest2)
