"""User namespaces (``userns: true``) with real runc: a uid/gid range per container.

Inside, uid 0 is the range's first host uid (``/proc/self/uid_map``); files the container
makes belong to that uid on the host; host-root-owned files the container could write without
a user namespace are out of its reach; dispatch works, also after a dispatcher ``kill -9``
(the range is recorded and kept); terminate frees the range; the security probe's rows are
equal or stricter than a default container's; ``privileged`` with ``userns`` is refused.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until
from sandbox_fixtures import (
    ContainerNode,
    build_probe,
    busybox_rootfs,
    call,
    container_node,
    node_tag,
    ok,
)
from test_sandbox_security import EPERM_CALLS, run_core0

from core0.sandbox import userns


@pytest.fixture(scope="module")
def cnode() -> Iterator[ContainerNode]:
    with container_node() as n:
        # the node's state dir is under this (mkdtemp: 0700); a userns container's root
        # user must be able to search its way to its root (/run is 0755 on a node)
        os.chmod(n.dir, 0o711)
        yield n


@pytest.fixture(scope="module")
def root(cnode: ContainerNode) -> Path:
    r = busybox_rootfs(Path(tempfile.mkdtemp(prefix="ubb-", dir=cnode.dir)) / "rootfs")
    build_probe(r / "probe")
    return r






def sh(cnode: ContainerNode, cid: int, script: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``sh -c script`` dispatched into ``cid``."""
    inner = ok(cnode, "corex.dispatch", {"container": cid, "command": {
        "command": "bash", "arguments": {"script": script}}})
    c = cnode.client()
    try:
        r = c.response_for(inner).get(60)
    finally:
        c.close()
    return r.code, r.streams[0], r.streams[1]


def slots(cnode: ContainerNode) -> dict[int, int]:
    return userns.in_use(cnode.state_dir)


def test_uid_map_and_ownership(cnode: ContainerNode, root: Path) -> None:
    cid = ok(cnode, "corex.create", {"root": str(root), "nics": [], "userns": True})
    try:
        info = ok(cnode, "corex.get", {"query": cid})["container"]
        base = info["userns"]["uid"]
        assert base >= userns.FIRST and info["userns"]["size"] == userns.SIZE
        assert slots(cnode)[base] == cid
        code, out, err = sh(cnode, cid, "cat /proc/self/uid_map /proc/self/gid_map; id -u; "
                                        "touch /made; mkdir /made-dir; stat -c %u /bin/busybox")
        assert code == 0, err
        lines = [ln.split() for ln in out.splitlines()]
        assert lines[0] == ["0", str(base), str(userns.SIZE)]
        assert lines[1] == ["0", str(base), str(userns.SIZE)]
        assert lines[2] == ["0"]  # root inside
        assert lines[3] == ["0"]  # the image's files belong to the container's root
        cdir = cnode.state_dir / "sandbox" / "containers" / str(cid)
        for name in ("made", "made-dir"):  # on the host: the range's first uid/gid
            st = os.stat(cdir / "upper" / name)
            assert (st.st_uid, st.st_gid) == (base, base), name
        # the stored image is untouched (the shift is an idmapped mount of it)
        image = next(i for i in ok(cnode, "container.image.list", {})
                     if i["name"] == str(root))
        assert image
        assert os.stat(root / "bin" / "busybox").st_uid == 0
    finally:
        ok(cnode, "corex.terminate", {"container": cid})
    assert cid not in slots(cnode).values()


