"""core0ctl's bad inputs: one clear line on stderr, exit status 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import free_port

SECRET = "Sup3rS3cret"


def ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("CORE0_")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "core0_client.cli", *args], capture_output=True,
                          text=True, timeout=60, env=e)


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("core0ctl: "), r.stderr
    return lines[0]


BAD = [
    [],
    ["result"],
    ["result", "a", "b"],
    ["stream"],
    ["raw"],
    ["raw", "core.ping", "{bad"],
    ["raw", "core.ping", "[1, 2]"],
    ["raw", "core.ping", '"text"'],
    ["raw", "core.ping", "{}", "extra"],
    ["raw", "core.ping", "[" * 100_000],
    ["system"],
    ["system", "--bogus", "--", "ls"],
    ["bash"],
    ["info"],
    ["--port", "abc", "ping"],
    ["--port", "99999", "ping"],
    ["--timeout", "-1", "ping"],
    ["--timeout", "nan", "ping"],
    ["--timeout", "x", "ping"],
    ["--max-time", "soon", "ping"],
    ["--bogus-option", "ping"],
    ["--url", "ftp://node/", "ping"],
    ["--url", "redis://node/5", "ping"],
    ["--url", "rediss://node/?ca", "--timeout", "1", "ping"],
    ["--url", f"redis://u:{SECRET}@node:notaport/", "ping"],
    ["--url", f"unix://u:{SECRET}@host/sock", "ping"],
    ["--url", "redis://127.0.0.1:1/", "--", "--json"],
]


@pytest.mark.parametrize("args", BAD, ids=lambda a: " ".join(a)[:40] or "nothing")
def test_bad_input_is_one_line_and_exit_2(args: list[str]) -> None:
    r = ctl(*args)
    line = one_line(r)
    assert r.returncode == 2, (r.returncode, line)
    assert SECRET not in r.stderr + r.stdout


def test_bad_environment_is_one_line() -> None:
    r = ctl("ping", env={"CORE0_PORT": "abc"})
    assert r.returncode == 2 and "CORE0_PORT" in one_line(r)
    r = ctl("ping", env={"CORE0_URL": f"redis://u:{SECRET}@h:x/"})
    assert r.returncode == 2 and SECRET not in one_line(r)


def test_unreachable_node_is_one_line_exit_1() -> None:
    port = free_port()
    r = ctl("--timeout", "3", "--url", f"redis://admin:{SECRET}@127.0.0.1:{port}/", "ping")
    line = one_line(r)
    assert r.returncode == 1 and "cannot reach the node" in line and SECRET not in r.stderr
    r = ctl("--timeout", "3", "--socket", "/nonexistent/redis.sock", "ping")
    assert r.returncode == 1 and "cannot reach" in one_line(r)
