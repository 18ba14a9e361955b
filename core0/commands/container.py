"""corex.* (0-core's container API, exact argument shapes) and container.* (its aliases and
the image store).

A container is an OCI bundle core0 writes (see :mod:`core0.sandbox`) run by crun or runc;
PID 1 inside is a static init (catatonit), the root a fresh overlay clone of a stored image.
Ids are small integers, as 0-core's clients expect. ``corex.dispatch`` runs ``core.system`` or
``bash`` inside through the runtime's ``exec`` as a job of its own whose result (``container``
field set) is read like any other. Every ``corex.<verb>`` is also ``container.<verb>``.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from core0 import cancel
from core0.context import Context, ProcessSpec
from core0.declared import declared_role
from core0.errors import BadRequest, Conflict, Forbidden, NotFound, PreconditionFailed
from core0.net import nft
from core0.net import validate as v
from core0.registry import Role, alias, command
from core0.sandbox import (
    access,
    foreground,
    images,
    manager,
    netsetup,
    persist,
    spec,
    startup,
    volumes,
)
from core0.sandbox import dispatch as dsp
from core0.sandbox.store import Nic, Store
from core0.schema import NAME, Doc, Len, NoArgs, Pattern, Range, Schema

_NO_NUL = Pattern(r"[^\x00]*")
_IMAGE = Annotated[str, Doc("image name (letters, digits, _ . - : / @; or a host path)"),
                   Pattern(r"[A-Za-z0-9_/][A-Za-z0-9_.:/@+-]{0,255}")]


def aliases(verb: str, args: type[Schema] = NoArgs, role: Role = Role.OPERATOR,
            inline: bool = False, rerun: bool | None = None) -> Any:
    """Register a handler as ``corex.<verb>``, and ``container.<verb>`` as its alias through
    the registry (the same handler, schema and role; the reference lists the alias once)."""
    def deco(fn: Any) -> Any:
        command(f"corex.{verb}", args, role=role, inline=inline, rerun=rerun)(fn)
        alias(f"container.{verb}", of=f"corex.{verb}")
        return fn

    return deco


#: nics of a container (a create's, and live ones after nic-add)
MAX_NICS = 16
#: the kernel's MAX_ARG_STRLEN: no "NAME=value" string of an exec may be as long
MAX_ENV_STRING = 32 * 4096


def check_env(env: dict[str, str]) -> None:
    """400 for a variable the container's init could not be started with: a name that is
    no shell name, or ``NAME=value`` of 128 KiB or more (execve refuses it with E2BIG, and
    the detached init would die at once while the create answered with its id)."""
    for k, val in env.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise BadRequest(f"env.{k}: not a valid variable name", field=f"env.{k}")
        if len(k.encode()) + 1 + len(val.encode()) >= MAX_ENV_STRING:
            raise BadRequest(f"env.{k}: longer than a variable may be (128 KiB with its "
                             "name)", field=f"env.{k}")


@dataclass(frozen=True)
class NicConfig(Schema):
    dhcp: bool | None = None
    cidr: v.CIDR | None = None
    gateway: v.ADDR | None = None
    dns: list[v.ADDR] | None = None


@dataclass(frozen=True)
class NicArgs(Schema):
    type: Annotated[Literal["default", "bridge", "zerotier", "macvlan", "passthrough", "vlan",
                            "vxlan"],
                    Doc("default, bridge, macvlan, passthrough, vlan and vxlan (a segment "
                        "bridge of the node: docs/networking.md) are supported; zerotier "
                        "answers 412")]
    id: Annotated[str, Doc("bridge: its name; macvlan: the parent link; passthrough: the "
                           "node's link moved in; vlan: the VLAN id; vxlan: the VNI"),
                  Len(0, 64),
                  _NO_NUL] | None = None
    name: Annotated[str, Doc("name inside (default eth<index>)"),
                    Pattern(v.IFNAME_RE)] | None = None
    hwaddr: v.MAC | None = None
    config: NicConfig | None = None
    monitor: bool | None = None

    def nic(self) -> Nic:
        """The nic to record (400 for a ``dns`` entry that is no IP address: it is written
        into the container's resolv.conf)."""
        c = self.config or NicConfig()
        for i, d in enumerate(c.dns or []):
            v.ip(d, f"nic.config.dns[{i}]")
        cfg = {k: val for k, val in c.__dict__.items() if val is not None}
        return Nic(type=self.type, id=self.id or "", name=self.name or "",
                   hwaddr=self.hwaddr or "", config=cfg)


@dataclass(frozen=True)
class LimitArgs(Schema):
    memory: Annotated[int, Doc("bytes"), Range(4 << 20, 1 << 50)] | None = None
    cpu_shares: Annotated[int, Range(2, 262144)] | None = None
    cpu_quota: Annotated[int, Doc("µs of CPU per period"), Range(1000, 1 << 40)] | None = None
    cpu_period: Annotated[int, Doc("µs (default 100000)"), Range(1000, 1000000)] | None = None
    pids: Annotated[int, Doc("max processes"), Range(1, 1 << 22)] | None = None


@dataclass(frozen=True)
class CreateArgs(Schema):
    root: Annotated[str, Doc("a stored image's name, a host path (directory, rootfs "
                             "tarball, OCI layout) imported once under that path, or "
                             "restic:<url>#<snapshot>"),
                    Pattern(r"[A-Za-z0-9_/][A-Za-z0-9_.:/@+-]{0,255}|restic:[^\x00-\x1f]{1,4096}")]
    mount: Annotated[dict[str, Annotated[str, _NO_NUL, Len(1, 4096)]],
                     Doc("{host path: container path[:ro]} bind mounts; host paths outside "
                         "main.filesystem_root need the admin role"), Len(0, 64)] | None = None
    host_network: bool = False
    nics: Annotated[list[NicArgs], Doc("default when omitted: [{type: default}]"),
                    Len(0, MAX_NICS)] | None = None
    port: Annotated[dict[str, Annotated[int, Range(1, 65535)]],
                    Doc('{"<host src>": container port} (nft forwards, 0-core syntax)'),
                    Len(0, 256)] | None = None
    hostname: Annotated[str, Pattern(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}")] | None = None
    privileged: Annotated[bool, Doc("podman --privileged; needs the admin role")] = False
    storage: Annotated[str, Doc("accepted and ignored (0-core's flist storage)")] | None = None
    name: Annotated[str, NAME] | None = None
    identity: Annotated[str, Doc("accepted and ignored (zerotier identity)")] | None = None
    env: Annotated[dict[str, Annotated[str, _NO_NUL]], Len(0, 1024)] | None = None
    cgroups: Annotated[list[list[str]], Doc("accepted and ignored (0-core's named cgroups); "
                                            "use limits")] | None = None
    tags: list[Annotated[str, Len(1, 128)]] | None = None
    limits: Annotated[LimitArgs, Doc("memory, cpu shares/quota, pids (cgroup v1 or v2)")
                      ] | None = None
    restart: Annotated[Literal["no", "on-failure", "always"],
                       Doc("restart the container when its init ends (an OOM kill, a "
                           "signal), with backoff ≥ 1 s doubling to 60 s")] = "no"
    persistent: Annotated[bool, Doc("declare it in main.persistent_dir (needs name): it comes "
                                    "back after a reboot; re-declaring the same spec returns "
                                    "the running one, a changed spec recreates it")] = False
    userns: Annotated[bool, Doc("run it in a user namespace with a uid/gid range of its own "
                                "(its root is an unprivileged host uid; not with "
                                "privileged)")] = False


@aliases("create", CreateArgs)
async def create(ctx: Context, args: CreateArgs) -> int:
    """Create and start a container; returns its integer id. ``root`` is a stored image (see
    container.image.import/pull), a host path, or ``restic:<repository url>#<snapshot>``
    (0-core's: the root of a corex.backup, or a snapshot of one directory, stored as image
    ``restic-<snapshot id>``); each start gets a fresh overlay clone of it.
    Defaults: containers-common capabilities and seccomp profile (stricter: no mount,
    unshare, keyctl, ptrace), no_new_privs, masked/read-only paths, own namespaces, PID 1 =
    catatonit. ``nics`` default to one ``default`` nic (a veth into the NAT bridge core0,
    172.18.0.0/16); ``port`` forwards host ports to it. ``userns`` runs it in a user
    namespace with a uid/gid range of its own (refused with ``privileged``). ``storage``,
    ``identity`` and ``cgroups`` are accepted and ignored."""
    return await create_container(ctx, args, dict(ctx.job.cmd.arguments))


def checked(ctx: Context, args: CreateArgs | RunArgs) -> tuple[list[Nic], dict[str, int]]:
    """What a container's role, environment, nics and forwards must satisfy (corex.create,
    corex.create-sync, container.run); its nics (one default nic when none are given) and
    forwards."""
    if args.privileged and ctx.job.role < Role.ADMIN:
        raise Forbidden("privileged containers need the admin role")
    check_env(args.env or {})
    nic_list = ([NicArgs(type="default").nic()] if args.nics is None
                else [n.nic() for n in args.nics])
    ports = dict(args.port or {})
    for src in ports:
        nft.parse_source(src, f"port.{src}")
    if ports and (args.host_network or not any(n.type == "default" for n in nic_list)):
        raise BadRequest("port: forwards need a default nic", field="port")
    return nic_list, ports


async def create_container(ctx: Context, args: CreateArgs, arguments: dict[str, Any]) -> int:
    """corex.create's work (also corex.restore's), ``arguments`` recorded as the create's."""
    if args.root.startswith("restic:"):  # 0-core's data-only restore: the image, then as given
        from core0.sandbox import backup

        _, image = await backup.restore(ctx, args.root[len("restic:"):], data_only=True)
        args = dataclasses.replace(args, root=image)
        arguments = {**arguments, "root": image}  # (the URL holds the password)
    nic_list, ports = checked(ctx, args)
    if args.persistent:
        async with persist.name_lock(args.name or ""):
            return await _create(ctx, args, nic_list, ports, arguments)
    return await _create(ctx, args, nic_list, ports, arguments)


async def _create(ctx: Context, args: CreateArgs, nic_list: list[Nic], ports: dict[str, int],
                  arguments: dict[str, Any]) -> int:
    lim = args.limits or LimitArgs()
    spec_hash, prefer = "", 0
    if args.persistent:
        found = await _declared_running(ctx, args)
        if isinstance(found, int):
            return found
        spec_hash, prefer = found
    req = manager.CreateRequest(
        root=args.root, mounts=dict(args.mount or {}), host_network=args.host_network,
        nics=[] if args.host_network else nic_list, ports=ports,
        hostname=args.hostname or "", privileged=args.privileged, name=args.name or "",
        env=dict(args.env or {}), tags=list(args.tags if args.tags is not None else ctx.tags),
        limits=spec.Limits(lim.memory, lim.cpu_shares, lim.cpu_quota, lim.cpu_period,
                           lim.pids),
        arguments=arguments, restart=args.restart,
        spec_hash=spec_hash, prefer_id=prefer, userns=args.userns)
    cid = await manager.create(ctx, req)
    if args.persistent:
        persist.declare(ctx.config, args.name or "", _declared_args(ctx, args), cid,
                        ctx.job.role, ctx.scope or "")
    return cid


def _declared_args(ctx: Context, args: CreateArgs) -> dict[str, Any]:
    """The arguments a declaration records: set ones only, ``mount`` sources resolved for
    the declaring queue's role (the boot's re-declaration runs with that role again)."""
    out = {k: val for k, val in dataclasses.asdict(args).items()
           if val is not None and k != "persistent"}
    if not args.userns:  # (added later: declarations made before hash the same)
        del out["userns"]
    if args.mount:
        out["mount"] = {volumes.resolve_source(ctx, src, f"mount.{src}"): t
                        for src, t in args.mount.items()}
    return out


async def _declared_running(ctx: Context, args: CreateArgs) -> int | tuple[str, int]:
    """A persistent create: the id of the running container of that name with the same spec
    hash, else (hash, the id to prefer) after tearing down the stale one."""
    if not ctx.config.main.persistent_dir:
        raise PreconditionFailed("persistent containers need main.persistent_dir")
    if not args.name:
        raise BadRequest("name: a persistent container needs a name", field="name")
    h = persist.spec_hash(_declared_args(ctx, args))
    same = [r for r in Store(ctx.config.state_dir).all() if r.name == args.name]
    rt = await manager.get_runtime(ctx)
    for r in same:
        if not r.spec_hash:
            raise Conflict(f"container {r.id} is named {args.name} already")
        access.check(ctx, r)  # (kept, replaced or re-declared below: acting on it)
    decl = persist.declaration(ctx.config, args.name)
    if decl is not None and not access.may_act_as(ctx, declared_role(decl),
                                                  str(decl.get("scope") or "")):
        # (declared, not running: re-declaring the name would take it over)
        raise Forbidden(f"{args.name} is declared by a queue of role "
                        f"{declared_role(decl).label}"
                        f"{' (a private queue)' if decl.get('scope') else ''}: "
                        "this queue may not replace it")
    for r in same:
        st = await rt.state(r.runtime_id) if r.state == "running" else None
        if r.spec_hash == h and st is not None and st.status == "running":
            return r.id
    for r in same:  # (to its end: a kill meanwhile is raised after it)
        await cancel.atomic(manager.teardown(ctx, r, rt))
    return h, int(decl.get("id") or 0) if decl else 0


@aliases("list", role=Role.READ_ONLY)
async def list_(ctx: Context, args: NoArgs) -> dict[str, Any]:
    """All containers: {id: {cpu, rss, vms, swap, container: {arguments, root, pid, status,
    oom_kills, nics, ports, startup, …}}} (0-core's shape plus core0's fields; ``startup``:
    the services of the root's ``/.startup.toml``, their status, or why the file was not
    used; null without one: docs/containers.md). A queue that may not
    see the creating queue's jobs (a lower role; below admin, another private queue) gets
    the values of ``env``, ``command``, ``identity`` and ``storage`` as ``<redacted>``."""
    return await manager.list_all(ctx)


@dataclass(frozen=True)
class GetArgs(Schema):
    query: Annotated[int | Annotated[str, Len(1, 128)], Doc("id or name")]


@aliases("get", GetArgs, role=Role.READ_ONLY)
async def get(ctx: Context, args: GetArgs) -> dict[str, Any]:
    """One container (by id or name), as in corex.list."""
    rec = manager.find_record(ctx, args.query)
    rt = await manager.get_runtime(ctx)
    return manager.describe(rec, await rt.state(rec.runtime_id), ctx.job.role, ctx.scope,
                            Store(ctx.config.state_dir).dir(rec.id))


@dataclass(frozen=True)
class FindArgs(Schema):
    tags: Annotated[list[str], Doc("containers having all of these tags")] | None = None


@aliases("find", FindArgs, role=Role.READ_ONLY)
async def find(ctx: Context, args: FindArgs) -> dict[str, Any]:
    """Containers having all ``tags`` (all containers for none), as in corex.list."""
    want = set(args.tags or [])
    return {k: d for k, d in (await manager.list_all(ctx)).items()
            if want <= set(d["container"]["tags"] or [])}


@dataclass(frozen=True)
class ContainerArgs(Schema):
    container: Annotated[int, Range(1, 65535)]


@aliases("terminate", ContainerArgs)
async def terminate(ctx: Context, args: ContainerArgs) -> None:
    """Stop a container (TERM, then KILL after 5 s) and remove everything made for it: its
    runtime state and cgroup, port forwards, nics, netns, root clone and files (and the
    declaration of a persistent one). 403 for a container of a higher role's queue or of
    another private queue, as for every command that acts on one container."""
    rec = await manager.terminate(ctx, args.container)
    # core0's own terminates (a half-made container after a dispatcher died, a stale one)
    # clear the way for the declaration: they never forget it
    if rec is not None and rec.spec_hash and not ctx.job.internal:
        persist.undeclare(ctx.config, rec.name)


@dataclass(frozen=True)
class InnerCommand(Schema):
    command: Annotated[str, Len(1, 128)]
    arguments: Any = None
    queue: str | None = None
    max_time: int | None = None
    stream: bool = False
    tags: list[str] | None = None
    id: str | None = None
    max_restart: int | None = None
    recurring_period: int | None = None


@dataclass(frozen=True)
class DispatchArgs(Schema):
    container: Annotated[int, Range(1, 65535)]
    command: Annotated[InnerCommand, Doc("the command to run inside: core.system, bash, "
                                         "filesystem.*, info.*, job.list/kill, "
                                         "process.list/kill")]


@aliases("dispatch", DispatchArgs, rerun=True)
async def dispatch(ctx: Context, args: DispatchArgs) -> str:
    """Run a command inside a container: ``core.system`` and ``bash`` through the runtime's
    exec (the container's namespaces, capabilities, seccomp filter and cgroup),
    ``filesystem.*`` confined to the container's root, ``info.*`` answered for the
    container (its cpuset, memory cgroup, netns, mounts), ``job.list``/``job.kill`` limited to
    the container's own jobs, ``process.list``/``process.kill`` to its cgroup's processes.
    The command must be allowed on this queue's role; ``recurring_period``/``max_restart``
    are refused. Returns the inner job id (made from this command's id when ``command.id``
    is not given); its result (``container`` set to the id) is read like any other job's.
    Run again after its dispatcher stopped before answering, it answers the inner job the
    first run started (never a second one)."""
    access.acting_record(ctx, args.container)
    return await dsp.dispatch(ctx, args.container, {
        k: val for k, val in args.command.__dict__.items() if val is not None})


@dataclass(frozen=True)
class NicAddArgs(Schema):
    container: Annotated[int, Range(1, 65535)]
    nic: NicArgs


@aliases("nic-add", NicAddArgs)
async def nic_add(ctx: Context, args: NicAddArgs) -> dict[str, Any]:
    """Hot-plug a nic into a running container; returns it (with its index). 409 when it
    has 16 live nics already (as a create takes at most)."""
    st = Store(ctx.config.state_dir)
    rec = access.acting_record(ctx, args.container)
    if rec.host_network:
        raise BadRequest("the container shares the node's network", field="container")
    live = sum(1 for n in rec.nics if n.state != "destroyed")
    if live >= MAX_NICS:  # (as a create takes at most)
        raise Conflict(f"container {rec.id} has {MAX_NICS} nics already", field="nic")
    if len(rec.nics) > 1024:  # (removed ones stay listed; nic-remove takes index ≤ 1024)
        raise Conflict(f"container {rec.id} has had 1025 nics: no more", field="nic")
    nic = args.nic.nic()
    index = len(rec.nics)
    rec.nics.append(nic)
    try:
        await netsetup.add_nic(ctx, rec, nic, index, st.names(rec.id)["veth"])
    except BaseException:
        # not listed: the record may have been saved meanwhile (the netns named on the
        # first nic of a container without one), and a nic that failed is not there
        rec.nics.remove(nic)
        st.save(rec)
        raise
    st.save(rec)
    return {"index": index, **nic.__dict__}


@dataclass(frozen=True)
class NicRemoveArgs(Schema):
    container: Annotated[int, Range(1, 65535)]
    index: Annotated[int, Range(0, 1024)]


@aliases("nic-remove", NicRemoveArgs)
async def nic_remove(ctx: Context, args: NicRemoveArgs) -> None:
    """Unplug nic ``index``; it stays listed with state ``destroyed`` (as in 0-core)."""
    st = Store(ctx.config.state_dir)
    rec = access.acting_record(ctx, args.container)
    if not 0 <= args.index < len(rec.nics):
        raise NotFound(f"container {rec.id} has no nic {args.index}")
    await netsetup.remove_nic(ctx, rec.nics[args.index], rec.netns)
    st.save(rec)


@dataclass(frozen=True)
class PortArgs(Schema):
    container: Annotated[int, Range(1, 65535)]
    host_port: Annotated[str, Doc("0-core forward source: port, ip:port, nic:port…"),
                         Len(1, 80)] | Annotated[int, Range(1, 65535)]
    container_port: Annotated[int, Range(1, 65535)]


@aliases("portforward-add", PortArgs)
async def portforward_add(ctx: Context, args: PortArgs) -> None:
    """Forward a host port to the container's default nic (owner ``container:<id>``)."""
    st = Store(ctx.config.state_dir)
    rec = access.acting_record(ctx, args.container)
    src = str(args.host_port)
    await netsetup.add_forwards(ctx, rec, {src: args.container_port})
    rec.ports[src] = args.container_port
    st.save(rec)


@aliases("portforward-remove", PortArgs)
async def portforward_remove(ctx: Context, args: PortArgs) -> None:
    """Remove a port forward of the container."""
    st = Store(ctx.config.state_dir)
    rec = access.acting_record(ctx, args.container)
    src = str(args.host_port)
    await netsetup.remove_forwards(ctx, rec, [src])
    rec.ports.pop(src, None)
    st.save(rec)


# ---------------------------------------------------------------- images


@dataclass(frozen=True)
class ImportArgs(Schema):
    name: _IMAGE
    source: Annotated[str, Doc("host path: a directory, a rootfs tarball, an OCI layout "
                               "(dir, or dir:ref) or a docker save / OCI archive"),
                      Len(1, 4096), _NO_NUL]


@command("container.image.import", ImportArgs)
async def image_import(ctx: Context, args: ImportArgs) -> dict[str, Any]:
    """Import an image into the store (unpacked once: layers through tarfile's data filter
    and OCI whiteouts; device nodes, absolute, '..' and escaping links refused). Returns its
    metadata; 409 when the name is taken."""
    path, ref = args.source, ""
    if ":" in path.rsplit("/", 1)[-1]:
        path, _, ref = path.rpartition(":")
    if args.name.startswith("/") and args.name != args.source:
        raise BadRequest("name: a name starting with '/' is the host path a create's root "
                         "imports itself; import under that name only from that path",
                         field="name")
    return await manager.import_path(ctx, args.name, path, ref, args.source, "source")


@dataclass(frozen=True)
class PullArgs(Schema):
    ref: Annotated[str, Doc("registry reference host[:port]/repo[:tag|@digest]"),
                   Pattern(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,255}")]
    name: _IMAGE | None = None
    tls_verify: Annotated[bool, Doc("false for a plain-http registry")] = True


@command("container.image.pull", PullArgs)
async def image_pull(ctx: Context, args: PullArgs) -> dict[str, Any]:
    """Pull an image from an OCI registry with skopeo (distribution API, token auth,
    digest-verified) and import it; its name defaults to ``ref``."""
    if args.name and args.name.startswith("/"):
        raise BadRequest("name: a name starting with '/' is the host path a create's root "
                         "imports itself", field="name")
    return await images_pull(ctx, args.ref, args.name or args.ref, args.tls_verify)


async def images_pull(ctx: Context, ref: str, name: str, tls_verify: bool) -> dict[str, Any]:
    sd = ctx.config.state_dir
    if images.image_dir(sd, name).exists():
        raise Conflict(f"image {name} exists already")
    tmp = tempfile.mkdtemp(prefix=".pull-", dir=images.images_dir(sd))
    try:
        await ctx.run(["skopeo", "copy", "--quiet", f"--src-tls-verify={str(tls_verify).lower()}",
                       "--", f"docker://{ref}", f"oci:{tmp}/layout:img"], timeout=600)
        return await manager.import_image(ctx, name, f"{tmp}/layout", "img", f"docker://{ref}")
    finally:
        await ctx.to_thread(shutil.rmtree, tmp, True)


@command("container.image.list", role=Role.READ_ONLY)
async def image_list(ctx: Context, args: NoArgs) -> list[dict[str, Any]]:
    """Stored images and their metadata."""
    return images.list_all(ctx.config.state_dir)


@dataclass(frozen=True)
class ImageNameArgs(Schema):
    name: _IMAGE


@command("container.image.inspect", ImageNameArgs, role=Role.READ_ONLY)
async def image_inspect(ctx: Context, args: ImageNameArgs) -> dict[str, Any]:
    """One stored image's metadata (kind, source, layers, env/cmd/workdir, size)."""
    return images.load(ctx.config.state_dir, args.name)


@command("container.image.delete", ImageNameArgs)
async def image_delete(ctx: Context, args: ImageNameArgs) -> None:
    """Delete a stored image; 409 while a container uses it."""
    for rec in Store(ctx.config.state_dir).all():
        if rec.image == args.name:
            raise Conflict(f"container {rec.id} uses image {args.name}")
    await manager.delete_image(ctx, args.name)


# ---------------------------------------------------------------- foreground (services)


@dataclass(frozen=True)
class RunArgs(Schema):
    root: Annotated[_IMAGE, Doc("a stored image's name, or a host path (as in corex.create)")]
    command: Annotated[list[Annotated[str, _NO_NUL, Len(0, 4096)]],
                       Doc("argv run by the container's init (PATH of the image)"), Len(1, 256)]
    name: Annotated[str, NAME, Doc("default: the job id (svc-<service id>)")] | None = None
    env: Annotated[dict[str, Annotated[str, _NO_NUL]], Len(0, 1024)] | None = None
    hostname: Annotated[str, Pattern(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}")] | None = None
    host_network: bool = False
    nics: Annotated[list[NicArgs], Doc("default when omitted: [{type: default}]"),
                    Len(0, 16)] | None = None
    port: Annotated[dict[str, Annotated[int, Range(1, 65535)]], Len(0, 256)] | None = None
    mount: Annotated[dict[str, Annotated[str, _NO_NUL, Len(1, 4096)]], Len(0, 64)] | None = None
    limits: LimitArgs | None = None
    privileged: Annotated[bool, Doc("needs the admin role")] = False
    tags: list[Annotated[str, Len(1, 128)]] | None = None
    userns: Annotated[bool, Doc("a user namespace of its own (as in corex.create)")] = False


@command("container.run", RunArgs, role=Role.ADMIN)
async def run(ctx: Context, args: RunArgs) -> Any:
    """Run a container in the foreground as this job's process: the runtime's ``run`` of a
    fresh clone, the init running ``command``; its output is the job's, its exit status the
    command's. Made for boot services (``[startup.<id>] container = {…}``): supervised,
    restarted and drift-checked like any service; the container is listed by corex.list
    (``service`` set) and torn down when the run ends (or, after a dispatcher restart, when
    the next run starts). It runs a program of the caller's choice, so it needs the admin
    role, as ``core.system`` and ``bash`` do (also through corex.dispatch)."""
    return await in_foreground(
        ctx, args, args.name or re.sub(r"[^A-Za-z0-9_.-]", "-", ctx.job.id)[:128],
        list(args.tags or ctx.tags), list(args.command))


async def in_foreground(ctx: Context, args: CreateArgs | RunArgs, name: str, tags: list[str],
                        command: list[str]) -> ProcessSpec:
    """A container this job runs (container.run, corex.create-sync): the runtime's ``run``
    of it is the job's process, and it is torn down when that ends (core0/sandbox/
    foreground.py); ``command`` is what its init runs (empty: the init pauses)."""
    nic_list, ports = checked(ctx, args)
    job_id = ctx.job.id
    await foreground.settle(ctx, job_id)
    lim = args.limits or LimitArgs()
    req = manager.CreateRequest(
        root=args.root, mounts=dict(args.mount or {}), host_network=args.host_network,
        nics=[] if args.host_network else nic_list, ports=ports,
        hostname=args.hostname or "", privileged=args.privileged, name=name,
        env=dict(args.env or {}), tags=tags,
        limits=spec.Limits(lim.memory, lim.cpu_shares, lim.cpu_quota, lim.cpu_period,
                           lim.pids),
        arguments=dict(ctx.job.cmd.arguments), command=command, service=job_id,
        userns=args.userns)
    rec, process_spec = await manager.prepare_foreground(ctx, req)
    foreground.watch(ctx, rec)
    if not command:  # corex.create-sync: 0-core's /.startup.toml, once its init runs
        startup.after_start(ctx.engine, ctx.config, ctx.job, rec.id)
    return process_spec