def test_host_root_files_out_of_reach(cnode: ContainerNode, root: Path) -> None:
    vol = Path(tempfile.mkdtemp(prefix="vol-", dir=cnode.dir))
    os.chmod(vol, 0o755)
    (vol / "file").write_text("host\n")
    os.chmod(vol / "file", 0o644)
    (vol / "private").mkdir(mode=0o700)
    (vol / "private" / "secret").write_text("s\n")
    script = ("echo c >> /vol/file && echo wrote; cat /vol/private/secret && echo read; "
              "touch /vol/new && echo created; chown 0 /vol/file && echo chowned; true")
    results = {}
    for with_userns in (False, True):
        cid = ok(cnode, "corex.create", {"root": str(root), "nics": [],
                                         "mount": {str(vol): "/vol"}, "userns": with_userns})
        try:
            code, out, _ = sh(cnode, cid, script)
            assert code == 0
            results[with_userns] = out.split()
        finally:
            ok(cnode, "corex.terminate", {"container": cid})
    # without a user namespace the container's root is the node's root on the volume ...
    assert results[False] == ["wrote", "s", "read", "created", "chowned"]
    # ... with one it is an unprivileged host uid: nothing of root's is writable or private
    assert results[True] == []
    assert (vol / "file").read_text() == "host\nc\n"
    assert {p.name for p in vol.iterdir()} == {"file", "private", "new"}


def test_dispatch_adoption_and_free(cnode: ContainerNode, root: Path) -> None:
    a = ok(cnode, "corex.create", {"root": str(root), "nics": [], "userns": True})
    b = ok(cnode, "corex.create", {"root": str(root), "userns": True})  # with a default nic
    terminated = []
    try:
        ga, gb = (ok(cnode, "corex.get", {"query": c})["container"] for c in (a, b))
        ra, rb = ga["userns"]["uid"], gb["userns"]["uid"]
        assert abs(ra - rb) >= userns.SIZE  # no overlap
        c = cnode.client()
        try:
            r = c.response_for(ok(cnode, "corex.dispatch", {"container": b, "command": {
                "command": "core.system", "arguments": {"name": "/bin/ip",
                                                        "args": ["-o", "addr"]}}})).get(60)
        finally:
            c.close()
        assert r.state.value == "SUCCESS" and "172.18." in r.streams[0], r
        old = cnode.dispatcher_pid()
        os.kill(old, signal.SIGKILL)

        def adopted() -> bool:
            try:
                return cnode.dispatcher_pid() != old and call(
                    cnode, "corex.get", {"query": a}).state.value == "SUCCESS"
            except Exception:
                return False

        assert wait_until(adopted, 60)
        after = ok(cnode, "corex.get", {"query": a})["container"]
        assert after["pid"] == ga["pid"] and after["userns"] == ga["userns"]
        code, out, _ = sh(cnode, a, "cat /proc/self/uid_map")
        assert code == 0 and out.split()[:2] == ["0", str(ra)]
        ok(cnode, "corex.terminate", {"container": a})
        terminated.append(a)
        assert ra not in slots(cnode) and slots(cnode)[rb] == b
        # the freed range is given again
        a2 = ok(cnode, "corex.create", {"root": str(root), "nics": [], "userns": True})
        try:
            assert ok(cnode, "corex.get", {"query": a2})["container"]["userns"]["uid"] == ra
        finally:
            ok(cnode, "corex.terminate", {"container": a2})
    finally:
        for cid in (a, b):
            if cid not in terminated:
                ok(cnode, "corex.terminate", {"container": cid})
    assert slots(cnode) == {}
    assert not list((cnode.state_dir / "sandbox" / "containers").iterdir())
    # nothing left: no pinned namespace, idmapped layer, overlay or netns
    with open("/proc/self/mountinfo") as f:
        assert not [ln for ln in f if str(cnode.state_dir) in ln]
    tag = node_tag(cnode)
    assert not [n for n in os.listdir("/run/netns") if tag in n]


def test_concurrent_creates_get_disjoint_ranges(cnode: ContainerNode, root: Path) -> None:
    c = cnode.client()
    try:
        pending = [c.raw("corex.create", {"root": str(root), "nics": [], "userns": True})
                   for _ in range(4)]
        results = [r.get(120) for r in pending]
    finally:
        c.close()
    ids = [json.loads(r.data) for r in results if r.state.value == "SUCCESS"]
    try:
        assert len(ids) == 4, [r.data for r in results]
        bases = sorted(ok(cnode, "corex.get", {"query": i})["container"]["userns"]["uid"]
                       for i in ids)
        assert all(b - a >= userns.SIZE for a, b in zip(bases, bases[1:], strict=False))
        assert sorted(slots(cnode)) == bases and sorted(slots(cnode).values()) == sorted(ids)
    finally:
        for i in ids:
            ok(cnode, "corex.terminate", {"container": i})
    assert slots(cnode) == {}


