"""The ``[segments]`` section of the configuration: VLAN and VXLAN networks for VM and
container nics (``type: vlan|vxlan``, see core0/net/segments.py and docs/networking.md).

Kept out of :mod:`core0.config` (at its size limit); :class:`core0.config.Config` holds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar

from core0 import schema


@dataclass(frozen=True)
class SegmentsConfig(schema.Schema):
    """Where ``vlan`` and ``vxlan`` nics go: a bridge per segment on the node."""

    __unknown__: ClassVar[str] = "key"

    #: the underlay link VLANs are tagged on and VXLAN packets leave by ("" = the link of
    #: the IPv4 default route)
    parent: str = ""
    #: VXLAN flooding (broadcast, unknown unicast, multicast): to this multicast group…
    vxlan_group: str = "239.7.7.7"
    #: …or, when set, to these unicast peers (the other nodes' underlay addresses) instead
    vxlan_remotes: list[str] = field(default_factory=list)
    #: VXLAN's UDP port
    vxlan_port: Annotated[int, schema.Range(1, 65535)] = 4789
    #: the segment bridges' MTU (0 = the kernel's choice; VXLAN takes 50 bytes of the
    #: underlay's MTU)
    mtu: Annotated[int, schema.Range(0, 65535)] = 0
