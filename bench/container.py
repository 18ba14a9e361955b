"""Containers: core0's create + run ``/bin/true`` + terminate against the runtime's own ``run``.

In one run, interleaved:

* baseline ``runc run`` (or crun, whichever core0 picked) of a bundle holding core0's own
  ``config.json`` for the same image (args ``/bin/true``, no network namespace path), timed
  from this process;
* ``podman run --rm --network none --rootfs <same root> /bin/true`` when podman works here;
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
instead (core0 then fsyncs its job steps, `core0/jobs/state.py`). The root clone benchmark
always uses a temp dir on disk.

Prints medians and ratios. Needs root, runc, a static busybox, redis-server, nft, dnsmasq.

    .venv/bin/python bench/container.py [--runs 15] [--disk]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))


def timed(fn: Callable[[], None]) -> float:
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
    opts = ap.parse_args()
    from sandbox_fixtures import busybox_rootfs, container_node

    from core0.sandbox import runtime, spec

    shm = "/dev/shm" if not opts.disk and os.path.isdir("/dev/shm") else None
    work = Path(tempfile.mkdtemp(prefix="core0-bench-ctr-", dir=shm))
    disk = Path(tempfile.mkdtemp(prefix="core0-bench-clone-"))
    print(f"state dir, roots and bundles on {'a tmpfs' if shm else 'disk'} ({work})")
    try:
        rootfs = busybox_rootfs(work / "rootfs")
        with container_node(under=str(work)) as node:
            c = node.client()
            c.raw("container.image.import", {"name": "bb", "source": str(rootfs)}).get(60)
            rt_name = "runc"
            for name in ("crun", "runc"):
                if (node.state_dir / "sandbox" / name).exists():
                    rt_name = name
            # the baseline bundle: core0's spec for the same root, running /bin/true
            bundle = work / "bundle"
            bundle.mkdir()
            sb = spec.Sandbox(rootfs=str(rootfs), init=runtime.find_init(), args=["/bin/true"],
                              hostname="bench", cgroups_path="/core0-bench-baseline")
            (bundle / "config.json").write_text(json.dumps(spec.build(sb)))
            rt_root = work / "rt-state"
            base_runs, core_runs, pod_runs = [], [], []
            podman = shutil.which("podman") is not None
            pod_argv = ["podman", "--root", str(work / "ps"), "--runroot", str(work / "pr"),
                        "--storage-driver", "vfs",
                        "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend",
                        "file", "run", "--rm", "--network", "none", "--ulimit",
                        "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--rootfs",
                        str(rootfs), "/bin/true"]

            def baseline(i: int) -> None:
                subprocess.run([rt_name, "--root", str(rt_root), "run", "--bundle", str(bundle),
                                "--", f"bench{i}"], check=True, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL)

            def core0() -> None:
                cid = c.json("corex.create", {"root": "bb", "nics": []})
                inner = c.json("corex.dispatch", {"container": cid, "command": {
                    "command": "core.system", "arguments": {"name": "/bin/true"}}})
                res = c.response_for(inner).get(60)
                assert res.state.value == "SUCCESS", res
                c.json("corex.terminate", {"container": cid})

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
            records = node.state_dir / "sandbox" / "containers"  # a dir per container
            if podman and subprocess.run(pod_argv, capture_output=True).returncode != 0:
                podman = False
            core0()  # warm-up (runtime probe)
            core0_run()
            for i in range(opts.runs):
                base_runs.append(timed(lambda i=i: baseline(i)))  # type: ignore[misc]
                core_runs.append(timed(core0))
                run_runs.append(timed(core0_run))
                full_runs.append(run_runs[-1] + timed(settled))
                if podman:
                    pod_runs.append(timed(lambda: subprocess.run(pod_argv, check=True,
                                                                 capture_output=True))
                                    )
            c.close()
        b, k = median_ms(base_runs), median_ms(core_runs)
        print(f"create + run /bin/true + terminate, median of {opts.runs}:")
        print(f"  baseline {rt_name} run          {b:8.1f} ms")
        r, f = median_ms(run_runs), median_ms(full_runs)
        print(f"  core0 container.run (one job: clone, run, teardown), to its result {r:8.1f} ms"
              f"   ratio {r / b:5.2f}x")
        print(f"  core0 container.run until its teardown is done too (±1 ms) {f:8.1f} ms   "
              f"ratio {f / b:5.2f}x")
        print(f"  core0 (bus, create/dispatch/terminate) {k:8.1f} ms   ratio {k / b:5.2f}x")
        if pod_runs:
            p = median_ms(pod_runs)
            print(f"  podman run --rm               {p:8.1f} ms   container.run is {p / r:5.2f}x "
                  f"faster to its result ({p / f:5.2f}x with its teardown), "
                  f"create/dispatch/terminate {p / k:5.2f}x")
        else:
            print("  podman: does not run here")
        # per round (measured back to back, so a load change on a shared host moves both)
        ratio = statistics.median(x / y for x, y in zip(run_runs, base_runs, strict=True))
        extra = median_ms([x - y for x, y in zip(run_runs, base_runs, strict=True)])
        whole = statistics.median(x / y for x, y in zip(full_runs, base_runs, strict=True))
        line = (f"  per round, median: container.run {ratio:5.2f}x the baseline, "
                f"+{extra:.1f} ms ({whole:5.2f}x with its teardown)")
        if pod_runs:
            faster = statistics.median(x / y for x, y in zip(pod_runs, run_runs, strict=True))
            slower = statistics.median(x / y for x, y in zip(pod_runs, full_runs, strict=True))
            line += f"; podman {faster:5.2f}x container.run ({slower:5.2f}x with its teardown)"
        print(line)
        clone_bench(disk, opts.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(disk, ignore_errors=True)


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