def test_security_rows_equal_or_stricter(cnode: ContainerNode, root: Path) -> None:
    plain = run_core0(cnode, root)
    ours = run_core0(cnode, root, userns=True)
    print(f"\n{'check':36} {'userns':20} default")
    for k in sorted(set(ours) | set(plain)):
        print(f"{k:36} {ours.get(k, '-'):20} {plain.get(k, '-')}")
    assert set(ours) == set(plain)
    for cap in ("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"):
        assert int(ours[cap], 16) & ~int(plain[cap], 16) == 0, cap
    assert ours["CapEff"] == "00000000800405fb"
    assert ours["NoNewPrivs"] == "1" and ours["Seccomp"] == "2"
    for k in ours:
        if k.startswith("masked:"):
            assert ours[k] == "masked", k
        elif k.startswith("ro:"):
            assert ours[k] in ("ro", "absent") and (ours[k] == plain[k] or plain[k] != "ro"), k
        elif k.startswith("sys:"):
            assert ours[k] != "ok" or plain[k] == "ok", k
    for k in EPERM_CALLS:
        assert ours[k] == "EPERM", (k, ours[k])
    assert ours["ro:/sys"] == "ro"
    assert ours["links"] == "lo" and ours["pid1"] == "/.core0-init"


def test_privileged_with_userns_is_refused(cnode: ContainerNode, root: Path) -> None:
    before = sorted(os.listdir(cnode.state_dir / "sandbox" / "containers"))
    r = call(cnode, "corex.create", {"root": str(root), "nics": [], "userns": True,
                                     "privileged": True})
    assert r.state.value == "ERROR" and r.code == 400, r
    assert "privileged and userns" in r.data
    assert sorted(os.listdir(cnode.state_dir / "sandbox" / "containers")) == before
    assert slots(cnode) == {}


def test_host_network_and_restart(cnode: ContainerNode, root: Path) -> None:
    """With host_network the node's sysfs is bound read-only (a new one needs a netns of the
    user namespace); with a restart policy a new init joins the same pinned namespace."""
    h = ok(cnode, "corex.create", {"root": str(root), "host_network": True, "userns": True})
    try:
        code, out, err = sh(cnode, h, "cat /proc/self/uid_map; touch /sys/x 2>&1; "
                                      "ls /sys/class/net")
        assert code == 0, err
        base = ok(cnode, "corex.get", {"query": h})["container"]["userns"]["uid"]
        assert out.split()[:2] == ["0", str(base)]
        assert "Read-only file system" in out
    finally:
        ok(cnode, "corex.terminate", {"container": h})
    r = ok(cnode, "corex.create", {"root": str(root), "nics": [], "userns": True,
                                   "restart": "always"})
    try:
        before = ok(cnode, "corex.get", {"query": r})["container"]
        os.kill(before["pid"], signal.SIGKILL)

        def restarted() -> bool:
            got = ok(cnode, "corex.get", {"query": r})["container"]
            return got["status"] == "running" and got["pid"] not in (0, before["pid"])

        assert wait_until(restarted, 60)
        code, out, _ = sh(cnode, r, "cat /proc/self/uid_map; ip -o link | wc -l")
        assert code == 0 and out.split() == ["0", str(before["userns"]["uid"]), "65536", "1"]
    finally:
        ok(cnode, "corex.terminate", {"container": r})
    assert slots(cnode) == {}


