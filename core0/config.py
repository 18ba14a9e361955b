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

Every source is checked on its own against the section schemas (:mod:`core0.schema`, the one
validator of core0: the field lists below are the schemas, their types carry the allowed values
and ranges), so an error names the source and the ``section.key``. Values from the cmdline and
the environment are strings converted to the field's type (``schema.parse(..., text=True)``);
TOML values and flags must already have the right type. Unknown sections or keys are errors.
Checks across keys (roles, TLS files, a remote Redis) are in :func:`validate`.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, get_type_hints

from core0 import schema
from core0.errors import BadRequest
from core0.image.config import ImageConfig
from core0.sandboxconfig import ContainersConfig
from core0.segconfig import SegmentsConfig
from core0.virtconfig import VirtConfig

if TYPE_CHECKING:  # imported lazily: PID 1 loads the config without the command registry
    from core0.registry import Role

DEFAULT_CONFIG = "/etc/core0/core0.toml"
#: environment variable used instead of /proc/cmdline when set (development, tests)
CMDLINE_ENV = "CORE0_CMDLINE"


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the source and key."""


class Section(schema.Schema):
    """A ``[section]`` of the configuration: a strict schema whose unknown fields are keys."""

    __unknown__: ClassVar[str] = "key"


#: value types of the fields below (the schema checks them in every source)
Port = Annotated[int, schema.Range(0, 65535)]
Positive = Annotated[int, schema.Range(1)]
Seconds = Annotated[float, schema.Range(0)]
AutoYesNo = Literal["auto", "yes", "no"]
AbsPath = Annotated[str, schema.Pattern(r"/.*")]
#: queue → role: at least one
Queues = Annotated[dict[str, str], schema.Len(1)]


@dataclass(frozen=True)
class RedisConfig(Section):
    #: run our own redis-server (True), or use a remote one (``url``)
    embedded: bool = True
    #: embedded: TCP bind address; 0-core's clients connect here
    bind: str = "127.0.0.1"
    #: embedded: TCP port (0 = unix socket only)
    port: Port = 6379
    #: embedded: unix socket path (default: <state_dir>/redis.sock)
    unix_socket: str = ""
    #: remote Redis URL (redis://, rediss://, unix://), used when embedded = false
    url: str = ""
    #: allow a remote Redis over plain TCP (off: rediss:// or unix:// only)
    insecure: bool = False
    #: remote Redis (embedded = false): core0's own ACL user and password
    username: str = ""
    #: embedded: the 0-core-compatible password of Redis's ``default`` user (0-core's clients
    #: send a one-argument AUTH); "" = the default user is off once any credential exists.
    #: remote Redis: core0's own password. Never logged (see docs/security.md)
    password: str = ""
    #: embedded: the default user's password given as its SHA-256 (hex): what ``qemu/boot``
    #: puts on the kernel command line, so the console shows no password
    password_sha256: str = ""
    #: embedded: the role whose queues the ``default`` user may push to
    default_role: str = "admin"
    #: embedded: users managed with ``core0 user`` (hashed); default <state_dir>/users.json
    users_file: str = ""
    #: embedded: with TLS on (tls_port), keep the plain TCP port (``port``) open as well
    plain_tcp: bool = False
    #: the remote is a Redis Cluster (keys use the hash-tagged prefix)
    cluster: bool = False
    #: embedded: append-only file (survives a redis-server crash)
    appendonly: bool = True
    #: Redis writes the AOF before it replies with every setting, so a redis-server crash loses
    #: no acknowledged write with "everysec" either; "always" adds power-loss durability (which
    #: a tmpfs state dir does not have) at a cost on disks. The job logs in the state dir are
    #: synced by the same policy (core0.jobs.logsync), with a remote Redis too
    appendfsync: Literal["always", "everysec", "no"] = "everysec"
    maxmemory: str = "0"
    #: embedded: TLS listener port (0 = none) and its files
    tls_port: Port = 0
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    tls_auth_clients: bool = False
    #: embedded: the front for 0-core's clients (core0/security/front.py): this TCP port
    #: (0 = off) on ``bind``, forwarding each connection to the unix socket, renaming
    #: LKEYEXISTS/LTTL; TLS with ``tls_cert``/``tls_key`` unless ``front_tls`` is false
    front_port: int = 0
    front_tls: bool = True
    #: embedded: extra ACL rules (``user …`` lines) appended to the ACL file core0 generates
    #: (<state_dir>/users.acl); the users ``default`` and ``core0`` cannot be redefined there
    aclfile: str = ""
    #: path of the redis-server binary
    binary: str = "redis-server"
    #: embedded, with no credential configured: listen on loopback and the unix socket only.
    #: false opens ``bind`` without any password (insecure; a throwaway development node whose
    #: port only trusted hosts reach)
    protected_mode: bool = True


def _per_role(table: dict[str, int], role: Role) -> int | None:
    """``table``'s value for ``role`` (None: admin, or not listed)."""
    from core0.registry import Role as R

    return None if role >= R.ADMIN else next(
        (int(v) for k, v in table.items() if R.parse(k) == role), None)


