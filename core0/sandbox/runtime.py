"""The OCI runtime behind containers: crun where it works, runc otherwise.

One small interface (:class:`Runtime`) over the two CLIs, which take the same verbs. Every
call is an argv list with ``--`` before the container id (ids are core0's own, but the rule
holds everywhere). The runtime's state dir (``--root``) lives under core0's state dir (a tmpfs
on a node), so it vanishes with the node's containers on reboot and is shared by successive
dispatchers: a dispatcher killed with ``kill -9`` leaves its containers running, and the next
one finds them again with ``state``/``list``.

A container is started with ``run --detach``: the runtime process exits once the container's
init runs, so nothing of the container is a child of the dispatcher beyond that moment (the
init is re-parented to the nearest subreaper, which outlives the dispatcher). The init's
stdout/stderr go to a file, never to a pipe the dispatcher holds.

Which runtime: crun is probed by running a one-binary bundle; crun refuses hybrid cgroup
v1/v2 hosts ("cgroups in hybrid mode not supported"), and then runc is used. The choice is
kept in the state dir (``sandbox/runtime``, with the boot's id), so every later dispatcher of
the boot uses the runtime its containers were made with (each runtime has its own
``--root``): a probe that failed once after a dispatcher restart (a timeout under load) would
otherwise switch runtimes under running containers, and every exec into them would fail. It
also spares each new dispatcher a probe container.
Child processes go through core0's spawn and the one reaper (never ``Popen.wait``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core0 import cancel
from core0.errors import Conflict, NotFound, PreconditionFailed, ToolError
from core0.proc import process

log = logging.getLogger(__name__)

#: tried in this order
CANDIDATES = ("crun", "runc")
#: a static init for the container's PID 1 (reaps zombies inside); bind-mounted read-only
INITS = ("catatonit", "tini-static")


@dataclass(frozen=True)
class State:
    """What ``<runtime> state`` says of a container."""

    id: str
    status: str  #: creating | created | running | paused | stopped
    pid: int
    bundle: str

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> State:
        return cls(str(d.get("id", "")), str(d.get("status", "")), int(d.get("pid") or 0),
                   str(d.get("bundle", "")))


def find_init() -> str:
    """The static init binary to bind-mount as the container's PID 1."""
    for name in INITS:
        path = shutil.which(name)
        if path:
            return os.path.realpath(path)
    raise PreconditionFailed(f"no container init found (install one of {', '.join(INITS)})")


