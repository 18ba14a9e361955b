"""Boot network of ``core0 init``.

What is configured comes from ``[net]`` (and ``core0.net.*`` on the kernel command line) and
from the kernel's own ``ip=`` parameter, which wins for the NIC it names:

* ``ip=dhcp`` / ``ip=off`` (also ``none``), or
  ``ip=<client>:<server>:<gateway>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>:<dns1>``
  (static when ``<client>`` is set; the kernel's own IP autoconfig cannot do this because the
  NIC drivers are modules loaded by core0);
* ``noautonic=<nic>[,<nic>]`` (0-core's flag) leaves NICs alone.

NICs with a static address get it over netlink, with the default route and
``/etc/resolv.conf``. Every other configured NIC (every wired NIC unless ``net.interfaces``
names some) gets a DHCP client, ``udhcpc -f -i <nic>``, supervised by the shim like any service
(backoff, restart, stopped at shutdown). NICs that appear later (hotplug) get one too.

The ``net`` phase completes when a usable (global, non-tentative) address is up on a managed NIC,
or when ``net.wait`` seconds have passed, whichever comes first: no internet probes. The state
is written to ``<state_dir>/net.json``: ``{"state": "up"|"timeout"|"off", "elapsed": s,
"addresses": [{"nic", "address"}]}`` (written atomically, rewritten on address changes).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core0.init import netlink

if TYPE_CHECKING:
    from core0.config import Config
    from core0.init.supervise import Service, Supervisor

log = logging.getLogger("core0.init.net")

STATE_FILE = "net.json"


@dataclass
class NetPlan:
    """What the boot network does."""

    enabled: bool = True
    #: NICs to manage ([] = every wired NIC)
    interfaces: list[str] = field(default_factory=list)
    skip: set[str] = field(default_factory=set)
    static: dict[str, list[str]] = field(default_factory=dict)
    gateway: str = ""
    dns: list[str] = field(default_factory=list)
    dhcp: bool = True
    hostname: str = ""

    def wants(self, nic: str) -> bool:
        if nic in self.skip or nic == "lo":
            return False
        if self.interfaces:
            return nic in self.interfaces or nic in self.static
        return nic in self.static or netlink.is_wired(nic)


class NetError(ValueError):
    """The network configuration cannot be used."""


def parse_kernel_ip(value: str, plan: NetPlan) -> None:
    """Apply the kernel's ``ip=`` parameter to ``plan``."""
    low = value.lower()
    if low in ("off", "none"):
        plan.enabled = False
        return
    if low in ("dhcp", "on", "any", "both", "bootp", "rarp", ""):
        plan.dhcp = True
        return
    f = value.split(":") + [""] * 9
    client, _server, gateway, netmask, hostname, device, autoconf, dns0, dns1 = f[:9]
    if hostname:
        plan.hostname = hostname
    if client:
        try:
            prefix = ipaddress.IPv4Network(f"0.0.0.0/{netmask or '255.255.255.0'}").prefixlen
            cidr = str(ipaddress.ip_interface(f"{client}/{prefix}"))
        except ValueError as e:
            raise NetError(f"ip={value}: {e}") from None
        nic = device or "eth0"
        plan.static[nic] = [cidr]
        if nic not in plan.interfaces and plan.interfaces:
            plan.interfaces.append(nic)
        if gateway:
            plan.gateway = gateway
        plan.dns += [d for d in (dns0, dns1) if d]
    elif autoconf.lower() in ("off", "none"):
        plan.dhcp = False
    if device and not plan.interfaces:
        plan.interfaces = [device]


def plan_from(cfg: Config) -> NetPlan:
    """The boot network plan from ``[net]`` and the kernel command line."""
    n = cfg.net
    plan = NetPlan(
        enabled=n.enabled,
        interfaces=list(n.interfaces),
        skip=set(n.skip),
        static={nic: [a for a in addr.replace(";", " ").split() if a]
                for nic, addr in n.static.items()},
        gateway=n.gateway,
        dns=list(n.dns),
        dhcp=n.dhcp,
        hostname=cfg.main.hostname,
    )
    for nic in cfg.cmdline.get("noautonic", "").split(","):
        if nic:
            plan.skip.add(nic)
    if "ip" in cfg.cmdline:
        parse_kernel_ip(cfg.cmdline["ip"], plan)
    for nic, addrs in plan.static.items():
        for a in addrs:
            try:
                ipaddress.ip_interface(a)
            except ValueError as e:
                raise NetError(f"net.static.{nic}: {e}") from None
    return plan


def write_resolv_conf(servers: list[str], path: str = "/etc/resolv.conf") -> None:
    text = "".join(f"nameserver {s}\n" for s in servers)
    tmp = f"{path}.core0"
    with contextlib.suppress(OSError):
        Path(tmp).write_text(text)
        os.replace(tmp, path)