@dataclass(frozen=True)
class BusConfig(Section):
    #: key prefix of this node ("" = 0-core's key names; "{node1}:" for a shared Redis/Cluster)
    prefix: str = ""
    #: seconds a result (and its flag) stays readable
    result_ttl: Positive = 300
    #: seconds a stream:<id> list lives after its last message
    stream_ttl: Positive = 60
    #: records kept per stream:<id> list
    stream_max: int = 1000
    #: records kept per log:<id> Redis Stream (approximate)
    log_max: int = 1000
    #: largest command accepted (bytes)
    max_command_bytes: int = 1 << 20
    #: jobs running at once; the dispatcher stops popping when reached
    max_jobs: Positive = 1024
    #: commands taken per pop
    batch: Positive = 100
    #: seconds a blocking pop waits before it re-checks its state
    block_timeout: float = 5.0
    dead_letter_max: int = 1000
    dead_letter_ttl: int = 86400
    #: deliveries of a command that keeps crashing the dispatcher before it is dead-lettered
    max_deliveries: int = 3
    #: seconds a stopping dispatcher waits for running commands that may not run twice
    #: (those that change the node) to end and answer; later ones are answered "interrupted"
    stop_grace: float = 5.0
    #: Redis queues served and their roles: {"default": "admin", "ro": "read-only"}
    queues: Queues = field(default_factory=lambda: {"default": "admin"})
    #: jobs in flight per role below admin (a role's queues stop popping at its cap)
    role_max_jobs: dict[str, int] = field(
        default_factory=lambda: {"read-only": 64, "operator": 256})
    #: recurring jobs per role below admin; one more is refused with 503
    role_max_recurring: dict[str, int] = field(
        default_factory=lambda: {"read-only": 8, "operator": 64})
    #: slots of max_jobs only admin queues may take (lower roles never starve them)
    admin_reserve: int = 64
    #: largest recurring_period accepted (seconds)
    max_recurring_period: int = 7 * 86400
    #: bytes of recent results kept to re-answer resubmissions (oldest dropped first)
    result_cache_bytes: int = 32 << 20
    #: bytes of output records a job may have waiting for Redis before its output files
    #: stop being read (backpressure); a backlog beyond ``output_backlog_bytes`` is skipped
    output_pending_bytes: int = 4 << 20
    output_backlog_bytes: int = 64 << 20

    #: private queues: the ids of their commands must start with ``<queue>.``, and their users
    #: may read only those jobs' results, streams and logs (ACL key patterns), see only those
    #: jobs' arguments and act only on those jobs — users are isolated from each other
    #: (core0's client makes such ids itself when given ``queue=``)
    private_queues: list[str] = field(default_factory=list)

    def private_prefix(self, queue: str) -> str | None:
        """The id prefix required on ``queue`` (a queue name), or None."""
        return f"{queue}." if queue in self.private_queues else None

    def role_cap(self, role: Role) -> int | None:
        """In-flight job cap of a role (None = admin: bounded by max_jobs only)."""
        return _per_role(self.role_max_jobs, role)

    def role_recurring_cap(self, role: Role) -> int | None:
        return _per_role(self.role_max_recurring, role)

    def queue_roles(self) -> dict[str, Role]:
        from core0.registry import Role

        return {name: Role.parse(role) for name, role in self.queues.items()}


