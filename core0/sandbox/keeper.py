"""The keeper of a container with a restart policy: ``python -m core0.sandbox.keeper``.

core0 runs one keeper per such container as a *protected service* of the job engine, so the
engine's rules apply to it: restart with backoff (≥ 1 s, doubling to 60 s, reset after 10 s
healthy), exit 125 = permanent, adoption by a new dispatcher after a restart (the keeper is a
process job; the container is not its child either).

One run of the keeper: if the container is running, wait for its init to end (a pidfd, no
polling) and exit 1; if it is stopped, delete it in the runtime and run the same bundle again
(same root clone, netns and cgroup path), then wait for that init. When the runtime no longer
knows the container (terminated), exit 125. The keeper is its own process tree's only reaper:
it waits for the runtime processes it starts, nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys

from core0.proc.spawn import spawn_program

PERMANENT = 125


def _run(argv: list[str], out: int) -> tuple[int, bytes]:
    """Run ``argv`` (stdin /dev/null, stdout+stderr to ``out`` or a pipe); (status, output)."""
    nul = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    r = w = -1
    if out < 0:
        r, w = os.pipe2(os.O_CLOEXEC)
        out = w
    try:
        pid = spawn_program(argv[0], argv, dict(os.environ), (nul, out, out))
    finally:
        os.close(nul)
        if w >= 0:
            os.close(w)
    data = b""
    if r >= 0:
        while chunk := os.read(r, 65536):
            data += chunk
        os.close(r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), data


def _wait_gone(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        p = select.poll()
        p.register(fd, select.POLLIN)
        p.poll()
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="core0.sandbox.keeper")
    ap.add_argument("--runtime", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--id", required=True)
    a = ap.parse_args(argv)
    rt = [a.runtime, "--root", a.root]
    status, out = _run([*rt, "state", "--", a.id], -1)
    if status != 0:
        print(f"container {a.id} is gone: {out.decode(errors='replace')[-300:]}", flush=True)
        return PERMANENT
    state = json.loads(out)
    pid = int(state.get("pid") or 0)
    if state.get("status") != "running":
        print(f"container {a.id} is {state.get('status')}: starting it again", flush=True)
        _run([*rt, "delete", "--force", "--", a.id], -1)
        log = os.open(os.path.join(a.bundle, "container.log"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            status, _ = _run([*rt, "run", "--detach", "--bundle", a.bundle, "--pid-file",
                              os.path.join(a.bundle, "init.pid"), "--", a.id], log)
        finally:
            os.close(log)
        if status != 0:
            print(f"restart of {a.id} failed (status {status})", flush=True)
            return 1
        with open(os.path.join(a.bundle, "init.pid")) as f:
            pid = int(f.read().strip())
    print(f"container {a.id} runs as pid {pid}", flush=True)
    _wait_gone(pid)
    print(f"container {a.id}: init {pid} ended", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
