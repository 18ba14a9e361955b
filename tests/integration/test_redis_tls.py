"""Both of core0's Redis connections (the pop loop's RESP link and redis.asyncio) reach a real
TLS redis-server with the same CA, password and database — built from one endpoint."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import free_port, require
from core0_client.protocol import Keys

from core0.bus.store import Bus, PopLink
from core0.config import Config, load

PASSWORD = "tls-test-pw"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    require("openssl", "redis-server")
    d = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.crt", "-days", "2", "-subj", "/CN=core0-test-ca", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
             "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "srv.crt", "-days", "2", "-extfile", "ext", cwd=d)
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(d / "srv.crt"), "--tls-key-file", str(d / "srv.key"),
         "--tls-ca-cert-file", str(d / "ca.crt"), "--tls-auth-clients", "no",
         "--requirepass", PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(d)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        r = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(d / "ca.crt"),
                        password=PASSWORD)
        deadline = time.monotonic() + 10
        while True:
            try:
                r.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "TLS redis-server did not start"
                time.sleep(0.05)
        r.close()
        yield port, d
    finally:
        proc.terminate()
        proc.wait(10)


def _cfg(tmp_path: Path, port: int, ca: str) -> Config:
    f = tmp_path / "c.toml"
    f.write_text(f'[main]\nstate_dir = "{tmp_path}"\n[redis]\nembedded = false\n'
                 f'url = "rediss://127.0.0.1:{port}/5"\npassword = "{PASSWORD}"\n'
                 f'tls_ca = "{ca}"\n')
    return load(str(f), cmdline="", env={})


async def _both(cfg: Config) -> tuple[bytes | None, list[object]]:
    bus = Bus(cfg)
    link = PopLink(cfg, Keys(""))
    try:
        await bus.r.set("tls:probe", "from redis.asyncio", ex=60)
        await link.connect()
        replies = await link.run([["GET", "tls:probe"], ["CLIENT", "INFO"]])
        return await bus.r.get("tls:probe"), replies
    finally:
        link.close()
        await bus.close()


def test_both_connections_get_tls_password_and_db(tls_redis: tuple[int, Path],
                                                  tmp_path: Path) -> None:
    port, d = tls_redis
    via_asyncio, replies = asyncio.run(_both(_cfg(tmp_path, port, str(d / "ca.crt"))))
    assert via_asyncio == b"from redis.asyncio"
    assert replies[0] == b"from redis.asyncio"  # the pop link reads the same database (5)
    assert b"db=5" in replies[1]  # type: ignore[operator]


def test_without_the_ca_neither_connects(tls_redis: tuple[int, Path], tmp_path: Path) -> None:
    port, _ = tls_redis
    cfg = _cfg(tmp_path, port, "")

    async def asyncio_client() -> None:
        bus = Bus(cfg)
        try:
            await bus.r.ping()
        finally:
            await bus.close()

    async def pop_link() -> None:
        link = PopLink(cfg, Keys(""))
        try:
            await link.connect()
        finally:
            link.close()

    for attempt in (asyncio_client, pop_link):
        with pytest.raises((redis.ConnectionError, OSError), match="(?i)certificate"):
            asyncio.run(attempt())
