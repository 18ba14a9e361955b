"""``core0 dev``: the supervisor as a child subreaper on an ordinary host (no mounts, no
power control): embedded redis-server + dispatcher, stopped in order on SIGTERM/SIGINT."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from typing import Any

from core0 import redis_server
from core0.backoff import Backoff
from core0.config import Config
from core0.init import libvirtd
from core0.init.supervise import Service, Supervisor
from core0.security.acl import internal_config
from core0.security.node import record

log = logging.getLogger("core0.dev")


def dispatcher_argv(config_path: str | None, overrides: dict[str, dict[str, Any]]) -> list[str]:
    argv = [sys.executable, "-m", "core0", "dispatcher"]
    if config_path:
        argv += ["--config", config_path]
    if overrides:
        argv += ["--overrides-json", json.dumps(overrides)]
    return argv


def front_service(cfg: Config, config_path: str | None,
                  overrides: dict[str, dict[str, Any]]) -> Service | None:
    """``core0 front`` (0-core's clients: TLS, LKEYEXISTS/LTTL) when ``redis.front_port`` is
    set and the Redis is the embedded one (the front forwards to its unix socket)."""
    if not (cfg.redis.embedded and cfg.redis.front_port):
        return None
    argv = dispatcher_argv(config_path, overrides)
    argv[argv.index("dispatcher")] = "front"
    return Service("front", argv)


def assess_service(cfg: Config, disp: Service) -> Service | None:
    """A boot made by the kexec switch (``core0.image=`` on the kernel command line) is judged
    by ``core0.image.assess``, a process of its own (docs/images.md); it exits 125 when done."""
    if "core0.image" not in cfg.cmdline:
        return None
    argv = disp.argv[:]
    argv[argv.index("-m") + 1: argv.index("dispatcher") + 1] = ["core0.image.assess"]
    return Service("image-assess", argv, env=disp.env)


def build_services(cfg: Config, config_path: str | None,
                   overrides: dict[str, dict[str, Any]]) -> tuple[Service | None, Service]:
    redis_svc = None
    if cfg.redis.embedded:
        sock = cfg.redis_socket
        record(cfg.state_dir, config_path, overrides)  # for `core0 user` (same config)
        argv = redis_server.prepare(cfg)
        own = internal_config(cfg).redis  # core0's own ACL user, not a client's password
        redis_svc = Service(
            "redis-server", argv,
            ready=lambda: redis_server.wait_ready(sock, 15, own.password, own.username),
        )
    env = dict(os.environ)
    env["CORE0_SHIM_SOCKET"] = str(cfg.state_dir / "shim.sock")
    disp = Service("dispatcher", dispatcher_argv(config_path, overrides), env=env)
    fast = os.environ.get("CORE0_TEST_RESTART_DELAY")
    if fast:  # chaos tests (tests/chaos): kill the dispatcher 20 times in a minute
        disp.backoff = Backoff(first=float(fast), cap=float(fast))
    return redis_svc, disp


def run_dev(cfg: Config, config_path: str | None, overrides: dict[str, dict[str, Any]]) -> int:
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.state_dir, 0o700)
    from core0.proc import process  # asyncio: kept off core0 init's import path

    process.set_child_subreaper()
    redis_svc, disp = build_services(cfg, config_path, overrides)
    front = front_service(cfg, config_path, overrides)
    virt = libvirtd.services(cfg)  # [virt] libvirtd = "embedded": virtlogd + libvirtd
    services = [s for s in (redis_svc, front, *virt, disp) if s is not None]
    sup = Supervisor(cfg.state_dir, services)
    sup.install_signals()
    sup.listen()
    stop = {"now": False}

    def on_signal(sig: int) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            stop["now"] = True
        elif sig == signal.SIGHUP and disp.pid is not None:
            os.kill(disp.pid, signal.SIGHUP)  # reload the configuration
    sup.on_signal = on_signal
    (cfg.state_dir / "core0.pid").write_text(str(os.getpid()))
    log.info("core0 dev (pid %d): state %s, redis %s", os.getpid(), cfg.state_dir,
             f"{cfg.redis.bind}:{cfg.redis.port} + {cfg.redis_socket}" if cfg.redis.embedded
             else cfg.redis.url)
    for s in services:
        sup.start(s)
    while not stop["now"]:
        sup.step(None)
    log.info("stopping")
    if virt:
        _destroy_domains(cfg, sup)  # the embedded libvirtd's VMs go with it
    sup.shutdown([disp] + [s for s in (front, redis_svc) if s is not None] + virt[::-1])
    (cfg.state_dir / "core0.pid").unlink(missing_ok=True)
    return 0


def _destroy_domains(cfg: Config, sup: Supervisor) -> None:
    """Destroy the embedded libvirtd's VMs, reaping meanwhile: their qemu processes are this
    subreaper's children, and libvirtd waits for each to be gone."""
    import threading

    sup.stopping = True  # nothing is restarted from here on
    t = threading.Thread(target=libvirtd.destroy_domains, args=(cfg,), daemon=True)
    t.start()
    while t.is_alive():
        sup.step(0.1)
        t.join(0.05)
