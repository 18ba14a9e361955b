"""Load generator processes for the load and fault tests (run with multiprocessing)."""

from __future__ import annotations

import time

from core0_client import Client, Command


def worker(port: int, worker_id: int, n: int, batch: int, out: dict) -> None:  # type: ignore[type-arg]
    """Submit ``n`` commands in pipelined batches, wait for each result; record states."""
    c = Client("127.0.0.1", port, timeout=120, retries=200)
    states: dict[str, str] = {}
    errors: list[str] = []
    done = 0
    while done < n:
        k = min(batch, n - done)
        cmds = []
        for i in range(k):
            seq = done + i
            jid = f"load-{worker_id}-{seq}"
            if seq % 20 == 0:
                cmds.append(Command("core.system", {"name": "true"}, id=jid))
            else:
                cmds.append(Command("core.ping", {}, id=jid))
        while True:
            try:
                resps = c.submit_many(cmds)
                break
            except Exception as e:
                errors.append(repr(e))
                time.sleep(0.2)
        for resp in resps:
            try:
                res = resp.get(120)
                states[resp.id] = res.state.value if res.ok else (
                    f"{res.state.value} {res.code} {res.critical[:200]}")
            except Exception as e:
                errors.append(f"{resp.id}: {e!r}")
        done += k
    out[worker_id] = {"states": states, "errors": errors[:20], "n_errors": len(errors)}
    c.close()
