"""The supervisor (shim): the small process above everything else.

As PID 1 (``core0 init``) or as a child subreaper (``core0 dev``) it:

* starts and supervises the embedded redis-server and the dispatcher, restarting them with
  backoff (≥ 1 s, doubling to 60 s, reset after 10 s healthy; exit 125 = permanent failure);
* reaps every child and orphan, and records the exit status of processes it inherits (job
  processes whose dispatcher died), which a new dispatcher asks for over the shim socket;
* shuts down in order: dispatcher (it leaves its jobs running), then the jobs (TERM to each
  process group, grace, KILL), then redis-server.

It is synchronous (one ``select`` loop, woken by a signal self-pipe; no polling) and imports no
command handler, so it has as little as possible that can fail.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import logging
import os
import selectors
import shutil
import signal
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core0.backoff import PERMANENT_EXIT, Backoff
from core0.proc.spawn import (
    exited_children,
    reap_zombie,
    reset_ignored_signals,
    spawn_program,
)

log = logging.getLogger("core0.shim")



@dataclass
class Service:
    """A supervised process."""

    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    #: called after start; False means "not ready" (it is killed and restarted)
    ready: Callable[[], bool] | None = None
    pid: int | None = None
    started: float = 0.0
    backoff: Backoff = field(default_factory=Backoff)
    next_start: float | None = None
    permanent: bool = False
    starts: int = 0
    #: times it ended (by any cause) and how the last time ended (exit code, -signal)
    exits: int = 0
    last_exit: int | None = None
    history: list[float] = field(default_factory=list)
    stdout: int | None = None

    def status(self) -> dict[str, object]:
        """What the shim socket's ``services`` op tells about it."""
        return {"name": self.name, "pid": self.pid, "starts": self.starts, "exits": self.exits,
                "last_exit": self.last_exit, "permanent": self.permanent}


def spawn_session(argv: list[str], env: dict[str, str] | None = None,
                  stdout: int | None = None) -> int:
    """Start a service in a new session with clean signal state (core0.spawn's rules)."""
    e = dict(os.environ if env is None else env)
    path = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=e.get("PATH"))
    if path is None:
        raise FileNotFoundError(errno.ENOENT, f"executable not found: {argv[0]}")
    out = stdout if stdout is not None else 1
    err = stdout if stdout is not None else 2
    return spawn_program(path, argv, e, (0, out, err))


