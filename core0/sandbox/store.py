"""Container records: small integer ids, and what core0 made for each container.

Each container has a directory ``<state_dir>/sandbox/containers/<id>/``: its OCI bundle
(``config.json``, the root clone ``rootfs`` with ``upper``/``work``), the init's log, the files
bind-mounted into it (``resolv.conf``, ``hosts``, ``hostname``) and ``container.json``, the
record (arguments, image, nics, forwards, names of its netns, cgroup and runtime id). The
record is written atomically (temp file, rename) before anything is made and after each
change, so a dispatcher killed at any point leaves enough for the next one to list the
container (same id, same pid: the runtime knows it) or to clean up what was half made. It is
not fsynced: it describes kernel objects (mounts, namespaces, links, processes) that a power
loss or a kernel crash ends anyway, and on a node the state dir is a tmpfs.

Ids are allocated by ``mkdir`` of the lowest free integer (atomic: two creates never get the
same id); the directory disappears on terminate, which frees the id. A create allocates under
the store's lock (:meth:`Store.locked`) and writes the first record before it lets go, so what
it counts there (a role's containers, :mod:`.quota`) includes every reservation made before.

Host-wide names (netns, cgroup, veth, runtime id) carry a short tag of the node's state dir,
so several nodes on one host (tests) never collide.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core0.errors import NotFound, Unavailable

MAX_CONTAINERS = 1000


@dataclass
class Nic:
    type: str
    id: str = ""
    name: str = ""
    hwaddr: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    state: str = "configured"  #: configured | destroyed | error
    #: the host side of the veth (made by core0)
    host_link: str = ""
    #: its name inside the container
    inner: str = ""
    ip: str = ""  #: the address inside, with prefix


@dataclass
class Record:
    id: int
    name: str
    tags: list[str]
    root: str  #: as given
    image: str  #: the stored image used
    hostname: str
    arguments: dict[str, Any]
    runtime_id: str
    netns: str  #: named netns ("" with host_network)
    cgroups_path: str
    host_network: bool = False
    privileged: bool = False
    nics: list[Nic] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    state: str = "creating"  #: creating | running (as far as core0 knows; the runtime decides)
    pid: int = 0
    created: int = 0
    #: the ZFS clone holding its root ("" on other storage)
    clone_dataset: str = ""
    #: the service id of its keeper (restart policy), "" for none
    keeper: str = ""
    #: a declared container's spec hash (``persistent``: recorded in main.persistent_dir)
    spec_hash: str = ""
    #: the boot service running it in the foreground ("" for a detached container)
    service: str = ""
    #: host base uid/gid of its user namespace (:mod:`.userns`), 0 = none
    userns_base: int = 0
    #: its netns is still the anonymous one the runtime made for its init (a container
    #: created without nics); :func:`.netsetup.pin_init_netns` names it ``netns`` when a nic
    #: is added
    netns_anon: bool = False
    #: the role (``core0.registry.Role`` value) and private-queue scope ("" for none) of the
    #: queue that created it: viewers below them see its secret arguments redacted
    #: (records made before these fields: admin)
    role: int = 3
    scope: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Record:
        d = dict(d)
        d["nics"] = [Nic(**n) for n in d.get("nics", [])]
        return cls(**d)

    @property
    def owner(self) -> str:
        """The owner of its nft forwards."""
        return f"container:{self.id}"


@functools.lru_cache(maxsize=64)
def node_tag(state_dir: Path) -> str:
    """A short tag of the node's state dir (its real path) for host-wide names (computed
    once per dispatcher: a path resolution per container step adds up)."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:6]


def veth_prefix(state_dir: Path) -> str:
    """The start of every host-side veth name of this node's containers (``vc<tag>``)."""
    return "vc" + node_tag(state_dir)[:4]


class Store:
    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.base = state_dir / "sandbox" / "containers"
        self.base.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.tag = node_tag(state_dir)

    def dir(self, cid: int) -> Path:
        return self.base / str(cid)

    def ids(self) -> list[int]:
        return sorted(int(p.name) for p in self.base.iterdir() if p.name.isdigit())

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's lock (an flock on ``sandbox/containers.lock``: other threads
        and processes wait for it). Only over code that does not await: the creates of a
        dispatcher are jobs of one asyncio loop, and one that found the lock taken by another
        of them would block the loop for good."""
        fd = os.open(self.base.parent / "containers.lock",
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def allocate(self, prefer: int = 0) -> int:
        """Reserve ``prefer`` when free, else the lowest free id (its directory); 503 at the
        limit."""
        used = set(self.ids())
        if 0 < prefer <= MAX_CONTAINERS and prefer not in used:
            with contextlib.suppress(FileExistsError):
                self.dir(prefer).mkdir(mode=0o700)
                return prefer
        for cid in range(1, MAX_CONTAINERS + 1):
            if cid in used:
                continue
            try:
                self.dir(cid).mkdir(mode=0o700)
            except FileExistsError:
                continue
            return cid
        raise Unavailable(f"the node runs {MAX_CONTAINERS} containers already")

    def names(self, cid: int) -> dict[str, str]:
        """Host-wide names of a container's objects."""
        return {"netns": f"core0-{self.tag}-{cid}", "cgroups_path": f"/core0-{self.tag}-{cid}",
                "runtime_id": f"core0-{cid}", "veth": veth_prefix(self.state_dir) + str(cid)}

    def save(self, rec: Record) -> None:
        d = self.dir(rec.id)
        tmp = d / "container.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(rec.to_json(), indent=1, sort_keys=True).encode())
        finally:
            os.close(fd)
        os.replace(tmp, d / "container.json")

    def load(self, cid: int) -> Record:
        try:
            return Record.from_json(json.loads((self.dir(cid) / "container.json").read_text()))
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no such container: {cid}") from None

    def all(self) -> list[Record]:
        out = []
        for cid in self.ids():
            try:
                out.append(self.load(cid))
            except (NotFound, ValueError, TypeError):
                continue
        return out
