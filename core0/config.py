"""core0's configuration: TOML + include dir + kernel cmdline + environment → frozen dataclasses.

Precedence, lowest first (a later source overrides an earlier one, key by key):

1. built-in defaults;
2. the main file (``/etc/core0/core0.toml`` by default), then each ``*.toml`` of its include dirs
   in name order (``[main] include = [...]``, default ``/etc/core0/conf.d``);
3. the kernel command line: ``core0.<section>.<key>=<value>`` (e.g. ``core0.bus.prefix={n1}:``);
   the variable ``CORE0_CMDLINE``, when set, is read instead of /proc/cmdline (development and
   tests: startup-service conditions, ``{var}`` substitution, ``core0.cloud_config=``);
4. the environment: ``CORE0_<SECTION>_<KEY>=<value>`` (e.g. ``CORE0_REDIS_PORT=6380``);
5. command-line flags of ``core0`` (``--redis-port``, ``--state-dir`` …).

Values from the cmdline and the environment are strings and are converted to the field's type;
TOML values must already have the right type. Unknown sections or keys are errors.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin, get_type_hints

if TYPE_CHECKING:  # imported lazily: PID 1 loads the config without the command registry
    from core0.registry import Role

DEFAULT_CONFIG = "/etc/core0/core0.toml"
#: environment variable used instead of /proc/cmdline when set (development, tests)
CMDLINE_ENV = "CORE0_CMDLINE"


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the source and key."""


@dataclass(frozen=True)
class RedisConfig:
    #: run our own redis-server (True), or use a remote one (``url``)
    embedded: bool = True
    #: embedded: TCP bind address; 0-core's clients connect here
    bind: str = "127.0.0.1"
    #: embedded: TCP port (0 = unix socket only)
    port: int = 6379
    #: embedded: unix socket path (default: <state_dir>/redis.sock)
    unix_socket: str = ""
    #: remote Redis URL (redis://, rediss://, unix://), used when embedded = false
    url: str = ""
    #: allow a remote Redis over plain TCP (off: rediss:// or unix:// only)
    insecure: bool = False
    username: str = ""
    password: str = ""
    #: the remote is a Redis Cluster (keys use the hash-tagged prefix)
    cluster: bool = False
    #: embedded: append-only file (survives a redis-server crash)
    appendonly: bool = True
    #: "always": an acknowledged write survives a redis-server crash (cheap: the state dir is
    #: a tmpfs on a node); "everysec" trades up to 1 s of writes for speed on slow disks
    appendfsync: str = "always"
    maxmemory: str = "0"
    #: embedded: TLS listener port (0 = none) and its files
    tls_port: int = 0
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    tls_auth_clients: bool = False
    #: embedded: ACL file (users and their key patterns); empty = no ACL file
    aclfile: str = ""
    #: path of the redis-server binary
    binary: str = "redis-server"
    #: embedded, without a password or ACL file: refuse clients that are not local. Set false
    #: only on a development node whose port is reachable by trusted hosts only (a VM image
    #: behind qemu's user network, like 0-core's ``development`` flag)
    protected_mode: bool = True


@dataclass(frozen=True)
class BusConfig:
    #: key prefix of this node ("" = 0-core's key names; "{node1}:" for a shared Redis/Cluster)
    prefix: str = ""
    #: seconds a result (and its flag) stays readable
    result_ttl: int = 300
    #: seconds a stream:<id> list lives after its last message
    stream_ttl: int = 60
    #: records kept per stream:<id> list
    stream_max: int = 1000
    #: records kept per log:<id> Redis Stream (approximate)
    log_max: int = 1000
    #: largest command accepted (bytes)
    max_command_bytes: int = 1 << 20
    #: jobs running at once; the dispatcher stops popping when reached
    max_jobs: int = 1024
    #: commands taken per pop
    batch: int = 100
    #: seconds a blocking pop waits before it re-checks its state
    block_timeout: float = 5.0
    dead_letter_max: int = 1000
    dead_letter_ttl: int = 86400
    #: deliveries of a command that keeps crashing the dispatcher before it is dead-lettered
    max_deliveries: int = 3
    #: Redis queues served and their roles: {"default": "admin", "ro": "read-only"}
    queues: dict[str, str] = field(default_factory=lambda: {"default": "admin"})

    def queue_roles(self) -> dict[str, Role]:
        from core0.registry import Role

        return {name: Role.parse(role) for name, role in self.queues.items()}


@dataclass(frozen=True)
class MainConfig:
    #: runtime state (job table, sockets, job output); a tmpfs on a node
    state_dir: str = "/run/core0"
    include: list[str] = field(default_factory=lambda: ["/etc/core0/conf.d"])
    hostname: str = ""
    log_level: str = "info"
    #: root for filesystem.* paths
    filesystem_root: str = "/"
    #: idle seconds before a filesystem.open token is closed
    fd_idle: int = 300