class Runtime:
    """An OCI runtime CLI (crun or runc) with its state dir."""

    def __init__(self, binary: str, root: Path):
        self.binary = binary
        self.name = os.path.basename(binary)
        self.root = root

    def argv(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.root), *args]

    async def _call(self, *args: str, timeout: float = 30, check: bool = True
                    ) -> process.RunResult:
        try:
            res = await process.run(self.argv(*args), timeout=timeout)
        except FileNotFoundError:
            raise PreconditionFailed(f"{self.binary} is not installed on this node") from None
        if check and res.status != 0:
            raise ToolError(list(res.argv), res.status, res.stderr, res.stdout)
        return res

    async def run_detached(self, cid: str, bundle: Path, log_path: Path,
                           timeout: float = 60) -> int:
        """Create and start ``cid`` from ``bundle``; returns the init's host pid.

        The container's stdio (and the runtime's own error output) go to ``log_path``.
        """
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        pid_file = bundle / "init.pid"
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        out = os.open(log_path, flags, 0o600)
        nul = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        argv = self.argv("run", "--detach", "--bundle", str(bundle), "--pid-file",
                         str(pid_file), "--", cid)
        before = log_path.stat().st_size
        try:
            try:
                sp = process.spawn(argv, stdin=nul, stdout=out, stderr=out)
            except FileNotFoundError:
                raise PreconditionFailed(f"{self.binary} is not installed on this node"
                                         ) from None
        finally:
            os.close(out)
            os.close(nul)
        done = process.get_reaper().watch(sp.pid)
        try:
            # a cancel waits for runc's end: cut short, it would leave a container running
            # that the caller's clean-up, run at once, did not see yet
            status = await cancel.atomic(asyncio.wait_for(asyncio.shield(done), timeout))
        except BaseException:
            if not done.done():
                process.killpg(sp.pid, signal.SIGKILL)
            raise
        code, sig = process.exit_code(status)
        if code != 0:
            with open(log_path, "rb") as f:
                f.seek(before)
                tail = f.read()[-4000:].decode("utf-8", "replace")
            raise ToolError(argv, code if sig == 0 else -sig, tail)
        return int(pid_file.read_text().strip())

    async def state(self, cid: str) -> State | None:
        """The container's state, or None when the runtime does not know it."""
        res = await self._call("state", "--", cid, check=False)
        if res.status != 0:
            if "does not exist" in res.stderr or "not found" in res.stderr.lower():
                return None
            raise ToolError(list(res.argv), res.status, res.stderr, res.stdout)
        return State.from_json(json.loads(res.stdout))

    async def list_all(self) -> list[State]:
        """Every container in this runtime's state dir."""
        if not self.root.exists():
            return []
        res = await self._call("list", "--format", "json")
        data = json.loads(res.stdout or "null") or []
        return [State.from_json(d) for d in data]

    async def kill(self, cid: str, sig: str = "TERM", all_procs: bool = False) -> bool:
        """Signal the container's init (``all_procs``: every process of it). False when the
        container is not running."""
        args = ["kill", *(["--all"] if all_procs else []), "--", cid, sig]
        res = await self._call(*args, check=False)
        return res.status == 0

    async def pause(self, cid: str) -> None:
        """Freeze every process of the container (its cgroup's freezer)."""
        await self._call("pause", "--", cid)

    async def resume(self, cid: str) -> bool:
        """Thaw a paused container; False when the runtime refused (not paused, gone)."""
        return (await self._call("resume", "--", cid, check=False)).status == 0

    async def delete(self, cid: str, force: bool = True) -> None:
        """Delete the container (its cgroup and runtime state); absent is fine."""
        res = await self._call("delete", *(["--force"] if force else []), "--", cid,
                               check=False)
        if res.status != 0 and "does not exist" not in res.stderr \
                and "not found" not in res.stderr.lower():
            raise ToolError(list(res.argv), res.status, res.stderr, res.stdout)

    def exec_argv(self, cid: str, argv: list[str], *, env: dict[str, str] | None = None,
                  cwd: str = "", pid_file: str = "") -> list[str]:
        """The argv that runs ``argv`` inside ``cid`` (same sandbox as its init), in the
        foreground: its exit status is the program's, SIGTERM/SIGINT are forwarded to it.
        ``pid_file``: where the runtime writes the program's host pid."""
        if not argv:
            raise ValueError("empty argv")
        opts: list[str] = []
        for k, v in (env or {}).items():
            opts.append(f"--env={k}={v}")  # one argument: a value can never become an option
        if cwd:
            opts.append(f"--cwd={cwd}")
        if pid_file:
            opts.append(f"--pid-file={pid_file}")
        return self.argv("exec", *opts, "--", cid, *argv)

    def known(self, cid: str) -> bool:
        """Does the runtime hold state for ``cid``? (runc and crun keep a directory per
        container in their ``--root`` from create to delete; a foreground ``run`` removes it
        when the container ends.)"""
        return (self.root / cid).is_dir()

    async def stop(self, cid: str, pid: int = 0, grace: float = 5.0) -> None:
        """TERM the init, KILL every process after ``grace`` s, then delete. With the init's
        ``pid`` its end is watched in /proc (no runtime call per poll). Nothing to do (no
        runtime call) once the runtime has no state for it: a foreground run that ended."""
        if not self.known(cid):
            return
        if not pid:
            st = await self.state(cid)
            if st is None:
                return
            pid = st.pid if st.status in ("running", "paused", "created") else 0
        if pid and await self.kill(cid, "TERM"):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace
            while os.path.exists(f"/proc/{pid}") and alive(pid):
                if loop.time() > deadline:
                    await self.kill(cid, "KILL", all_procs=True)
                    break
                await asyncio.sleep(0.01)
        await self.delete(cid, force=True)


