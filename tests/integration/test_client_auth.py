"""The client's credentials and TLS against a real redis-server (ACL users, TLS with a CA
made by the openssl CLI): CORE0_URL forms, refusals, and the password never shown."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port, kill_tree, require, wait_until
from core0_client import AsyncClient, AuthError, Client, ConnectionError, TimeoutError

SECRET = "pw-Xq7%3Av"  # holds a "%": URLs must percent-encode it (%25)


@dataclass
class TLSRedis:
    port: int
    socket: str
    pid: int
    dir: Path

    def url(self, user: str = "alice", password: str = SECRET, ca: str = "ca.pem",
            extra: str = "") -> str:
        return (f"rediss://{user}:{password}@127.0.0.1:{self.port}/"
                f"?ca={self.dir / ca}{extra}")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
            cwd=d)


def make_cert(d: Path, name: str, ca: str, san: str) -> None:
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
            f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
            cwd=d)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSRedis]:
    require("redis-server", "openssl")
    d = tmp_path_factory.mktemp("tls")
    make_ca(d, "ca")
    make_ca(d, "otherca")
    make_cert(d, "server", "ca", "IP:127.0.0.1,DNS:localhost")
    make_cert(d, "client", "ca", "DNS:client")
    port, sock = free_port(), str(d / "redis.sock")
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--unixsocket", sock, "--unixsocketperm", "700", "--save", "", "--dir", str(d),
         "--tls-cert-file", str(d / "server.pem"), "--tls-key-file", str(d / "server.key"),
         "--tls-ca-cert-file", str(d / "ca.pem"), "--tls-auth-clients", "optional",
         "--user", "default", "off",
         "--user", "alice", "on", f">{SECRET}", "~*", "+@all",
         "--user", "ro", "on", f">{SECRET}", "resetkeys", "~result:*", "-@all", "+exists",
         "+ttl"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    srv = TLSRedis(port, sock, proc.pid, d)
    try:
        assert wait_until(lambda: os.path.exists(sock), 10), "redis-server did not start"
        yield srv
    finally:
        kill_tree(proc.pid)
        proc.wait(10)


def exists(c: Client) -> bool:
    return bool(c.response_for("no-such-job").exists)


def test_rediss_url_with_ca(tls_redis: TLSRedis) -> None:
    quoted = SECRET.replace("%", "%25").replace(":", "%3A")
    with Client(url=tls_redis.url(password=quoted), timeout=10) as c:
        assert exists(c) is False

    async def go() -> bool:
        async with AsyncClient(url=tls_redis.url(password=quoted), timeout=10) as ac:
            return bool(await ac.response_for("no-such-job").exists)

    assert asyncio.run(go()) is False
    # the flags give the same connection
    with Client("127.0.0.1", tls_redis.port, username="alice", password=SECRET, ssl=True,
                ssl_ca_certs=str(tls_redis.dir / "ca.pem"), timeout=10) as c:
        assert exists(c) is False


def test_client_certificate(tls_redis: TLSRedis) -> None:
    d = tls_redis.dir
    quoted = SECRET.replace("%", "%25")
    url = tls_redis.url(password=quoted, extra=f"&cert={d / 'client.pem'}&key={d / 'client.key'}")
    with Client(url=url, timeout=10) as c:
        assert exists(c) is False


def test_wrong_ca_refused(tls_redis: TLSRedis) -> None:
    quoted = SECRET.replace("%", "%25")
    url = tls_redis.url(password=quoted, ca="otherca.pem")
    with Client(url=url, timeout=10) as c, pytest.raises(ConnectionError) as e:
        exists(c)
    assert "certificate" in str(e.value) and SECRET not in str(e.value)

    async def go() -> None:
        async with AsyncClient(url=url, timeout=10) as ac:
            with pytest.raises(ConnectionError):
                await ac.response_for("x").exists

    asyncio.run(go())
    # verification off: the same wrong CA is accepted
    with Client(url=url + "&insecure=1", timeout=10) as c:
        assert exists(c) is False
    r = subprocess.run([sys.executable, "-m", "core0_client.cli", "--timeout", "5", "ping"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "CORE0_URL": url})
    assert r.returncode == 1 and "certificate" in r.stderr and SECRET not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_plain_client_on_tls_port_fails_cleanly(tls_redis: TLSRedis) -> None:
    with Client(url=f"redis://127.0.0.1:{tls_redis.port}/", timeout=3) as c, \
            pytest.raises((ConnectionError, TimeoutError)):
        exists(c)


def test_credentials_refused(tls_redis: TLSRedis) -> None:
    sock = tls_redis.socket
    with Client(url=f"unix://alice:wrong-{SECRET}@{sock}", timeout=10) as c, \
            pytest.raises(AuthError) as e:
        exists(c)
    assert SECRET not in str(e.value) and SECRET not in repr(c)
    with Client(url=f"unix://{sock}", timeout=10) as c, pytest.raises(AuthError) as e:
        exists(c)  # the default user is off: NOAUTH
    assert "NOAUTH" in str(e.value)
    with Client(url=f"unix://ro:{SECRET.replace('%', '%25')}@{sock}", timeout=10) as c:
        assert exists(c) is False  # HELLO+AUTH and EXISTS are allowed to ro
        with pytest.raises(AuthError) as e:
            c.raw("core.ping")  # RPUSH is not
        assert "NOPERM" in str(e.value)


def test_unix_url_with_password(tls_redis: TLSRedis) -> None:
    quoted = SECRET.replace("%", "%25")
    with Client(url=f"unix://alice:{quoted}@{tls_redis.socket}", timeout=10) as c:
        assert exists(c) is False
    with Client(unix_socket_path=tls_redis.socket, username="alice", password=SECRET) as c:
        assert exists(c) is False


def test_server_name(tls_redis: TLSRedis) -> None:
    quoted = SECRET.replace("%", "%25")
    with Client(url=tls_redis.url(password=quoted, extra="&server_name=localhost"),
                timeout=10) as c:
        assert exists(c) is False
    with Client(url=tls_redis.url(password=quoted, extra="&server_name=elsewhere"),
                timeout=10) as c, pytest.raises(ConnectionError):
        exists(c)


def test_read_only_result_keys_are_polled(tls_redis: TLSRedis) -> None:
    """An ACL user that may only read result keys (no BLMOVE onto itself) still gets its
    results: the client falls back to reading them (LINDEX) until the deadline."""
    import threading

    import redis

    admin = redis.Redis(unix_socket_path=tls_redis.socket, username="alice", password=SECRET)
    admin.execute_command("ACL", "SETUSER", "reader", "on", f">{SECRET}", "resetkeys",
                          "%R~result:*", "-@all", "+exists", "+ttl", "+lindex", "+blmove")
    res = json.dumps({"id": "job-r1", "command": "core.ping", "state": "SUCCESS", "code": 0,
                      "level": 20, "data": '"PONG"'})
    admin.rpush("result:job-r1", res)
    url = f"unix://reader:{SECRET.replace('%', '%25')}@{tls_redis.socket}"
    with Client(url=url, timeout=10) as c:
        assert c.response_for("job-r1").get(5).json() == "PONG"
        assert c._read_only_results  # BLMOVE was refused (NOPERM): reads instead
        admin.rpush("result:job-r2:flag", "")
        later = res.replace("job-r1", "job-r2")
        t = threading.Timer(0.3, lambda: admin.rpush("result:job-r2", later))
        t.start()
        assert c.response_for("job-r2").get(5).ok
        t.join()
        admin.rpush("result:job-r3:flag", "")
        with pytest.raises(TimeoutError):
            c.response_for("job-r3").get(0.5)
    admin.delete("result:job-r1", "result:job-r2", "result:job-r2:flag", "result:job-r3:flag")
    admin.close()
