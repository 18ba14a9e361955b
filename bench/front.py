"""What the front (core0/security/front.py) costs: round trips per second through it vs
straight to redis-server, in one run, against the same redis-server, over TLS both ways
(the front's TLS vs redis-server's own TLS port, same certificate) and over plain TCP.

Two loads: one request per round trip (``EXISTS`` direct, ``LKEYEXISTS`` through the front:
the renamed path), and pipelines of ``--pipeline`` requests per write (``TTL``/``LTTL``).
Each pair runs ``--repeat`` times, interleaved; the best rate of each is printed with the
ratio front/direct.

    python bench/front.py [-n 20000] [--pipeline 64] [--repeat 5]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable

import hiredis
from _common import ROOT, free_port, table, tmpdir

sys.path.insert(0, str(ROOT))

from core0.security import tls as tlsmod


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class Conn:
    """A bare RESP connection (no client library in the way): send bytes, read n replies."""

    def __init__(self, port: int, ctx: ssl.SSLContext | None):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.s: socket.socket = ctx.wrap_socket(s, server_hostname="127.0.0.1") if ctx else s
        self.r = hiredis.Reader()

    def call(self, data: bytes, n: int) -> None:
        self.s.sendall(data)
        got = 0
        while got < n:
            self.r.feed(self.s.recv(1 << 16))
            while self.r.gets() is not False:
                got += 1

    def close(self) -> None:
        self.s.close()


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(500):
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def _rate(n: int, fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20000, help="requests per measurement")
    ap.add_argument("--pipeline", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    tmp = tmpdir("core0-bench-front-")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        t = tmp / "tls"
        tlsmod.init(t, [])
        sock = str(tmp / "redis.sock")
        port, tport = free_port(), free_port()
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--unixsocket", sock,
             "--unixsocketperm", "700", "--tls-port", str(tport), "--tls-cert-file",
             str(t / "server.crt"), "--tls-key-file", str(t / "server.key"),
             "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        _wait_port(tport, procs[-1])
        fronts = {}
        for kind, tls_on in (("tls", True), ("plain", False)):
            fport = free_port()
            conf = tmp / f"front-{kind}.toml"
            conf.write_text(f'[main]\nstate_dir = "{tmp}/state-{kind}"\nlog_level = "warning"\n'
                            f'[redis]\nunix_socket = "{sock}"\nfront_port = {fport}\n'
                            f'front_tls = {"true" if tls_on else "false"}\n'
                            f'tls_cert = "{t}/server.crt"\ntls_key = "{t}/server.key"\n')
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "core0", "front", "--config", str(conf)], cwd=str(ROOT),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
            _wait_port(fport, procs[-1])
            fronts[kind] = fport
        ctx = ssl.create_default_context(cafile=str(t / "ca.crt"))
        rows = [("transport, load", "direct (req/s)", "front (req/s)", "front/direct")]
        for kind, direct_port, c in (("tls", tport, ctx), ("plain", port, None)):
            for load, per in (("1 per round trip", 1), (f"pipeline {a.pipeline}", a.pipeline)):
                best = {"direct": 0.0, "front": 0.0}
                for _ in range(a.repeat):
                    for who, p, name in (("direct", direct_port, b"EXISTS"),
                                         ("front", fronts[kind], b"LKEYEXISTS")):
                        conn = Conn(p, c)
                        batch = _resp(name, b"result:bench:flag") * per
                        rounds = a.n // per

                        def run(conn: Conn = conn, batch: bytes = batch, rounds: int = rounds,
                                per: int = per) -> None:
                            for _ in range(rounds):
                                conn.call(batch, per)

                        best[who] = max(best[who], _rate(rounds * per, run))
                        conn.close()
                rows.append((f"{kind}, {load}", f"{best['direct']:.0f}", f"{best['front']:.0f}",
                             f"{best['front'] / best['direct']:.2f}"))
        table(rows)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
