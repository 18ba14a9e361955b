"""0-core's commands that core0 serves under their old names only for compatibility.

- ``ip.bridge.add|del|addif|delif``: plain Linux bridges through netlink, as 0-core's ``ip``
  manager made them (``bridge.*`` is core0's managed bridge with DHCP/NAT; ``ip.link.*``
  offers every kind of link).
- ``socat.list``: the DNAT rules of the node's port forwards (0-core's name from before its
  forwards were nft rules); ``socat.reserve {number}``: that many free host ports from 1024,
  held two minutes for forwards to come (:mod:`core0.net.reserve`).
- ``zerotier.*``, ``rtinfo.*``, ``pprof.*`` and ``corex.flist.create`` are answered 501
  with the reason (docs/compat.md): a
  clear "not here, and why" instead of UNKNOWN_CMD, so a 0-core client's error names what
  to use instead — unless the configuration declares them (0-core's ``zerotier.toml``
  declares ``zerotier.*`` as extensions): a declared one takes the stand-in's place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from core0.commands.ip import in_netns, keep_core0_links
from core0.context import Context
from core0.errors import BadRequest, CommandError
from core0.net import netlink as nl
from core0.net import reserve, sockets
from core0.net import state as netstate
from core0.net import validate as v
from core0.registry import Role, command
from core0.schema import Doc, NoArgs, Range, Schema

if TYPE_CHECKING:
    from pyroute2 import IPRoute


def _bridge(r: IPRoute, name: str) -> int:
    link = nl.link_get(r, name)
    if link["type"] != "bridge":
        raise BadRequest(f"no bridge with name '{name}' ({name} is a {link['type']} link)")
    return int(link["index"])


@dataclass(frozen=True)
class BridgeAddArgs(Schema):
    name: Annotated[v.IFNAME, Doc("bridge name")]
    hwaddr: Annotated[v.MAC | None, Doc("MAC address (default: the kernel's)")] = None
    netns: v.NETNS | None = None


@command("ip.bridge.add", BridgeAddArgs)
async def bridge_add(ctx: Context, args: BridgeAddArgs) -> None:
    """Create a Linux bridge (down, as 0-core left it), with ``hwaddr`` if given. 409 if the
    name is taken."""
    keep_core0_links(ctx, args.netns, args.name)
    spec = nl.LinkSpec(name=args.name, kind="bridge", hwaddr=args.hwaddr)
    await in_netns(ctx, args.netns, lambda r: nl.link_add(r, spec))


@dataclass(frozen=True)
class BridgeArgs(Schema):
    name: Annotated[v.IFNAME, Doc("bridge name")]
    netns: v.NETNS | None = None


@command("ip.bridge.del", BridgeArgs)
async def bridge_del(ctx: Context, args: BridgeArgs) -> None:
    """Delete a bridge (its ports are released). 404 if missing, 400 if not a bridge; below
    admin 409 for one of core0's."""
    keep_core0_links(ctx, args.netns, args.name)

    def work(r: IPRoute) -> None:
        _bridge(r, args.name)
        nl.link_del(r, args.name)

    await in_netns(ctx, args.netns, work)


@dataclass(frozen=True)
class BridgeIfArgs(Schema):
    name: Annotated[v.IFNAME, Doc("bridge name")]
    inf: Annotated[v.IFNAME, Doc("the link to attach or detach")]
    netns: v.NETNS | None = None


@command("ip.bridge.addif", BridgeIfArgs)
async def bridge_addif(ctx: Context, args: BridgeIfArgs) -> None:
    """Attach link ``inf`` to bridge ``name``. 404 if either is missing; below admin 409
    when either is one of core0's links."""
    keep_core0_links(ctx, args.netns, args.name, args.inf)

    def work(r: IPRoute) -> None:
        _bridge(r, args.name)
        nl.link_set(r, args.inf, master=args.name)

    await in_netns(ctx, args.netns, work)


@command("ip.bridge.delif", BridgeIfArgs)
async def bridge_delif(ctx: Context, args: BridgeIfArgs) -> None:
    """Detach link ``inf`` from bridge ``name``. 400 if it is not attached to that bridge;
    below admin 409 when either is one of core0's links."""
    keep_core0_links(ctx, args.netns, args.name, args.inf)

    def work(r: IPRoute) -> None:
        _bridge(r, args.name)
        if nl.link_get(r, args.inf)["master"] != args.name:
            raise BadRequest(f"{args.inf} is not connected to bridge {args.name}")
        nl.link_set(r, args.inf, master="")

    await in_netns(ctx, args.netns, work)


