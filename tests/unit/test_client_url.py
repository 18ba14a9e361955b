"""CORE0_URL parsing (``core0_client.url``) and the password never being shown."""

from __future__ import annotations

import pytest
from core0_client import AsyncClient, Client
from core0_client.url import Endpoint, URLError, parse_url

SECRET = "s3cr:t/p@ss"
QUOTED = "s3cr%3At%2Fp%40ss"


def test_redis_url() -> None:
    ep = parse_url(f"redis://alice:{QUOTED}@10.0.0.5:6380/")
    assert (ep.host, ep.port, ep.username, ep.password, ep.tls) == (
        "10.0.0.5", 6380, "alice", SECRET, False)
    assert parse_url("redis://node1").port == 6379
    assert parse_url("redis://:pw@h/0").username is None
    assert parse_url("redis://:pw@h").password == "pw"
    assert parse_url("redis://[::1]:7000/").host == "::1"


def test_rediss_url() -> None:
    ep = parse_url("rediss://op:pw@node:6390/?ca=/etc/ca.pem&cert=/c.pem&key=/k.pem")
    assert ep.tls and ep.verify and (ep.ca, ep.cert, ep.key) == ("/etc/ca.pem", "/c.pem", "/k.pem")
    assert not parse_url("rediss://node/?insecure=1").verify
    assert not parse_url("rediss://node/?insecure").verify
    assert parse_url("rediss://10.0.0.5/?server_name=node1").server_name == "node1"


def test_unix_url() -> None:
    ep = parse_url("unix:///run/core0/redis.sock")
    assert ep.unix_socket_path == "/run/core0/redis.sock" and ep.password is None
    ep = parse_url(f"unix://ro:{QUOTED}@/run/redis.sock")
    assert (ep.username, ep.password, ep.unix_socket_path) == ("ro", SECRET, "/run/redis.sock")


@pytest.mark.parametrize("url", [
    "", "http://h/", "h:6379", "redis://", "redis://h:99999/", "redis://h:abc/",
    "redis://h/3", "redis://h/?ca=/x", "rediss://h/?bogus=1", "rediss://h/?insecure=maybe",
    "unix://", "unix://host/sock", "unix:///s?password=x", "redis://h/#frag",
    "rediss://h/?key=/k.pem", "rediss://h/?ca", "rediss://h/?ca=/a&ca=/b",
])
def test_bad_urls_refused(url: str) -> None:
    with pytest.raises(URLError):
        parse_url(url)


def test_password_never_shown() -> None:
    url = f"rediss://alice:{QUOTED}@node:6390/?ca=/ca.pem"
    ep = parse_url(url)
    for text in (repr(ep), str(ep), ep.display(), repr(Client(url=url)),
                 repr(AsyncClient(url=url)), repr(Client(password=SECRET))):
        assert SECRET not in text and QUOTED not in text and "pw" not in text
    assert "***" in ep.display()
    with pytest.raises(URLError) as e:
        parse_url(f"redis://alice:{QUOTED}@node:notaport/")
    assert SECRET not in str(e.value) and QUOTED not in str(e.value)


def test_client_arguments() -> None:
    c = Client(url="redis://u:p@h:1234/", password="other")
    assert (c.endpoint.username, c.endpoint.password, c.endpoint.port) == ("u", "other", 1234)
    c = Client("h", 99, password="p", username="u", ssl=True, ssl_ca_certs="/ca")
    assert c.endpoint == Endpoint(host="h", port=99, username="u", password="p", tls=True,
                                  ca="/ca")
    assert Client(unix_socket_path="/s").endpoint.unix_socket_path == "/s"
    with pytest.raises(URLError):
        Client(url="ftp://x")