@dataclass(frozen=True)
class InitConfig:
    """PID-1 duties of ``core0 init`` (ignored by ``core0 dev``)."""

    #: mount /proc, /sys, /dev, /dev/pts, /dev/shm, /run, /tmp and cgroups (and unmount them at
    #: shutdown); false in tests that run init in a PID namespace on a host
    mounts: bool = True
    #: cgroup layout: auto (v2 when the kernel has it, else the v1 hierarchies), v2, v1, none
    cgroups: str = "auto"
    #: load the drivers of the devices present (modalias → modules.alias, modules.dep order)
    modules: bool = True
    #: more kernel modules to load at boot
    modules_load: list[str] = field(default_factory=list)
    #: what PID 1 does when it cannot go on: reboot, poweroff, shell (an emergency shell on the
    #: console, then reboot) or freeze (keep reaping, do nothing else)
    crash_action: str = "reboot"
    #: the emergency shell
    shell: str = "/bin/sh"
    #: seconds each stage of the ordered shutdown waits before it kills
    shutdown_grace: float = 10.0
    #: testing only: "raise" makes the shim fail once its services are up (crash action check)
    fault: str = ""


@dataclass(frozen=True)
class NetConfig:
    """Boot network of ``core0 init``: DHCP or static addresses; no internet probes."""

    #: configure NICs at boot
    enabled: bool = True
    #: NICs to configure ([] = every wired NIC)
    interfaces: list[str] = field(default_factory=list)
    #: NICs never touched (0-core's ``noautonic``)
    skip: list[str] = field(default_factory=list)
    #: NIC → "address/prefix" set statically (the others use DHCP)
    static: dict[str, str] = field(default_factory=dict)
    #: default gateway for static addresses
    gateway: str = ""
    #: name servers written to /etc/resolv.conf for static addresses
    dns: list[str] = field(default_factory=list)
    #: run DHCP on the NICs without a static address
    dhcp: bool = True
    #: seconds the boot waits for an address before the ``net`` phase completes anyway
    wait: float = 30.0
    #: the DHCP client (busybox udhcpc) and the script it runs on lease changes
    dhcp_client: str = "udhcpc"
    dhcp_script: str = "/usr/share/udhcpc/default.script"
    #: where name servers go (from DHCP, or net.dns with static addresses)
    resolv_conf: str = "/etc/resolv.conf"


@dataclass(frozen=True)
class ServicesConfig:
    """Startup services (``[startup.<id>]`` tables; see docs/config.md)."""

    #: seconds the init and net phases may take to become running before the next phase
    #: starts anyway (0 = wait as long as it takes)
    phase_timeout: float = 120.0
    #: seconds between SIGTERM and SIGKILL when a service is stopped or restarted
    stop_timeout: float = 10.0
    #: a service with ``running_delay = 0`` counts as running after this many seconds alive
    ready_delay: float = 2.0


@dataclass(frozen=True)
class CloudConfigConfig:
    """cloud-config user-data applied at boot (``core0.cloud_config=`` or a config drive)."""

    #: look for user-data at boot
    enabled: bool = True
    #: look for a config drive (a filesystem labelled ``label``): auto = only under core0 init
    configdrive: str = "auto"
    label: str = "cidata"
    #: where write_files, ssh_authorized_keys, /etc/hostname and resolv.conf are written
    root: str = "/"
    #: set the hostname: auto = only under core0 init (never a developer's host), yes, no
    hostname: str = "auto"
    #: seconds to fetch a URL source; largest user-data accepted (bytes)
    fetch_timeout: float = 10.0
    max_bytes: int = 1 << 20
    #: seconds each bootcmd/runcmd entry may run
    command_timeout: float = 300.0


@dataclass(frozen=True)
class VirtConfig:
    """Virtual machines (``kvm.*``, see docs/kvm.md)."""

    #: the libvirt URI core0 manages VMs through
    uri: str = "qemu:///system"
    #: VM files (overlays, console logs, downloaded images); outside the state dir, which is
    #: private (0700) while qemu may run as an unprivileged user that must reach its disks
    dir: str = "/var/lib/core0/virt"
    #: auto (kvm where a probe guest really runs, else qemu/TCG), kvm or qemu
    domain_type: str = "auto"
    #: the kernel the KVM probe boots ("" = /boot/vmlinuz-<release> or /boot/vmlinuz)
    probe_kernel: str = ""
    #: the default nics' NAT bridge (0-core's kvm0) and its address
    bridge: str = "kvm0"
    bridge_cidr: str = "172.19.0.1/16"


