"""core0/proc/confine.py on real bubblewrap: a confined tool reaches the descriptors core0
gives it (``process.run(keep_fds=…)``) and nothing else of the node — no host path, not
through ``/proc/1/root``, no network, no capability but CAP_DAC_OVERRIDE, no environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require, require_root

from core0.proc import confine

pytestmark = [pytest.mark.root]

ROOT = Path(__file__).resolve().parents[2]

# run in a child: the reaper blocks SIGCHLD in the process that installs it
SCRIPT = r'''
import asyncio, json, os, sys
from core0.proc import confine, process

async def main():
    reaper = process.Reaper()
    process.set_reaper(reaper)
    reaper.install(asyncio.get_running_loop())
    given = os.open(sys.argv[1], os.O_RDONLY | os.O_CLOEXEC)
    out = {}

    async def run(name, argv, keep=()):
        res = await process.run(confine.confined(argv), keep_fds=keep, env={"SECRET": "x"})
        out[name] = [res.status, res.stdout, res.stderr]

    await run("given", ["cat", confine.fd_path(given)], (given,))
    await run("not_given", ["cat", confine.fd_path(given)])
    await run("by_path", ["cat", "--", sys.argv[1]], (given,))
    for path in ("/etc/passwd", "/proc/1/root/etc/passwd", "/root", "/proc/net/dev",
                 "/proc/self/status"):
        await run(path, ["cat", "--", path])
    await run("env", ["env"])
    await run("missing", ["/no/such/tool"])
    await run("ls_root", ["ls", "-a", "/"])
    print(json.dumps(out))

asyncio.run(main())
'''


def test_a_confined_tool_sees_only_what_it_is_given(tmp_path: Path) -> None:
    require_root()
    require("bwrap", "cat", "env")
    host = tmp_path / "host-file"
    host.write_text("ONLY-THROUGH-THE-DESCRIPTOR\n")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(host)], capture_output=True,
                          text=True, cwd=str(ROOT), timeout=120, check=True)
    out = json.loads(proc.stdout)
    assert out["given"][:2] == [0, "ONLY-THROUGH-THE-DESCRIPTOR\n"], out["given"]
    assert out["not_given"][0] != 0  # close-on-exec unless kept
    assert out["by_path"][0] != 0 and "No such file" in out["by_path"][2]
    for path in ("/etc/passwd", "/proc/1/root/etc/passwd", "/root"):
        assert out[path][0] != 0, (path, out[path])
    assert [line.split(":")[0].strip() for line in out["/proc/net/dev"][1].splitlines()[2:]] \
        == ["lo"]
    status = dict(line.split(":\t", 1) for line in out["/proc/self/status"][1].splitlines()
                  if ":\t" in line)
    assert int(status["CapEff"], 16) == 1 << 1 == int(status["CapPrm"], 16)  # DAC_OVERRIDE
    assert status["NoNewPrivs"].strip() == "1"
    assert out["env"][0] == 0 and set(out["env"][1].split()) <= {"PWD=/"}  # (bwrap's own)
    # bwrap's own failure is told from the tool's (a 412 for the command, not a 400)
    assert confine.failure(out["missing"][2]) == "execvp /no/such/tool: No such file or directory"
    assert confine.failure(out["by_path"][2]) is None
    assert set(out["ls_root"][1].split()) <= {".", "..", "usr", "lib", "lib64", "bin", "sbin",
                                              "etc", "proc", "dev", "tmp"}
    assert os.path.exists(host)
