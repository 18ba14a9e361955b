"""A tool run (``core0.proc.process.run``) cut short takes its pipes off the event loop before
it closes them.

Found by killing ``bridge.create`` 5–20 ms in: the dispatcher died of SIGABRT (or, once, kept
a job that never answered). The cancelled run closed its pipes while its reader tasks still
watched them; the handler's clean-up then opened netlink sockets and ran ``nft`` with its
ruleset on stdin, whose new descriptors took the closed ones' numbers, and uvloop (libuv's
``epoll_ctl`` on a descriptor it believed it still watched) aborted the process. The scenario
runs in a child process (an abort would take pytest with it), on the dispatcher's loop and on
asyncio's own.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

SCENARIO = r'''
import asyncio, socket, sys
from core0.proc import process

def sockets():
    # what the clean-up of bridge.create does in a worker thread: netlink sockets
    return [socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) for _ in range(2)]

async def handler(i):
    try:
        await process.run(["true"])
        await process.run(["sleep", "0.2"])
    except asyncio.CancelledError:
        pass  # a handler's clean-up goes on at once
    socks = await asyncio.to_thread(sockets)
    try:
        r = await process.run(["cat"], stdin=b"again %d\n" % i, timeout=5)
    finally:
        for s in socks:
            s.close()
    return r.stdout

async def main():
    loop = asyncio.get_running_loop()
    reaper = process.Reaper()
    reaper.install(loop)
    process.set_reaper(reaper)
    for i in range(200):
        t = asyncio.ensure_future(handler(i))
        await asyncio.sleep((i % 40) / 2000)  # 0 to 20 ms into the two runs
        t.cancel()
        out = await asyncio.wait_for(t, 10)
        assert out == "again %d\n" % i, (i, out)
    print("ok")

if sys.argv[1] == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
'''


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_cancelled_tool_run_leaves_no_descriptor_watched(loop: str) -> None:
    """200 runs cancelled at 0–20 ms, each followed at once by sockets and another tool
    whose stdin is written by the loop: every clean-up run answers, the process lives (the
    old code: SIGABRT within the 200 under uvloop, in five tries of five)."""
    p = subprocess.run([sys.executable, "-X", "faulthandler", "-c", SCENARIO, loop],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, (p.returncode, p.stderr[-3000:])
    assert p.stdout.strip() == "ok"
