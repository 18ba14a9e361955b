"""Containers: core0's create + run ``/bin/true`` + terminate against the runtime's own ``run``.

In one run, interleaved:

* baseline ``runc run`` (or crun, whichever core0 uses: asserted from the runtime state dir
  holding a running container of core0's) of a bundle holding core0's own ``config.json``
  for the same image (args ``/bin/true``, no network namespace path), timed from this
  process;
* ``podman --runtime <core0's runtime> run --rm --network none --rootfs <same root>
  /bin/true`` when podman works here, and under crun also ``podman run --rm`` with podman's
  default runtime (the >= 3x target is read against podman with core0's runtime);
* core0 over Redis with the client, ``container.run`` of ``/bin/true`` (no nic): one job that
  clones the root, runs the runtime's ``run`` with the command as the init's child, tears
  down (the same life as the baseline's, through the bus); timed until its result, and
  until its teardown (which starts once the result is written) is done too, polled every
  millisecond from the state dir, before the next measurement;
* core0 over Redis with the client, 0-core's three steps: ``corex.create`` (no nic),
  ``corex.dispatch`` of ``core.system /bin/true`` and waiting for its result,
  ``corex.terminate``;
* the root clone alone (core0's overlay clone + drop) of an image holding 100 MB and 1 GB of
  data: it should not grow with the data.

Everything the baseline and core0 touch (the root, the baseline's bundle and runtime state,
core0's state dir with its image store, clones and job files) is on one tmpfs
(``/dev/shm``), as a node's state dir is; ``--disk`` puts it all in a temp dir on disk
instead (core0 then syncs its job steps as its AOF, ``redis.appendfsync``:
`core0/jobs/logsync.py`). The root clone benchmark
always uses a temp dir on disk.

``--runtime crun|runc`` fails unless core0 picked that runtime (``auto``: whichever). A node
is cgroup v2 and core0 uses crun there; on a hybrid cgroup v1/v2 host crun refuses to run and
core0 uses runc, unless ``--crun-hybrid`` moves hugetlb off cgroup v2 for the run (a
host-wide change, always reverted: ``bench/_hybrid.py``).

Prints medians and ratios. Needs root, runc (or crun), a static busybox, redis-server, nft,
dnsmasq.

    .venv/bin/python bench/container.py [--runs 15] [--disk] [--runtime auto|crun|runc]
        [--crun-hybrid]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--disk", action="store_true",
                    help="everything on disk instead of a tmpfs")
    ap.add_argument("--runtime", choices=("auto", "crun", "runc"), default="auto",
                    help="the runtime core0 must be using (auto: whichever its probe picks); "
                         "the baseline and podman use the same one")
    ap.add_argument("--crun-hybrid", action="store_true",
                    help="on a hybrid cgroup v1/v2 host, move hugetlb off cgroup v2 for the "
                         "run so that crun works (host-wide; always reverted at the end)")
    opts = ap.parse_args()
    if opts.crun_hybrid:
        from _hybrid import crun_hybrid
        with crun_hybrid():
            bench(opts)
    else:
        bench(opts)
    disk = Path(tempfile.mkdtemp(prefix="core0-bench-clone-"))
    try:
        clone_bench(disk, opts.runs)
    finally:
        shutil.rmtree(disk, ignore_errors=True)


def core0_runtime(node: Any, runtime_id: str) -> str:
    """The runtime core0 runs its containers with: the one whose state dir (under core0's)
    holds the running container ``runtime_id``."""
    found = [name for name in ("crun", "runc")
             if (node.state_dir / "sandbox" / name / runtime_id).is_dir()]
    assert len(found) == 1, f"container {runtime_id} in the state of {found or 'no runtime'}"
    return found[0]


def podman_runtime(base: list[str]) -> str:
    """podman's default OCI runtime here."""
    res = subprocess.run([*base, "info", "--format", "{{.Host.OCIRuntime.Name}}"],
                         capture_output=True, text=True)
    return res.stdout.strip() or "?"


def bench(opts: argparse.Namespace) -> None:
    from sandbox_fixtures import busybox_rootfs, container_node

    from core0.sandbox import runtime, spec

    shm = "/dev/shm" if not opts.disk and os.path.isdir("/dev/shm") else None
    work = Path(tempfile.mkdtemp(prefix="core0-bench-ctr-", dir=shm))
    print(f"state dir, roots and bundles on {'a tmpfs' if shm else 'disk'} ({work})")
    try:
        rootfs = busybox_rootfs(work / "rootfs")
        with container_node(under=str(work)) as node:
            c = node.client()
            c.raw("container.image.import", {"name": "bb", "source": str(rootfs)}).get(60)
            records = node.state_dir / "sandbox" / "containers"  # a dir per container

            def core0() -> None:
                cid = c.json("corex.create", {"root": "bb", "nics": []})
                inner = c.json("corex.dispatch", {"container": cid, "command": {
                    "command": "core.system", "arguments": {"name": "/bin/true"}}})
                res = c.response_for(inner).get(60)
                assert res.state.value == "SUCCESS", res
                c.json("corex.terminate", {"container": cid})

            # warm-up (runtime probe), and which runtime core0 uses: the one holding a
            # running container's state
            cid = c.json("corex.create", {"root": "bb", "nics": []})
            rec = json.loads((records / str(cid) / "container.json").read_text())
            rt_name = core0_runtime(node, rec["runtime_id"])
            c.json("corex.terminate", {"container": cid})
            if opts.runtime != "auto" and rt_name != opts.runtime:
                sys.exit(f"core0 uses {rt_name} here, not {opts.runtime}"
                         + (" (crun needs --crun-hybrid on a hybrid cgroup host)"
                            if opts.runtime == "crun" else ""))
            # the baseline bundle: core0's spec for the same root, running /bin/true
            bundle = work / "bundle"
            bundle.mkdir()
            sb = spec.Sandbox(rootfs=str(rootfs), init=runtime.find_init(), args=["/bin/true"],
                              hostname="bench", cgroups_path="/core0-bench-baseline")
            (bundle / "config.json").write_text(json.dumps(spec.build(sb)))
            rt_root = work / "rt-state"
            base_runs: list[float] = []
            core_runs: list[float] = []
            pod_base = ["podman", "--root", str(work / "ps"), "--runroot", str(work / "pr"),
                        "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
                        "--events-backend", "file"]
            pod_run = ["run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024",
                       "--ulimit", "nproc=1024:1024", "--rootfs", str(rootfs), "/bin/true"]
            # (label, argv, runtime): podman with core0's runtime first (the target is read
            # against it); under crun, podman's default runtime too
            pods: list[tuple[str, list[str], str]] = []
            if shutil.which("podman"):
                pods.append((f"podman --runtime {rt_name} run --rm",
                             [*pod_base, "--runtime", rt_name, *pod_run], rt_name))
                if rt_name == "crun":
                    pods.append(("podman run --rm (its default runtime)", [*pod_base, *pod_run],
                                 podman_runtime(pod_base)))
            for label, argv, _ in list(pods):
                if subprocess.run(argv, capture_output=True).returncode != 0:
                    print(f"  {label}: does not run here")
                    pods.remove((label, argv, _))
            pod_runs: list[list[float]] = [[] for _ in pods]

            def baseline(i: int) -> None:
                subprocess.run([rt_name, "--root", str(rt_root), "run", "--bundle", str(bundle),
                                "--", f"bench{i}"], check=True, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL)

            def core0_run() -> None:
                res = c.raw("container.run", {"root": "bb", "command": ["/bin/true"],
                                              "nics": []}).get(60)
                assert res.state.value == "SUCCESS", res

            def settled() -> None:
                """Untimed: the run's teardown (after its result) done before the next
                measurement, so it never runs during the baseline's or podman's."""
                deadline = time.monotonic() + 30
                while any(records.iterdir()) and time.monotonic() < deadline:
                    time.sleep(0.001)

            run_runs: list[float] = []
            full_runs: list[float] = []  # container.run until its teardown is done too
            core0()
            core0_run()
            for i in range(opts.runs):
                base_runs.append(timed(lambda i=i: baseline(i)))  # type: ignore[misc]
                core_runs.append(timed(core0))
                run_runs.append(timed(core0_run))
                full_runs.append(run_runs[-1] + timed(settled))
                for (_, argv, _), runs in zip(pods, pod_runs, strict=True):
                    runs.append(timed(lambda a=argv: subprocess.run(  # type: ignore[misc]
                        a, check=True, capture_output=True)))
            c.close()
        report(opts.runs, rt_name, base_runs, core_runs, run_runs, full_runs, pods, pod_runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(runs: int, rt_name: str, base_runs: list[float], core_runs: list[float],
           run_runs: list[float], full_runs: list[float],
           pods: list[tuple[str, list[str], str]], pod_runs: list[list[float]]) -> None:
    b, k = median_ms(base_runs), median_ms(core_runs)
    print(f"create + run /bin/true + terminate, median of {runs}; runtime: baseline "
          f"{rt_name}, core0 {rt_name} (asserted from its runtime state), "
          + ", ".join(f"{label} {prt}" for label, _, prt in pods))
    print(f"  baseline {rt_name} run          {b:8.1f} ms")
    r, f = median_ms(run_runs), median_ms(full_runs)
    print(f"  core0 container.run (one job: clone, run, teardown), to its result {r:8.1f} ms"
          f"   ratio {r / b:5.2f}x")
    print(f"  core0 container.run until its teardown is done too (±1 ms) {f:8.1f} ms   "
          f"ratio {f / b:5.2f}x")
    print(f"  core0 (bus, create/dispatch/terminate) {k:8.1f} ms   ratio {k / b:5.2f}x")
    for (label, _, prt), pr in zip(pods, pod_runs, strict=True):
        p = median_ms(pr)
        print(f"  {label} [{prt}] {p:8.1f} ms   container.run is {p / r:5.2f}x "
              f"faster to its result ({p / f:5.2f}x with its teardown), "
              f"create/dispatch/terminate {p / k:5.2f}x")
    if not pods:
        print("  podman: does not run here")
    else:
        print(f"  (the >= 3x target is read against podman with core0's runtime, {rt_name})")
    # per round (measured back to back, so a load change on a shared host moves both)
    ratio = statistics.median(x / y for x, y in zip(run_runs, base_runs, strict=True))
    extra = median_ms([x - y for x, y in zip(run_runs, base_runs, strict=True)])
    whole = statistics.median(x / y for x, y in zip(full_runs, base_runs, strict=True))
    line = (f"  per round, median: container.run {ratio:5.2f}x the baseline, "
            f"+{extra:.1f} ms ({whole:5.2f}x with its teardown)")
    for (label, _, prt), pr in zip(pods, pod_runs, strict=True):
        faster = statistics.median(x / y for x, y in zip(pr, run_runs, strict=True))
        slower = statistics.median(x / y for x, y in zip(pr, full_runs, strict=True))
        line += (f"; {label.replace(' run --rm', '')} [{prt}] {faster:5.2f}x container.run "
                 f"({slower:5.2f}x with its teardown)")
    print(line)


def clone_bench(work: Path, runs: int) -> None:
    from core0.sandbox import roots

    block = os.urandom(1 << 20)
    results = {}
    for label, mib in (("100 MB", 100), ("1 GB", 1024)):
        lower = work / f"img-{mib}"
        lower.mkdir()
        for i in range(mib):
            (lower / f"f{i:05d}").write_bytes(i.to_bytes(8, "little") + block[8:])
        times = []
        for i in range(runs):
            cdir = work / f"c{mib}-{i}"
            cdir.mkdir()
            times.append(timed(lambda c=cdir, lo=lower: roots.clone(lo, c)))  # type: ignore[misc]
            roots.drop(cdir)
        results[label] = median_ms(times)
        shutil.rmtree(lower)
    a, b = results["100 MB"], results["1 GB"]
    print("root clone (overlay mount), median:")
    print(f"  100 MB image {a:7.2f} ms   1 GB image {b:7.2f} ms   growth {100 * (b - a) / a:+.0f}%")


if __name__ == "__main__":
    main()