@dataclass(frozen=True)
class MainConfig(Section):
    #: runtime state (job table, sockets, job output); a tmpfs on a node
    state_dir: str = "/run/core0"
    include: list[str] = field(default_factory=lambda: ["/etc/core0/conf.d"])
    hostname: str = ""
    log_level: str = "info"
    #: root for filesystem.* paths
    filesystem_root: str = "/"
    #: idle seconds before a filesystem.open token is closed
    fd_idle: int = 300
    #: filesystem.open tokens one role (queue role) may hold at once (503 beyond)
    fd_max: int = 256
    #: a directory on a persistent disk or dataset ("" = none): container images and the
    #: declared (``persistent``) containers live there and come back after a reboot
    persistent_dir: Annotated[str, schema.Pattern(r"(/.*)?")] = ""
    #: ``core0 init``: the disk mounted on persistent_dir at boot (``/dev/…``, ``LABEL=…``)
    persistent_device: Annotated[str, schema.Pattern(
        r"(/dev/[A-Za-z0-9/_.-]+|LABEL=[A-Za-z0-9_.-]{1,64})?")] = ""


@dataclass(frozen=True)
class InitConfig(Section):
    """PID-1 duties of ``core0 init`` (ignored by ``core0 dev``)."""

    #: mount /proc, /sys, /dev, /dev/pts, /dev/shm, /run, /tmp and cgroups (and unmount them at
    #: shutdown); false in tests that run init in a PID namespace on a host
    mounts: bool = True
    #: cgroup layout: auto (v2 when the kernel has it, else the v1 hierarchies), v2, v1, none
    cgroups: Literal["auto", "v2", "v1", "none"] = "auto"
    #: load the drivers of the devices present (modalias → modules.alias, modules.dep order)
    modules: bool = True
    #: more kernel modules to load at boot
    modules_load: list[str] = field(default_factory=list)
    #: what PID 1 does when it cannot go on: reboot, poweroff, shell (an emergency shell on the
    #: console, then reboot) or freeze (keep reaping, do nothing else)
    crash_action: Literal["reboot", "poweroff", "shell", "freeze"] = "reboot"
    #: the emergency shell
    shell: str = "/bin/sh"
    #: seconds each stage of the ordered shutdown waits before it kills
    shutdown_grace: Seconds = 10.0
    #: testing only: "raise" makes the shim fail once its services are up (crash action check)
    fault: str = ""


@dataclass(frozen=True)
class NetConfig(Section):
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
    wait: Seconds = 30.0
    #: the DHCP client (busybox udhcpc) and the script it runs on lease changes
    dhcp_client: str = "udhcpc"
    dhcp_script: str = "/usr/share/udhcpc/default.script"
    #: where name servers go (from DHCP, or net.dns with static addresses)
    resolv_conf: str = "/etc/resolv.conf"


@dataclass(frozen=True)
class ServicesConfig(Section):
    """Startup services (``[startup.<id>]`` tables; see docs/config.md)."""

    #: seconds the init and net phases may take to become running before the next phase
    #: starts anyway (0 = wait as long as it takes)
    phase_timeout: Seconds = 120.0
    #: seconds between SIGTERM and SIGKILL when a service is stopped or restarted
    stop_timeout: Seconds = 10.0
    #: a service with ``running_delay = 0`` counts as running after this many seconds alive
    ready_delay: Seconds = 2.0


@dataclass(frozen=True)
class CloudConfigConfig(Section):
    """cloud-config user-data applied at boot (``core0.cloud_config=`` or a config drive)."""

    #: look for user-data at boot
    enabled: bool = True
    #: look for a config drive (a filesystem labelled ``label``): auto = only under core0 init
    configdrive: AutoYesNo = "auto"
    label: str = "cidata"
    #: where write_files, ssh_authorized_keys, /etc/hostname and resolv.conf are written
    root: AbsPath = "/"
    #: set the hostname: auto = only under core0 init (never a developer's host), yes, no
    hostname: AutoYesNo = "auto"
    #: seconds to fetch a URL source; largest user-data accepted (bytes)
    fetch_timeout: float = 10.0
    max_bytes: int = 1 << 20
    #: seconds each bootcmd/runcmd entry may run
    command_timeout: float = 300.0


