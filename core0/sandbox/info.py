"""``info.*`` inside ``corex.dispatch``: answered for the container, not the node.

0-core answered these from inside the container (its coreX); core0 answers them in the
dispatcher from the container's own parts, with the host commands' shapes:

- ``info.cpu``: the node's CPUs the container's cpuset allows;
- ``info.mem``: its memory cgroup (``total`` is its limit, or the node's memory when it has
  none; ``used`` its usage; swap from the memsw/swap counters where the cgroup has them);
- ``info.nic``: the links and addresses of its network namespace (netlink in that netns;
  counters from its ``/proc/<init>/net/dev``); with ``host_network``, the node's;
- ``info.disk``: its root and bind mounts, sized with statvfs through ``/proc/<init>/root``;
- ``info.os``: the node's kernel, the container's hostname, ``procs`` in its cgroup, and
  ``platform`` from the root's ``os-release``;
- ``info.port``: listening sockets of its netns (``/proc/<init>/net/*``), pids of its
  processes only;
- ``info.version``: core0's.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any

import psutil

from core0 import mountinfo
from core0.sandbox.dispatch import cgroup_pids
from core0.sandbox.listing import _cgroup_file
from core0.sandbox.store import Record


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isdigit() else None


def _cpu_list(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.strip().split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            out.update(range(int(a), int(b) + 1))
        elif part.strip().isdigit():
            out.add(int(part))
    return out


def cpu(rec: Record, cpus: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The node's CPUs (``cpus``: the host's info.cpu) that the container's cpuset allows."""
    text = (_cgroup_file(rec.cgroups_path, "cpuset", "cpuset.effective_cpus")
            or _cgroup_file(rec.cgroups_path, "cpuset", "cpuset.cpus.effective")
            or _cgroup_file(rec.cgroups_path, "cpuset", "cpuset.cpus"))
    allowed = _cpu_list(text) if text and text.strip() else None
    return [c for c in cpus if allowed is None or c.get("cpu") in allowed]


def _stat(rec: Record) -> dict[str, int]:
    text = _cgroup_file(rec.cgroups_path, "memory", "memory.stat") or ""
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if v.strip().isdigit():
            out[k] = int(v)
    return out


def mem(rec: Record) -> dict[str, Any]:
    """Memory of the container's cgroup, in the names of the host's ``info.mem``."""
    node = psutil.virtual_memory()
    limit = (_int(_cgroup_file(rec.cgroups_path, "memory", "memory.limit_in_bytes"))
             or _int(_cgroup_file(rec.cgroups_path, "memory", "memory.max")))
    total = min(limit, node.total) if limit else node.total
    used = (_int(_cgroup_file(rec.cgroups_path, "memory", "memory.usage_in_bytes"))
            or _int(_cgroup_file(rec.cgroups_path, "memory", "memory.current")) or 0)
    st = _stat(rec)
    cached = st.get("cache", st.get("file", 0))
    swap_used = 0
    memsw = _int(_cgroup_file(rec.cgroups_path, "memory", "memory.memsw.usage_in_bytes"))
    if memsw is not None:
        swap_used = max(0, memsw - used)
    else:
        swap_used = _int(_cgroup_file(rec.cgroups_path, "memory", "memory.swap.current")) or 0
    swap_total = psutil.swap_memory().total
    free = max(0, total - used)
    return {
        "total": total, "available": min(node.available, free + cached), "used": used,
        "usedPercent": round(100.0 * used / total, 1) if total else 0.0, "free": free,
        "active": st.get("active_anon", 0) + st.get("active_file", 0),
        "inactive": st.get("inactive_anon", 0) + st.get("inactive_file", 0),
        "buffers": 0, "cached": cached, "shared": st.get("shmem", 0),
        "swapTotal": swap_total, "swapFree": max(0, swap_total - swap_used),
        "swapUsed": swap_used,
    }


def _net_dev(pid: int) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]:
            name, _, rest = line.partition(":")
            out[name.strip()] = [int(x) for x in rest.split()]
    return out


