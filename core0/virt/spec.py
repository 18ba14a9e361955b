"""Argument schemas of ``kvm.*`` (0-core's names and shapes) and the limits of a VM spec.

Every string that reaches the domain XML or a tool's argv is checked here first: names by
pattern, paths by :mod:`core0.virt.disks` (confined under the node's filesystem root), MACs and
bridge names by :mod:`core0.net.validate`. The XML itself is then built with ``xml.etree``,
which escapes whatever is left, so even a value that passed could not add an element.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from core0.errors import BadRequest, PreconditionFailed
from core0.net import validate as v
from core0.schema import Doc, Len, Pattern, Range, Schema

#: text that can go into XML and through libvirt's UTF-8: no control characters, no lone
#: surrogates (JSON can carry them; they cannot be encoded), no U+FFFE/U+FFFF (not XML)
TEXT = r"[^\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff]*"
#: a VM name: what libvirt, a file name and a log line can all carry
VM_NAME = Annotated[str, Doc("VM name: letters, digits, _ . - (1-64, no leading . or -)"),
                    Pattern(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")]
UUID = Annotated[str, Doc("the VM's uuid (kvm.create's result)"),
                 Pattern(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                         r"[0-9a-fA-F]{12}")]
PATH = Annotated[str, Doc("a file path (confined to the filesystem root)"), Len(1, 4096),
                 Pattern(TEXT, "a path without control characters")]
TAG = Annotated[str, Len(0, 128), Pattern(TEXT, "a tag without control characters")]

#: 0-core's iotune names → libvirt's (``<iotune>`` elements and virDomainSetBlockIoTune keys)
IOTUNE_NAMES: dict[str, str] = {}
for _what in ("total", "read", "write"):
    for _unit, _lv in (("bytes", "bytes_sec"), ("iops", "iops_sec")):
        IOTUNE_NAMES[f"{_what}{_unit}sec"] = f"{_what}_{_lv}"
        IOTUNE_NAMES[f"{_what}{_unit}secmax"] = f"{_what}_{_lv}_max"
        IOTUNE_NAMES[f"{_what}{_unit}secmaxlength"] = f"{_what}_{_lv}_max_length"
IOTUNE_NAMES["sizeiopssec"] = "size_iops_sec"
IOTUNE_NAMES["groupname"] = "group_name"

_LIMIT = Range(0, 1 << 50)


def _iotune_fields() -> list[tuple[str, Any, Any]]:
    out: list[tuple[str, Any, Any]] = []
    for name in IOTUNE_NAMES:
        tp: Any = (Annotated[str, Len(0, 64), Pattern(r"[A-Za-z0-9_.-]*")] if name == "groupname"
                   else Annotated[int, _LIMIT])
        out.append((name, tp | None, dataclasses.field(default=None)))
        out.append((f"{name}set", bool, dataclasses.field(default=False)))
    return out


#: 0-core's iotune object: each value applies only when its ``<name>set`` flag is true
IOTune = dataclasses.make_dataclass("IOTune", _iotune_fields(), bases=(Schema,), frozen=True)
IOTune.__doc__ = "Disk I/O limits (0-core's names); a value applies when its *set flag is true."


def iotune_params(tune: Any) -> dict[str, int | str]:
    """The libvirt parameters of an IOTune (only the ones flagged ``set``)."""
    out: dict[str, int | str] = {}
    if tune is None:
        return out
    for name, lv in IOTUNE_NAMES.items():
        if getattr(tune, f"{name}set"):
            value = getattr(tune, name)
            out[lv] = value if value is not None else ("" if name == "groupname" else 0)
    return out


def check_iotune(params: dict[str, int | str], field: str) -> None:
    """400 for I/O limits libvirt or qemu would refuse only after the VM started (500): a
    ``*_max`` without its base value, a ``*_max_length`` without its ``*_max``, a total with
    a read/write value of the same unit."""
    def on(key: str) -> bool:
        return bool(params.get(key))

    for unit in ("bytes_sec", "iops_sec"):
        if (on(f"total_{unit}") or on(f"total_{unit}_max")) and (
                on(f"read_{unit}") or on(f"write_{unit}") or on(f"read_{unit}_max")
                or on(f"write_{unit}_max")):
            raise BadRequest(f"{field}: total and read/write {unit} limits cannot be set "
                             "together", field=field)
        for what in ("total", "read", "write"):
            base, top = f"{what}_{unit}", f"{what}_{unit}_max"
            if on(top) and not on(base):
                raise BadRequest(f"{field}: {top} needs {base}", field=field)
            if on(f"{top}_length") and not on(top):
                raise BadRequest(f"{field}: {top}_length needs {top}", field=field)


#: devices one bus of the VM's machine (i440fx ``pc``) takes: its one IDE controller has 4
BUS_SLOTS = {"ide": 4}


def check_slot(bus: str, index: int, field: str) -> None:
    """400 when a bus has no room left for another device."""
    most = BUS_SLOTS.get(bus)
    if most is not None and index >= most:
        raise BadRequest(f"{field}: at most {most} {bus} devices (disks and cdroms)",
                         field=field)


#: libvirt transports a migration may use: the destination's libvirtd over the network
MIGRATE_SCHEMES = ("qemu", "qemu+tcp", "qemu+tls", "qemu+ssh")


_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def _dns_name(name: str) -> bool:
    """A host name of DNS labels (checked label by label: one pattern over the whole name
    with nested repetition backtracks exponentially on a long near-miss, a ReDoS on the
    dispatcher's event loop)."""
    return 0 < len(name) <= 253 and all(_LABEL.fullmatch(x) for x in name.split("."))


def check_desturi(uri: str) -> None:
    """400 unless ``uri`` names another host's libvirtd over a network transport, with no
    parameters: this node's libvirtd (root) connects to it, and libvirt's URI parameters
    run programs (``qemu+ext``, ssh's ``command=``/``netcat=``), open local sockets
    (``socket=``, ``qemu+unix``) or read key files (``keyfile=``, ``pkipath=``)."""
    field = "desturi"
    if not uri.isascii() or any(ch in uri for ch in "?#\\"):
        raise BadRequest(f"{field}: no URI parameters (?…) or fragments are allowed",
                         field=field)
    try:
        u = urllib.parse.urlsplit(uri)
        port = u.port
        host = u.hostname or ""
    except ValueError as e:
        raise BadRequest(f"{field}: not a valid URI: {e}", field=field) from None
    if u.scheme not in MIGRATE_SCHEMES:
        raise BadRequest(f"{field}: transport {u.scheme} is not allowed (one of "
                         f"{', '.join(MIGRATE_SCHEMES)})", field=field)
    if u.path != "/system":
        raise BadRequest(f"{field}: the path must be /system (the destination's system "
                         "libvirtd)", field=field)
    if u.password is not None or (u.username is not None and (
            u.scheme != "qemu+ssh" or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}",
                                                       u.username))):
        raise BadRequest(f"{field}: a user name only with qemu+ssh (no password)", field=field)
    if port == 0:
        raise BadRequest(f"{field}: port 0", field=field)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.lower().rstrip(".")
        if not _dns_name(name) or name == "localhost" or name.endswith(".localhost"):
            raise BadRequest(f"{field}: the destination must be another host", field=field) \
                from None
        return
    if ip.is_loopback or ip.is_unspecified or ip.is_link_local or ip.is_multicast:
        raise BadRequest(f"{field}: {ip} is not another host's address", field=field)


