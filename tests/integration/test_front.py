"""The front (core0/security/front.py) in a real ``core0 dev`` node: real redis-server with ACL
users behind it, real TLS from ``core0 tls init``, clients on the front's port.

What a client gets through the front is what it would get from Redis directly (its AUTH goes
to Redis: ACL users, NOAUTH, NOPERM unchanged), plus 0-core's ledis-era names
``LKEYEXISTS``/``LTTL``; pipelining and blocking commands work; a client that goes away takes
its Redis connection with it; a huge request is refused; no password reaches the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis
import redis.asyncio
from conftest import ROOT, free_port, kill_tree, require, wait_until

from core0.security.front import (
    Front,
    Refused,
    RequestStream,
    declared_size,
    default_needs_auth,
    node_closed,
    preauth_request,
)

DEFAULT_PW = "front-default-Pw-4711"
OPS_PW = "front-ops-Pw-0815-secret"
RO_PW = "front-ro-Pw-2323-secret"


@dataclass
class FrontNode:
    pid: int
    port: int
    state: Path
    tls: Path
    log: Path

    @property
    def ca(self) -> str:
        return str(self.tls / "ca.crt")

    def internal(self) -> redis.Redis:
        """core0's own connection (unix socket, user core0): the test's view from inside."""
        secret = (self.state / "core0.secret").read_text().strip()
        return redis.Redis(unix_socket_path=str(self.state / "redis.sock"), username="core0",
                           password=secret, socket_timeout=30)

    def client(self, **kw: Any) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, ssl=True, ssl_ca_certs=self.ca,
                           socket_timeout=30, **kw)

    def raw(self) -> ssl.SSLSocket:
        """A TLS socket to the front (bytes on the wire, no client library)."""
        ctx = ssl.create_default_context(cafile=self.ca)
        s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        return ctx.wrap_socket(s, server_hostname="127.0.0.1")


def _resp(*args: str | bytes) -> bytes:
    out = b"*%d\r\n" % len(args)
    for a in args:
        b = a.encode() if isinstance(a, str) else a
        out += b"$%d\r\n%s\r\n" % (len(b), b)
    return out


def _replies(s: ssl.SSLSocket, n: int) -> list[Any]:
    r = hiredis.Reader()
    out: list[Any] = []
    while len(out) < n:
        data = s.recv(65536)
        if not data:
            break
        r.feed(data)
        while (x := r.gets()) is not False:
            out.append(x)
    return out


def _start(d: Path, redis_toml: str, up: Callable[[FrontNode], bool]) -> tuple[
        FrontNode, subprocess.Popen[bytes]]:
    """``core0 dev`` with TLS material from ``core0 tls init`` and a front; waits for ``up``."""
    require("redis-server", "openssl")
    tls, state = d / "tls", d / "state"
    subprocess.run([sys.executable, "-m", "core0", "tls", "init", "--dir", str(tls),
                    "--name", "node.test"], check=True, cwd=str(ROOT), capture_output=True,
                   timeout=120)
    port, front = free_port(), free_port()
    conf = d / "core0.toml"
    conf.write_text(f"""
[main]
log_level = "debug"
[redis]
tls_cert = "{tls}/server.crt"
tls_key = "{tls}/server.key"
tls_ca = "{tls}/ca.crt"
front_port = {front}
{redis_toml}
""")
    log = d / "node.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "core0", "dev", "--config", str(conf), "--state-dir",
             str(state), "--redis-port", str(port)],
            stdout=f, stderr=subprocess.STDOUT, cwd=str(ROOT), start_new_session=True)
    node = FrontNode(proc.pid, front, state, tls, log)
    if not wait_until(lambda: up(node), 30):
        _stop(proc)
        raise RuntimeError("front did not come up:\n" + log.read_text()[-4000:])
    return node, proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(30)
    kill_tree(proc.pid)


def _answers(node: FrontNode, **kw: Any) -> bool:
    try:
        return bool(node.client(**kw).ping())
    except (redis.RedisError, OSError):
        return False


@pytest.fixture(scope="module")
def fnode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontNode]:
    d = tmp_path_factory.mktemp("front")
    node, proc = _start(d, f"""password = "{DEFAULT_PW}"