@dataclass(frozen=True)
class Config:
    main: MainConfig = field(default_factory=MainConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    bus: BusConfig = field(default_factory=BusConfig)
    init: InitConfig = field(default_factory=InitConfig)
    net: NetConfig = field(default_factory=NetConfig)
    services: ServicesConfig = field(default_factory=ServicesConfig)
    cloudconfig: CloudConfigConfig = field(default_factory=CloudConfigConfig)
    virt: VirtConfig = field(default_factory=VirtConfig)
    #: startup services, checked by core0.services ([startup.<id>] tables)
    startup: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the kernel command line as key -> value ("" for flags)
    cmdline: dict[str, str] = field(default_factory=dict)
    #: files that were read, in order
    sources: list[str] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return Path(self.main.state_dir)

    @property
    def redis_socket(self) -> str:
        return self.redis.unix_socket or str(self.state_dir / "redis.sock")

    def to_dict(self, redact: bool = True) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if redact:
            for k in ("password",):
                if d["redis"].get(k):
                    d["redis"][k] = "***"
        return d


_SECTIONS = {
    "main": MainConfig,
    "redis": RedisConfig,
    "bus": BusConfig,
    "init": InitConfig,
    "net": NetConfig,
    "services": ServicesConfig,
    "cloudconfig": CloudConfigConfig,
    "virt": VirtConfig,
}


def parse_cmdline(text: str) -> dict[str, str]:
    """Kernel command line → {key: value}; bare flags map to ""."""
    out: dict[str, str] = {}
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    for w in words:
        k, sep, v = w.partition("=")
        out[k] = v if sep else ""
    return out


def _convert(tp: Any, raw: str, where: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        tp = next(a for a in get_args(tp) if a is not type(None))
        origin = get_origin(tp)
    if tp is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on", ""):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected a boolean, got {raw!r}")
    if tp is int:
        try:
            return int(raw, 0)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {raw!r}") from None
    if tp is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {raw!r}") from None
    if tp is str:
        return raw
    if origin is list:
        return [x for x in raw.split(",") if x]
    if origin is dict:
        out = {}
        for item in raw.split(","):
            if item:
                k, _, v = item.partition(":")
                out[k] = v
        return out
    raise ConfigError(f"{where}: cannot be set from text")


def _check_toml(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    ok: bool
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    elif origin is list:
        ok = isinstance(value, list)
    elif origin is dict:
        ok = isinstance(value, dict)
    else:
        ok = True
    if not ok:
        raise ConfigError(f"{where}: wrong type {type(value).__name__}")
    return value


def _merge(layers: list[tuple[str, dict[str, Any], bool]]) -> dict[str, dict[str, Any]]:
    """Merge (source, {section: {key: value}}, is_text) layers into per-section dicts."""
    merged: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
    for source, layer, is_text in layers:
        for section, values in layer.items():
            if section not in _SECTIONS:
                raise ConfigError(f"{source}: unknown section [{section}]")
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: [{section}] must be a table")
            cls = _SECTIONS[section]
            hints = get_type_hints(cls)
            for key, value in values.items():
                if key not in hints:
                    raise ConfigError(f"{source}: unknown key {section}.{key}")
                where = f"{source}: {section}.{key}"
                if is_text:
                    value = _convert(hints[key], value, where)
                else:
                    value = _check_toml(hints[key], value, where)
                merged[section][key] = value
    return merged


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None


def load(
    path: str | None = None,
    *,
    cmdline: str | None = None,
    env: dict[str, str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Config:
    """Build the configuration from every source (see the module docstring for precedence).

    ``path=None`` reads DEFAULT_CONFIG when it exists; a path given explicitly must exist.
    ``cmdline`` defaults to /proc/cmdline when readable; ``env`` to os.environ.
    """
    layers: list[tuple[str, dict[str, Any], bool]] = []
    startup: dict[str, dict[str, Any]] = {}
    sources: list[str] = []

    def add_file(p: Path) -> None:
        data = _read_toml(p)
        sources.append(str(p))
        for sid, spec in (data.pop("startup", None) or {}).items():
            if not isinstance(spec, dict):
                raise ConfigError(f"{p}: [startup.{sid}] must be a table")
            startup[sid] = {**spec, "__source__": str(p)}
        layers.append((str(p), data, False))

    main_file = Path(path or DEFAULT_CONFIG)
    if main_file.exists():
        add_file(main_file)
    elif path is not None:
        raise ConfigError(f"{path}: no such config file")

    environ: Mapping[str, str] = os.environ if env is None else env
    if cmdline is None:
        # CORE0_CMDLINE stands in for /proc/cmdline (development and tests)
        cmdline = environ.get(CMDLINE_ENV)
    if cmdline is None:
        try:
            cmdline = Path("/proc/cmdline").read_text()
        except OSError:
            cmdline = ""
    cmd = parse_cmdline(cmdline)
    cmd_layer: dict[str, dict[str, Any]] = {}
    for k, v in cmd.items():
        if k.startswith("core0.") and k.count(".") >= 2:
            _, section, key = k.split(".", 2)
            cmd_layer.setdefault(section, {})[key] = v

    env_layer: dict[str, dict[str, Any]] = {}
    for k, v in environ.items():
        if not k.startswith("CORE0_"):
            continue
        rest = k[6:].lower()
        for section in _SECTIONS:
            if rest.startswith(section + "_"):
                env_layer.setdefault(section, {})[rest[len(section) + 1 :]] = v
                break

    # include dirs come from the file layer and any text override of main.include
    pre = _merge(layers + [("kernel cmdline", cmd_layer, True), ("environment", env_layer, True)])
    include = pre["main"].get("include", MainConfig().include)
    if overrides and "include" in overrides.get("main", {}):
        include = overrides["main"]["include"]
    for d in include:
        dp = Path(d)
        if dp.is_dir():
            for p in sorted(dp.glob("*.toml")):
                add_file(p)

    layers.append(("kernel cmdline", cmd_layer, True))
    layers.append(("environment", env_layer, True))
    if overrides:
        layers.append(("flags", overrides, False))
    merged = _merge(layers)
    try:
        cfg = Config(
            main=MainConfig(**merged["main"]),
            redis=RedisConfig(**merged["redis"]),
            bus=BusConfig(**merged["bus"]),
            init=InitConfig(**merged["init"]),
            net=NetConfig(**merged["net"]),
            services=ServicesConfig(**merged["services"]),
            cloudconfig=CloudConfigConfig(**merged["cloudconfig"]),
            virt=VirtConfig(**merged["virt"]),
            startup=startup,
            cmdline=cmd,
            sources=sources,
        )
    except TypeError as e:
        raise ConfigError(str(e)) from None
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    try:
        cfg.bus.queue_roles()
    except ValueError as e:
        raise ConfigError(f"bus.queues: {e}") from None
    if not cfg.bus.queues:
        raise ConfigError("bus.queues: at least one queue is needed")
    if cfg.bus.result_ttl < 1 or cfg.bus.stream_ttl < 1:
        raise ConfigError("bus.result_ttl and bus.stream_ttl must be >= 1")
    if cfg.bus.batch < 1 or cfg.bus.max_jobs < 1:
        raise ConfigError("bus.batch and bus.max_jobs must be >= 1")
    if cfg.init.crash_action not in ("reboot", "poweroff", "shell", "freeze"):
        raise ConfigError("init.crash_action must be reboot, poweroff, shell or freeze")
    if cfg.init.cgroups not in ("auto", "v2", "v1", "none"):
        raise ConfigError("init.cgroups must be auto, v2, v1 or none")
    if cfg.net.wait < 0 or cfg.init.shutdown_grace < 0:
        raise ConfigError("net.wait and init.shutdown_grace must be >= 0")
    for key in ("configdrive", "hostname"):
        if getattr(cfg.cloudconfig, key) not in ("auto", "yes", "no"):
            raise ConfigError(f"cloudconfig.{key} must be auto, yes or no")
    if not cfg.cloudconfig.root.startswith("/"):
        raise ConfigError("cloudconfig.root must be an absolute path")
    if (cfg.services.phase_timeout < 0 or cfg.services.stop_timeout < 0
            or cfg.services.ready_delay < 0):
        raise ConfigError("services.phase_timeout, stop_timeout and ready_delay must be >= 0")
    if cfg.redis.appendfsync not in ("always", "everysec", "no"):
        raise ConfigError("redis.appendfsync must be always, everysec or no")
    if not cfg.redis.embedded and not cfg.redis.url:
        raise ConfigError("redis.url is required when redis.embedded = false")
    if not cfg.redis.embedded and cfg.redis.url.startswith("redis://") and not cfg.redis.insecure:
        host = cfg.redis.url[len("redis://"):].rsplit("@", 1)[-1].split("/")[0].rsplit(":", 1)[0]
        if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
            raise ConfigError(
                "refusing a remote Redis over plain TCP: use rediss:// (TLS) or unix://, "
                "or set redis.insecure = true"
            )


def hint_types() -> dict[str, dict[str, Any]]:
    """Field types per section (used by docs and tests)."""
    return {s: get_type_hints(c) for s, c in _SECTIONS.items()}


_ = typing  # keep the import for get_type_hints on postponed annotations
