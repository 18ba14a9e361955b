"""The ZFS backend over the ``zpool``/``zfs`` CLI, for OpenZFS and for zfs-fuse.

OpenZFS prints exact numbers with ``-H -p``. zfs-fuse (pool version 23) has no ``-p`` on
``zpool list``/``zfs list`` (sizes are read with ``zfs get -H -p`` instead; pool sizes stay the
tool's rounded figures), no zvols (412 before the tool is run: its ``zfs create -V`` aborts),
no ``zfs holds`` listing (it needs pyzfs; the hold count ``userrefs`` is given instead), and
answers "dataset is busy" to the first destroy/rename of a mounted dataset: such datasets are
unmounted first and the command retried briefly.

Every name was checked against ``core0.storage.names`` by the command's schema; ``--`` comes
before user values wherever the subcommand parses options (zfs-fuse's ``zfs set`` does not,
so there the checked ``property=value`` and dataset name come without it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import select
from collections.abc import Callable
from typing import Any

from core0 import cancel
from core0.context import Context
from core0.errors import BadRequest, CommandError, Conflict, NotFound, PreconditionFailed
from core0.proc.process import RunResult
from core0.storage import blockdev, parse, tools, whole, zfsconf, zfsfuse
from core0.storage.names import PROP_RE

log = logging.getLogger(__name__)
ZFS_FUSE = "zfs-fuse"
#: seconds a dataset unmounted by a command that failed or was killed is retried to be
#: mounted again while zfs-fuse answers "busy"
REMOUNT_BUSY = 10.0

RULES: list[tools.Rule] = [
    (r"not currently mounted|no such tag|no pools available", NotFound),
    (r"has children|use '-r'|use '-R'|dependent clones|snapshot is cloned|more recent",
     Conflict),
    (r"tag already exists|already exists|destination has snapshots|must destroy them|"
     r"destination .* exists|directory is not empty", Conflict),
    *tools.RULES,
]

DS_FIELDS = ["name", "type", "used", "available", "referenced", "mountpoint", "origin",
             "mounted", "creation"]
POOL_FIELDS = ["name", "size", "allocated", "free", "capacity", "health", "guid", "version",
               "altroot"]
_NUMERIC = {"used", "available", "referenced", "creation"}


def check_props(props: dict[str, str], field: str = "arguments.properties") -> list[str]:
    """``{k: v}`` → ``["k=v", ...]`` after checking every name."""
    out = []
    for k, v in props.items():
        if not re.fullmatch(PROP_RE, k):
            raise BadRequest(f"{field}.{k}: not a valid property name", field=f"{field}.{k}")
        out.append(f"{k}={v}")
    return out


def _ds_row(raw: dict[str, str]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for k in DS_FIELDS:
        v = raw.get(k, "-")
        if k in _NUMERIC:
            row[k] = parse.parse_int(v) if v.isdigit() else parse.parse_size(v)
        elif k == "mounted":
            row[k] = {"yes": True, "no": False}.get(v)
        else:
            row[k] = None if v in ("-", "") else v
    return row


#: property values pool version 23 (zfs-fuse) does not have
_FUSE_MISSING = {("compression", "lz4"): "lz4 compression", ("checksum", "edonr"): "edonr",
                 ("checksum", "skein"): "skein", ("checksum", "sha512"): "sha512"}


class CliBackend:
    """ZFS through its command-line tools (both flavors)."""

    def __init__(self, ctx: Context, flavor: str):
        self.ctx = ctx
        self.flavor = flavor

    @property
    def fuse(self) -> bool:
        return self.flavor == ZFS_FUSE

    def check_feature_props(self, props: dict[str, str]) -> None:
        """412 for a property value this ZFS lacks (said plainly, before the tool runs)."""
        if not self.fuse:
            return
        for k, v in props.items():
            what = _FUSE_MISSING.get((k, v)) or (
                "zstd compression" if k == "compression" and v.startswith("zstd") else None)
            if what:
                raise PreconditionFailed(f"{k}={v}: zfs-fuse (pool version 23) has no {what}")

    async def zfs(self, *argv: str, stdin: bytes | int | None = None) -> RunResult:
        res = await tools.run(self.ctx, ["zfs", *argv], stdin=stdin, rules=RULES)
        await whole.hold_async(["zfs", *argv])
        return res

    async def zpool(self, *argv: str) -> RunResult:
        res = await tools.run(self.ctx, ["zpool", *argv], rules=RULES)
        await whole.hold_async(["zpool", *argv])
        return res

    async def busy_retry(self, argv: list[str]) -> RunResult:
        if self.fuse:
            return await tools.retry_busy(self.ctx, argv, rules=RULES, done=whole.hold_async)
        return await tools.run(self.ctx, argv, rules=RULES)

    # ------------------------------------------------------------ pools

    async def pool_create(self, name: str, vdevs: list[str], mountpoint: str | None,
                          props: dict[str, str], fs_props: dict[str, str],
                          force: bool) -> None:
        argv = ["create"]
        if force:
            argv.append("-f")
        if mountpoint:
            argv += ["-m", mountpoint]
        for kv in check_props(props):
            argv += ["-o", kv]
        for kv in check_props(fs_props, "arguments.fs_properties"):
            argv += ["-O", kv]
        await self.zpool(*argv, "--", name, *vdevs)

    async def pool_list(self, name: str | None = None) -> list[dict[str, Any]]:
        fields = POOL_FIELDS
        argv = ["list", "-H"] + ([] if self.fuse else ["-p"]) + ["-o", ",".join(fields)]
        res = await self.zpool(*argv, *(["--", name] if name else []))
        rows = parse.parse_tsv(res.stdout, fields)
        out: list[dict[str, Any]] = []
        for r in rows:
            out.append({
                "name": r["name"],
                "size": parse.parse_size(r["size"]),
                "allocated": parse.parse_size(r["allocated"]),
                "free": parse.parse_size(r["free"]),
                "capacity": parse.parse_int(r["capacity"].rstrip("%")),
                "health": r["health"],
                "guid": r["guid"],
                "version": parse.parse_int(r["version"]),
                "altroot": None if r["altroot"] in ("-", "") else r["altroot"],
                "sizes_exact": not self.fuse,
            })
        if out:
            got = await self.get_many([p["name"] for p in out], ["used", "available"])
            for p in out:
                props = got.get(p["name"], {})
                p["used"] = parse.parse_int(props.get("used", {}).get("value"))
                p["available"] = parse.parse_int(props.get("available", {}).get("value"))
        return out

    async def pool_status(self, name: str | None = None) -> list[dict[str, Any]]:
        res = await self.zpool("status", *(["--", name] if name else []))
        return parse.parse_zpool_status(res.stdout)

    async def pool_importable(self, dirs: list[str]) -> list[dict[str, Any]]:
        argv = ["zpool", "import"]
        for d in dirs:
            argv += ["-d", d]
        res = await tools.run(self.ctx, argv, check=False, rules=RULES)
        if res.status != 0 and "no pools available" not in res.stderr + res.stdout \
                and res.stderr.strip():
            raise tools.tool_error(res, RULES)
        return parse.parse_zpool_status(res.stdout)

    async def pool_import(self, name: str, dirs: list[str], force: bool,
                          new_name: str | None, props: dict[str, str]) -> None:
        argv = ["import"] + (["-f"] if force else [])
        for d in dirs:
            argv += ["-d", d]
        for kv in check_props(props):
            argv += ["-o", kv]
        await self.zpool(*argv, "--", name, *([new_name] if new_name else []))

    async def _unmount_pool(self, name: str, force: bool) -> list[str]:
        """zfs-fuse: unmount a pool's datasets first (its export/destroy of freshly mounted
        datasets answers "busy"); 409 for one that is really busy, unless ``force``."""
        if not self.fuse:
            return []
        return await self._unmount_all(await self._mounted_under(name, True), force)

    async def pool_export(self, name: str, force: bool,
                          first: Callable[[], None] | None = None) -> None:
        """Export pool ``name``; ``first`` is called right before the export itself (after
        the datasets were unmounted)."""
        done = await self._unmount_pool(name, force)
        try:
            if first is not None:
                first()
            await self.busy_retry(["zpool", "export", *(["-f"] if force else []), "--", name])
        except BaseException:  # a kill too: what was unmounted is mounted again
            await whole.undo(self._remount(done), "the unmount")
            raise

    async def pool_destroy(self, name: str, force: bool,
                           first: Callable[[], None] | None = None) -> None:
        """Destroy pool ``name``; ``first`` as for :meth:`pool_export`."""
        done = await self._unmount_pool(name, force)
        try:
            if first is not None:
                first()
            await self.busy_retry(["zpool", "destroy", *(["-f"] if force else []), "--",
                                   name])
        except BaseException:  # a kill too: what was unmounted is mounted again
            await whole.undo(self._remount(done), "the unmount")
            raise

    # ------------------------------------------------------------ datasets

    async def exists(self, name: str) -> bool:
        res = await tools.run(self.ctx, ["zfs", "list", "-H", "-o", "name", "-t", "all", "--",
                                         name], check=False)
        return res.status == 0

    async def create(self, name: str, kind: str, volsize: str | None, props: dict[str, str],
                     parents: bool, sparse: bool) -> None:
        argv = ["create"] + (["-p"] if parents else [])
        self.check_feature_props(props)
        for kv in check_props(props):
            argv += ["-o", kv]
        if kind == "volume":
            if self.fuse:
                raise PreconditionFailed("volumes (zvols) are not supported by zfs-fuse: "
                                         "it has no /dev/zvol and its zfs create -V aborts")
            if not volsize:
                raise BadRequest("arguments.volsize: required for a volume",
                                 field="arguments.volsize")
            argv += (["-s"] if sparse else []) + ["-V", volsize]
        existed = await self.exists(name)
        try:
            await self.zfs(*argv, "--", name)
        except Exception:
            # "created, but not mounted": a failed command leaves nothing behind
            if not existed and await self.exists(name):
                await tools.run(self.ctx, ["zfs", "destroy", "--", name], check=False)
            raise

    async def list_datasets(self, name: str | None, types: list[str], recursive: bool,
                            depth: int | None) -> list[dict[str, Any]]:
        opts = ["-H"] + (["-r"] if recursive else []) + (
            ["-d", str(depth)] if depth is not None else []) + ["-t", ",".join(types)]
        target = ["--", name] if name else []
        if not self.fuse:
            res = await self.zfs("list", "-p", *opts, "-o", ",".join(DS_FIELDS), *target)
            return [_ds_row(r) for r in parse.parse_tsv(res.stdout, DS_FIELDS)]
        res = await self.zfs("list", *opts, "-o", "name,type", *target)
        names = [r["name"] for r in parse.parse_tsv(res.stdout, ["name", "type"])]
        got = await self.get_many(names, DS_FIELDS[2:])
        out = []
        for n, kind in [(r["name"], r["type"])
                        for r in parse.parse_tsv(res.stdout, ["name", "type"])]:
            raw = {"name": n, "type": kind}
            raw.update({k: v["value"] for k, v in got.get(n, {}).items()})
            out.append(_ds_row(raw))
        return out

    async def get_many(self, names: list[str], props: list[str]
                       ) -> dict[str, dict[str, dict[str, str]]]:
        out: dict[str, dict[str, dict[str, str]]] = {}
        for i in range(0, len(names), 256):
            res = await self.zfs("get", "-H", "-p", "-o", "name,property,value,source",
                                 ",".join(props), "--", *names[i:i + 256])
            out.update(parse.parse_zfs_get(res.stdout))
        return out

    async def get_props(self, name: str, props: list[str]) -> dict[str, dict[str, str]]:
        for p in props:
            if p != "all" and not re.fullmatch(PROP_RE, p):
                raise BadRequest(f"arguments.properties: not a property name: {p}",
                                 field="arguments.properties")
        got = await self.get_many([name], props or ["all"])
        if name not in got:
            raise NotFound(f"dataset does not exist: {name}")
        return got[name]

    async def set_props(self, name: str, props: dict[str, str]) -> None:
        kvs = check_props(props)
        self.check_feature_props(props)
        if self.fuse:  # one property per call, and no "--" (its set parses no options)
            for kv in kvs:
                await self.zfs("set", kv, name)
        else:
            await self.zfs("set", *kvs, name)

    async def _mounted_under(self, name: str, recursive: bool,
                             clones: bool = False) -> list[str]:
        """Mounted filesystems at (with ``recursive``, under) ``name`` and, with ``clones``,
        the clones of their snapshots and what is under those, deepest first."""
        pool = name.split("/")[0]
        res = await self.zfs("list", "-H", "-o", "name,origin,mounted", "-t", "filesystem",
                             "-r", "--", pool if clones else name)
        rows = parse.parse_tsv(res.stdout, ["name", "origin", "mounted"])

        def under(n: str, roots: set[str]) -> bool:
            return any(n == r or (recursive and n.startswith(r + "/")) for r in roots)
        hit = {name}
        grow = True
        while clones and grow:
            grow = False
            for r in rows:
                origin = r["origin"].split("@")[0] if r["origin"] not in ("", "-") else ""
                if r["name"] not in hit and origin and under(origin, hit):
                    hit.add(r["name"])
                    grow = True
        names = [r["name"] for r in rows if r["mounted"] == "yes" and under(r["name"], hit)]
        return sorted(names, key=lambda n: n.count("/"), reverse=True)

    async def refuse_busy(self, names: list[str], force: bool) -> None:
        """409 when a process uses one of these datasets' mounts (cwd, open file...), unless
        ``force``: checked before anything is unmounted, so a refusal changes nothing."""
        if force or not names:
            return
        want = set(names)
        mps = [m.mountpoint for m in blockdev.mounts()
               if m.source in want and m.fstype in ("zfs", "fuse.zfs")]
        users = await self.ctx.to_thread(blockdev.users_of, mps) if mps else []
        if users:
            raise Conflict(f"{', '.join(sorted(want))} in use: {'; '.join(users)} "
                           "(use force)")

    async def _unmount_all(self, names: list[str], force: bool) -> list[str]:
        """Unmount ``names`` (deepest first); on a failure remount what was done, re-raise."""
        await self.refuse_busy(names, force)
        done: list[str] = []
        try:
            for n in names:
                # to its end: a killed CLI's unmount is done by the daemon all the same
                await whole.step(self.unmount(n, force, checked=True))
                done.append(n)
        except BaseException:  # a kill too: what was unmounted is mounted again
            await whole.undo(self._remount(done), "the unmount")
            raise
        return done

    async def unmount(self, name: str, force: bool, checked: bool = False) -> None:
        if not checked:
            await self.refuse_busy([name], force)
        res = await tools.run(self.ctx, ["zfs", "unmount", "--", name], check=False,
                              rules=RULES)
        await whole.hold_async(["zfs", "unmount"])
        if res.status != 0 and "busy" in res.stderr:
            if not force:
                raise Conflict(f"{name} is busy (open files or a process inside it); "
                               "use force")
            res = await tools.run(self.ctx, ["zfs", "unmount", "-f", "--", name],
                                  check=False, rules=RULES)
        if res.status != 0:
            raise tools.tool_error(res, RULES)

    async def mount(self, name: str, overlay: bool) -> None:
        if overlay and self.fuse:
            raise PreconditionFailed("overlay mounts (-O) are not supported by zfs-fuse (its "
                                     "daemon dies on them)")
        await self.zfs("mount", *(["-O"] if overlay else []), "--", name)

    async def _remount(self, names: list[str]) -> None:
        """Mount again what a command unmounted (its undoing, or a rename's move), and give
        the mounts back their nosuid,nodev: zfs-fuse does not apply setuid=off/devices=off
        itself (before, a killed or refused destroy/export of a lower role's datasets left
        them mounted without)."""
        for n in sorted(names, key=lambda n: n.count("/")):
            try:
                # zfs-fuse answers "busy" to a mount right after the unmount (a killed
                # export's datasets were left unmounted)
                await tools.retry_busy(self.ctx, ["zfs", "mount", "--", n], budget=REMOUNT_BUSY,
                                       rules=RULES)
            except CommandError as e:
                log.warning("could not mount %s again: %s", n, e)
        if names:
            await zfsfuse.harden_all(self.ctx, names)
            await zfsconf.verify(self.ctx, names)

    async def destroy(self, name: str, recursive: bool, recursive_clones: bool, defer: bool,
                      force: bool) -> None:
        snap = "@" in name
        if defer and not snap:
            raise BadRequest("defer applies to snapshots only")
        deps: list[str] = []
        if snap:
            res = await tools.run(self.ctx, ["zfs", "get", "-H", "-p", "-o", "value",
                                             "userrefs", "--", name], check=False)
            if res.status != 0:
                raise NotFound(f"snapshot does not exist: {name}")
            refs = parse.parse_int(res.stdout.strip())
            if refs and not defer:
                raise Conflict(f"{name} has {refs} hold(s); release them or use defer")
        else:
            res = await tools.run(self.ctx, ["zfs", "list", "-H", "-o", "name", "-t", "all",
                                             "-r", "-d", "1", "--", name],
                                  check=False, rules=RULES)
            if res.status != 0:
                raise tools.tool_error(res, RULES)
            deps = [n for n in res.stdout.splitlines() if n and n != name]
        if deps and not (recursive or recursive_clones):
            raise Conflict(f"{name} has children or snapshots ({', '.join(deps[:5])}"
                           f"{'...' if len(deps) > 5 else ''}); use recursive")
        unmounted: list[str] = []
        if not snap and self.fuse:
            unmounted = await self._unmount_all(
                await self._mounted_under(name, recursive or recursive_clones,
                                          recursive_clones), force)
        elif not snap:
            await self.refuse_busy(await self._mounted_under(
                name, recursive or recursive_clones, recursive_clones), force)
        argv = ["zfs", "destroy", *(["-r"] if recursive else []),
                *(["-R"] if recursive_clones else []), *(["-d"] if defer else []),
                *(["-f"] if force and not snap else []), "--", name]
        try:
            if snap:
                await tools.run(self.ctx, argv, rules=RULES)
            else:
                await self.busy_retry(argv)
        except BaseException:  # a kill too: what was unmounted is mounted again
            await whole.undo(self._remount(unmounted), "the unmount")
            raise

    async def rename(self, name: str, new_name: str, recursive: bool, parents: bool) -> None:
        if ("@" in name) != ("@" in new_name):
            raise BadRequest("a snapshot is renamed to a snapshot, a dataset to a dataset")
        if recursive and "@" not in name:
            raise BadRequest("recursive renames snapshots (pool/fs@a → pool/fs@b) only")
        argv = ["zfs", "rename", *(["-r"] if recursive else []),
                *(["-p"] if parents else []), "--", name, new_name]
        unmounted: list[str] = []
        if self.fuse and "@" not in name:
            # zfs-fuse keeps a renamed dataset "busy" for seconds while a clone of one of its
            # snapshots is mounted: unmount the tree and those clones, remount them after
            unmounted = await self._unmount_all(
                await self._mounted_under(name, True, clones=True), False)
        try:
            await self.busy_retry(argv)
        except BaseException:  # a kill too: what was unmounted is mounted again
            await whole.undo(self._remount(unmounted), "the unmount")
            raise
        moved = [new_name + n[len(name):] if n == name or n.startswith(name + "/") else n
                 for n in unmounted]
        await whole.step(self._remount(moved))

    async def snapshot(self, name: str, snapname: str, recursive: bool,
                       props: dict[str, str]) -> str:
        full = f"{name}@{snapname}"
        argv = ["snapshot"] + (["-r"] if recursive else [])
        for kv in check_props(props):
            argv += ["-o", kv]
        await self.zfs(*argv, "--", full)
        return full

    async def clone(self, origin: str, name: str, props: dict[str, str],
                    parents: bool) -> None:
        argv = ["clone"] + (["-p"] if parents else [])
        self.check_feature_props(props)
        for kv in check_props(props):
            argv += ["-o", kv]
        await self.zfs(*argv, "--", origin, name)

    async def rollback(self, snapshot: str, destroy_recent: bool, destroy_clones: bool,
                       force: bool) -> None:
        argv = ["rollback", *(["-r"] if destroy_recent else []),
                *(["-R"] if destroy_clones else []), *(["-f"] if force else [])]
        await self.zfs(*argv, "--", snapshot)

    async def hold(self, snapshot: str, tag: str, recursive: bool) -> None:
        await self.zfs("hold", *(["-r"] if recursive else []), "--", tag, snapshot)

    async def release(self, snapshot: str, tag: str, recursive: bool) -> None:
        await self.zfs("release", *(["-r"] if recursive else []), "--", tag, snapshot)

    async def holds(self, snapshot: str, recursive: bool) -> dict[str, Any]:
        got = await self.get_props(snapshot, ["userrefs"])
        refs = parse.parse_int(got.get("userrefs", {}).get("value"))
        if self.fuse:
            return {"name": snapshot, "userrefs": refs, "holds": None,
                    "unsupported": "zfs-fuse cannot list hold tags (its `zfs holds` needs "
                                   "pyzfs); userrefs is the number of holds"}
        res = await self.zfs("holds", "-H", "-p", *(["-r"] if recursive else []), "--",
                             snapshot)
        return {"name": snapshot, "userrefs": refs, "holds": parse.parse_zfs_holds(res.stdout)}

    async def send(self, snapshot: str, fd: int, base: str | None, intermediary: bool,
                   replicate: bool, props: bool,
                   progress: Callable[[], None] | None) -> None:
        argv = ["zfs", "send", *(["-R"] if replicate else []), *(["-p"] if props else [])]
        if base:
            argv += ["-I" if intermediary else "-i", base]
        res = await tools.run_fds([*argv, "--", snapshot], stdin=None, stdout=fd,
                                  progress=progress)
        if res.status != 0:
            raise tools.tool_error(res, RULES)

    async def receive(self, name: str, fd: int, force: bool,
                      progress: Callable[[], None] | None, mount: bool = True) -> None:
        argv = ["zfs", "receive", *(["-F"] if force else []), *([] if mount else ["-u"]),
                "--", name]
        # the stream goes through a pipe core0 feeds: zfs-fuse's CLI hands its stdin to the
        # daemon, which went on reading a file to its end after the CLI was killed (a killed
        # receive still made the dataset). A pipe closed early ends the daemon's receive.
        r, w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(w, False)
        closed: list[int] = []
        try:
            tool = asyncio.ensure_future(tools.run_fds(argv, stdin=r, stdout=None,
                                                       progress=progress))
            pump = asyncio.ensure_future(self.ctx.long_work(_pump, fd, w, closed, wait=True))
            try:
                await asyncio.wait({tool, pump}, return_when=asyncio.FIRST_COMPLETED)
                if tool.done() and not pump.done():  # it failed early: stop feeding it
                    pump.cancel()
                await asyncio.wait({tool, pump})
            except asyncio.CancelledError:
                # the pump stops, the pipe closes: the daemon reads a cut stream and gives the
                # receive up; the CLI ends with it (killed if not within RECEIVE_STOP)
                pump.cancel()
                await whole.undo(_ended(pump, tool, RECEIVE_STOP), "the receive")
                raise
            res = tool.result()
            if res.status == 0 and not pump.cancelled() and pump.exception() is not None:
                raise pump.exception()  # type: ignore[misc]
        finally:
            os.close(r)
            if not closed:
                os.close(w)
        if res.status != 0:
            raise tools.tool_error(res, RULES)


#: seconds a killed receive waits for the zfs CLI to end once its stream is cut
RECEIVE_STOP = 30.0


async def _ended(pump: asyncio.Future[None], tool: asyncio.Future[RunResult],
                 grace: float) -> None:
    """Wait for the pump, then up to ``grace`` seconds for the tool; then kill it."""
    await asyncio.wait({pump})
    await asyncio.wait({tool}, timeout=grace)
    if not tool.done():
        tool.cancel()
        await asyncio.wait({tool})
    for f in (pump, tool):
        if f.done() and not f.cancelled():
            f.exception()  # retrieved: no "never retrieved" warning


def _pump(src: int, dst: int, closed: list[int]) -> None:
    """Copy the stream file ``src`` into the non-blocking pipe ``dst`` (a worker thread),
    then close ``dst`` (noted in ``closed``); a cancelled job stops it within 0.2 s."""
    try:
        while True:
            cancel.check()
            chunk = os.read(src, 1 << 20)
            if not chunk:
                return
            view = memoryview(chunk)
            while view:
                cancel.check()
                if not select.select([], [dst], [], 0.2)[1]:
                    continue
                try:
                    view = view[os.write(dst, view):]
                except BlockingIOError:
                    continue
    finally:
        os.close(dst)
        closed.append(dst)