@dataclass(frozen=True)
class Media(Schema):
    """A disk or cdrom: 0-core's ``{url, type, iotune}``, plus core0's ``path``, ``bus``,
    ``format`` and ``overlay``."""

    url: Annotated[str, Doc("0-core's field: a file path, or an http(s) URL (kvm.create "
                            "only: downloaded once, shared, booted through an overlay); "
                            "nbd:// and zdb:// are refused (412)"), Len(1, 4096),
                   Pattern(TEXT, "a path or URL without control characters")] | None = None
    path: Annotated[PATH, Doc("the image file (same as url)")] | None = None
    type: Annotated[Literal["disk", "cdrom"], Doc("disk (default) or cdrom")] | None = None
    bus: Annotated[Literal["virtio", "ide", "sata", "scsi"],
                   Doc("virtio (default for disks), ide (default for cdroms), sata, scsi")
                   ] | None = None
    format: Annotated[Literal["qcow2", "raw"], Doc("image format (default: detected)")
                      ] | None = None
    overlay: Annotated[bool, Doc("boot from a qcow2 overlay made for this VM on the image "
                                 "(the image is a shared base, never written); the overlay "
                                 "goes with the VM")] = False
    iotune: Annotated[IOTune, Doc("I/O limits")] | None = None  # type: ignore[valid-type]
    checksum: Annotated[str, Doc("http(s) url: the image's sha256:<hex> (checked; a cached "
                                 "image with it is not downloaded again)"),
                        Len(1, 80)] | None = None

    def source(self, where: str, http: bool = False) -> str:
        if (self.url is None) == (self.path is None):
            raise BadRequest(f"{where}: give exactly one of url and path", field=where)
        src = self.url if self.url is not None else self.path
        assert src is not None
        if http and src.startswith(("http://", "https://")):
            return src
        if "://" in src:
            scheme = src.split("://", 1)[0]
            raise PreconditionFailed(f"{where}.url: {scheme}:// media are not supported by "
                                     "this node (a file path is)")
        return src


