"""The Python client (sync and asyncio) and core0ctl against a real node."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest
from core0_client import AsyncClient, Client, JobNotFoundError, ResultError, State, TimeoutError


def test_sync_api(client: Client) -> None:
    assert client.ping().startswith("PONG")
    r = client.system("ls -l /").get(10)
    assert r.state is State.SUCCESS and "bin" in r.stdout
    assert client.bash("echo $((6*7))").get(10).stdout == "42\n"
    cpu = client.info.cpu()
    assert cpu and "modelName" in cpu[0]
    assert client.info.mem()["total"] > 0
    assert client.info.os()["kernelVersion"] == os.uname().release
    assert any(n["name"] == "lo" for n in client.info.nic())
    assert isinstance(client.info.port(), list)
    assert isinstance(client.info.disk(), list)
    assert client.info.version()["version"]
    assert any(p["pid"] == os.getpid() for p in client.process.list())
    assert client.config.get()["bus"]["result_ttl"] == 300
    names = {c["name"] for c in client.commands()}
    assert {"core.ping", "core.system", "job.list", "filesystem.open"} <= names
    assert client.json("core.state")["rss"] > 0


def test_typed_errors(client: Client) -> None:
    with pytest.raises(ResultError) as e:
        client.sync("core.system", {"name": "false"})
    assert e.value.code == 1001
    assert client.job.kill("no-such-job") is False  # 0-core's answer, not an error
    with pytest.raises(ResultError) as e:
        client.json("core.system", {"name": "echo", "x": 1})
    assert e.value.code == 400 and "arguments.x" in e.value.message
    with pytest.raises(JobNotFoundError):
        client.response_for("never-" + uuid.uuid4().hex).get(1)


def test_subsecond_timeout(client: Client) -> None:
    resp = client.system("sleep 5")
    with pytest.raises(TimeoutError):
        resp.get(0.3)
    assert resp.running
    client.job.kill(resp.id)
    assert resp.get(10).state is State.KILLED


def test_job_list_kill_and_response_for(client: Client) -> None:
    resp = client.system("sleep 30", tags=["t1"])
    time.sleep(0.3)
    jobs = {j["id"]: j for j in client.job.list()}
    assert jobs[resp.id]["pid"] > 0 and jobs[resp.id]["tags"] == ["t1"]
    assert jobs[resp.id]["rss"] > 0
    assert client.job.list(resp.id)[0]["id"] == resp.id
    again = client.response_for(resp.id)
    assert again.exists and again.running
    client.job.kill(resp.id, 9)
    assert again.get(10).state is State.KILLED


def test_stream_many_readers(client: Client) -> None:
    resp = client.bash("for i in 1 2 3 4; do echo line$i; sleep 0.2; done", stream=True)
    seen: dict[int, list[str]] = {0: [], 1: []}

    def reader(k: int) -> None:
        client.response_for(resp.id).stream(lambda lvl, msg, fl: seen[k].append(msg), timeout=20)

    ts = [threading.Thread(target=reader, args=(k,)) for k in seen]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert seen[0] == seen[1] == ["line1", "line2", "line3", "line4"]
    assert resp.get(10).state is State.SUCCESS


def test_subscribe_relays_output(client: Client) -> None:
    target = client.bash("sleep 0.5; for i in 1 2 3; do echo s$i; sleep 0.1; done")
    subs = [client.subscribe(target.id) for _ in range(2)]
    for s in subs:
        got: list[str] = []
        s.stream(lambda lvl, msg, fl, got=got: got.append(msg), timeout=20)
        assert got == ["s1", "s2", "s3"]
        assert s.get(10).state is State.SUCCESS


def test_upload_download_roundtrip(client: Client, tmp_path) -> None:
    data = os.urandom(1_300_000)
    path = str(tmp_path / "blob.bin")
    assert client.upload(path, data) == len(data)
    assert client.download(path) == data
    assert client.filesystem.exists(path)
    client.filesystem.chmod(path, 0o600)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    client.filesystem.mkdir(str(tmp_path / "d" / "e"))
    client.filesystem.move(path, str(tmp_path / "d" / "e" / "moved"))
    assert [e["name"] for e in client.filesystem.list(str(tmp_path / "d" / "e"))] == ["moved"]
    client.filesystem.remove(str(tmp_path / "d"))
    assert not (tmp_path / "d").exists()


def test_async_client(node) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        async with AsyncClient("127.0.0.1", node.port) as c:
            assert (await c.ping()).startswith("PONG")
            r = await (await c.system("echo async")).get(10)
            assert r.stdout == "async\n"
            assert (await c.info.os())["hostname"]
            results = await asyncio.gather(*[c.ping() for _ in range(50)])
            assert len(results) == 50
            resp = await c.bash("echo a; echo b")
            got: list[str] = []
            await resp.stream(lambda lvl, msg, fl: got.append(msg), timeout=10)
            assert got == ["a", "b"]
            assert await c.json("job.kill", {"id": "nope"}) is False

    asyncio.run(go())


def test_unix_socket_client(node) -> None:  # type: ignore[no-untyped-def]
    with Client(unix_socket_path=node.socket) as c:
        assert c.ping().startswith("PONG")


def ctl(node, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run([sys.executable, "-m", "core0_client.cli", "--port", str(node.port),
                           *args], capture_output=True, text=True, timeout=60, input=stdin)


def test_core0ctl(node) -> None:  # type: ignore[no-untyped-def]
    r = ctl(node, "ping")
    assert r.returncode == 0 and r.stdout.startswith("PONG")
    r = ctl(node, "system", "--", "sh", "-c", "echo out; echo err >&2; exit 4")
    assert r.returncode == 4 and r.stdout == "out\n" and "err" in r.stderr
    r = ctl(node, "--stream", "system", "--", "sh", "-c", "echo live1; echo live2")
    assert r.returncode == 0 and r.stdout == "live1\nlive2\n"
    r = ctl(node, "info", "cpu", "--json")
    assert r.returncode == 0 and '"state": "SUCCESS"' in r.stdout
    r = ctl(node, "job", "list")
    assert r.returncode == 0
    r = ctl(node, "raw", "core.system", '{"name": "uname", "args": ["-r"]}')
    assert r.returncode == 0 and os.uname().release in r.stdout
    r = ctl(node, "job", "kill", "no-such")
    assert r.returncode == 0 and r.stdout.strip() == "false"  # 0-core's answer
    r = ctl(node, "job", "unschedule", "no-such")
    assert r.returncode == 1 and "404" in r.stderr
    r = ctl(node, "filesystem", "exists", "path=/")
    assert r.stdout.strip() == "true"
    r = ctl(node, "commands")
    assert "core.ping" in r.stdout


def test_core0ctl_bad_arguments_for_the_node(node) -> None:  # type: ignore[no-untyped-def]
    """Arguments only the node can judge (its schema) are bad input too: one line, exit 2."""
    for args in (["job", "kill"], ["raw", "core.system", '{"name": "echo", "x": 1}'],
                 ["filesystem", "exists", "path=1"]):
        r = ctl(node, *args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "400" in lines[0] and "Traceback" not in r.stderr
