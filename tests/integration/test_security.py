"""The node's Redis with ACL users and TLS, on a real redis-server under ``core0 dev``.

A locked node (config users + a 0-core ``default`` password) refuses unauthenticated clients,
limits each user to its queues and to reading results, and changes users live; TLS refuses a
client that trusts another CA; no password reaches a log or the state dir.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import ROOT, Node, free_port, kill_tree, require

ADMIN_PW = "admin-" + uuid.uuid4().hex
RO_PW = "ro-" + uuid.uuid4().hex
ZERO_PW = "zero-" + uuid.uuid4().hex
PASSWORDS = [ADMIN_PW, RO_PW, ZERO_PW]

CONFIG = f"""
[main]
include = []
[bus.queues]
default = "admin"
ro = "read-only"
[redis]
bind = "127.0.0.1"
password = "{ZERO_PW}"
default_role = "admin"
[users.admin]
role = "admin"
password = "{ADMIN_PW}"
[users.readonly]
role = "read-only"
password_sha256 = "{__import__('hashlib').sha256(RO_PW.encode()).hexdigest()}"
"""


def core0(*args: str, stdin: str = "", state: Path | None = None,
          config: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "core0", *args]
    if state is not None:
        argv += ["--state-dir", str(state)]
    if config is not None:
        argv += ["--config", str(config)]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, cwd=str(ROOT),
                          timeout=60, check=False)


def start_locked(d: Path, config: str, user: str | None, password: str,
                 extra: list[str] | None = None, **client_kw) -> Node:  # type: ignore[no-untyped-def]
    """``core0 dev`` with ``config``; wait until ``user``/``password`` gets a core.ping."""
    require("redis-server")
    from core0_client import Client

    port = free_port()
    (d / "core0.toml").write_text(config)
    state, log = d / "state", d / "node.log"
    argv = [sys.executable, "-m", "core0", "dev", "--state-dir", str(state), "--redis-port",
            str(port), "--config", str(d / "core0.toml"), *(extra or [])]
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=str(ROOT),
                                start_new_session=True)
    node = Node(proc.pid, port, state, log)
    kw = {"port": port, "username": user, "password": password, "timeout": 5, "retries": 2}
    kw.update(client_kw)
    c = Client(**kw)
    deadline = time.monotonic() + 30
    while True:
        try:
            c.ping()
            break
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                node.stop()
                raise RuntimeError("node did not come up:\n" + log.read_text()[-3000:]) from None
            time.sleep(0.1)
    c.close()
    return node


@pytest.fixture(scope="module")
def locked() -> Iterator[Node]:
    d = Path(tempfile.mkdtemp(prefix="core0-sec-"))
    n = start_locked(d, CONFIG, "admin", ADMIN_PW)
    yield n
    n.stop()
    kill_tree(n.pid)
    import shutil

    shutil.rmtree(d, ignore_errors=True)


def tcp(node: Node, user: str | None = None, password: str | None = None) -> redis.Redis:
    return redis.Redis(port=node.port, username=user, password=password, socket_timeout=20)


def noperm(fn, *args) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(redis.exceptions.NoPermissionError) as ei:
        fn(*args)
    return str(ei.value)


def test_unauthenticated_gets_noauth(locked: Node) -> None:
    for r in (tcp(locked), redis.Redis(unix_socket_path=locked.socket)):
        with pytest.raises(redis.AuthenticationError, match="(?i)auth"):
            r.rpush("core:default", json.dumps({"id": "x", "command": "core.ping"}))
        r.close()
    with pytest.raises(redis.AuthenticationError):
        tcp(locked, "readonly", "wrong-password").ping()


def test_readonly_refused_everything_but_its_queue(locked: Node) -> None:
    r = tcp(locked, "readonly", RO_PW)
    assert r.ping()
    cmd = json.dumps({"id": uuid.uuid4().hex, "command": "core.system",
                      "arguments": {"name": "id"}})
    noperm(r.rpush, "core:default", cmd)  # the admin queue
    noperm(r.flushall)
    noperm(r.config_get, "*")
    noperm(r.keys, "*")
    noperm(r.scan)
    noperm(r.eval, "return 1", 0)
    noperm(r.execute_command, "ACL", "LIST")
    with pytest.raises(redis.ResponseError):  # off for everyone (enable-debug-command no)
        r.execute_command("DEBUG", "SLEEP", "0")
    # results cannot be forged, only read
    noperm(r.rpush, "result:forged", '{"state":"SUCCESS"}')
    noperm(r.lpush, "result:forged:flag", "")
    noperm(r.set, "result:forged", "x")
    noperm(r.delete, "result:forged")
    noperm(r.expire, "result:forged", 1)
    noperm(r.xadd, "log:forged", {"a": "b"})
    noperm(r.rpush, "core:ro:processing", cmd)
    noperm(r.publish, "core0", "x")
    r.close()


def test_readonly_queue_end_to_end(locked: Node) -> None:
    """A read-only user drives core0 through its queue, with core0's and 0-core's reads."""
    from core0_client import Client, ResultError

    with Client(port=locked.port, username="readonly", password=RO_PW, queue="ro",
                timeout=30) as c:
        assert c.ping()
        info = c.json("info.version", {})
        assert "version" in info
        with pytest.raises(ResultError) as ei:  # core0's own role check on the queue
            c.sync("core.system", {"name": "id"})
        assert ei.value.code == 403
    # 0-core's client flow, command by command
    r = tcp(locked, "readonly", RO_PW)
    jid = uuid.uuid4().hex
    r.rpush("core:ro", json.dumps({"id": jid, "command": "info.os", "arguments": {},
                                   "stream": True}))
    assert r.brpoplpush(f"result:{jid}:flag", f"result:{jid}:flag", 20) == b""
    raw = r.brpoplpush(f"result:{jid}", f"result:{jid}", 20)
    assert json.loads(raw)["state"] == "SUCCESS"
    assert r.exists(f"result:{jid}:flag", f"result:{jid}") == 2
    assert r.ttl(f"result:{jid}") > 0
    assert r.lrange(f"result:{jid}", 0, -1) == [raw]
    r.close()


def test_zero_core_one_argument_auth(locked: Node) -> None:
    """0-core's clients: AUTH <password> (the default user), limited to the admin queues."""
    r = redis.Redis(port=locked.port, password=ZERO_PW, socket_timeout=20)
    jid = uuid.uuid4().hex
    r.rpush("core:default", json.dumps({"id": jid, "command": "core.system",
                                        "arguments": {"name": "true"}}))
    raw = r.brpoplpush(f"result:{jid}", f"result:{jid}", 20)
    assert json.loads(raw)["state"] == "SUCCESS"
    noperm(r.flushall)
    noperm(r.rpush, "core:ro", "{}")
    noperm(r.rpush, f"result:{jid}x", "{}")
    r.close()