class BootNetwork:
    """Drives the plan from the shim's loop: statics, DHCP services, readiness."""

    def __init__(self, cfg: Config, plan: NetPlan, sup: Supervisor):
        self.cfg = cfg
        self.plan = plan
        self.sup = sup
        self.state_path = cfg.state_dir / STATE_FILE
        self.started = time.monotonic()
        self.deadline = self.started + cfg.net.wait
        self.state = "waiting"
        self.managed: set[str] = set()
        self.dhcp_services: dict[str, Service] = {}
        self.sock: socket.socket | None = None
        self.last: list[dict[str, str]] = []

    # ------------------------------------------------------------ start

    def start(self) -> None:
        if not self.plan.enabled:
            self._write("off", [])
            log.info("net: disabled")
            return
        try:
            self.sock = netlink.monitor()
            self.sup.add_reader(self.sock.fileno(), self._on_event)
        except OSError as e:
            log.warning("net: no netlink monitor (%s): readiness is checked at the deadline", e)
        for nic in netlink.nics():
            self._manage(nic)
        missing = [n for n in self.plan.interfaces if n not in self.managed]
        if missing:
            log.info("net: waiting for %s", ", ".join(missing))
        self._write("waiting", [])
        self.sup.call_later(self.cfg.net.wait, self._on_deadline)
        self._check()

    def _manage(self, nic: str) -> None:
        if nic in self.managed or not self.plan.wants(nic):
            return
        self.managed.add(nic)
        try:
            netlink.link_up(nic)
        except OSError as e:
            log.warning("net: %s: cannot set it up: %s", nic, e)
        statics = self.plan.static.get(nic)
        if statics:
            self._static(nic, statics)
        elif self.plan.dhcp:
            self._dhcp(nic)

    def _static(self, nic: str, addrs: list[str]) -> None:
        for a in addrs:
            try:
                netlink.add_address(nic, a)
                log.info("net: %s: %s (static)", nic, a)
            except (OSError, ValueError) as e:
                log.error("net: %s: cannot add %s: %s", nic, a, e)
        if self.plan.gateway:
            try:
                netlink.add_default_route(self.plan.gateway, nic)
            except (OSError, ValueError) as e:
                log.error("net: default route via %s: %s", self.plan.gateway, e)
        if self.plan.dns:
            write_resolv_conf(self.plan.dns, self.cfg.net.resolv_conf)

    def dhcp_argv(self, nic: str) -> list[str]:
        n = self.cfg.net
        argv = [n.dhcp_client, "-f", "-i", nic, "-s", n.dhcp_script,
                "-t", "4", "-T", "2", "-A", "5"]
        hostname = self.plan.hostname or socket.gethostname()
        if hostname and hostname != "(none)":
            argv += ["-x", f"hostname:{hostname}"]
        return argv

    def _dhcp(self, nic: str) -> None:
        from core0.init.supervise import Service

        env = dict(os.environ)
        env["RESOLV_CONF"] = self.cfg.net.resolv_conf
        svc = Service(f"udhcpc:{nic}", self.dhcp_argv(nic), env=env)
        self.dhcp_services[nic] = svc
        self.sup.add_service(svc)

    # ------------------------------------------------------------ events

    def _on_event(self) -> None:
        assert self.sock is not None
        links = False
        for kind, _flags, _body in netlink.drain(self.sock):
            if kind == netlink.RTM_NEWLINK:
                links = True
        if links:
            for nic in netlink.nics():
                self._manage(nic)
        self._check()

    def _on_deadline(self) -> None:
        if self.state == "waiting":
            self._check()
        if self.state == "waiting":
            self.state = "timeout"
            log.warning("net: no address after %.0fs; the boot goes on without one",
                        self.cfg.net.wait)
            self._write("timeout", self.last)

    def usable(self) -> list[dict[str, str]]:
        try:
            addrs = netlink.addresses()
        except OSError as e:
            log.debug("net: cannot list addresses: %s", e)
            return []
        return [{"nic": a.nic, "address": str(a)} for a in addrs
                if a.usable and a.nic in self.managed]

    def _check(self) -> None:
        found = self.usable()
        if found == self.last and self.state != "waiting":
            return
        self.last = found
        if found and self.state != "up":
            self.state = "up"
            log.info("net: up after %.1fs: %s", time.monotonic() - self.started,
                     ", ".join(f"{a['nic']} {a['address']}" for a in found))
        if self.state != "waiting":
            self._write(self.state, found)

    def _write(self, state: str, addrs: list[dict[str, str]]) -> None:
        data: dict[str, Any] = {
            "state": state,
            "elapsed": round(time.monotonic() - self.started, 3),
            "addresses": addrs,
        }
        tmp = self.state_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.state_path)
        except OSError as e:
            log.warning("net: cannot write %s: %s", self.state_path, e)

    def services(self) -> list[Service]:
        return list(self.dhcp_services.values())

    def close(self) -> None:
        if self.sock is not None:
            self.sup.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None


def read_state(state_dir: str | Path) -> dict[str, Any] | None:
    """The boot network state written by init (None before init wrote it, or under dev)."""
    try:
        data = json.loads(Path(state_dir, STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
