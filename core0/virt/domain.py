"""Domain XML: built with ``xml.etree.ElementTree`` from a checked :class:`DomainSpec`, never by
string pasting (ElementTree escapes every text and attribute), and read back from libvirt's
live XML (disks, nics, serial log, VNC port, core0's metadata).

core0's own data about a VM (tags, the create arguments, the default nic's address, overlay
files) lives in the domain's ``<metadata>`` as one JSON text element, so libvirt — not the
dispatcher — holds it: a restarted dispatcher reads it back from the running domains.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

#: the namespace of core0's metadata element
NS = "https://github.com/threefoldtech/0-core/core0/vm"
ET.register_namespace("core0", NS)


@dataclass
class Disk:
    source: str  #: canonical file path
    format: str  #: qcow2 | raw
    device: str = "disk"  #: disk | cdrom
    bus: str = "virtio"
    target: str = "vda"
    iotune: dict[str, int | str] = field(default_factory=dict)


@dataclass
class Nic:
    bridge: str
    mac: str
    kind: str = "default"  #: default | bridge (0-core's nic type)
    target: str = ""  #: the tap's name (libvirt's vnetN when empty; core0/virt/guards.py)


@dataclass
class DomainSpec:
    name: str
    uuid: str
    memory: int  #: MiB
    vcpus: int
    type: str = "qemu"  #: qemu (TCG) | kvm
    disks: list[Disk] = field(default_factory=list)
    nics: list[Nic] = field(default_factory=list)
    serial_log: str = ""
    vnc: bool = False
    kernel: str = ""
    initrd: str = ""
    cmdline: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    e = ET.SubElement(parent, tag, attrs)
    if text is not None:
        e.text = text
    return e


def target_name(bus: str, index: int) -> str:
    """vda, vdb… for virtio; hda… for ide; sda… for sata/scsi."""
    prefix = {"virtio": "vd", "ide": "hd"}.get(bus, "sd")
    letters = ""
    n = index
    while True:
        letters = chr(ord("a") + n % 26) + letters
        n = n // 26 - 1
        if n < 0:
            break
    return prefix + letters


def disk_element(d: Disk) -> ET.Element:
    e = ET.Element("disk", {"type": "file", "device": d.device})
    drv = {"name": "qemu", "type": d.format}
    if d.device == "disk":
        drv.update(cache="writethrough", io="threads")
    _sub(e, "driver", **drv)
    _sub(e, "source", file=d.source)
    _sub(e, "target", dev=d.target, bus=d.bus)
    if d.device == "cdrom":
        _sub(e, "readonly")
    if d.iotune:
        tune = _sub(e, "iotune")
        for k, val in d.iotune.items():
            _sub(tune, k, str(val))
    return e


def nic_element(n: Nic) -> ET.Element:
    e = ET.Element("interface", {"type": "bridge"})
    _sub(e, "source", bridge=n.bridge)
    _sub(e, "mac", address=n.mac)
    _sub(e, "model", type="virtio")
    if n.target:
        _sub(e, "target", dev=n.target)
    return e


def build(s: DomainSpec) -> str:
    """The domain XML of a spec (a transient domain: libvirt's createXML)."""
    dom = ET.Element("domain", {"type": s.type})
    _sub(dom, "name", s.name)
    _sub(dom, "uuid", s.uuid)
    md = _sub(dom, "metadata")
    _sub(md, f"{{{NS}}}vm", json.dumps(s.meta, sort_keys=True))
    _sub(dom, "memory", str(s.memory), unit="MiB")
    _sub(dom, "vcpu", str(s.vcpus))
    os_ = _sub(dom, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine="pc")
    if s.kernel:
        _sub(os_, "kernel", s.kernel)
        if s.initrd:
            _sub(os_, "initrd", s.initrd)
        if s.cmdline:
            _sub(os_, "cmdline", s.cmdline)
    else:
        _sub(os_, "boot", dev="cdrom" if s.disks and s.disks[0].device == "cdrom" else "hd")
    feats = _sub(dom, "features")
    _sub(feats, "acpi")
    if s.type == "kvm":
        _sub(dom, "cpu", mode="host-passthrough")
    else:
        _sub(dom, "cpu", mode="maximum")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    dev = _sub(dom, "devices")
    for d in s.disks:
        dev.append(disk_element(d))
    for n in s.nics:
        dev.append(nic_element(n))
    serial = _sub(dev, "serial", type="pty")
    if s.serial_log:
        _sub(serial, "log", file=s.serial_log, append="on")
    _sub(serial, "target", port="0")
    if s.vnc:
        _sub(dev, "graphics", type="vnc", port="-1", autoport="yes", listen="127.0.0.1")
    _sub(dev, "memballoon", model="none")
    return ET.tostring(dom, encoding="unicode")


# ---------------------------------------------------------------- reading live XML


@dataclass
class Live:
    """What core0 reads back from a domain's XML."""

    disks: list[dict[str, str]]  #: {source, target, bus, device, format, alias}
    nics: list[dict[str, str]]  #: {mac, bridge, target, alias}
    vnc: int
    serial_log: str
    meta: dict[str, Any]
    #: the domain carries core0's metadata element: core0 made it (here, or on the node it
    #: migrated from); a domain without it is someone else's and kvm.* leaves it alone
    core0: bool = False


def parse(xml: str) -> Live:
    root = ET.fromstring(xml)
    disks, nics = [], []
    for d in root.iterfind("devices/disk"):
        src, tgt = d.find("source"), d.find("target")
        drv, alias = d.find("driver"), d.find("alias")
        disks.append({
            "source": src.get("file", "") if src is not None else "",
            "target": tgt.get("dev", "") if tgt is not None else "",
            "bus": tgt.get("bus", "") if tgt is not None else "",
            "device": d.get("device", "disk"),
            "format": drv.get("type", "") if drv is not None else "",
            "alias": alias.get("name", "") if alias is not None else "",
        })
    for n in root.iterfind("devices/interface"):
        mac, src = n.find("mac"), n.find("source")
        tgt, alias = n.find("target"), n.find("alias")
        nics.append({
            "mac": mac.get("address", "") if mac is not None else "",
            "bridge": src.get("bridge", "") if src is not None else "",
            "target": tgt.get("dev", "") if tgt is not None else "",
            "alias": alias.get("name", "") if alias is not None else "",
        })
    vnc = -1
    g = root.find("devices/graphics[@type='vnc']")
    if g is not None:
        try:
            vnc = int(g.get("port", "-1"))
        except ValueError:
            vnc = -1
    log = root.find("devices/serial/log")
    meta: dict[str, Any] = {}
    m = root.find(f"metadata/{{{NS}}}vm")
    if m is not None and m.text:
        try:
            meta = dict(json.loads(m.text))
        except (ValueError, TypeError):
            meta = {}
    return Live(disks, nics, vnc, log.get("file", "") if log is not None else "", meta,
                m is not None)


def element_xml(e: ET.Element) -> str:
    return ET.tostring(e, encoding="unicode")


def find_device(xml: str, tag: str, **match: str) -> str | None:
    """The XML of the first live device ``tag`` whose child elements match, e.g.
    ``find_device(x, "disk", source="/a.qcow2")`` or ``find_device(x, "interface", mac=…)``."""
    root = ET.fromstring(xml)
    for e in root.iterfind(f"devices/{tag}"):
        ok = True
        for key, want in match.items():
            if key == "source":
                s = e.find("source")
                got = (s.get("file") or s.get("bridge")) if s is not None else None
            elif key == "mac":
                s = e.find("mac")
                got = s.get("address", "").lower() if s is not None else None
                want = want.lower()
            elif key == "target":
                s = e.find("target")
                got = s.get("dev") if s is not None else None
            else:
                got = None
            if got != want:
                ok = False
                break
        if ok:
            return element_xml(e)
    return None