# ---------------------------------------------------------------- socat.* (port forwards)


@command("socat.list", role=Role.READ_ONLY)
async def socat_list(ctx: Context, args: NoArgs) -> list[str]:
    """The DNAT rules of the node's port forwards, as nft text (0-core's answer: its ``nat
    pre`` rules); ``nft.forward_list`` gives them as records."""
    fwds = netstate.load(ctx.config.state_dir).forwards
    return [rule for f in fwds for rule in f.rules("prerouting")]


@dataclass(frozen=True)
class ReserveArgs(Schema):
    number: Annotated[int, Doc("how many ports"), Range(1, 1024)]


@command("socat.reserve", ReserveArgs)
async def socat_reserve(ctx: Context, args: ReserveArgs) -> list[int]:
    """Reserve ``number`` free host ports (the lowest from 1024 the node does not listen on,
    no forward uses and nobody holds), held two minutes or until a forward takes one: their
    numbers. 503 when too few are free or too many are held."""
    def used() -> set[int]:
        return {s.port for s in sockets.listeners()}

    ports = await ctx.to_thread(used)
    async with netstate.LOCK:
        ports |= {f.source.port for f in netstate.load(ctx.config.state_dir).forwards}
        return reserve.RESERVED.take(args.number, ports)


# ---------------------------------------------------------------- not served (501)


class NotImplemented501(CommandError):
    """A 0-core command core0 deliberately does not serve (501, with the reason)."""

    code = 501


#: command → why core0 does not serve it (the text of its 501 result)
NOT_SERVED: dict[str, str] = {
    **{f"zerotier.{op}": "core0 does not run ZeroTier: it needs zerotier-one and a "
       "controller account on the node; use a VXLAN link (ip.link.add) or run zerotier-one "
       "as a service" for op in ("join", "leave", "list", "info")},
    **{f"rtinfo.{op}": "core0 has no rtinfo agent (0-core pushed stats to an rtinfo "
       "server); read info.* and job.list, or run an exporter as a service"
       for op in ("start", "stop", "list")},
    **{f"pprof.{op}": "core0 is not a Go program: profile its dispatcher with py-spy "
       "(py-spy record --pid <dispatcher>) and read its counters on the metrics endpoint"
       for op in ("cpu.start", "cpu.stop", "mem.write", "mem.stat")},
}


@dataclass(frozen=True)
class AnyArgs(Schema):
    """Whatever 0-core's client sends (ignored)."""

    network: Any = None
    host: Any = None
    port: Any = None
    disks: Any = None
    number: Any = None
    container: Any = None
    url: Any = None
    flist: Any = None
    storage: Any = None
    src: Any = None
    token: Any = None
    hub: Any = None


_ZT_INSIDE = ("core0 does not run ZeroTier (zerotier-one and a controller account would be "
              "needed): use bridge, macvlan or default nics")
#: corex.<verb> (and its container.<verb> alias) → why core0 does not serve it
CONTAINER_NOT_SERVED: dict[str, str] = {
    "flist-layer": "core0 does not mount flists (0-fs/g8ufs is not supported): a "
                   "container's root is an OCI image stored with container.image.*; "
                   "create the container from an image that has the layer",
    "zerotier.info": _ZT_INSIDE,
    "zerotier.list": _ZT_INSIDE,
    "flist.create": "core0 does not make flists (0-hub is not supported): a container's "
                    "root is an OCI image; corex.backup snapshots one, and umoci or skopeo "
                    "on a host make and push images",
}


def _register(name: str, reason: str, verb: str = "") -> None:
    """A 501 answer for ``name``; ``verb``: registered as corex.<verb> + container.<verb>."""
    async def not_served(ctx: Context, args: AnyArgs) -> None:
        raise NotImplemented501(f"{name} is not implemented by core0 (501): {reason}")

    not_served.__doc__ = f"Not served (501): {reason}."
    if verb:
        from core0.commands.container import aliases

        aliases(verb, AnyArgs, role=Role.READ_ONLY)(not_served)
    else:  # 0-core's own zerotier.toml declares zerotier.* as extensions: those replace it
        command(name, AnyArgs, role=Role.READ_ONLY, replaceable=True)(not_served)


for _name, _reason in NOT_SERVED.items():
    _register(_name, _reason)
for _verb, _reason in CONTAINER_NOT_SERVED.items():
    _register(f"corex.{_verb}", _reason, _verb)
