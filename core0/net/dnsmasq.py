"""dnsmasq per bridge: DNS (static and dnsmasq modes) and DHCP (dnsmasq mode).

Each bridge gets ``<state_dir>/net/dnsmasq/<bridge>/`` with ``dnsmasq.conf`` (written by
core0 from validated values only), ``dnsmasq.pid`` and ``leases``. dnsmasq runs in the
foreground (``--keep-in-foreground``) as a protected service of the job engine
(``ctx.engine.start_service``: restart with backoff, survives dispatcher restarts), with the
service id ``dnsmasq.<bridge>``. It opens its pid and lease files as root before dropping to
``nobody``, so the state dir may stay 0700.

Static leases (``bridge.add_host``) are ``dhcp-host`` lines of the config: dnsmasq re-reads
hosts files only after dropping privileges, so core0 rewrites the config and restarts the
service instead (the lease file keeps the dynamic leases across the restart).

Readiness is the pid file naming a live dnsmasq with this bridge's config (dnsmasq writes it
once its sockets are bound). Stopping goes through the engine, then by pid file for a dnsmasq
the engine no longer knows (checked against its command line, so a reused pid is never hit).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from core0.context import ProcessSpec
from core0.errors import Unavailable
from core0.net.state import Bridge, net_dir

if TYPE_CHECKING:
    from core0.context import Context

BINARY = "dnsmasq"


def service_id(bridge: str) -> str:
    return f"dnsmasq.{bridge}"


def bridge_dir(state_dir: Path, bridge: str) -> Path:
    d = net_dir(state_dir) / "dnsmasq" / bridge
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


def config(br: Bridge, d: Path) -> str:
    """The dnsmasq.conf of a bridge (every value was validated by bridge.create)."""
    iface = ipaddress.ip_interface(br.cidr)
    lines = [
        f"# dnsmasq of core0 bridge {br.name}: generated, rewritten on every change",
        f"interface={br.name}",
        "except-interface=lo",
        "bind-interfaces",
        f"listen-address={iface.ip}",
        "no-hosts",
        f"pid-file={d / 'dnsmasq.pid'}",
        f"dhcp-leasefile={d / 'leases'}",
    ]
    if br.mode == "dnsmasq":
        lines += [
            f"dhcp-range={br.start},{br.end},{iface.network.netmask},1h",
            f"dhcp-option=option:router,{iface.ip}",
            f"dhcp-option=option:dns-server,{iface.ip}",
            "dhcp-authoritative",
        ]
        lines += [f"dhcp-host={mac},{ip}" for mac, ip in sorted(br.hosts.items())]
    return "\n".join(lines) + "\n"


def _pid_of(d: Path) -> int | None:
    """The pid in the bridge's pid file if that process is our dnsmasq (guards pid reuse)."""
    try:
        pid = int((d / "dnsmasq.pid").read_text().strip())
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    conf = f"--conf-file={d / 'dnsmasq.conf'}".encode()
    return pid if conf in cmd else None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def start(ctx: Context, br: Bridge, timeout: float = 10.0) -> int:
    """Write the config and start dnsmasq for ``br``; returns its pid once it listens."""
    d = bridge_dir(ctx.config.state_dir, br.name)
    conf = d / "dnsmasq.conf"
    tmp = d / "dnsmasq.conf.tmp"
    tmp.write_text(config(br, d))
    os.replace(tmp, conf)
    await ctx.engine.stop_service(service_id(br.name))  # a leftover of a failed attempt
    (d / "dnsmasq.pid").unlink(missing_ok=True)
    await ctx.run([BINARY, "--test", f"--conf-file={conf}"], timeout=10)
    spec = ProcessSpec([BINARY, f"--conf-file={conf}", "--keep-in-foreground",
                        "--log-facility=-"], label=f"dnsmasq {br.name}")
    ctx.engine.start_service(service_id(br.name), spec, protected=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = _pid_of(d)
        if pid is not None and _alive(pid):
            return pid
        await asyncio.sleep(0.02)
    await stop(ctx, br.name)
    raise Unavailable(f"dnsmasq for bridge {br.name} did not start within {timeout:g} s")


async def stop(ctx: Context, bridge: str, remove: bool = False) -> None:
    """Stop the bridge's dnsmasq; ``remove`` its files too."""
    d = bridge_dir(ctx.config.state_dir, bridge)
    await ctx.engine.stop_service(service_id(bridge))
    pid = _pid_of(d)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if remove:
        for f in d.iterdir():
            f.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            d.rmdir()


def pid(ctx: Context, bridge: str) -> int | None:
    """The running dnsmasq of ``bridge``, if any."""
    p = _pid_of(net_dir(ctx.config.state_dir) / "dnsmasq" / bridge)
    return p if p is not None and _alive(p) else None


def leases(ctx: Context, bridge: str) -> list[dict[str, str]]:
    """The dynamic leases: [{expires, mac, ip, hostname}]."""
    f = net_dir(ctx.config.state_dir) / "dnsmasq" / bridge / "leases"
    out = []
    with contextlib.suppress(FileNotFoundError):
        for line in f.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4:
                out.append({"expires": parts[0], "mac": parts[1], "ip": parts[2],
                            "hostname": "" if parts[3] == "*" else parts[3]})
    return out
