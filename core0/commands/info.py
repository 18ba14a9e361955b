"""info.*: what the node is (cpu, memory, disks, NICs, OS, listening ports, version)."""

from __future__ import annotations

import platform
import socket
import time
from pathlib import Path
from typing import Any

import psutil

from core0 import __version__
from core0.context import Context
from core0.registry import Role, command
from core0.schema import NoArgs

_CPU_KEYS = {
    "processor": ("cpu", int),
    "vendor_id": ("vendorId", str),
    "cpu family": ("family", str),
    "model": ("model", str),
    "stepping": ("stepping", int),
    "physical id": ("physicalId", str),
    "core id": ("coreId", str),
    "cpu cores": ("cores", int),
    "model name": ("modelName", str),
    "cpu MHz": ("mhz", float),
    "cache size": ("cacheSize", str),
    "flags": ("flags", str),
    "microcode": ("microcode", str),
}


def _cpuinfo() -> list[dict[str, Any]]:
    cpus: list[dict[str, Any]] = []
    cur: dict[str, Any] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines() + [""]:
        if not line.strip():
            if cur:
                cpus.append(cur)
                cur = {}
            continue
        k, _, v = line.partition(":")
        k, v = k.strip(), v.strip()
        if k in _CPU_KEYS:
            name, conv = _CPU_KEYS[k]
            try:
                cur[name] = v.split() if name == "flags" else conv(v)
            except ValueError:
                cur[name] = v
    return cpus


@command("info.cpu", role=Role.READ_ONLY, inline=True)
async def cpu(ctx: Context, args: NoArgs) -> list[dict[str, Any]]:
    """One entry per logical CPU: cpu, vendorId, family, model, modelName, mhz, cores,
    cacheSize, flags… (gopsutil's cpu.Info names, as 0-core returned them)."""
    return _cpuinfo()


@command("info.mem", role=Role.READ_ONLY, inline=True)
async def mem(ctx: Context, args: NoArgs) -> dict[str, Any]:
    """Memory in bytes: total, available, used, free, usedPercent, active, inactive, buffers,
    cached, shared, and swap (swapTotal, swapFree, swapUsed) (gopsutil's names, as 0-core)."""
    vm = psutil.virtual_memory()
    sw = psutil.swap_memory()
    return {
        "total": vm.total,
        "available": vm.available,
        "used": vm.used,
        "usedPercent": vm.percent,
        "free": vm.free,
        "active": getattr(vm, "active", 0),
        "inactive": getattr(vm, "inactive", 0),
        "buffers": getattr(vm, "buffers", 0),
        "cached": getattr(vm, "cached", 0),
        "shared": getattr(vm, "shared", 0),
        "swapTotal": sw.total,
        "swapFree": sw.free,
        "swapUsed": sw.used,
    }


@command("info.disk", role=Role.READ_ONLY)
async def disk(ctx: Context, args: NoArgs) -> list[dict[str, Any]]:
    """Mounted filesystems: device, mountpoint, fstype, opts, and size/used/free in bytes."""
    def collect() -> list[dict[str, Any]]:
        out = []
        for p in psutil.disk_partitions(all=False):
            entry: dict[str, Any] = {
                "device": p.device,
                "mountpoint": p.mountpoint,
                "fstype": p.fstype,
                "opts": p.opts,
            }
            try:
                u = psutil.disk_usage(p.mountpoint)
                entry.update(total=u.total, used=u.used, free=u.free, usedPercent=u.percent)
            except OSError:
                pass
            out.append(entry)
        return out

    return await ctx.to_thread(collect)


def nic_info() -> list[dict[str, Any]]:
    """Interfaces with addresses, MAC, MTU, speed, carrier, operstate and counters."""
    addrs = psutil.net_if_addrs()
    stats = psutil.net_if_stats()
    io = psutil.net_io_counters(pernic=True)
    out = []
    for name in sorted(set(addrs) | set(stats)):
        st = stats.get(name)
        base = Path("/sys/class/net") / name

        def read(attr: str, base: Path = base) -> str:
            try:
                return (base / attr).read_text().strip()
            except OSError:
                return ""
        carrier = read("carrier")
        c = io.get(name)
        out.append({
            "name": name,
            "hardwareaddr": next((a.address for a in addrs.get(name, [])
                                  if a.family == psutil.AF_LINK), ""),
            "mtu": st.mtu if st else 0,
            "up": bool(st and st.isup),
            "speed": st.speed if st else 0,
            "carrier": carrier == "1",
            # 0-core: a bool (true when "up"); the kernel's word is in "state"
            "operstate": read("operstate") in ("up", "1"),
            "state": read("operstate"),
            "flags": [f for f in str(getattr(st, "flags", "") or "").split(",") if f],
            "addrs": [
                {"addr": f"{a.address}/{_prefix(a.netmask)}" if a.netmask else a.address,
                 "family": "inet" if a.family == socket.AF_INET else "inet6"}
                for a in addrs.get(name, []) if a.family in (socket.AF_INET, socket.AF_INET6)
            ],
            "stats": {
                "bytesSent": c.bytes_sent, "bytesRecv": c.bytes_recv,
                "packetsSent": c.packets_sent, "packetsRecv": c.packets_recv,
                "errin": c.errin, "errout": c.errout, "dropin": c.dropin, "dropout": c.dropout,
            } if c else {},
        })
    return out


