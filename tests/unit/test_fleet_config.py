"""Fleet configuration: a Redis Cluster needs a hash-tagged prefix, and the cluster client
(which also finds the pop link's slot owner) gets the endpoint's credentials and TLS files."""

from __future__ import annotations

from pathlib import Path

import pytest

from core0.bus.endpoint import make_client
from core0.config import ConfigError, hash_tagged, load


def _load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    f = tmp_path / "c.toml"
    f.write_text(f"[main]\nstate_dir = \"{tmp_path}\"\n{text}")
    return load(str(f), cmdline="", env={})


@pytest.mark.parametrize(("prefix", "ok"), [
    ("{node1}:", True), ("x{n}:", True), ("", False), ("node1:", False), ("{}:", False),
    ("}{a:", False),
])
def test_hash_tagged(prefix: str, ok: bool) -> None:
    assert hash_tagged(prefix) is ok


def test_cluster_refused_without_tagged_prefix(tmp_path: Path) -> None:
    redis = '[redis]\nembedded = false\ncluster = true\nurl = "redis://127.0.0.1:7000"\n'
    with pytest.raises(ConfigError, match="hash-tagged"):
        _load(tmp_path, redis + '[bus]\nprefix = "node1:"\n')
    cfg = _load(tmp_path, redis + '[bus]\nprefix = "{node1}:"\n')
    assert cfg.redis.cluster


def test_cluster_client_carries_credentials_and_tls(tmp_path: Path) -> None:
    cfg = _load(tmp_path, '[redis]\nembedded = false\ncluster = true\n'
                          'url = "rediss://bob:pw@db.example:7000"\n'
                          f'tls_ca = "{tmp_path}/ca.crt"\n[bus]\nprefix = "{{n1}}:"\n')
    rc = make_client(cfg, cluster_wide=True)  # also what finds the node's slot owner
    kw = rc.connection_kwargs  # what every node connection of the cluster client uses
    assert kw["username"] == "bob" and kw["password"] == "pw"
    assert kw["ssl_ca_certs"] == f"{tmp_path}/ca.crt" and kw["ssl_cert_reqs"] == "required"
    # the node's own client: bound to its slot's master, same credentials and TLS files
    own = make_client(cfg).connection_pool.connection_kwargs
    assert own["username"] == "bob" and own["password"] == "pw"
    assert own["ssl_ca_certs"] == f"{tmp_path}/ca.crt" and own["slot_cfg"] is cfg