def test_container_run_in_userns(cnode: ContainerNode, root: Path) -> None:
    """container.run (boot services) takes userns too; its teardown frees the range."""
    c = cnode.client()
    try:
        r = c.raw("container.run", {"root": str(root), "nics": [], "userns": True,
                                    "command": ["/bin/cat", "/proc/self/uid_map"]}).get(120)
    finally:
        c.close()
    assert r.state.value == "SUCCESS", r
    fields = r.streams[0].split()
    assert fields[0] == "0" and int(fields[1]) >= userns.FIRST and fields[2] == "65536"
    assert wait_until(lambda: slots(cnode) == {} and ok(cnode, "corex.list", {}) == {}, 30)


def _inner(cnode: ContainerNode, cid: int, command: str, arguments: dict[str, object]) -> object:
    inner = ok(cnode, "corex.dispatch", {"container": cid, "command": {
        "command": command, "arguments": arguments}})
    c = cnode.client()
    try:
        r = c.response_for(inner).get(60)
    finally:
        c.close()
    assert r.state.value == "SUCCESS", (command, r.data)
    return json.loads(r.data) if r.data else None


def test_filesystem_commands_write_as_the_containers_root(cnode: ContainerNode,
                                                          root: Path) -> None:
    """``filesystem.*`` dispatched into a userns container: what it makes belongs to the
    container's root (host: the range's first uid/gid; inside: 0:0), never host root;
    ``filesystem.chown`` takes the container's ids and names."""
    import base64

    cid = ok(cnode, "corex.create", {"root": str(root), "nics": [], "userns": True})
    try:
        base = ok(cnode, "corex.get", {"query": cid})["container"]["userns"]["uid"]
        _inner(cnode, cid, "filesystem.mkdir", {"path": "/fresh/sub/dir"})
        token = _inner(cnode, cid, "filesystem.open", {"file": "/fresh/sub/dir/f",
                                                       "mode": "w", "perm": 0o4755})
        _inner(cnode, cid, "filesystem.write", {"fd": token,
                                                "block": base64.b64encode(b"hi").decode()})
        _inner(cnode, cid, "filesystem.close", {"fd": token})
        token = _inner(cnode, cid, "filesystem.open", {"file": "/made-by-open", "mode": "x"})
        _inner(cnode, cid, "filesystem.close", {"fd": token})
        rootfs = cnode.state_dir / "sandbox" / "containers" / str(cid) / "rootfs"
        for rel in ("fresh", "fresh/sub", "fresh/sub/dir", "fresh/sub/dir/f", "made-by-open"):
            st = os.lstat(rootfs / rel)
            assert (st.st_uid, st.st_gid) == (base, base), rel
        # the set-uid bit asked for is kept (chown clears it)
        assert os.lstat(rootfs / "fresh/sub/dir/f").st_mode & 0o7777 == 0o4755
        code, out, err = sh(cnode, cid, "ls -lnd /fresh /fresh/sub/dir /fresh/sub/dir/f "
                                        "/made-by-open; cat /fresh/sub/dir/f")
        assert code == 0, err
        rows = [ln.split() for ln in out.splitlines()]
        assert [r[2:4] for r in rows[:4]] == [["0", "0"]] * 4, out
        assert out.endswith("hi")
        # chown by the container's ids and names (root's group from its /etc/group)
        _inner(cnode, cid, "filesystem.chown", {"path": "/made-by-open", "user": "7",
                                                "group": "root"})
        st = os.lstat(rootfs / "made-by-open")
        assert (st.st_uid, st.st_gid) == (base + 7, base)
        code, out, err = sh(cnode, cid, "stat -c '%u %g' /made-by-open")
        assert (code, out.strip()) == (0, "7 0"), err
        r = call(cnode, "corex.dispatch", {"container": cid, "command": {
            "command": "filesystem.chown", "arguments": {"path": "/made-by-open",
                                                         "user": "nobody-here"}}})
        inner = json.loads(r.data)
        c = cnode.client()
        try:
            res = c.response_for(inner).get(60)
        finally:
            c.close()
        assert res.code == 404, res.data
    finally:
        ok(cnode, "corex.terminate", {"container": cid})
