"""``core0 init``: the node's PID 1.

Boot, in order: early signal handling; API filesystems (``[init] mounts``) and / rebound so
containers can pivot_root; the configuration (file, include dir, kernel command line,
environment); console logging; hostname and ``lo``; the shim socket; the dispatcher and the
embedded redis-server, supervised with backoff (started first: the dispatcher's imports take
seconds under TCG and overlap the rest); drivers (modalias coldplug over ``modules.dep``); then
the boot network (static addresses, or a supervised ``udhcpc`` per wired NIC), whose state
file marks the ``net`` phase. The loop reaps every orphan and never exits.

SIGHUP is passed on to the dispatcher (configuration reload, as under ``core0 dev``).
SIGTERM (and SIGPWR) → power off, SIGINT (Ctrl-Alt-Del) → reboot; both take the ordered path:
the dispatcher (it leaves its jobs running), the jobs (TERM to each process group, grace,
KILL), redis-server, the DHCP clients, then every process left (TERM, grace, KILL), sync,
unmount, sync, ``reboot(2)``.

PID 1 must never return or raise out of main (the kernel panics when init exits). Anything that
escapes goes to :meth:`Init.crash`: log, sync, then the configured crash action (reboot,
poweroff, an emergency shell on the console, or freeze); if that fails too, it freezes while
still reaping. Outside PID 1, ``core0 init`` refuses to run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
import traceback
from typing import Any, NoReturn

from core0 import config as configmod
from core0.init import mounts, power
from core0.init.supervise import Service, Supervisor, setup_logging
from core0.proc.spawn import spawn_program

log = logging.getLogger("core0.init")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: set in the dispatcher's environment: its supervisor is the node's PID 1 (core.reboot…)
PID1_ENV = "CORE0_PID1"
_SIGNAL_ACTIONS = {
    signal.SIGTERM: "poweroff",
    signal.SIGPWR: "poweroff",
    signal.SIGINT: "reboot",
}


class InitError(RuntimeError):
    """PID 1 cannot go on (raised by the fault injection of tests, among others)."""


class Init:
    """State of PID 1 between boot and power off."""

    def __init__(self, config_path: str | None, overrides: dict[str, dict[str, Any]]):
        self.config_path = config_path
        self.overrides = overrides
        self.cfg: configmod.Config = configmod.Config()
        self.sup: Supervisor | None = None
        self.redis_svc: Service | None = None
        self.disp: Service | None = None
        self.net: Any = None
        self.request: str | None = None
        self.early_signals: list[int] = []
        self.boot_started = time.monotonic()

    # ------------------------------------------------------------ boot

    def early(self) -> None:
        """Before anything can fail: signals are noted, not fatal (Python's default SIGINT
        handler would raise KeyboardInterrupt in PID 1)."""
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPWR,
                    signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, lambda s, f: self.early_signals.append(s))
        os.umask(0o022)
        os.environ.setdefault("PATH", DEFAULT_PATH)
        os.environ.setdefault("HOME", "/")
        with contextlib.suppress(OSError):
            os.chdir("/")

    def load_config(self) -> configmod.Config:
        """The configuration; on an error, the same without the faulty source, or defaults —
        a typo on the kernel command line must not stop the node."""
        # the init of a PID namespace (tests, containers) does not own the kernel command line
        cmdline = None if power.in_initial_pid_namespace() else ""
        try:
            return configmod.load(self.config_path, cmdline=cmdline, overrides=self.overrides)
        except configmod.ConfigError as e:
            print(f"core0 init: configuration error: {e}", file=sys.stderr)
        for path in (self.config_path, None):
            try:
                return self._host_safe(
                    configmod.load(path, cmdline="", env={}, overrides=self.overrides))
            except configmod.ConfigError as e:
                print(f"core0 init: configuration error: {e}", file=sys.stderr)
        return self._host_safe(configmod.Config())

    @staticmethod
    def _host_safe(cfg: configmod.Config) -> configmod.Config:
        """A fallback configuration inside a PID namespace (a test, a container) leaves the
        host's mounts, modules and network alone."""
        if power.in_initial_pid_namespace():
            return cfg
        return dataclasses.replace(
            cfg, init=dataclasses.replace(cfg.init, mounts=False, modules=False),
            net=dataclasses.replace(cfg.net, enabled=False))

    def boot(self) -> None:
        self.early()
        # mounts decide where /proc/cmdline comes from: read the file layer first
        try:
            pre = configmod.load(self.config_path, cmdline="", overrides=self.overrides)
            do_mounts = pre.init.mounts
        except configmod.ConfigError:
            do_mounts = power.in_initial_pid_namespace()
        if do_mounts:
            mounts.mount_api("none")
        self.cfg = cfg = self.load_config()
        level = cfg.main.log_level
        if "debug" in cfg.cmdline:
            level = "debug"
        elif "quiet" in cfg.cmdline and level == "info":
            level = "warning"
        _console_stdio()
        setup_logging(level, "core0-init")
        log.info("core0 init (pid %d), kernel %s, config %s", os.getpid(), os.uname().release,
                 ", ".join(cfg.sources) or "defaults")
        if do_mounts and mounts.root_is_rootfs():
            try:
                mounts.rebind_root()
                log.debug("/ rebound (pivot_root works for containers)")
            except OSError as e:
                log.warning("/ stays the initramfs mount (no pivot_root): %s", e)
        if do_mounts:
            done = mounts.mount_cgroups(cfg.init.cgroups)
            log.debug("cgroups: %s", ", ".join(done) or "already mounted")
            with contextlib.suppress(power.PowerError):
                power.cad_to_signal()
        self._hostname()
        from core0.init import netlink

        try:
            netlink.link_up("lo")
        except OSError as e:
            log.warning("lo: %s", e)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(cfg.state_dir, 0o700)
        # hash randomization for the children: the kernel's pool is usable now (/dev/urandom)
        os.environ.pop("PYTHONHASHSEED", None)
        sup = self.sup = Supervisor(cfg.state_dir, [], pid1=True)
        sup.install_signals()
        sup.pending_signals += self.early_signals
        sup.on_signal = self.on_signal
        sup.listen()
        # the dispatcher's start (seconds of imports under TCG) overlaps driver loading and
        # DHCP; the net phase (net.json) begins only once the drivers are loaded
        self._core_services()
        if cfg.init.modules:
            self._modules()
        if cfg.main.persistent_device:  # once the drivers are loaded: core0/init/persistent.py
            from core0.init import persistent

            persistent.mount_persistent(cfg)
        self._network()
        self._write_state()
        log.info("boot: services started %.2fs after init", time.monotonic() - self.boot_started)

    def _hostname(self) -> None:
        name = self.cfg.main.hostname
        current = os.uname().nodename
        if not name and current in ("", "(none)", "localhost"):
            name = "core0"
        if name and name != current:
            try:
                with open("/proc/sys/kernel/hostname", "w") as f:
                    f.write(name)
                log.info("hostname %s", name)
            except OSError as e:
                log.warning("hostname %s: %s", name, e)

    def _modules(self) -> None:
        from core0.init import modules

        t = time.monotonic()
        try:
            loader = modules.Loader()
            n = modules.coldplug(loader)
            for name in self.cfg.init.modules_load:
                loader.load(name)
            modules.set_modprobe_helper()
            if self.cfg.init.mounts:
                modules.static_nodes(loader.index)
            log.info("modules: %d loaded in %.2fs", loader.count, time.monotonic() - t)
            log.debug("coldplug loaded %d", n)
        except Exception:
            log.exception("module loading failed")

    def _network(self) -> None:
        from core0.init import network

        assert self.sup is not None
        try:
            plan = network.plan_from(self.cfg)
        except network.NetError as e:
            log.error("net: %s; using DHCP on every wired NIC", e)
            plan = network.NetPlan(hostname=self.cfg.main.hostname)
        self.net = network.BootNetwork(self.cfg, plan, self.sup)
        try:
            self.net.start()
        except Exception:
            log.exception("net: boot network failed")

    def _core_services(self) -> None:
        from core0.init.dev import assess_service, build_services, front_service

        assert self.sup is not None
        self.redis_svc, self.disp = build_services(self.cfg, self.config_path, self.overrides)
        assert self.disp.env is not None
        self.disp.env[PID1_ENV] = "1"
        # the dispatcher first: it imports while redis-server starts (it retries until
        # redis answers), and the redis readiness wait does not hold it back
        front = front_service(self.cfg, self.config_path, self.overrides)
        for svc in (self.disp, self.redis_svc, front, assess_service(self.cfg, self.disp)):
            if svc is not None:
                self.sup.add_service(svc)

    def _write_state(self) -> None:
        data = {"pid": os.getpid(), "mode": "init", "boot": time.time(),
                "kernel": os.uname().release, "drivers_loaded": True}
        path = self.cfg.state_dir / "init.json"
        with contextlib.suppress(OSError):
            path.write_text(json.dumps(data))

    # ------------------------------------------------------------ run

    def on_signal(self, sig: int) -> None:
        if sig == signal.SIGHUP and self.disp is not None and self.disp.pid is not None:
            log.info("SIGHUP: the dispatcher reloads the configuration")
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.disp.pid, signal.SIGHUP)
            return
        action = _SIGNAL_ACTIONS.get(signal.Signals(sig))
        if action is None:
            log.info("signal %s ignored", signal.Signals(sig).name)
            return
        if self.request is None:
            log.warning("%s: %s requested", signal.Signals(sig).name, action)
            self.request = action

    def run(self) -> NoReturn:
        sup = self.sup
        assert sup is not None
        fault_at = time.monotonic() + 1.0 if self.cfg.init.fault == "raise" else None
        while self.request is None:
            sup.step(None if fault_at is None else max(0.0, fault_at - time.monotonic()))
            if fault_at is not None and time.monotonic() >= fault_at:
                raise InitError("injected fault (init.fault = raise)")
        self.shutdown(self.request)

    def shutdown(self, action: str) -> NoReturn:
        sup = self.sup
        assert sup is not None
        grace = self.cfg.init.shutdown_grace
        t = time.monotonic()
        log.warning("shutdown (%s): stopping services", action)
        if self.net is not None:
            with contextlib.suppress(Exception):
                self.net.close()
        order = [s for s in (self.disp, self.redis_svc) if s is not None]
        order += [s for s in sup.services if s not in order]
        sup.shutdown(order, grace)
        self._kill_everything(grace)
        power.sync()
        if self.cfg.init.mounts:
            done = mounts.unmount_all()
            log.info("unmounted %s", ", ".join(done) or "nothing")
        power.sync()
        log.warning("shutdown done in %.1fs", time.monotonic() - t)
        power.power("poweroff" if action == "poweroff" else "reboot")
        raise InitError(f"{action} returned")

    def _kill_everything(self, grace: float) -> None:
        """TERM every process left in this PID namespace, grace, KILL; reap them."""
        sup = self.sup
        assert sup is not None

        def others() -> bool:
            return any(e.name.isdigit() and e.name != "1" and _is_process(e.name)
                       for e in os.scandir("/proc"))

        if not others():
            return
        log.info("stopping the remaining processes")
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGTERM)
        if not sup.wait_for(lambda: not others(), grace):
            with contextlib.suppress(OSError):
                os.kill(-1, signal.SIGKILL)
            sup.wait_for(lambda: not others(), 5)

    # ------------------------------------------------------------ crash

    def crash(self, exc: BaseException) -> NoReturn:
        """Log, sync, then the crash action. Never returns."""
        action = "reboot"
        with contextlib.suppress(BaseException):
            action = self.cfg.init.crash_action
            text = "".join(traceback.format_exception(exc))
            log.critical("core0 init failed:\n%s", text)
            if not logging.getLogger().handlers:
                sys.stderr.write(f"core0 init failed:\n{text}")
            log.critical("crash action: %s", action)
        with contextlib.suppress(BaseException):
            power.sync()
        if action == "shell":
            with contextlib.suppress(BaseException):
                self._emergency_shell()
            action = "reboot"
        if action in ("reboot", "poweroff"):
            with contextlib.suppress(BaseException):
                power.power(action)  # type: ignore[arg-type]
        freeze()

    def _emergency_shell(self) -> None:
        shell = self.cfg.init.shell
        log.critical("starting an emergency shell (%s) on the console; exit it to reboot",
                     shell)
        fd = os.open("/dev/console", os.O_RDWR | os.O_NOCTTY)
        try:
            pid = spawn_program(shell, [shell], dict(os.environ), (fd, fd, fd))
        finally:
            os.close(fd)
        while True:
            try:
                got, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if got == pid:
                return