@dataclass(frozen=True)
class Nic(Schema):
    """0-core's nic: ``{type, id, hwaddr}``."""

    type: Annotated[Literal["default", "bridge", "vlan", "vxlan"],
                    Doc("default: core0's NAT bridge kvm0 (DHCP, fixed address per VM); "
                        "bridge: onto bridge ``id``; vlan/vxlan: VLAN id/VNI ``id``, a segment "
                        "bridge of the node (docs/networking.md)")] = "default"
    id: Annotated[str, Doc("bridge name (bridge), VLAN id (vlan), VNI (vxlan)"),
                  Len(0, 64)] | None = None
    hwaddr: v.MAC | None = None


@dataclass(frozen=True)
class Mount(Schema):
    """0-core's 9p share (accepted; refused with 412 when given: not supported)."""

    source: str = ""
    target: str = ""
    readonly: bool = False


@dataclass(frozen=True)
class CreateArgs(Schema):
    name: VM_NAME
    media: Annotated[list[Media], Doc("disks; the first is the boot device"),
                     Len(0, 20)] = field(default_factory=list)
    cpu: Annotated[int, Doc("virtual CPUs (at most 4 per host CPU, 64)"), Range(1, 64)] = 1
    memory: Annotated[int, Doc("memory in MiB (16 .. the host's memory)"),
                      Range(16, 1 << 22)] = 512
    nics: Annotated[list[Nic], Doc("network cards"), Len(0, 8)] = field(default_factory=list)
    port: Annotated[dict[str, Annotated[int, Range(1, 65535)]],
                    Doc('port forwards {"<host port or nft source>": guest port} (needs a '
                        'default nic)'), Len(0, 256)] | None = None
    vnc: Annotated[bool, Doc("a VNC display on 127.0.0.1 (port in kvm.list)")] = False
    kernel: Annotated[PATH, Doc("direct boot: the kernel")] | None = None
    initrd: Annotated[PATH, Doc("direct boot: the initramfs")] | None = None
    cmdline: Annotated[str, Doc("direct boot: the kernel command line"), Len(0, 2048),
                       Pattern(TEXT, "a command line without control characters")
                       ] | None = None
    tags: Annotated[list[TAG], Doc("tags shown by kvm.list"), Len(0, 32)] | None = None
    kvm: Annotated[bool, Doc("0-core: ask for KVM; core0 uses KVM whenever its probe shows a "
                             "guest runs under it, so this is accepted and ignored")] = False
    flist: Annotated[str, Doc("0-core: boot from an flist (not supported: 412 when set)"),
                     Len(0, 4096)] | None = None
    share_cache: Annotated[bool, Doc("0-core: share the node cache over 9p (ignored)")] = False
    mount: Annotated[list[Mount], Doc("0-core: 9p shares (not supported: 412 when given)"),
                     Len(0, 32)] | None = None
    config: Annotated[dict[str, str], Doc("0-core: files written into the flist (only with "
                                          "flist: 412 when given)"), Len(0, 64)] | None = None
    storage: Annotated[str, Doc("0-core: the flist's storage URL (ignored)"),
                       Len(0, 4096)] | None = None
    persistent: Annotated[bool, Doc("declare it in main.persistent_dir: it is created again "
                                    "(same name and uuid) after a reboot; re-declaring the "
                                    "same spec returns the running VM, a changed spec "
                                    "recreates it")] = False

    def check_unsupported(self) -> None:
        if self.flist:
            raise PreconditionFailed("flist: booting a VM from an flist is not supported by "
                                     "this node (use media or kernel/initrd)")
        if self.mount:
            raise PreconditionFailed("mount: 9p shares are not supported by this node")
        if self.config:
            raise PreconditionFailed("config: only meaningful with an flist (not supported)")


