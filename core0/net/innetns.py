"""Run a program in a named network namespace: ``python -m core0.net.innetns NAME -- ARGV…``.

The DHCP client of a container's ``dhcp`` nic must live in the container's network namespace
(core0/sandbox/dhcp.py). core0 starts processes only through its own spawn (no shell, no
``ip netns exec``): this module enters the namespace with setns(2) and execs the program, so
the job engine supervises the program itself (same pid, its exit status).
"""

from __future__ import annotations

import os
import sys

from core0.net.netns import _setns, netns_path


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m core0.net.innetns NETNS -- PROGRAM [ARG…]", file=sys.stderr)
        return 2
    name, program = args[0], args[2:]
    fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
    finally:
        os.close(fd)
    os.execv(program[0], program)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
