"""One endpoint behind both Redis connections (core0.bus.endpoint): what the URL and the
redis.* settings become."""

from __future__ import annotations

from pathlib import Path

from core0.bus.endpoint import endpoint, make_client
from core0.config import Config, load


def _cfg(tmp_path: Path, redis: str) -> Config:
    f = tmp_path / "c.toml"
    f.write_text(f"[main]\nstate_dir = \"{tmp_path}\"\n[redis]\n{redis}")
    return load(str(f), cmdline="", env={})


def test_embedded_is_the_unix_socket(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, 'password = "pw"\n')
    ep = endpoint(cfg)
    assert ep.path == cfg.redis_socket and ep.password == "pw" and not ep.tls


def test_rediss_url_carries_tls_credentials_and_db(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, 'embedded = false\nurl = "rediss://bob:s%40cret@db.example:7000/3"\n'
                         f'tls_ca = "{tmp_path}/ca.crt"\ntls_cert = "{tmp_path}/c.crt"\n'
                         f'tls_key = "{tmp_path}/c.key"\nusername = "ignored"\n')
    ep = endpoint(cfg)
    assert (ep.host, ep.port, ep.tls, ep.db) == ("db.example", 7000, True, 3)
    assert (ep.username, ep.password) == ("bob", "s@cret")
    assert ep.tls_ca.endswith("ca.crt") and ep.tls_cert.endswith("c.crt")
    # redis.asyncio gets exactly the same options as the pop link
    kw = make_client(cfg).connection_pool.connection_kwargs
    assert kw["host"] == "db.example" and kw["port"] == 7000 and kw["db"] == 3
    assert kw["ssl_ca_certs"] == ep.tls_ca and kw["ssl_certfile"] == ep.tls_cert
    assert kw["ssl_keyfile"] == ep.tls_key and kw["username"] == "bob"
    assert kw["password"] == "s@cret"


def test_unix_url_and_settings_credentials(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, 'embedded = false\nurl = "unix:///run/r.sock?db=2"\n'
                         'username = "u"\npassword = "p"\n')
    ep = endpoint(cfg)
    assert (ep.path, ep.db, ep.username, ep.password, ep.tls) == ("/run/r.sock", 2, "u", "p",
                                                                  False)
    kw = make_client(cfg).connection_pool.connection_kwargs
    assert kw["path"] == "/run/r.sock" and kw["db"] == 2 and kw["password"] == "p"
