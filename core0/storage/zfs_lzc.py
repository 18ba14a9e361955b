"""The ZFS backend through ``libzfs_core`` (pyzfs), for nodes with the OpenZFS kernel module.

Used when ``/dev/zfs`` exists and ``import libzfs_core`` works. libzfs_core is the kernel's
stable ioctl interface: it has exists/create/clone/snapshot/destroy-snapshots/rollback/holds,
but no listing, no properties read-back, no mounting and no pools. So this backend does those
few calls through it (in a thread: they block) when no property or recursion is asked, and
everything else through the CLI backend it extends; after a create or clone it mounts the new
filesystem with ``zfs mount``, which libzfs_core does not do. It is unit-tested against a
narrow fake module only (no /dev/zfs on the test machines).
"""

from __future__ import annotations

import errno
from typing import Any

from core0.context import Context
from core0.errors import (
    BadRequest,
    CommandError,
    Conflict,
    Internal,
    NotFound,
    PreconditionFailed,
)
from core0.storage import tools
from core0.storage.zfs_cli import CliBackend

_ERRNO: dict[int, type[CommandError]] = {
    errno.ENOENT: NotFound,
    errno.ESRCH: NotFound,
    errno.EEXIST: Conflict,
    errno.EBUSY: Conflict,
    errno.ENOTEMPTY: Conflict,
    errno.EINVAL: BadRequest,
    errno.ENAMETOOLONG: BadRequest,
    errno.EXDEV: BadRequest,
    errno.ENOTSUP: PreconditionFailed,
}


def lzc_error(e: BaseException, what: str) -> CommandError:
    """A libzfs_core exception (ZFSError and its kinds carry ``errno``) → typed error."""
    errs = getattr(e, "errors", None)
    first = errs[0] if errs else e
    code = getattr(first, "errno", None)
    cls = _ERRNO.get(code, Internal) if isinstance(code, int) else Internal
    return cls(f"{what}: {type(first).__name__}: {first}")


class LzcBackend(CliBackend):
    """libzfs_core where it has the call, the CLI for the rest."""

    def __init__(self, ctx: Context, flavor: str, lzc: Any):
        super().__init__(ctx, flavor)
        self.lzc = lzc

    async def _call(self, what: str, fn: str, *args: Any) -> Any:
        func = getattr(self.lzc, fn)
        try:
            return await self.ctx.to_thread(func, *args)
        except Exception as e:  # pyzfs raises ZFSError subclasses
            raise lzc_error(e, what) from None

    async def _mount(self, name: str) -> None:
        # libzfs_core does not mount; canmount=off or mountpoint=none make this a no-op
        await tools.run(self.ctx, ["zfs", "mount", "--", name], check=False)

    async def exists(self, name: str) -> bool:
        return bool(await self._call(name, "lzc_exists", name.encode()))

    async def create(self, name: str, kind: str, volsize: str | None, props: dict[str, str],
                     parents: bool, sparse: bool) -> None:
        if kind != "filesystem" or props or parents:
            return await super().create(name, kind, volsize, props, parents, sparse)
        await self._call(name, "lzc_create", name.encode(), "zfs")
        await self._mount(name)

    async def snapshot(self, name: str, snapname: str, recursive: bool,
                       props: dict[str, str]) -> str:
        if recursive or props:
            return await super().snapshot(name, snapname, recursive, props)
        full = f"{name}@{snapname}"
        await self._call(full, "lzc_snapshot", [full.encode()])
        return full

    async def clone(self, origin: str, name: str, props: dict[str, str],
                    parents: bool) -> None:
        if props or parents:
            return await super().clone(origin, name, props, parents)
        await self._call(name, "lzc_clone", name.encode(), origin.encode())
        await self._mount(name)

    async def destroy(self, name: str, recursive: bool, recursive_clones: bool, defer: bool,
                      force: bool) -> None:
        if "@" not in name or recursive or recursive_clones:
            return await super().destroy(name, recursive, recursive_clones, defer, force)
        if not await self.exists(name):
            raise NotFound(f"snapshot does not exist: {name}")
        await self._call(name, "lzc_destroy_snaps", [name.encode()], defer)

    async def rollback(self, snapshot: str, destroy_recent: bool, destroy_clones: bool,
                       force: bool) -> None:
        if destroy_recent or destroy_clones or force or not hasattr(self.lzc,
                                                                    "lzc_rollback_to"):
            return await super().rollback(snapshot, destroy_recent, destroy_clones, force)
        fs = snapshot.partition("@")[0]
        await self._call(snapshot, "lzc_rollback_to", fs.encode(), snapshot.encode())

    async def hold(self, snapshot: str, tag: str, recursive: bool) -> None:
        if recursive:
            return await super().hold(snapshot, tag, recursive)
        await self._call(snapshot, "lzc_hold", {snapshot.encode(): tag.encode()})

    async def release(self, snapshot: str, tag: str, recursive: bool) -> None:
        if recursive:
            return await super().release(snapshot, tag, recursive)
        await self._call(snapshot, "lzc_release", {snapshot.encode(): [tag.encode()]})

    async def holds(self, snapshot: str, recursive: bool) -> dict[str, Any]:
        if recursive:
            return await super().holds(snapshot, recursive)
        got = await self._call(snapshot, "lzc_get_holds", snapshot.encode())
        holds = [{"name": snapshot, "tag": t.decode() if isinstance(t, bytes) else str(t),
                  "timestamp": ts} for t, ts in sorted(got.items())]
        return {"name": snapshot, "userrefs": len(holds), "holds": holds}