class Supervisor:
    def __init__(self, state_dir: Path, services: list[Service], *, pid1: bool = False):
        self.state_dir = state_dir
        self.services = services
        self.pid1 = pid1
        self.sel = selectors.DefaultSelector()
        #: exit statuses of inherited processes: pid → (status, time reaped, start ticks, comm)
        self.inherited: OrderedDict[int, tuple[int, float, int, str]] = OrderedDict()
        #: (pid, start ticks) of processes a dispatcher watched by pid: they belong to a job
        #: whose pid was written down, so ``find`` never offers them to a job lost while
        #: being spawned (bounded with ``inherited``)
        self.claimed: set[tuple[int, int]] = set()
        self.watchers: dict[int, list[socket.socket]] = {}
        self.conns: dict[socket.socket, bytearray] = {}
        self.stopping = False
        self.pending_signals: list[int] = []
        self.reaped_orphans = 0
        self.on_signal: Callable[[int], None] | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.server: socket.socket | None = None
        #: (when, seq, callback) on the monotonic clock, run by step()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    # ------------------------------------------------------------ extra events

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` from the loop whenever ``fd`` is readable (netlink, …)."""
        self.sel.register(fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(fd)

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` from the loop after ``delay`` seconds."""
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), callback))

    def add_service(self, svc: Service, start: bool = True) -> None:
        """Supervise one more service (e.g. a DHCP client per NIC)."""
        self.services.append(svc)
        if start:
            self.start(svc)

    # ------------------------------------------------------------ setup

    def install_signals(self) -> None:
        reset_ignored_signals()
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                    signal.SIGUSR1, signal.SIGUSR2, signal.SIGPWR):
            signal.signal(sig, self._note_signal)
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")

    def _note_signal(self, signum: int, frame: object) -> None:
        self.pending_signals.append(signum)

    def listen(self) -> None:
        path = self.state_dir / "shim.sock"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        srv.bind(str(path))
        os.chmod(path, 0o600)
        srv.listen(16)
        srv.setblocking(False)
        self.sel.register(srv, selectors.EVENT_READ, "accept")
        self.server = srv

    # ------------------------------------------------------------ services

    def start(self, svc: Service) -> None:
        svc.next_start = None
        try:
            svc.pid = spawn_session(svc.argv, svc.env, svc.stdout)
        except OSError as e:
            log.error("%s: cannot start %s: %s", svc.name, svc.argv[0], e)
            self._schedule(svc, ran_for=0.0)
            return
        svc.started = time.monotonic()
        svc.starts += 1
        svc.history.append(time.time())
        del svc.history[:-100]
        log.info("%s started (pid %d)", svc.name, svc.pid)
        if svc.ready is not None and not svc.ready():
            log.error("%s did not become ready; killing it", svc.name)
            with contextlib.suppress(ProcessLookupError):
                os.kill(svc.pid, signal.SIGKILL)

    def _schedule(self, svc: Service, ran_for: float) -> None:
        delay = svc.backoff.next(ran_for)
        svc.next_start = time.monotonic() + delay
        log.warning("%s: restart in %.0fs", svc.name, delay)

    def _service_exited(self, svc: Service, status: int) -> None:
        ran = time.monotonic() - svc.started
        svc.pid = None
        code = os.waitstatus_to_exitcode(status)
        svc.exits += 1
        svc.last_exit = code
        log.warning("%s exited (%s) after %.1fs", svc.name,
                    f"status {code}" if code >= 0 else f"signal {-code}", ran)
        if self.stopping:
            return
        if code == PERMANENT_EXIT:
            svc.permanent = True
            log.error("%s: exit %d = permanent failure, not restarting", svc.name, PERMANENT_EXIT)
            return
        self._schedule(svc, ran)

    # ------------------------------------------------------------ reaping

    def reap(self) -> None:
        # peeked: while it is a zombie its start time and name can still be read
        for pid, status in exited_children():
            ticks, comm = _stat_of(pid)
            reap_zombie(pid)
            svc = next((s for s in self.services if s.pid == pid), None)
            if svc is not None:
                self._service_exited(svc, status)
                continue
            self.reaped_orphans += 1
            self.inherited[pid] = (status, time.time(), ticks, comm)
            while len(self.inherited) > 8192:
                old, entry = self.inherited.popitem(last=False)
                self.claimed.discard((old, entry[2]))
            for conn in self.watchers.pop(pid, []):
                self._send(conn, {"op": "exit", "pid": pid, "status": status})

    # ------------------------------------------------------------ shim socket

    def _accept(self) -> None:
        assert self.server is not None
        try:
            conn, _ = self.server.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self.conns[conn] = bytearray()
        self.sel.register(conn, selectors.EVENT_READ, "conn")

    def _drop(self, conn: socket.socket) -> None:
        with contextlib.suppress(Exception):
            self.sel.unregister(conn)
        conn.close()
        self.conns.pop(conn, None)
        for pid in list(self.watchers):
            self.watchers[pid] = [c for c in self.watchers[pid] if c is not conn]

    def _read_conn(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        buf = self.conns[conn]
        buf += data
        try:
            from core0.proc import shimlink  # msgpack + asyncio: not on PID 1's boot path

            for msg in shimlink.read_frame(conn, buf):
                self._handle(conn, msg)
        except Exception as e:
            log.warning("bad frame on shim socket: %s", e)
            self._drop(conn)

    def _handle(self, conn: socket.socket, msg: dict[str, object]) -> None:
        if msg.get("op") == "find":
            # the processes that may be a job's that was being spawned when its dispatcher
            # died (its pid was never written down): started at or after ``since``, reaped
            # here or still running here (one that closed its output files), never watched by
            # pid; with their names (a program may exec another), after reaping what is
            # pending
            since = msg.get("since")
            self.reap()
            matches: list[list[int | str | None]] = []
            if isinstance(since, int):
                matches = [[pid, st, ticks, c] for pid, (st, _, ticks, c)
                           in self.inherited.items()
                           if ticks >= since and (pid, ticks) not in self.claimed]
                for kid in self.children():
                    ticks, c = _stat_of(kid)
                    if ticks >= since and (kid, ticks) not in self.claimed:
                        matches.append([kid, None, ticks, c])
            self._send(conn, {"op": "found", "rid": msg.get("rid"), "matches": matches})
            return
        if msg.get("op") == "services":
            # how the supervised services fared (the boot assessment: a crash loop)
            self._send(conn, {"op": "services", "rid": msg.get("rid"),
                              "services": [s.status() for s in self.services]})
            return
        if msg.get("op") != "watch":
            return
        pid = msg.get("pid")
        if not isinstance(pid, int):
            return
        if pid in self.inherited:
            status, _, ticks, _ = self.inherited[pid]
            self.claimed.add((pid, ticks))
            self._send(conn, {"op": "exit", "pid": pid, "status": status})
        elif _parent_of(pid) == os.getpid():
            self.claimed.add((pid, _stat_of(pid)[0]))
            self.watchers.setdefault(pid, []).append(conn)
        else:
            self._send(conn, {"op": "unknown", "pid": pid})

    def _send(self, conn: socket.socket, msg: dict[str, object]) -> None:
        try:
            conn.setblocking(True)
            from core0.proc import shimlink

            conn.sendall(shimlink.pack(msg))
            conn.setblocking(False)
        except OSError:
            self._drop(conn)

    # ------------------------------------------------------------ main loop

    def step(self, timeout: float | None) -> None:
        """One turn of the loop: wait for an event (or ``timeout``), handle what came."""
        now = time.monotonic()
        due = [s.next_start for s in self.services if s.next_start is not None]
        if self.stopping:
            due = []
        if self._timers:
            due.append(self._timers[0][0])
        if due:
            wait = max(0.0, min(due) - now)
            timeout = wait if timeout is None else min(timeout, wait)
        for key, _ in self.sel.select(timeout):
            if callable(key.data):
                try:
                    key.data()
                except Exception:
                    log.exception("reader callback failed")
            elif key.data == "wake":
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 4096):
                        pass
            elif key.data == "accept":
                self._accept()
            elif key.data == "conn":
                self._read_conn(key.fileobj)  # type: ignore[arg-type]
        sigs, self.pending_signals = self.pending_signals, []
        if signal.SIGCHLD in sigs or not sigs:
            self.reap()
        for sig in sigs:
            if sig != signal.SIGCHLD and self.on_signal is not None:
                self.on_signal(sig)
        while self._timers and self._timers[0][0] <= time.monotonic():
            _, _, fn = heapq.heappop(self._timers)
            try:
                fn()
            except Exception:
                log.exception("timer callback failed")
        if not self.stopping:
            now = time.monotonic()
            for s in self.services:
                if s.next_start is not None and s.next_start <= now:
                    self.start(s)

    def wait_for(self, cond: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not cond():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.step(min(left, 0.5))
        return True

    # ------------------------------------------------------------ shutdown

    def children(self) -> list[int]:
        """Our live children that are not supervised services (jobs left by a dispatcher)."""
        mine = {s.pid for s in self.services}
        me = os.getpid()
        out = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                pid = int(entry.name)
                if pid not in mine and _parent_of(pid) == me:
                    out.append(pid)
        return out

    def stop_service(self, svc: Service, timeout: float) -> None:
        if svc.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(svc.pid, signal.SIGTERM)
        if not self.wait_for(lambda: svc.pid is None, timeout):
            log.warning("%s did not stop in %.0fs: SIGKILL", svc.name, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.kill(svc.pid, signal.SIGKILL)  # type: ignore[arg-type]
            self.wait_for(lambda: svc.pid is None, 5)

    def kill_children(self, grace: float) -> None:
        """TERM every remaining child's process group, wait ``grace``, then KILL."""
        kids = self.children()
        if not kids:
            return
        log.info("stopping %d leftover process(es)", len(kids))
        for pid in kids:
            for fn in (os.killpg, os.kill):
                with contextlib.suppress(OSError):
                    fn(pid, signal.SIGTERM)
        if not self.wait_for(lambda: not self.children(), grace):
            for pid in self.children():
                for fn in (os.killpg, os.kill):
                    with contextlib.suppress(OSError):
                        fn(pid, signal.SIGKILL)
            self.wait_for(lambda: not self.children(), 5)

    def shutdown(self, order: list[Service], grace: float = 10.0) -> None:
        """Stop ``order`` services one by one, killing leftover jobs after the first."""
        self.stopping = True
        for i, svc in enumerate(order):
            self.stop_service(svc, grace)
            if i == 0:
                self.kill_children(grace)
        self.kill_children(grace)
        if self.server is not None:
            with contextlib.suppress(OSError):
                (self.state_dir / "shim.sock").unlink()


def _stat_of(pid: int) -> tuple[int, str]:
    """(start time in clock ticks since boot, comm) of a live or zombie process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0, ""
    comm = data[data.find(b"(") + 1 : data.rfind(b")")].decode(errors="replace")
    try:
        return int(data[data.rfind(b")") + 2 :].split()[19]), comm
    except (ValueError, IndexError):
        return 0, comm


def _parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return int(data[data.rfind(b")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def setup_logging(level: str = "info", prefix: str = "core0") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s {prefix}[%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


