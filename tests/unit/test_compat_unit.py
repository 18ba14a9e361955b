"""0-core compatibility, the pure parts: parsers of 0-core's result shapes and the argument
forms 0-core's client sends (the integration side is tests/compat)."""

from __future__ import annotations

import pytest

from core0.commands import bond, btrfs, compat, disk, dmi
from core0.errors import BadRequest
from core0.registry import get, load_all

DMIDECODE = """\
# dmidecode 3.4
Getting SMBIOS data from sysfs.
SMBIOS 2.8 present.

Handle 0x0100, DMI type 1, 27 bytes
System Information
\tManufacturer: ExampleCo
\tProduct Name: Box 1
\tWake-up Type: Power Switch

Handle 0x0000, DMI type 0, 24 bytes
BIOS Information
\tVendor: ExampleBIOS
\tCharacteristics:
\t\tPCI is supported
\t\tBIOS is upgradeable
\tBIOS Revision: 0.0

Handle 0x7F00, DMI type 127, 4 bytes
End Of Table
"""

BONDING = """\
Ethernet Channel Bonding Driver: v6.1

Bonding Mode: load balancing (round-robin)
MII Status: up
MII Polling Interval (ms): 0

Slave Interface: eth1
MII Status: up
Speed: 1000 Mbps
"""


def test_dmi_shape() -> None:
    out = dmi.parse_dmi(DMIDECODE)
    assert out["tooling"]["aggregator"] == "dmidecode 3.4" and out["tooling"]["decoder"]
    system, bios, end = out["sections"]
    assert (system["typenum"], system["typestr"]) == (1, "System")
    assert system["handleline"].startswith("Handle 0x0100")
    props = system["subsections"][0]["properties"]
    assert system["subsections"][0]["title"] == "System Information"
    assert props["Manufacturer"] == {"value": "ExampleCo"}
    chars = bios["subsections"][0]["properties"]["Characteristics"]
    assert chars == {"value": "", "items": ["PCI is supported", "BIOS is upgradeable"]}
    assert bios["subsections"][0]["properties"]["BIOS Revision"]["value"] == "0.0"
    assert end["typestr"] == "Custom Type 127"


def test_bonding_sections() -> None:
    secs = bond.parse_bonding(BONDING)
    assert secs[0] == {"Ethernet Channel Bonding Driver": " v6.1"}
    assert secs[1]["Bonding Mode"] == " load balancing (round-robin)"
    assert secs[2]["Slave Interface"] == " eth1"


def test_mount_options_dict() -> None:
    assert disk._option_map(["rw", "subvol=/x", "noatime"]) == {
        "rw": "1", "subvol": "/x", "noatime": "1"}


def test_the_clients_argument_forms_parse() -> None:
    """What 0-core's client sends for the commands core0 owns here."""
    assert disk.GetInfoArgs.parse({"disk": "loop0", "part": ""}).part == ""
    assert disk.MkpartArgs.parse({"disk": "loop0", "start": 1, "end": 100,
                                  "part_type": "primary"}).start == 1
    assert disk._pos(100) == "100" and disk._pos("10MiB") == "10MiB"
    for t in ("aix", "amiga", "bsd", "dvh", "gpt", "mac", "msdos", "pc98", "sun", "loop"):
        disk.MktableArgs.parse({"disk": "loop0", "table_type": t})
    args = btrfs.CreateArgs.parse({"label": "x", "metadata": "", "data": "", "devices": ["a"],
                                   "overwrite": False})
    assert not args.metadata and not args.data
    with pytest.raises(BadRequest):
        btrfs.CreateArgs.parse({"devices": ["a"], "data": "raid9"})
    with pytest.raises(BadRequest):
        disk.GetInfoArgs.parse({"disk": "loop0", "part": "-rf"})


def test_not_served_are_registered_with_501() -> None:
    load_all()
    for name in compat.NOT_SERVED:
        spec = get(name)
        assert spec is not None and "501" in spec.doc, name
    assert {"zerotier.join", "rtinfo.start"} <= set(compat.NOT_SERVED)
    assert not {"logger.subscribe", "logger.unsubscribe"} & set(compat.NOT_SERVED)
    assert not {"socat.list", "socat.reserve"} & set(compat.NOT_SERVED)  # served since 11-28
