"""The OCI runtime spec (``config.json``) of a container, with containerd/podman defaults.

Defaults of an unprivileged container (checked from inside against podman on the same host by
tests/integration/test_sandbox_security.py):

- capabilities: containers-common's ``default_capabilities`` (podman's set, 11 caps; a subset
  of containerd's 14), the same set bounding/effective/permitted, none inheritable or ambient;
- seccomp: containers-common's profile plus core0's stricter rules (:mod:`.seccomp`);
- ``noNewPrivileges``;
- runc's (and containerd's) 11 masked and 5 read-only paths; ``/sys`` and the cgroup fs
  mounted read-only;
- own pid, mount, uts, ipc, network and cgroup namespaces (the network namespace is the
  container's named netns when it has nics, a fresh empty one otherwise, the node's with
  ``host_network``);
- PID 1 is a static init (catatonit or tini) bind-mounted read-only, so zombies are reaped;
- limits (memory, cpu shares/quota, pids) in ``linux.resources``, applied by the runtime on
  cgroup v1 or v2.

With a user namespace (``userns_base``: :mod:`.userns`) the same defaults apply inside it;
the container joins the namespace core0 made (``userns_path``, which also owns its netns, so a
fresh sysfs and the ping sysctl still work), with the uid/gid mappings runc expects; with
``host_network`` /sys is the node's sysfs bound recursively read-only instead.

``privileged`` lifts exactly what podman's ``--privileged`` lifts: all capabilities (of the
node's own bounding set), no
seccomp filter, no masked or read-only paths, ``/sys`` and the cgroup fs read-write, every
device allowed in the devices cgroup, ``noNewPrivileges`` off. (podman also bind-mounts the
host's device nodes; core0 does not.)
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from typing import Any

from core0.sandbox import seccomp

#: containers-common's default_capabilities (containers.conf), podman's default set
DEFAULT_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
                "CAP_NET_BIND_SERVICE", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP",
                "CAP_SETUID", "CAP_SYS_CHROOT"]

#: every capability up to CAP_CHECKPOINT_RESTORE (40), for privileged containers
ALL_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
            "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
            "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
            "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
            "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN",
            "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
            "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
            "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN",
            "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
            "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"]

#: runc's / containerd's masked paths (a read gives nothing)
MASKED_PATHS = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                "/sys/devices/virtual/powercap"]
#: runc's / containerd's read-only paths
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: where the init binary appears inside the container
INIT_PATH = "/.core0-init"


@dataclass(frozen=True)
class Limits:
    """cgroup limits of a container (None = unlimited)."""

    memory: int | None = None  #: bytes
    cpu_shares: int | None = None
    cpu_quota: int | None = None  #: µs per period
    cpu_period: int | None = None  #: µs (default 100000 with a quota)
    pids: int | None = None

    def resources(self) -> dict[str, Any]:
        r: dict[str, Any] = {}
        if self.memory is not None:
            r["memory"] = {"limit": self.memory}
        cpu: dict[str, Any] = {}
        if self.cpu_shares is not None:
            cpu["shares"] = self.cpu_shares
        if self.cpu_quota is not None:
            cpu["quota"] = self.cpu_quota
            cpu["period"] = self.cpu_period or 100000
        if cpu:
            r["cpu"] = cpu
        if self.pids is not None:
            r["pids"] = {"limit": self.pids}
        return r


@dataclass(frozen=True)
class Mount:
    """A bind mount of a host path (already resolved and checked) into the container."""

    source: str
    target: str
    readonly: bool = False


@dataclass
class Sandbox:
    """Everything the spec is built from."""

    rootfs: str
    init: str  #: host path of the static init
    args: list[str]  #: the init's child (empty: the init pauses)
    hostname: str
    cgroups_path: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    #: "new" (an empty netns: only lo), "host" (the node's) or a path (/run/netns/<name>)
    netns: str = "new"
    mounts: list[Mount] = field(default_factory=list)
    privileged: bool = False
    limits: Limits = field(default_factory=Limits)
    #: host base uid/gid of the container's user namespace (its range: ``userns_size``
    #: ids); 0 = no user namespace
    userns_base: int = 0
    userns_size: int = 65536
    #: the (pinned) user namespace to join, made by core0 with the netns it owns
    userns_path: str = ""


def host_caps() -> list[str]:
    """The capabilities of core0's own bounding set (a privileged container gets these: a
    runtime cannot grant more than it has, and podman does the same)."""
    try:
        with open("/proc/self/status") as f:
            bnd = next(int(ln.split()[1], 16) for ln in f if ln.startswith("CapBnd:"))
    except (OSError, StopIteration, ValueError):
        return list(ALL_CAPS)
    return [c for i, c in enumerate(ALL_CAPS) if bnd & (1 << i)]


def _nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1048576
    return want if hard == resource.RLIM_INFINITY else min(want, hard)


def base_mounts(privileged: bool, userns: bool = False) -> list[dict[str, Any]]:
    """runc's default mounts (proc, /dev tmpfs, devpts, shm, mqueue, sysfs, cgroup). With
    ``userns`` (a user namespace sharing the node's netns: ``host_network``) /sys is the
    node's sysfs bound recursively read-only: a new sysfs needs a netns owned by the user
    namespace."""
    ro = [] if privileged else ["ro"]
    sysfs: dict[str, Any] = {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                             "options": ["nosuid", "noexec", "nodev", *ro]}
    if userns:
        sysfs = {"destination": "/sys", "type": "bind", "source": "/sys",
                 "options": ["rbind", "nosuid", "noexec", "nodev", "rro"]}
    return [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                     "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        sysfs,
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", *ro]},
    ]


def build(sb: Sandbox) -> dict[str, Any]:
    """The ``config.json`` of ``sb``."""
    caps = host_caps() if sb.privileged else DEFAULT_CAPS
    env = {"PATH": DEFAULT_PATH, "HOME": "/", "HOSTNAME": sb.hostname, **sb.env}
    args = [INIT_PATH, "--", *sb.args] if sb.args else [INIT_PATH, "-P"]
    nofile = _nofile()
    proc: dict[str, Any] = {
        "terminal": False,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": [f"{k}={v}" for k, v in env.items()],
        "cwd": sb.cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
        "noNewPrivileges": not sb.privileged,
    }
    mounts = base_mounts(sb.privileged, bool(sb.userns_base) and sb.netns == "host")
    mounts.append({"destination": INIT_PATH, "type": "bind", "source": sb.init,
                   "options": ["bind", "ro", "nosuid", "nodev"]})
    for m in sb.mounts:
        mounts.append({"destination": m.target, "type": "bind", "source": m.source,
                       "options": ["rbind", "rprivate", "nosuid", "nodev",
                                   *(["ro"] if m.readonly else [])]})
    namespaces: list[dict[str, str]] = [{"type": t} for t in ("pid", "ipc", "uts", "mount",
                                                              "cgroup")]
    if sb.userns_base:
        namespaces.insert(0, {"type": "user", **({"path": sb.userns_path}
                                                 if sb.userns_path else {})})
    if sb.netns == "new":
        namespaces.append({"type": "network"})
    elif sb.netns != "host":
        namespaces.append({"type": "network", "path": sb.netns})
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "cgroupsPath": sb.cgroups_path,
        "resources": {"devices": [{"allow": sb.privileged, "access": "rwm"}],
                      **sb.limits.resources()},
    }
    if sb.userns_base:
        ids = [{"containerID": 0, "hostID": sb.userns_base, "size": sb.userns_size}]
        linux["uidMappings"] = ids
        linux["gidMappings"] = [dict(m) for m in ids]
    if sb.netns != "host":
        # (ids of the writer's user namespace: with userns, the container's own gid 0)
        linux["sysctl"] = {"net.ipv4.ping_group_range": "0 0"}
    if not sb.privileged:
        linux["maskedPaths"] = list(MASKED_PATHS)
        linux["readonlyPaths"] = list(READONLY_PATHS)
        linux["seccomp"] = seccomp.default(caps)
    return {
        "ociVersion": "1.0.2",
        "process": proc,
        "root": {"path": sb.rootfs, "readonly": False},
        "hostname": sb.hostname,
        "mounts": mounts,
        "linux": linux,
    }