def host_limits(cpu: int, memory: int) -> None:
    """400 for a spec the host cannot hold: more than 4 vCPUs per host CPU, more memory than
    the host has."""
    ncpu = os.cpu_count() or 1
    if cpu > 4 * ncpu:
        raise BadRequest(f"cpu: {cpu} is more than 4 per host CPU ({ncpu})", field="cpu")
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    if memory > total:
        raise BadRequest(f"memory: {memory} MiB is more than the host has ({total} MiB)",
                         field="memory")


@dataclass(frozen=True)
class UuidArgs(Schema):
    uuid: UUID


@dataclass(frozen=True)
class GetArgs(Schema):
    uuid: UUID | None = None
    name: VM_NAME | None = None


@dataclass(frozen=True)
class ShutdownArgs(Schema):
    uuid: UUID
    timeout: Annotated[float, Doc("seconds to wait for the guest to power off, then destroy "
                                  "it (omitted: ask and return)"), Range(0, 3600)] | None = None


@dataclass(frozen=True)
class DiskArgs(Schema):
    uuid: UUID
    media: Media


@dataclass(frozen=True)
class NicArgs(Schema):
    uuid: UUID
    type: Literal["default", "bridge", "vlan", "vxlan"] = "default"
    id: Annotated[str, Len(0, 64)] | None = None
    hwaddr: v.MAC | None = None


def _limit_fields() -> list[tuple[str, Any, Any]]:
    return [("uuid", UUID, dataclasses.field()), ("media", Media, dataclasses.field()),
            *_iotune_fields()]


#: kvm.limit_disk_io: {uuid, media, and the 42 iotune fields at the top level}
LimitArgs = dataclasses.make_dataclass("LimitArgs", _limit_fields(), bases=(Schema,),
                                       frozen=True)
LimitArgs.__doc__ = "A disk of the VM and its new I/O limits."


@dataclass(frozen=True)
class ImageArgs(Schema):
    file_name: PATH
    format: Annotated[Literal["qcow2", "raw"], Doc("image format")] = "qcow2"
    size: Annotated[str, Doc("size as qemu-img takes it: 10G, 512M, 1048576"),
                    Pattern(r"[0-9]{1,15}[KMGT]?")] = "1G"


@dataclass(frozen=True)
class ConvertArgs(Schema):
    input_file: PATH
    output_file: PATH
    output_format: Literal["qcow2", "raw"] = "qcow2"


@dataclass(frozen=True)
class ForwardArgs(Schema):
    uuid: UUID
    host_port: Annotated[str, Doc("host port, or any nft source ([addr:]port[|proto])"),
                         Len(1, 80)]
    container_port: Annotated[int, Doc("the guest's port"), Range(1, 65535)]


@dataclass(frozen=True)
class MigrateArgs(Schema):
    uuid: UUID
    desturi: Annotated[str, Doc("libvirt URI of the destination's libvirtd (peer to peer: "
                                "this node's libvirtd connects to it)"), Len(1, 512),
                       Pattern(r"[A-Za-z0-9+]+://[^\x00-\x20\x7f'\"<>]*")]
    shared_storage: Annotated[bool, Doc("the VM's disk files are on storage the destination "
                                        "sees at the same paths (libvirt cannot tell for "
                                        "local paths), 0-core's only mode and so the "
                                        "default; false: libvirt copies the disks (the "
                                        "destination needs files of the same size at the "
                                        "same paths)")] = True


def random_mac() -> str:
    """A random unicast, locally administered MAC (a nic given none)."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xfe) | 0x02  # unicast, locally administered
    return ":".join(f"{x:02x}" for x in b)


def params_of(args: CreateArgs) -> dict[str, Any]:
    """The create arguments kept in the domain's metadata (0-core's ``params``)."""
    return {"name": args.name, "cpu": args.cpu, "memory": args.memory,
            "media": [{k: val for k, val in (("url", m.url), ("path", m.path), ("type", m.type),
                                             ("bus", m.bus), ("overlay", m.overlay))
                       if val is not None} for m in args.media],
            "nics": [{k: val for k, val in (("type", n.type), ("id", n.id),
                                             ("hwaddr", n.hwaddr)) if val is not None}
                     for n in args.nics],
            "port": dict(args.port or {}), "vnc": args.vnc, "kernel": args.kernel,
            "initrd": args.initrd, "cmdline": args.cmdline}