def _is_process(pid: str) -> bool:
    """Not a kernel thread, not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        fields = data[data.rfind(b")") + 2 :].split()
        # kernel threads are children of kthreadd (2) or have no parent; zombies are state Z
        return fields[0] != b"Z" and fields[1] not in (b"0", b"2") and pid != "2"
    except (OSError, IndexError):
        return False


def _console_stdio() -> None:
    """Give PID 1 a stdin/stdout/stderr: the console, else /dev/null."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        for path in ("/dev/console", "/dev/null"):
            try:
                new = os.open(path, os.O_RDWR | os.O_NOCTTY)
            except OSError:
                continue
            if new != fd:
                os.dup2(new, fd)
                os.close(new)
            break


def freeze() -> NoReturn:
    """The last resort: reap children forever, do nothing else."""
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            with contextlib.suppress(BaseException):
                signal.pause()
        except BaseException:  # PID 1 must survive anything here
            with contextlib.suppress(BaseException):
                time.sleep(1)


def run_init(config_path: str | None, overrides: dict[str, dict[str, Any]]) -> NoReturn:
    """``core0 init``. Outside PID 1 it refuses (exit 2); as PID 1 it never returns."""
    if os.getpid() != 1:
        print(
            f"core0 init: refusing to run: this process is pid {os.getpid()}, not PID 1.\n"
            "  On a host use `core0 dev`; to try init without a VM run it as the init of a\n"
            "  PID namespace: unshare --pid --fork --mount-proc core0 init --config FILE\n"
            "  (with [init] mounts = false, modules = false and [net] enabled = false).",
            file=sys.stderr,
        )
        sys.exit(2)
    init = Init(config_path, overrides)
    try:
        init.boot()
        init.run()
    except BaseException as e:
        init.crash(e)
    init.crash(InitError("init returned"))