[bus.queues]
default = "admin"
ops = "operator"
[users.ops]
role = "operator"
password = "{OPS_PW}"
[users.ro]
role = "read-only"
password = "{RO_PW}"
""", lambda n: _answers(n, password=DEFAULT_PW))
    try:
        yield node
    finally:
        _stop(proc)


def test_acl_user_through_the_front(fnode: FrontNode) -> None:
    ops = fnode.client(username="ops", password=OPS_PW)
    assert ops.ping()
    # Redis sees the client's own user (on the front's unix-socket connection)
    assert any(c.get("user") == "ops" for c in fnode.internal().client_list())
    # the ledis-era names answer as Redis's EXISTS / TTL
    fnode.internal().rpush("result:fr1:flag", "x")
    assert ops.execute_command("LKEYEXISTS", "result:fr1:flag") == 1
    assert ops.execute_command("LTTL", "result:fr1:flag") == -1
    assert ops.execute_command("lttl", "result:nothing") == -2
    assert ops.rpush("core:ops", "{}") >= 1
    fnode.internal().delete("core:ops", "result:fr1:flag")


def test_noauth_and_noperm_unchanged(fnode: FrontNode) -> None:
    with pytest.raises(redis.AuthenticationError):
        fnode.client().ping()
    with contextlib.closing(fnode.raw()) as s:
        s.sendall(_resp("PING") + _resp("LKEYEXISTS", "result:x"))
        got = _replies(s, 2)
    assert [str(g).split()[0] for g in got] == ["NOAUTH", "NOAUTH"]
    with pytest.raises(redis.AuthenticationError):
        fnode.client(username="ops", password="wrong-password").ping()
    ops = fnode.client(username="ops", password=OPS_PW)
    with pytest.raises(redis.exceptions.NoPermissionError):
        ops.rpush("core:default", "{}")  # the admin queue
    with pytest.raises(redis.exceptions.NoPermissionError):
        ops.keys("*")
    ro = fnode.client(username="ro", password=RO_PW)
    with pytest.raises(redis.exceptions.NoPermissionError):
        ro.rpush("core:ops", "{}")
    with pytest.raises(redis.exceptions.NoPermissionError):
        ro.execute_command("CONFIG", "GET", "dir")
    # the default user is 0-core's one-argument AUTH
    assert fnode.client(password=DEFAULT_PW).execute_command("LTTL", "result:none") == -2


def test_pipelined_requests_keep_order(fnode: FrontNode) -> None:
    fnode.internal().rpush("result:fr2:flag", "x")
    fnode.internal().expire("result:fr2:flag", 60)
    reqs = [_resp("AUTH", "ops", OPS_PW)]
    want: list[Any] = [b"OK"]
    for i in range(300):
        if i % 3 == 0:
            reqs.append(_resp("LKEYEXISTS", "result:fr2:flag"))
            want.append(1)
        elif i % 3 == 1:
            reqs.append(_resp("ECHO", f"m{i}" * (i % 50 + 1)))
            want.append((f"m{i}" * (i % 50 + 1)).encode())
        else:
            reqs.append(_resp("LTTL", "result:fr2:flag"))
            want.append(None)  # 1..60: checked below
    with contextlib.closing(fnode.raw()) as s:
        blob = b"".join(reqs)
        # split across writes at awkward places: the front must re-frame
        for i in range(0, len(blob), 777):
            s.sendall(blob[i:i + 777])
        got = _replies(s, len(want))
    assert len(got) == len(want)
    for w, g in zip(want, got, strict=True):
        if w is None:
            assert 0 < g <= 60
        else:
            assert g == w
    fnode.internal().delete("result:fr2:flag")


def test_blocking_brpoplpush(fnode: FrontNode) -> None:
    ops = fnode.client(username="ops", password=OPS_PW)
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(
        ops.brpoplpush("result:fr3", "result:fr3", 20)))
    t.start()
    internal = fnode.internal()
    assert wait_until(lambda: any(c.get("cmd") == "brpoplpush" for c in internal.client_list()),
                      10)
    internal.rpush("result:fr3", "the result")
    t.join(20)
    assert got == [b"the result"]
    assert ops.execute_command("LKEYEXISTS", "result:fr3") == 1  # rotated onto itself
    internal.delete("result:fr3")


def _blocked(internal: redis.Redis) -> int:
    return sum(1 for c in internal.client_list() if c.get("cmd") == "brpoplpush")


def test_client_gone_mid_request_frees_its_redis_connection(fnode: FrontNode) -> None:
    internal = fnode.internal()
    base = len(internal.client_list())
    # disconnect with half a request sent
    s = fnode.raw()
    s.sendall(_resp("AUTH", "ops", OPS_PW) + b"*3\r\n$5\r\nRPUSH\r\n$7\r\ncore:op")
    assert _replies(s, 1) == [b"OK"]
    s.close()
    # disconnect while blocked in BRPOPLPUSH
    s = fnode.raw()
    s.sendall(_resp("AUTH", "ops", OPS_PW) + _resp("BRPOPLPUSH", "result:fr4", "result:fr4",
                                                   "0"))
    assert _replies(s, 1) == [b"OK"]
    assert wait_until(lambda: _blocked(internal) == 1, 10)
    s.close()
    assert wait_until(lambda: _blocked(internal) == 0, 10)
    assert wait_until(lambda: len(internal.client_list()) <= base, 10)
    assert internal.llen("core:ops") == 0
    assert fnode.client(password=DEFAULT_PW).ping()


def test_huge_bulk_refused(fnode: FrontNode) -> None:
    with contextlib.closing(fnode.raw()) as s:
        s.sendall(_resp("AUTH", "ops", OPS_PW))
        assert _replies(s, 1) == [b"OK"]
        s.sendall(b"*3\r\n$5\r\nRPUSH\r\n$8\r\ncore:ops\r\n$1000000000\r\n" + b"x" * 1000)
        got = _replies(s, 2)
    assert isinstance(got[0], hiredis.ReplyError) and "larger than" in str(got[0])
    assert len(got) == 1  # and the connection is closed
    # growing without a declared size is bounded too
    with contextlib.closing(fnode.raw()) as s:
        s.sendall(_resp("AUTH", "ops", OPS_PW) + b"*2\r\n$4\r\nECHO\r\n$99999999\r\n")
        got = _replies(s, 3)
    assert len(got) == 2 and got[0] == b"OK" and "larger than" in str(got[1])
    assert fnode.internal().llen("core:ops") == 0


def test_unauthenticated_clients_held_to_redis_limits(fnode: FrontNode) -> None:
    """Before AUTH, Redis takes 10 arguments of 16 KiB (CVE-2021-32675); the front must not
    buffer more for such a client (it held 8 MiB twice per connection: 40 connections cost it
    700 MB), and holds what follows an AUTH until Redis has answered it, as Redis does."""
    import psutil

    pid = _front_pid(fnode)
    assert pid is not None
    front = psutil.Process(pid)
    before = front.memory_info().rss
    socks = []
    try:
        for _ in range(40):
            s = fnode.raw()
            socks.append(s)
            s.sendall(b"*2\r\n$4\r\nECHO\r\n$8000000\r\n")
        got = [_replies(s, 2) for s in socks]
        for s in socks:  # the rest of the announced argument: the front has closed the door
            with contextlib.suppress(OSError):
                s.sendall(b"x" * (1 << 20))
        grown = front.memory_info().rss - before
    finally:
        for s in socks:
            s.close()
    assert all(len(g) == 1 and "unauthenticated bulk length" in str(g[0]) for g in got), got
    assert grown < 32 << 20, grown
    with contextlib.closing(fnode.raw()) as s:  # 11 arguments
        s.sendall(_resp("ECHO", *["a"] * 10))
        got = _replies(s, 2)
    assert len(got) == 1 and "unauthenticated multibulk length" in str(got[0])
    big = "result:" + "k" * 100_000
    # pipelined with its AUTH, a big request is taken once Redis has accepted the AUTH
    with contextlib.closing(fnode.raw()) as s:
        s.sendall(_resp("PING") + _resp("AUTH", "ops", OPS_PW) + _resp("LKEYEXISTS", big)
                  + _resp("LTTL", "result:none"))
        got = _replies(s, 4)
    assert str(got[0]).startswith("NOAUTH") and got[1:] == [b"OK", 0, -2]
    # HELLO 3 … AUTH authenticates too (a RESP3 map in reply)
    with contextlib.closing(fnode.raw()) as s:
        s.sendall(_resp("HELLO", "3", "AUTH", "ops", OPS_PW) + _resp("LKEYEXISTS", big))
        got = _replies(s, 2)
    assert isinstance(got[0], dict) and got[1] == 0
    # a refused AUTH leaves the limits in place
    with contextlib.closing(fnode.raw()) as s:
        s.sendall(_resp("AUTH", "ops", "wrong-password") + _resp("LKEYEXISTS", big)[:40])
        got = _replies(s, 3)
    assert len(got) == 2 and str(got[0]).startswith("WRONGPASS")
    assert "unauthenticated bulk length" in str(got[1])
    assert fnode.client(username="ops", password=OPS_PW).ping()


def test_unauthenticated_client_disconnected_after_the_auth_timeout(fnode: FrontNode) -> None:
    """A front in this process (plain TCP, short timeout) before the node's real Redis: a
    client that does not authenticate in time is disconnected; one that does stays."""
    async def scenario() -> tuple[list[Any], list[Any]]:
        front = Front(str(fnode.state / "redis.sock"), needs_auth=lambda: True,
                      auth_timeout=0.5)
        server = await asyncio.start_server(front.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
            ok_r, ok_w = await asyncio.open_connection("127.0.0.1", port)
            ok_w.write(_resp("AUTH", "ops", OPS_PW))
            idle_data = await asyncio.wait_for(idle_r.read(), 10)  # until the front closes it
            ok_w.write(_resp("LTTL", "result:none"))
            reader = hiredis.Reader()
            ok_got: list[Any] = []
            while len(ok_got) < 2:
                reader.feed(await asyncio.wait_for(ok_r.read(4096), 10))
                while (x := reader.gets()) is not False:
                    ok_got.append(x)
            ok_w.close()
            idle_w.close()
            reader = hiredis.Reader()
            reader.feed(idle_data)
            return [reader.gets()], ok_got
        finally:
            server.close()
            await front.close()

    idle, ok = asyncio.run(scenario())
    assert "authentication timeout" in str(idle[0])
    assert ok == [b"OK", -2]


def test_inline_commands_refused(fnode: FrontNode) -> None:
    with contextlib.closing(fnode.raw()) as s:
        s.sendall(b"AUTH ops " + OPS_PW.encode() + b"\r\n")
        got = _replies(s, 2)
    assert len(got) == 1 and "Protocol error" in str(got[0])


def test_many_concurrent_connections(fnode: FrontNode) -> None:
    async def one(i: int) -> int:
        r = redis.asyncio.Redis(host="127.0.0.1", port=fnode.port, ssl=True,
                                ssl_ca_certs=fnode.ca, username="ops", password=OPS_PW,
                                socket_timeout=60)
        try:
            n = 0
            for j in range(10):
                n += await r.execute_command("LKEYEXISTS", f"result:c{i}:{j}")
                assert await r.execute_command("LTTL", f"result:c{i}:{j}") == -2
            return n
        finally:
            await r.aclose()

    async def many() -> list[int]:
        return await asyncio.gather(*(one(i) for i in range(200)))

    assert asyncio.run(many()) == [0] * 200


def test_0core_client_with_its_defaults(fnode: FrontNode, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    try:
        import zeroos.core0.client as zc
    except ImportError:
        from conftest import unavailable

        unavailable("0-core-client is not installed")
    # a user who trusts the node's CA (here: for this process) and otherwise the defaults
    monkeypatch.setenv("SSL_CERT_FILE", fnode.ca)
    cl = zc.Client("127.0.0.1", fnode.port, password=DEFAULT_PW)
    r = cl.system("echo through the front").get()
    assert (r.state, r.stdout) == ("SUCCESS", "through the front\n")
    job = cl.bash("sleep 30")
    assert wait_until(lambda: job.running, 10)
    cl.job.kill(job.id)
    assert wait_until(lambda: not job.running, 20)
    assert job.exists


def test_no_password_in_the_log(fnode: FrontNode) -> None:
    fnode.client(username="ops", password=OPS_PW).ping()
    time.sleep(0.2)  # let the log lines of the last connections land (no assertion on time)
    text = fnode.log.read_text(errors="replace")
    assert "core0.front" in text  # the front logs (at debug level here)
    for pw in (DEFAULT_PW, OPS_PW, RO_PW):
        assert pw not in text


def _accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
        return True
    except OSError:
        return False


def _front_pid(node: FrontNode) -> int | None:
    import psutil

    for k in psutil.Process(node.pid).children():
        with contextlib.suppress(psutil.Error):
            if k.status() != psutil.STATUS_ZOMBIE and "front" in k.cmdline():
                return int(k.pid)
    return None


def test_closed_node_front_is_loopback_only_until_a_credential(tmp_path: Path) -> None:
    """No credential: the front, like Redis, serves 127.0.0.1 only (not ``redis.bind``, here
    127.0.0.2); a user added live opens it there; the shim restarts a front that dies."""
    node, proc = _start(tmp_path, 'bind = "127.0.0.2"', _answers)
    try:
        assert not _accepts("127.0.0.2", node.port)
        pw = "closed-front-Pw-" + uuid.uuid4().hex
        p = subprocess.run([sys.executable, "-m", "core0", "user", "add", "adm", "--role",
                            "admin", "--state-dir", str(node.state), "--config",
                            str(tmp_path / "core0.toml")], input=pw + "\n", text=True,
                           capture_output=True, cwd=str(ROOT), timeout=60, check=False)
        assert p.returncode == 0, p.stderr
        assert wait_until(lambda: _accepts("127.0.0.2", node.port), 20)
        remote = redis.Redis(host="127.0.0.2", port=node.port, ssl=True, ssl_ca_certs=node.ca,
                             ssl_check_hostname=False, username="adm", password=pw,
                             socket_timeout=30)
        assert remote.execute_command("LTTL", "result:none") == -2
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.2", port=node.port, ssl=True, ssl_ca_certs=node.ca,
                        ssl_check_hostname=False, socket_timeout=30).ping()
        # supervised: a front that dies is started again
        first = _front_pid(node)
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: _front_pid(node) not in (None, first), 20)
        assert wait_until(lambda: _accepts("127.0.0.2", node.port), 20)  # locked: bind
        remote = redis.Redis(host="127.0.0.2", port=node.port, ssl=True, ssl_ca_certs=node.ca,
                             ssl_check_hostname=False, username="adm", password=pw,
                             socket_timeout=30)
        assert remote.execute_command("LKEYEXISTS", "result:none") == 0
        assert pw not in node.log.read_text(errors="replace")
    finally:
        _stop(proc)


# ------------------------------------------------ the parts, without a node


def test_request_stream_renames_only_the_two_names() -> None:
    rs = RequestStream(1 << 20)
    blob = (_resp("LKEYEXISTS", "a") + _resp("SET", "LTTL", "LKEYEXISTS")
            + _resp("lttl", "b") + _resp("GET", "x"))
    out = b"".join(rs.feed(blob[i:i + 5]) for i in range(0, len(blob), 5))
    assert out == (_resp("EXISTS", "a") + _resp("SET", "LTTL", "LKEYEXISTS") + _resp("TTL", "b")
                   + _resp("GET", "x"))
    assert (rs.requests, rs.renamed) == (4, 2)


def test_request_stream_before_auth() -> None:
    rs = RequestStream(1 << 20, authed=False)
    blob = _resp("lkeyexists", "a") + _resp("AUTH", "pw") + _resp("GET", "x" * 20_000)
    out = b"".join(rs.feed(blob[i:i + 7]) for i in range(0, len(blob), 7))
    # the AUTH is in flight: nothing after it is parsed (nor refused) yet
    assert out == _resp("EXISTS", "a") + _resp("AUTH", "pw") and rs.waiting
    assert not rs.replies(b"$-1\r\n") and rs.waiting  # the reply to the first request
    assert rs.replies(b"+OK\r\n") and rs.authed and not rs.waiting
    assert rs.resume() == _resp("GET", "x" * 20_000)
    rs = RequestStream(1 << 20, authed=False)
    assert rs.feed(_resp("HELLO", "3", "auth", "u", "p")) and rs.waiting
    assert rs.replies(b"-WRONGPASS invalid\r\n") and not rs.authed and not rs.waiting
    for bad, why in ((b"PING\r\n", "Protocol error"), (b"*0\r\n", "Protocol error"),
                     (b"*01\r\n", "Protocol error"), (b"*1\r\n$-1\r\n", "Protocol error"),
                     (b"*1\r\n$2\r\nabcd", "Protocol error"),
                     (b"*11\r\n", "multibulk length"), (b"*1\r\n$16385\r\n", "bulk length"),
                     (b"*1\r\n$" + b"9" * 30, "Protocol error")):
        with pytest.raises(Refused, match=why):
            RequestStream(1 << 20, authed=False).feed(bad)
    assert preauth_request(b"*1\r\n$4\r\nPI", 0) is None
    assert preauth_request(b"*1\r\n$4\r\nPING\r\n", 0) == ([b"PING"], 14)


def test_declared_size_and_acl_mode(tmp_path: Path) -> None:
    assert declared_size(b"*2\r\n$4\r\nECHO\r\n$1000\r\n", 0, 1 << 20) > 1000
    assert declared_size(b"*2\r\n$4\r\nEC", 0, 1 << 20) == 14  # announced so far
    acl = tmp_path / "users.acl"
    assert node_closed(acl)
    acl.write_text("user core0 on #ab ~* &* +@all\nuser default on nopass ~* &* +@all\n")
    assert node_closed(acl) and not node_closed(acl, protected_mode=False)
    assert not default_needs_auth(acl)
    acl.write_text("user core0 on #ab ~* &* +@all\nuser default off resetkeys -@all\n")
    assert not node_closed(acl) and default_needs_auth(acl)
    assert default_needs_auth(tmp_path / "missing.acl")


def test_config_front_needs_tls_files_and_its_own_port(tmp_path: Path) -> None:
    from core0.config import ConfigError, load

    f = tmp_path / "c.toml"
    for body, err in (("front_port = 7000\n", "needs redis.tls_cert"),
                      ('front_port = 6379\nfront_tls = false\n', "also a port of redis-server"),
                      ('front_port = 7000\ntls_port = 7000\ntls_cert = "c"\ntls_key = "k"\n',
                       "also a port of redis-server")):
        f.write_text(f'[main]\nstate_dir = "{tmp_path}"\n[redis]\n{body}')
        with pytest.raises(ConfigError, match=err):
            load(str(f), cmdline="", env={})
    f.write_text(f'[main]\nstate_dir = "{tmp_path}"\n[redis]\nfront_port = 7000\n'
                 'front_tls = false\n')
    assert load(str(f), cmdline="", env={}).redis.front_port == 7000