def test_user_commands_live(locked: Node, tmp_path: Path) -> None:
    cfg = locked.state_dir.parent / "core0.toml"
    pw1, pw2 = "op1-" + uuid.uuid4().hex, "op2-" + uuid.uuid4().hex
    PASSWORDS.extend([pw1, pw2])
    p = core0("user", "add", "carol", "--role", "read-only", stdin=pw1 + "\n",
              state=locked.state_dir, config=cfg)
    assert p.returncode == 0, p.stderr
    assert "applied to the running redis" in p.stdout
    assert pw1 not in p.stdout + p.stderr
    r = tcp(locked, "carol", pw1)
    assert r.ping()
    noperm(r.rpush, "core:default", "{}")
    lst = core0("user", "list", "--json", state=locked.state_dir, config=cfg)
    rows = {u["name"]: u for u in json.loads(lst.stdout)}
    assert rows["carol"] == {"name": "carol", "role": "read-only", "queues": ["ro"],
                             "source": "runtime"}
    assert set(rows) == {"admin", "readonly", "default", "carol"}
    stored = (locked.state_dir / "users.json").read_text()
    assert pw1 not in stored and oct(os.stat(locked.state_dir / "users.json").st_mode)[-3:] == "600"

    pwfile = tmp_path / "pw"
    pwfile.write_text(pw2 + "\n")
    p = core0("user", "passwd", "carol", "--password-file", str(pwfile),
              state=locked.state_dir, config=cfg)
    assert p.returncode == 0, p.stderr
    with pytest.raises(redis.ConnectionError):  # the old session is closed
        r.ping()
    with pytest.raises(redis.AuthenticationError):
        tcp(locked, "carol", pw1).ping()
    r2 = tcp(locked, "carol", pw2)
    assert r2.ping()

    p = core0("user", "remove", "carol", state=locked.state_dir, config=cfg)
    assert p.returncode == 0, p.stderr
    with pytest.raises(redis.ConnectionError):
        r2.ping()
    with pytest.raises(redis.AuthenticationError):
        tcp(locked, "carol", pw2).ping()
    # bad input: one line, exit 2
    for args, stdin in ((["user", "add", "x y", "--role", "admin"], pw1),
                        (["user", "add", "dave", "--role", "root"], pw1),
                        (["user", "add", "dave", "--role", "admin"], "short"),
                        (["user", "add", "admin", "--role", "admin"], pw1),
                        (["user", "remove", "nobody"], ""),
                        (["user", "add", "core0", "--role", "admin"], pw1)):
        p = core0(*args, stdin=stdin, state=locked.state_dir, config=cfg)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_no_password_in_logs(locked: Node) -> None:
    """After everything above: no password in the node's log, the state dir, or the files."""
    # make sure redis and core0 have written what they write
    with tcp(locked, "admin", ADMIN_PW) as r:
        r.ping()
    files = [locked.log, *[p for p in locked.state_dir.rglob("*") if p.is_file()]]
    assert any(f.name == "users.acl" for f in files)
    for f in files:
        data = f.read_bytes()
        for pw in PASSWORDS:
            assert pw.encode() not in data, f"password in {f}"
    for f in ("users.acl", "redis.conf", "core0.secret", "config-source.json"):
        assert oct(os.stat(locked.state_dir / f).st_mode)[-3:] == "600", f


