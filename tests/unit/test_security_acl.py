"""The ACL file and listening plan core0 generates (no server: see
tests/integration/test_security.py for the same rules enforced by a real redis-server)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from core0 import redis_server
from core0.config import ConfigError, load
from core0.security import acl
from core0.security.users import UserError, locked, new_user

PW = "correct horse battery"


def cfg_of(tmp_path: Path, text: str = "", cmdline: str = ""):  # type: ignore[no-untyped-def]
    f = tmp_path / "core0.toml"
    f.write_text(f'[main]\ninclude = []\nstate_dir = "{tmp_path}/state"\n' + text)
    return load(str(f), cmdline=cmdline, env={})


def test_closed_without_credentials(tmp_path: Path) -> None:
    cfg = cfg_of(tmp_path, '[redis]\nbind = "0.0.0.0"\n')
    p = acl.plan(cfg)
    assert (p.mode, p.bind, p.port) == ("closed", "127.0.0.1", 6379)
    conf = redis_server.render_conf(cfg, p)
    assert "bind 127.0.0.1\n" in conf and "protected-mode yes" in conf
    text = acl.render_acl(cfg, p)
    assert "user default on nopass" in text
    assert "redis.bind = 0.0.0.0 is not served" in acl.opening_hint(cfg, p)


def test_kernel_cmdline_password_locks_with_default_user(tmp_path: Path) -> None:
    digest = hashlib.sha256(PW.encode()).hexdigest()
    for cmd in (f"core0.redis.password={PW.replace(' ', '-')}",
                f"core0.redis.password_sha256={digest}"):
        cfg = cfg_of(tmp_path, '[redis]\nbind = "0.0.0.0"\n', cmd)
        p = acl.plan(cfg)
        assert (p.mode, p.bind) == ("locked", "0.0.0.0")
        text = acl.render_acl(cfg, p)
        line = next(ln for ln in text.splitlines() if ln.startswith("user default "))
        assert "-@all" in line and "(+rpush ~core:default)" in line and "nopass" not in line
        assert PW not in text and PW.replace(" ", "-") not in text
    assert f"#{digest}" in text


def test_user_rules_escape_prefix_and_limit_queues(tmp_path: Path) -> None:
    cfg = cfg_of(tmp_path, '[bus]\nprefix = "{n[1]}:"\n[bus.queues]\ndefault = "admin"\n'
                 'ro = "read-only"\nro2 = "read-only"\n'
                 f'[users.mon]\nrole = "readonly"\npassword = "{PW}"\n')
    text = acl.render_acl(cfg, acl.plan(cfg))
    line = next(ln for ln in text.splitlines() if ln.startswith("user mon "))
    assert r"(+rpush ~{n\[1\]}:core:ro ~{n\[1\]}:core:ro2)" in line
    assert r"~{n\[1\]}:result:*)" in line and "core:default" not in line
    for forbidden in ("+@all", "+rpush ~{n\\[1\\]}:result", "+set", "+eval", "+keys", "&*"):
        assert forbidden not in line
    assert "user default off" in text


@pytest.mark.parametrize("table, message", [
    ('[users.x]\nrole = "root"\npassword = "longenough"\n', "role: 'root' is not a known role"),
    ('[users.x]\nrole = "admin"\n', "exactly one of"),
    ('[users.x]\nrole = "admin"\npassword = "short"\n', "password: length must be >= 8"),
    ('[users.x]\nrole = "admin"\npassword_sha256 = "abc"\n',
     "password_sha256: the value is not 64 hex digits"),
    ('[users.x]\nrole = "admin"\npassword = "longenough"\nqueues = ["nope"]\n', "not in bus"),
    ('[users.x]\nrole = "admin"\npassword = "longenough"\nshell = true\n', "unknown key"),
    ('[users.core0]\nrole = "admin"\npassword = "longenough"\n', "core0's own"),
    ('[users.default]\nrole = "admin"\npassword = "longenough"\n', "redis.password"),
    ('[users.x]\nrole = "admin"\npassword = "longenough\\nuser y on"\n',
     "password: the value is not one line"),
    ('[users.x]\nrole = "admin"\npassword = "longenough"\npassword_sha256 = "' + "a" * 64
     + '"\n', "exactly one of"),
    ('[users.x]\nrole = 1\npassword = "longenough"\n', "role: expected a string"),
    ('[users.x]\nrole = "admin"\npassword = "longenough"\nqueues = "default"\n',
     "queues: expected an array"),
    ('[users.x]\nrole = "admin"\npassword = "longenough"\nqueues = ["default", 2]\n',
     r"queues\[1\]: expected a string"),
    ('[redis]\ndefault_role = "god"\n', "default_role"),
    ('[redis]\ntls_port = 6390\n', "tls_cert"),
])
def test_bad_user_tables(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as ei:
        cfg_of(tmp_path, table)
    assert "longenough" not in str(ei.value)


def test_user_table_spellings(tmp_path: Path) -> None:
    """Role names in any case and Redis's ``#`` before a hash are accepted, as Role.parse and
    normalize_hash read them; the runtime path (new_user) applies the same password rule."""
    from core0.security.users import config_users

    digest = hashlib.sha256(PW.encode()).hexdigest()
    cfg = cfg_of(tmp_path, '[bus.queues]\ndefault = "admin"\nro = "read-only"\n'
                 '[users.a]\nrole = " Read_Only "\npassword = "' + PW + '"\n'
                 '[users.b]\nrole = "RO"\npassword_sha256 = "#' + digest.upper() + '"\n')
    users = config_users(cfg)
    assert (users["a"].role, users["b"].role) == ("read-only", "read-only")
    assert users["a"].hash == users["b"].hash == digest
    with pytest.raises(UserError, match="password: length must be >= 8"):
        new_user(cfg, "c", "admin", "short")
    with pytest.raises(UserError, match="password: the value is not one line") as ei:
        new_user(cfg, "c", "admin", "secret-1\nsecret-2")
    assert "secret" not in str(ei.value)


def test_runtime_store_and_files(tmp_path: Path) -> None:
    cfg = cfg_of(tmp_path, '[bus.queues]\ndefault = "admin"\nops = "operator"\n')
    with locked(cfg) as store:
        store.users["op"] = new_user(cfg, "op", "operator", PW)
        store.write()
    with pytest.raises(UserError, match="no queue has role read-only"):
        new_user(cfg, "ro", "read-only", PW)
    p = redis_server.write_files(cfg)
    assert p.mode == "locked" and [u.name for u in p.users] == ["op"]
    state = tmp_path / "state"
    for name in ("users.json", "users.acl", "redis.conf", "core0.secret"):
        assert oct(os.stat(state / name).st_mode)[-3:] == "600", name
        assert PW.encode() not in (state / name).read_bytes()
    secret = acl.internal_secret(cfg)
    assert acl.internal_config(cfg).redis.password == secret
    assert f"user core0 on #{hashlib.sha256(secret.encode()).hexdigest()} ~* &* +@all" in \
        (state / "users.acl").read_text()


def test_tls_turns_plain_port_off(tmp_path: Path) -> None:
    tls = '[redis]\ntls_port = 6390\ntls_cert = "/c"\ntls_key = "/k"\n'
    p = acl.plan(cfg_of(tmp_path, tls))
    assert (p.port, p.tls_port) == (0, 6390)
    p = acl.plan(cfg_of(tmp_path, tls + "plain_tcp = true\n"))
    assert (p.port, p.tls_port) == (6379, 6390)


def test_config_redacts_passwords(tmp_path: Path) -> None:
    """config.get (read-only) shows to_dict(): no password, also not the kernel cmdline's."""
    cfg = cfg_of(tmp_path, f'[redis]\npassword = "{PW}"\n'
                 f'[users.a]\nrole = "admin"\npassword = "{PW}"\n')
    assert PW not in repr(cfg.to_dict())
    cfg = cfg_of(tmp_path, "", "core0.redis.password=kernel-secret-1")
    assert cfg.redis.password == "kernel-secret-1"
    assert "kernel-secret-1" not in repr(cfg.to_dict())


