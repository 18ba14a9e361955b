"""What an idle node costs: the dispatcher's RSS, and CPU time and wake-ups while nothing happens
(moved here from the tests: resource figures are measured, not asserted, in tests).

Starts ``core0 dev``, sends a few commands, then measures over idle periods. Prints each figure
with its budget; ``--check`` exits 1 when one is over its budget.

    python bench/idle.py [--check]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time

import psutil
from _common import start_core0, tmpdir

#: (figure, budget): an idle dispatcher stays small and sleeps in its blocking pops
BUDGETS = {
    "dispatcher RSS (MiB)": 45.0,
    "dispatcher CPU over 6 s idle (s)": 0.1,
    "dispatcher voluntary wake-ups over 6 s idle": 30,
    "supervisor voluntary wake-ups over 3 s idle": 5,
}


def measure() -> dict[str, float]:
    tmp = tmpdir("core0-idle-")
    node = start_core0(tmp)
    try:
        c = node.client()
        c.ping()
        c.info.cpu()
        c.close()
        time.sleep(1)
        p = psutil.Process(node.dispatcher_pid())
        out: dict[str, float] = {"dispatcher RSS (MiB)": p.memory_info().rss / 2**20}
        cpu0, ctx0 = sum(p.cpu_times()[:2]), p.num_ctx_switches().voluntary
        time.sleep(6)
        out["dispatcher CPU over 6 s idle (s)"] = sum(p.cpu_times()[:2]) - cpu0
        out["dispatcher voluntary wake-ups over 6 s idle"] = p.num_ctx_switches().voluntary - ctx0
        sup = psutil.Process(node.pid)
        s0 = sup.num_ctx_switches().voluntary
        time.sleep(3)
        out["supervisor voluntary wake-ups over 3 s idle"] = sup.num_ctx_switches().voluntary - s0
        return out
    finally:
        node.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a figure is over budget")
    ns = ap.parse_args()
    over = []
    for name, value in measure().items():
        budget = BUDGETS[name]
        flag = "" if value <= budget else "  OVER BUDGET"
        print(f"{name:48} {value:8.2f}   budget {budget}{flag}")
        if flag:
            over.append(name)
    return 1 if over and ns.check else 0


if __name__ == "__main__":
    sys.exit(main())