def test_no_credential_means_loopback_only(tmp_path: Path) -> None:
    """bind = 0.0.0.0 without a credential: only loopback is served; the log says how to open."""
    n = start_locked(tmp_path, '[main]\ninclude = []\n[redis]\nbind = "0.0.0.0"\n', None, "")
    try:
        own = (n.state_dir / "core0.secret").read_text().strip()
        r = redis.Redis(unix_socket_path=n.socket, username="core0", password=own)
        assert r.config_get("bind") == {"bind": "127.0.0.1"}
        assert r.config_get("protected-mode") == {"protected-mode": "yes"}
        assert "no credential configured" in n.log_text()
        assert "core0.redis.password=" in n.log_text()
        # opening it live: a user appears, bind follows the config
        pw = "open-" + uuid.uuid4().hex
        p = core0("user", "add", "ops", "--role", "admin", stdin=pw, state=n.state_dir,
                  config=tmp_path / "core0.toml")
        assert p.returncode == 0, p.stderr
        assert r.config_get("bind") == {"bind": "0.0.0.0"}
        with pytest.raises(redis.AuthenticationError):
            tcp(n).ping()
        assert tcp(n, "ops", pw).ping()
        r.close()
    finally:
        n.stop()


@pytest.fixture(scope="module")
def tls_dir() -> Iterator[Path]:
    require("openssl")
    d = Path(tempfile.mkdtemp(prefix="core0-tls-"))
    p = core0("tls", "init", "--dir", str(d / "tls"), "--name", "node1", "--client", "alice")
    assert p.returncode == 0, p.stderr
    p = core0("tls", "init", "--dir", str(d / "other"))
    assert p.returncode == 0, p.stderr
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


def test_tls(tls_dir: Path, tmp_path: Path) -> None:
    t = tls_dir / "tls"
    tls_port = free_port()
    config = CONFIG.replace('default_role = "admin"\n',
                            'default_role = "admin"\n'
                            f'tls_port = {tls_port}\ntls_cert = "{t}/server.crt"\n'
                            f'tls_key = "{t}/server.key"\ntls_ca = "{t}/ca.crt"\n')
    n = start_locked(tmp_path, config, "admin", ADMIN_PW, port=tls_port, ssl=True,
                     ssl_ca_certs=str(t / "ca.crt"))
    try:
        # verified TLS with the node's CA and a user: works
        r = redis.Redis(port=tls_port, ssl=True, ssl_ca_certs=str(t / "ca.crt"),
                        username="readonly", password=RO_PW, socket_timeout=10)
        assert r.ping()
        noperm(r.flushall)
        r.close()
        # 0-core's client: ssl=True without verification, one-argument AUTH
        r = redis.Redis(port=tls_port, ssl=True, ssl_cert_reqs=None, password=ZERO_PW)
        assert r.ping()
        r.close()
        # a client that trusts another CA is refused
        with pytest.raises(redis.ConnectionError, match="(?i)certificate verify failed"):
            redis.Redis(port=tls_port, ssl=True, ssl_ca_certs=str(tls_dir / "other/ca.crt"),
                        password=ZERO_PW).ping()
        # plain TCP is off with TLS on (not configured): nothing listens on the plain port
        with pytest.raises(redis.ConnectionError):
            redis.Redis(port=n.port, password=ZERO_PW, socket_connect_timeout=2).ping()
        # a plain-text client on the TLS port does not get in either
        with pytest.raises((redis.ConnectionError, redis.ResponseError)):
            redis.Redis(port=tls_port, password=ZERO_PW, socket_timeout=3).ping()
    finally:
        n.stop()


