"""Container defaults checked from inside (reliability T10), side by side with podman.

A static probe (tests/sandbox_probe.c) reports capabilities, NoNewPrivs, seccomp mode, masked
and read-only paths, the errno of mount / unshare(CLONE_NEWUSER) / keyctl / ptrace(PID 1) / bpf,
the network links and PID 1. It runs in a default core0 container (no nic) and in ``podman
run`` (runc, no network) of the same root; core0's column must be equal or stricter on every
row, and mount/unshare/keyctl/ptrace/bpf must answer EPERM in core0.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import require, unavailable
from sandbox_fixtures import ContainerNode, build_probe, busybox_rootfs

EPERM_CALLS = ("sys:mount", "sys:unshare-user", "sys:keyctl", "sys:ptrace-pid1", "sys:bpf")


@pytest.fixture(scope="module")
def probe_root(cnode: ContainerNode) -> Path:
    root = busybox_rootfs(Path(tempfile.mkdtemp(prefix="probe-", dir=cnode.dir)) / "rootfs")
    build_probe(root / "probe")
    return root


def parse(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        k, eq, v = line.partition("=")
        if eq:
            out[k] = v.split("\0")[0]
    return out


def run_core0(cnode: ContainerNode, root: Path, **create: object) -> dict[str, str]:
    c = cnode.client()
    try:
        r = c.raw("corex.create", {"root": str(root), "nics": [], **create}).get(60)
        assert r.state.value == "SUCCESS", r.data
        cid = json.loads(r.data)
        try:
            d = c.raw("corex.dispatch", {"container": cid, "command": {
                "command": "core.system", "arguments": {"name": "/probe"}}}).get(60)
            inner = c.response_for(json.loads(d.data)).get(60)
            assert inner.state.value == "SUCCESS", inner
            return parse(inner.streams[0])
        finally:
            c.raw("corex.terminate", {"container": cid}).get(60)
    finally:
        c.close()


def run_podman(root: Path, tmp: Path) -> dict[str, str]:
    require("podman")
    # podman raises these limits by default, which a host without CAP_SYS_RESOURCE refuses;
    # lower ones are always allowed (they do not change any row of the probe)
    # vfs: podman's storage makes no mount of its own (overlay would bind its home)
    argv = ["podman", "--root", str(tmp / "storage"), "--runroot", str(tmp / "run"),
            "--storage-driver", "vfs",
            "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
            "run", "--rm", "--network", "none",
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
            "--rootfs", str(root), "/probe"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        unavailable(f"podman does not run here: {r.stderr.strip()[-500:]}")
    return parse(r.stdout)


def test_default_container_vs_podman(cnode: ContainerNode, probe_root: Path) -> None:
    ours = run_core0(cnode, probe_root)
    tmp = Path(tempfile.mkdtemp(prefix="podman-", dir=cnode.dir))
    try:
        theirs = run_podman(probe_root, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'check':36} {'core0':20} podman")
    for k in sorted(set(ours) | set(theirs)):
        print(f"{k:36} {ours.get(k, '-'):20} {theirs.get(k, '-')}")
    for cap in ("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"):
        assert int(ours[cap], 16) & ~int(theirs[cap], 16) == 0, cap  # a subset
    assert ours["CapEff"] == "00000000800405fb"  # containers-common's 11 capabilities
    assert ours["CapInh"] == ours["CapAmb"] == "0000000000000000"
    assert ours["NoNewPrivs"] == "1" and int(ours["NoNewPrivs"]) >= int(theirs["NoNewPrivs"])
    assert ours["Seccomp"] == "2" and theirs["Seccomp"] == "2"
    for k in (k for k in theirs if k.startswith("masked:")):
        assert ours[k] == "masked" or theirs[k] == "READABLE", k
    assert all(ours[k] == "masked" for k in ours if k.startswith("masked:"))
    assert all(ours[k] in ("ro", "absent") for k in ours if k.startswith("ro:"))
    assert ours["ro:/sys"] == ours["ro:/proc/sys"] == "ro"
    for k in (k for k in theirs if k.startswith("sys:")):
        assert ours[k] != "ok" or theirs[k] == "ok", k  # refused where podman refuses
    for k in EPERM_CALLS:
        assert ours[k] == "EPERM", (k, ours[k])
    assert ours["links"] == "lo"
    assert ours["pid1"] == "/.core0-init"


def test_privileged_lifts_what_podman_privileged_lifts(cnode: ContainerNode,
                                                       probe_root: Path) -> None:
    ours = run_core0(cnode, probe_root, privileged=True)
    assert ours["Seccomp"] == "0" and ours["NoNewPrivs"] == "0"
    assert int(ours["CapBnd"], 16) & (1 << 21)  # CAP_SYS_ADMIN
    assert ours["ro:/sys"] == "WRITABLE"
    assert ours["masked:/proc/kcore"] == "READABLE" or not Path("/proc/kcore").exists()