def alive(pid: int) -> bool:
    """Not gone and not a zombie (a zombie init is as good as stopped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2:][:1] != b"Z"


# ---------------------------------------------------------------- the probe

_chosen: dict[str, str] = {}
#: each probe run has a container name (and so a cgroup) of its own: first creates that come
#: together (declared containers coming back) probe at once without touching each other's
_probes = itertools.count(1)


def _probe_config(init: str) -> dict[str, Any]:
    return {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": ["/init", "-V"],
                    "cwd": "/", "env": ["PATH=/"], "noNewPrivileges": True,
                    "capabilities": {"bounding": [], "effective": [], "permitted": []}},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "probe",
        # /dev as a tmpfs of its own, as in every container's spec: the runtimes make the
        # device nodes there (a node's state dir is a nodev tmpfs, where they could not open)
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                    "options": ["nosuid", "strictatime", "mode=755", "size=64k"]},
                   {"destination": "/init", "type": "bind", "source": init,
                    "options": ["bind", "ro"]}],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "mount", "ipc", "uts",
                                                        "network")]},
    }


async def _works(binary: str, base: Path, init: str) -> bool:
    with tempfile.TemporaryDirectory(prefix="probe-", dir=base) as d:
        bundle = Path(d)
        (bundle / "rootfs").mkdir()
        (bundle / "rootfs" / "proc").mkdir()
        (bundle / "rootfs" / "dev").mkdir()
        (bundle / "rootfs" / "init").touch()
        (bundle / "config.json").write_text(json.dumps(_probe_config(init)))
        root = bundle / "state"
        cid = f"probe-{os.getpid()}-{next(_probes)}"  # its cgroup is /<cid>: never shared
        try:
            res = await process.run([binary, "--root", str(root), "run", "--bundle",
                                     str(bundle), "--", cid], timeout=30)
        except FileNotFoundError:
            return False
        if res.status != 0:
            log.info("runtime %s refused this host: %s", binary, res.stderr.strip()[-300:])
            with contextlib.suppress(Exception):
                await process.run([binary, "--root", str(root), "delete", "--force", "--",
                                   cid], timeout=30)
        return res.status == 0


#: the chosen runtime's path, under the state dir's ``sandbox/`` (see the module docstring)
CHOICE = "runtime"


async def choose(state_dir: Path, prefer: str | None = None) -> Runtime:
    """The runtime for this node: the one chosen before under this state dir, else the first
    of crun, runc that runs a probe bundle here (kept for the next dispatchers). ``prefer``
    forces one. 412 when none works."""
    base = state_dir / "sandbox"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = prefer or ""
    if key not in _chosen:
        kept = None if prefer else _kept(base)
        if kept is not None:
            _chosen[key] = kept
        else:
            await _probe(key, prefer, base)
            if not prefer:
                _keep(base, _chosen[key])
    path = _chosen[key]
    return Runtime(path, base / os.path.basename(path))


def _kept(base: Path) -> str | None:
    """The runtime an earlier dispatcher of this boot chose (None: none, one of another boot
    — the host's cgroup setup may have changed — or it is no longer there)."""
    try:
        path, _, boot = (base / CHOICE).read_text().partition("\n")
    except OSError:
        return None
    if boot.strip() != process.boot_id():
        return None
    if (os.path.isabs(path) and os.path.basename(path) in CANDIDATES
            and os.access(path, os.X_OK)):
        return path
    log.warning("runtime choice %r in %s ignored: probing again", path[:200], base / CHOICE)
    return None


def _keep(base: Path, path: str) -> None:
    tmp = base / f".{CHOICE}.{os.getpid()}"
    try:
        tmp.write_text(f"{path}\n{process.boot_id()}\n")
        os.replace(tmp, base / CHOICE)
    except OSError as e:
        log.warning("runtime choice not kept: %s", e)
        with contextlib.suppress(OSError):
            tmp.unlink()


async def _probe(key: str, prefer: str | None, base: Path) -> None:
    init = find_init()
    for name in ([prefer] if prefer else list(CANDIDATES)):
        path = shutil.which(name)
        if path and await _works(path, base, init):
            _chosen[key] = path
            return
    raise PreconditionFailed("no OCI runtime works on this node (tried "
                             f"{', '.join([prefer] if prefer else CANDIDATES)})")


def require_known(st: State | None, cid: str) -> State:
    if st is None:
        raise NotFound(f"the runtime knows no container {cid}")
    if st.status not in ("running", "created", "paused", "stopped", "creating"):
        raise Conflict(f"container {cid} is {st.status}")
    return st