def test_tls_client_certificates(tls_dir: Path, tmp_path: Path) -> None:
    """tls_auth_clients: a certificate from the node's CA is required on top of the password."""
    t = tls_dir / "tls"
    tls_port = free_port()
    config = CONFIG.replace('default_role = "admin"\n',
                            'default_role = "admin"\ntls_auth_clients = true\n'
                            f'tls_port = {tls_port}\ntls_cert = "{t}/server.crt"\n'
                            f'tls_key = "{t}/server.key"\ntls_ca = "{t}/ca.crt"\n')
    cert = {"ssl_certfile": str(t / "client-alice.crt"), "ssl_keyfile": str(t / "client-alice.key")}
    n = start_locked(tmp_path, config, "admin", ADMIN_PW, port=tls_port, ssl=True,
                     ssl_ca_certs=str(t / "ca.crt"), **cert)
    try:
        ok = redis.Redis(port=tls_port, ssl=True, ssl_ca_certs=str(t / "ca.crt"),
                         password=ZERO_PW, **cert)
        assert ok.ping()
        ok.close()
        with pytest.raises((redis.ConnectionError, ssl.SSLError)):
            redis.Redis(port=tls_port, ssl=True, ssl_ca_certs=str(t / "ca.crt"),
                        password=ZERO_PW, socket_timeout=5).ping()
        other = tls_dir / "other"
        p = core0("tls", "client", "mallory", "--dir", str(other))
        assert p.returncode == 0, p.stderr
        with pytest.raises((redis.ConnectionError, ssl.SSLError)):
            redis.Redis(port=tls_port, ssl=True, ssl_ca_certs=str(t / "ca.crt"),
                        password=ZERO_PW, socket_timeout=5,
                        ssl_certfile=str(other / "client-mallory.crt"),
                        ssl_keyfile=str(other / "client-mallory.key")).ping()
    finally:
        n.stop()


def test_conf_d_credentials_applied_live(tmp_path: Path) -> None:
    """Credentials arriving in an include dir after boot (cloud-config's write_files) take
    effect with `core0 security apply`, without a restart."""
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    n = start_locked(tmp_path, f'[main]\ninclude = ["{conf_d}"]\n[redis]\nbind = "127.0.0.1"\n',
                     None, "")
    try:
        assert tcp(n).ping()  # closed node: loopback, no credential
        pw = "cc-" + uuid.uuid4().hex
        PASSWORDS.append(pw)
        digest = __import__("hashlib").sha256(pw.encode()).hexdigest()
        (conf_d / "50-users.toml").write_text(
            f'[users.ops]\nrole = "admin"\npassword_sha256 = "{digest}"\n')
        st = core0("security", "status", state=n.state_dir)
        assert st.returncode == 0 and "ACL users" in st.stdout, st.stdout + st.stderr
        p = core0("security", "apply", state=n.state_dir)
        assert p.returncode == 0, p.stderr
        with pytest.raises(redis.AuthenticationError):
            tcp(n).ping()
        from core0_client import Client

        with Client(port=n.port, username="ops", password=pw, timeout=30) as c:
            assert c.ping()
        assert pw.encode() not in n.log.read_bytes()
    finally:
        n.stop()


def test_tls_material_applied_live(tls_dir: Path, tmp_path: Path) -> None:
    """TLS keys and a user arriving after boot (config drive) are served without a restart."""
    t = tls_dir / "tls"
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    n = start_locked(tmp_path, f'[main]\ninclude = ["{conf_d}"]\n', None, "")
    try:
        tls_port = free_port()
        pw = "tl-" + uuid.uuid4().hex
        PASSWORDS.append(pw)
        (conf_d / "50-tls.toml").write_text(
            f'[redis]\ntls_port = {tls_port}\ntls_cert = "{t}/server.crt"\n'
            f'tls_key = "{t}/server.key"\ntls_ca = "{t}/ca.crt"\n'
            f'[users.ops]\nrole = "admin"\npassword = "{pw}"\n')
        p = core0("security", "apply", state=n.state_dir)
        assert p.returncode == 0, p.stderr
        assert f"tls {tls_port}" in p.stdout and "tcp" not in p.stdout.split(";")[1]
        from core0_client import Client

        with Client(port=tls_port, ssl=True, ssl_ca_certs=str(t / "ca.crt"), username="ops",
                    password=pw, timeout=30) as c:
            assert c.ping()
        with pytest.raises(redis.ConnectionError):  # the plain port is closed now
            redis.Redis(port=n.port, socket_connect_timeout=2).ping()
    finally:
        n.stop()