def nic(rec: Record, pid: int) -> list[dict[str, Any]]:
    """The links of the container's netns, in the shape of the host's ``info.nic``."""
    from core0.sandbox.netsetup import session_of

    counters = _net_dev(pid)
    out = []
    with session_of(rec, pid) as r:
        addrs: dict[int, list[dict[str, str]]] = {}
        for a in r.get_addr():
            fam = {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}.get(a["family"])
            if fam:
                addrs.setdefault(a["index"], []).append(
                    {"addr": f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}", "family": fam})
        for link in r.get_links():
            name = link.get_attr("IFLA_IFNAME")
            state = (link.get_attr("IFLA_OPERSTATE") or "").lower()
            flags = link["flags"]
            c = counters.get(name)
            out.append({
                "name": name, "hardwareaddr": link.get_attr("IFLA_ADDRESS") or "",
                "mtu": link.get_attr("IFLA_MTU") or 0, "up": bool(flags & 1), "speed": 0,
                "carrier": bool(link.get_attr("IFLA_CARRIER")), "operstate": state == "up",
                "state": state, "flags": [n for bit, n in ((1, "up"), (2, "broadcast"),
                                                            (8, "loopback"), (4096, "multicast"))
                                          if flags & bit],
                "addrs": addrs.get(link["index"], []),
                "stats": {"bytesRecv": c[0], "packetsRecv": c[1], "errin": c[2],
                          "dropin": c[3], "bytesSent": c[8], "packetsSent": c[9],
                          "errout": c[10], "dropout": c[11]} if c and len(c) >= 12 else {},
            })
    return sorted(out, key=lambda n: n["name"])


def disk(rec: Record, pid: int) -> list[dict[str, Any]]:
    """The container's root and bind mounts (its mount table, seen through its init)."""
    out = []
    skip = {"proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "tmpfs", "devtmpfs"}
    for m in mountinfo.of_pid(pid):
        mp = m.mountpoint
        if m.fstype in skip or mp.startswith(("/proc", "/sys", "/dev", "/.core0-init", "/etc/")):
            continue
        entry: dict[str, Any] = {"device": m.source, "mountpoint": mp, "fstype": m.fstype,
                                 "opts": ",".join(m.options)}
        with contextlib.suppress(OSError):
            # through the init's root: the path resolves inside the container
            s = os.statvfs(f"/proc/{pid}/root{mp}")
            total, free = s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize
            used = total - s.f_bfree * s.f_frsize
            entry.update(total=total, used=used, free=free,
                         usedPercent=round(100.0 * used / total, 1) if total else 0.0)
        out.append(entry)
    return out


def parse_os_release(text: str) -> dict[str, str]:
    """os-release(5) ``KEY=value`` lines: a value is shell-quoted (``"..."``, ``'...'``,
    backslash escapes), ``#`` starts a comment; a line that is not one assignment is skipped,
    as systemd does."""
    import shlex

    out: dict[str, str] = {}
    for line in text.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # unbalanced quotes
            continue
        if len(words) == 1:
            k, sep, v = words[0].partition("=")
            if sep and k.isidentifier():
                out[k] = v
    return out


def os_(rec: Record, rootfs: Path) -> dict[str, Any]:
    """The node's kernel; the container's hostname, process count and os-release."""
    boot = psutil.boot_time()
    out: dict[str, Any] = {
        "uptime": int(time.time() - boot), "bootTime": int(boot),
        "os": platform.system().lower(), "kernelVersion": platform.release(),
        "kernelArch": platform.machine(), "hostid": "",
    }
    rel: dict[str, str] = {}
    for p in ("etc/os-release", "usr/lib/os-release"):
        path = rootfs / p
        # read only a regular file of the root (never a symlink out of it)
        with contextlib.suppress(OSError, ValueError):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd) as f:
                rel = parse_os_release(f.read(65536))
            break
    out.update(hostname=rec.hostname or f"container-{rec.id}",
               procs=len(cgroup_pids(rec.cgroups_path)), platform=rel.get("ID", ""),
               platformFamily=rel.get("ID_LIKE", rel.get("ID", "")),
               platformVersion=rel.get("VERSION_ID", ""))
    return out


_TCP_LISTEN = "0A"


def _hex_addr(text: str, v6: bool) -> str:
    raw = bytes.fromhex(text)
    if v6:
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
        return socket.inet_ntop(socket.AF_INET6, raw)
    return socket.inet_ntop(socket.AF_INET, raw[::-1])


def port(rec: Record, pid: int) -> list[dict[str, Any]]:
    """Listening TCP and bound UDP sockets of the container's netns, with the pid of the
    container process holding each (0 when none of its processes does)."""
    owners: dict[str, int] = {}
    for p in cgroup_pids(rec.cgroups_path):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{p}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{p}/fd/{fd}")
                    if target.startswith("socket:["):
                        owners.setdefault(target[8:-1], p)
    out = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10:
                continue
            local, remote, st, inode = f[1], f[2], f[3], f[9]
            if proto.startswith("tcp") and st != _TCP_LISTEN:
                continue
            if proto.startswith("udp") and not remote.endswith(":0000"):
                continue
            addr, _, hport = local.partition(":")
            out.append({"network": proto, "ip": _hex_addr(addr, proto.endswith("6")),
                        "port": int(hport, 16), "pid": owners.get(inode, 0)})
    return out


#: answered by the host's own command (``host`` in :func:`answer`), then filtered for cpu
FROM_HOST = ("info.cpu", "info.version")


def answer(name: str, rec: Record, pid: int, rootfs: Path, host: Any = None) -> Any:
    """The answer to inner ``info.<name>`` for container ``rec`` whose init is ``pid``;
    ``host`` is the host command's answer for the commands in :data:`FROM_HOST` and for
    ``info.nic`` of a container on the node's network."""
    if name == "info.cpu":
        return cpu(rec, host)
    if name == "info.version" or (name == "info.nic" and rec.host_network):
        return host
    if name == "info.mem":
        return mem(rec)
    if name == "info.nic":
        return nic(rec, pid)
    if name == "info.disk":
        return disk(rec, pid)
    if name == "info.os":
        return os_(rec, rootfs)
    if name == "info.port":
        return port(rec, pid)
    raise ValueError(f"{name} is not answered for containers")