def test_recorded_sources_keep_only_a_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`core0 user` reloads the node's sources; a password in its environment is kept as a
    hash, and still wins over the config file's password."""
    from core0.security import node

    state = tmp_path / "state"
    f = tmp_path / "core0.toml"
    f.write_text(f'[main]\ninclude = []\nstate_dir = "{state}"\n'
                 '[redis]\npassword = "file-pw-123"\n')
    monkeypatch.setenv("CORE0_REDIS_PASSWORD", "env-pw-4567")
    monkeypatch.setenv("CORE0_CMDLINE", "")
    node.record(state, str(f), {"main": {"state_dir": str(state)}})
    monkeypatch.delenv("CORE0_REDIS_PASSWORD")
    assert b"env-pw-4567" not in (state / node.FILE).read_bytes()
    cfg = node.load(str(f), {})
    text = acl.render_acl(cfg, acl.plan(cfg))
    assert f"user default on #{hashlib.sha256(b'env-pw-4567').hexdigest()} " in text


def test_extra_aclfile_cannot_redefine_core_users(tmp_path: Path) -> None:
    extra = tmp_path / "extra.acl"
    extra.write_text("# more users\nuser metrics on #" + "a" * 64 + " +info\n"
                     "user default on nopass +@all ~*\nuser core0 on nopass\nbogus line\n")
    cfg = cfg_of(tmp_path, f'[redis]\naclfile = "{extra}"\npassword = "{PW}"\n')
    text = acl.render_acl(cfg, acl.plan(cfg))
    assert "user metrics on #" in text
    assert "nopass" not in text and "bogus" not in text
