"""info.dmi: the machine's DMI/SMBIOS tables, parsed from ``dmidecode`` (0-core's shape)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Any

from core0.context import Context
from core0.errors import BadRequest, PreconditionFailed
from core0.registry import Role, command
from core0.schema import Doc, Len, Schema

DECODER = "core0 dmi decoder (0-core's v0.2.0 shape)"
#: dmidecode's type keywords (``-t bios``...)
KEYWORDS = ("bios", "system", "baseboard", "chassis", "processor", "memory", "cache",
            "connector", "slot")
TYPE_NAMES = [
    "BIOS", "System", "Baseboard", "Chassis", "Processor", "MemoryController", "MemoryModule",
    "Cache", "PortConnector", "SystemSlots", "OnBoardDevices", "OEMSettings",
    "SystemConfigurationOptions", "BIOSLanguage", "GroupAssociations", "SystemEventLog",
    "PhysicalMemoryArray", "MemoryDevice", "32BitMemoryError", "MemoryArrayMappedAddress",
    "MemoryDeviceMappedAddress", "BuiltinPointingDevice", "PortableBattery", "SystemReset",
    "HardwareSecurity", "SystemPowerControls", "VoltageProbe", "CoolingDevice",
    "TempratureProbe", "ElectricalCurrentProbe", "OutOfBandRemoteAccess",
    "BootIntegrityServices", "SystemBoot", "64BitMemoryError", "ManagementDevice",
    "ManagementDeviceComponent", "ManagementThresholdData", "MemoryChannel", "IPMIDevice",
    "PowerSupply", "AdditionalInformation", "OnboardDeviceExtendedInformation",
    "ManagementControllerHostInterface",
]
_TYPE = re.compile(r"DMI type ([0-9]+)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def parse_dmi(text: str) -> dict[str, Any]:
    """``dmidecode`` output → {tooling: {aggregator, decoder}, sections: [{handleline,
    typestr, typenum, subsections: [{title, properties: {key: {value, items?}}}]}]}."""
    lines = text.split("\n")
    aggregator = next((ln.lstrip("#").strip() for ln in lines if ln.startswith("#")), "")
    sections: list[dict[str, Any]] = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("Handle"):
            i += 1
            continue
        m = _TYPE.search(lines[i])
        num = int(m.group(1)) if m else -1
        sec: dict[str, Any] = {
            "handleline": lines[i],
            "typestr": TYPE_NAMES[num] if 0 <= num < len(TYPE_NAMES) else f"Custom Type {num}",
            "typenum": num, "subsections": []}
        sections.append(sec)
        i += 1
        sub: dict[str, Any] | None = None
        while i < len(lines) and lines[i].strip():
            line = lines[i]
            if _indent(line) == 0:
                sub = {"title": line, "properties": {}}
                sec["subsections"].append(sub)
                i += 1
                continue
            if sub is None:
                sub = {"title": "", "properties": {}}
                sec["subsections"].append(sub)
            key, _, value = line.strip().partition(":")
            prop: dict[str, Any] = {"value": value.strip()}
            level = _indent(line)
            i += 1
            items = []
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) > level:
                items.append(lines[i].strip())
                i += 1
            if items:
                prop["items"] = items
            sub["properties"][key.strip()] = prop
    return {"tooling": {"aggregator": aggregator or "unknown", "decoder": DECODER},
            "sections": sections}


@dataclass(frozen=True)
class DmiArgs(Schema):
    types: Annotated[list[int | str], Doc("DMI type numbers (0-42) or keywords (bios, system, "
                                          "baseboard, chassis, processor, memory, cache, "
                                          "connector, slot); none: everything"),
                     Len(0, 64)] = field(default_factory=list)


@command("info.dmi", DmiArgs, role=Role.READ_ONLY)
async def dmi(ctx: Context, args: DmiArgs) -> dict[str, Any]:
    """The DMI/SMBIOS tables (``dmidecode [-t type]...``), parsed as 0-core did:
    ``{tooling: {aggregator, decoder}, sections: [{handleline, typestr, typenum,
    subsections: [{title, properties: {key: {value, items?}}}]}]}``. 412 when the machine
    exposes no DMI table (some VMs and containers)."""
    argv = ["dmidecode"]
    for t in args.types:
        if isinstance(t, int) and not 0 <= t <= 42:
            raise BadRequest(f"arguments.types: type out of range: {t}", field="arguments.types")
        if isinstance(t, str) and t not in KEYWORDS:
            raise BadRequest(f"arguments.types: invalid keyword {t!r:.40}",
                             field="arguments.types")
        argv += ["-t", str(t)]
    res = await ctx.run(argv, check=False)
    if res.status != 0:
        text = (res.stderr or res.stdout).strip().splitlines()
        raise PreconditionFailed("no DMI/SMBIOS table on this machine: "
                                 + (text[-1] if text else f"dmidecode status {res.status}"))
    return parse_dmi(res.stdout)