def _prefix(netmask: str) -> int:
    if ":" in netmask:
        return sum(bin(int(x, 16)).count("1") for x in netmask.split(":") if x)
    return sum(bin(int(x)).count("1") for x in netmask.split("."))


@command("info.nic", role=Role.READ_ONLY, inline=True)
async def nic(ctx: Context, args: NoArgs) -> list[dict[str, Any]]:
    """Network interfaces: name, hardwareaddr, mtu, up, speed, carrier, operstate (true when
    the kernel's operstate is "up", as 0-core), state (the kernel's operstate: up, down,
    unknown...), flags, addrs ([{addr "a.b.c.d/n", family}]) and stats (bytes, packets,
    errors, drops)."""
    return nic_info()


def _os_release() -> dict[str, str]:
    try:
        return platform.freedesktop_os_release()  # /etc/os-release, else /usr/lib/os-release
    except OSError:
        return {}


@command("info.os", role=Role.READ_ONLY, inline=True)
async def os_(ctx: Context, args: NoArgs) -> dict[str, Any]:
    """hostname, uptime and bootTime (s), procs, os, platform, platformVersion,
    kernelVersion, kernelArch, hostid (gopsutil's host.Info names)."""
    rel = _os_release()
    boot = psutil.boot_time()
    try:
        hostid = Path("/etc/machine-id").read_text().strip()
    except OSError:
        hostid = ""
    return {
        "hostname": socket.gethostname(),
        "uptime": int(time.time() - boot),
        "bootTime": int(boot),
        "procs": len(psutil.pids()),
        "os": platform.system().lower(),
        "platform": rel.get("ID", ""),
        "platformFamily": rel.get("ID_LIKE", rel.get("ID", "")),
        "platformVersion": rel.get("VERSION_ID", ""),
        "kernelVersion": platform.release(),
        "kernelArch": platform.machine(),
        "hostid": hostid,
    }


@command("info.port", role=Role.READ_ONLY)
async def port(ctx: Context, args: NoArgs) -> list[dict[str, Any]]:
    """Listening sockets: network (tcp, tcp6, udp, udp6, unix), ip and port, or for a unix
    socket its path in ``unix`` (0-core's name) and ``path``, and pid."""
    def collect() -> list[dict[str, Any]]:
        out = []
        c: Any
        for c in psutil.net_connections(kind="all"):
            fam = {socket.AF_INET: "", socket.AF_INET6: "6"}.get(c.family)
            if c.family == socket.AF_UNIX:
                if c.status not in ("LISTEN", "NONE") or not c.laddr:
                    continue
                out.append({"network": "unix", "unix": c.laddr, "path": c.laddr,
                            "pid": c.pid or 0})
                continue
            if fam is None:
                continue
            if c.type == socket.SOCK_STREAM and c.status != "LISTEN":
                continue
            if c.type == socket.SOCK_DGRAM and c.raddr:
                continue
            proto = "tcp" if c.type == socket.SOCK_STREAM else "udp"
            out.append({"network": proto + fam, "ip": c.laddr.ip, "port": c.laddr.port,
                        "pid": c.pid or 0})
        return out

    return await ctx.to_thread(collect)


def version_info() -> dict[str, Any]:
    info = {"version": __version__, "branch": "", "revision": "", "dirty": False,
            "python": platform.python_version()}
    stamp = Path(__file__).resolve().parent.parent / "BUILD"
    try:
        for line in stamp.read_text().splitlines():
            k, _, v = line.partition("=")
            if k in ("branch", "revision"):
                info[k] = v
            elif k == "dirty":
                info["dirty"] = v == "1"
    except OSError:
        pass
    return info


@command("info.version", role=Role.READ_ONLY, inline=True)
async def version(ctx: Context, args: NoArgs) -> dict[str, Any]:
    """core0's version, and the branch/revision it was built from (when stamped); ``image``:
    the running image's digest and staged slot (image.current, docs/images.md)."""
    from core0.image.store import Store, images_dir

    return {**version_info(), "image": Store(images_dir(ctx.config)).running(ctx.config)}