@dataclass(frozen=True)
class NodeConfig(Section):
    """This node in a fleet: its registry entry ``nodes:<id>`` (core0/fleet/registry.py)."""

    #: the node's id in the registry ("" = the hostname)
    id: Annotated[str, schema.Pattern(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}|")] = ""
    #: labels a fleet selects nodes by (``Fleet.run(..., tags=[...])``)
    tags: list[str] = field(default_factory=list)
    #: write the registry entry: auto = on a shared (not embedded) Redis only, yes, no (the
    #: node is then invisible to ``Fleet.nodes()``)
    registry: AutoYesNo = "auto"
    #: seconds between two heartbeats; the entry expires ``ttl`` seconds after the last one
    heartbeat: Annotated[float, schema.Range(0.1, 3600)] = 10.0
    ttl: Annotated[int, schema.Range(1, 86400)] = 30


@dataclass(frozen=True)
class MetricsConfig(Section):
    """The Prometheus text endpoint (core0/fleet/metrics.py)."""

    #: loopback HTTP port of ``/metrics`` (0 = off)
    port: Port = 0
    #: address it listens on (loopback unless you mean otherwise)
    bind: str = "127.0.0.1"
    #: seconds between two passes of 0-core's monitor (the node's cpu, memory, disk and
    #: network statistics, and the VMs' once kvm.* is in use) into the aggregator
    #: (``aggregator.query``; core0/fleet/monitor.py); 0 = off
    monitor_period: Annotated[int, schema.Range(0, 86400)] = 30


@dataclass(frozen=True)
class Config(schema.Schema):
    """The whole configuration: one schema per ``[section]``, the startup services and users
    (checked by their own modules), the kernel command line and the files read."""

    __unknown__: ClassVar[str] = "section"

    main: MainConfig = field(default_factory=MainConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    bus: BusConfig = field(default_factory=BusConfig)
    init: InitConfig = field(default_factory=InitConfig)
    net: NetConfig = field(default_factory=NetConfig)
    services: ServicesConfig = field(default_factory=ServicesConfig)
    cloudconfig: CloudConfigConfig = field(default_factory=CloudConfigConfig)
    virt: VirtConfig = field(default_factory=VirtConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    segments: SegmentsConfig = field(default_factory=SegmentsConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    containers: ContainersConfig = field(default_factory=ContainersConfig)
    #: startup services, checked by core0.services ([startup.<id>] tables)
    startup: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Redis ACL users of the embedded Redis ([users.<name>] tables: role, password or
    #: password_sha256, queues); see core0/security and docs/security.md
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: commands declared here, 0-core's extensions ([extension."<name>"] tables: binary,
    #: args, cwd, env, role, doc, patterns); see core0/boot/extensions.py
    extension: dict[str, dict[str, Any]] = field(default_factory=dict)
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
            for k in ("password", "password_sha256"):
                if d["redis"].get(k):
                    d["redis"][k] = "***"
            for spec in d["users"].values():
                for k in ("password", "password_sha256"):
                    if spec.get(k):
                        spec[k] = "***"
            for spec in d["extension"].values():  # an extension's environment may hold keys
                if isinstance(spec.get("env"), dict):
                    spec["env"] = {k: "***" for k in spec["env"]}
            for k in d["cmdline"]:  # core0.redis.password= on the kernel command line
                if k.startswith("core0.") and "password" in k:
                    d["cmdline"][k] = "***"
        return d


# [virt], [segments], [image], [containers]: own modules
_SECTIONS: dict[str, type[schema.Schema]] = {
    "main": MainConfig, "redis": RedisConfig, "bus": BusConfig, "init": InitConfig,
    "net": NetConfig, "services": ServicesConfig, "cloudconfig": CloudConfigConfig,
    "virt": VirtConfig, "node": NodeConfig, "metrics": MetricsConfig, "image": ImageConfig,
    "segments": SegmentsConfig, "containers": ContainersConfig,
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


#: one source's values: {section: {key: value}}
Layer = dict[str, dict[str, Any]]


def _check_layer(source: str, layer: Mapping[str, Any], text: bool) -> Layer:
    """Check one source against the section schemas → its values, typed (strings converted
    when ``text``). Raises ConfigError naming the source and the ``section.key``."""
    out: Layer = {}
    for section, values in layer.items():
        cls = _SECTIONS.get(section)
        if cls is None:
            raise ConfigError(f"{source}: unknown section [{section}]")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        try:
            typed = schema.parse(cls, values, section, text=text)
        except BadRequest as e:
            raise ConfigError(f"{source}: {e}") from None
        out[section] = {k: getattr(typed, k) for k, v in values.items() if v is not None}
    return out


def _merge(layers: list[Layer]) -> Layer:
    """Checked layers, lowest precedence first → per-section values (later keys win)."""
    merged: Layer = {s: {} for s in _SECTIONS}
    for layer in layers:
        for section, values in layer.items():
            merged[section].update(values)
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
    layers: list[Layer] = []
    # tables of tables, checked by their own modules: startup services, users, extensions
    tables: dict[str, dict[str, dict[str, Any]]] = {"startup": {}, "users": {}, "extension": {}}
    sources: list[str] = []

    def add_file(p: Path) -> None:
        data = _read_toml(p)
        sources.append(str(p))
        for kind, found in tables.items():
            for name, spec in (data.pop(kind, None) or {}).items():
                if not isinstance(spec, dict):
                    raise ConfigError(f"{p}: [{kind}.{name}] must be a table")
                found[name] = {**spec, "__source__": str(p)}
        layers.append(_check_layer(str(p), data, text=False))

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

    text_layers = [_check_layer("kernel cmdline", cmd_layer, text=True),
                   _check_layer("environment", env_layer, text=True)]
    flags = _check_layer("flags", overrides or {}, text=False)
    # include dirs come from every source but the include files themselves
    include = _merge([*layers, *text_layers, flags])["main"].get("include", MainConfig().include)
    for d in include:
        dp = Path(d)
        if dp.is_dir():
            for p in sorted(dp.glob("*.toml")):
                add_file(p)

    whole = {**_merge([*layers, *text_layers, flags]), **tables, "cmdline": cmd,
             "sources": sources}
    try:
        cfg = schema.parse(Config, whole, "config")
    except BadRequest as e:  # every key was checked in its source: a bug if reached
        raise ConfigError(str(e)) from None
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """What a schema cannot say (roles, keys that need each other, a remote Redis); each key's
    type and range are checked by the section schemas. Raises ConfigError naming the key."""
    from core0.registry import Role

    try:
        roles = cfg.bus.queue_roles()
    except ValueError as e:
        raise ConfigError(f"bus.queues: {e}") from None
    for q in cfg.bus.private_queues:
        if q not in cfg.bus.queues:
            raise ConfigError(f"bus.private_queues: {q!r} is not in bus.queues")
        if roles[q] >= Role.ADMIN:
            raise ConfigError(f"bus.private_queues: {q!r} is an admin queue (admin reads every "
                              "job; make it private only below admin)")
    try:
        Role.parse(cfg.redis.default_role)
    except ValueError as e:
        raise ConfigError(f"redis.default_role: {e}") from None
    if cfg.redis.tls_port and not (cfg.redis.tls_cert and cfg.redis.tls_key):
        raise ConfigError("redis.tls_port needs redis.tls_cert and redis.tls_key "
                          "(`core0 tls init` makes them)")
    from core0.security.users import check_config_users

    check_config_users(cfg)
    r = cfg.redis
    if r.front_port and r.front_tls and not (r.tls_cert and r.tls_key):
        raise ConfigError("redis.front_port (TLS) needs redis.tls_cert and redis.tls_key "
                          "(`core0 tls init` makes them), or redis.front_tls = false")
    if r.front_port and r.front_port in (r.tls_port, r.port if (not r.tls_port or r.plain_tcp)
                                         else 0):
        raise ConfigError(f"redis.front_port {r.front_port} is also a port of redis-server")
    if r.cluster and not hash_tagged(cfg.bus.prefix):
        raise ConfigError("redis.cluster needs a hash-tagged bus.prefix such as '{node1}:' "
                          "(all of a node's keys in one slot)")
    if not cfg.redis.embedded and not cfg.redis.url:
        raise ConfigError("redis.url is required when redis.embedded = false")
    if not cfg.redis.embedded and cfg.redis.url.startswith("redis://") and not cfg.redis.insecure:
        host = cfg.redis.url[len("redis://"):].rsplit("@", 1)[-1].split("/")[0].rsplit(":", 1)[0]
        if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
            raise ConfigError(
                "refusing a remote Redis over plain TCP: use rediss:// (TLS) or unix://, "
                "or set redis.insecure = true"
            )


def hash_tagged(prefix: str) -> bool:
    """The prefix carries a Redis Cluster hash tag (``{x}``, non-empty, the first ``{…}``), so
    every key built on it hashes to one slot."""
    start = prefix.find("{")
    end = prefix.find("}", start + 1)
    return start >= 0 and end > start + 1


def hint_types() -> dict[str, dict[str, Any]]:
    """Field types per section (used by docs and tests)."""
    return {s: get_type_hints(c) for s, c in _SECTIONS.items()}
