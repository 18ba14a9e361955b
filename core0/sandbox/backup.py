"""``corex.backup`` / ``corex.restore``: a container's root, and how it was created, to a
restic repository and back (0-core's commands, with restic as 0-core used it).

A repository is named as 0-core's clients name it: a URL whose ``password`` query parameter is
the repository's password and whose fragment is a snapshot (restore only):
``file:///srv/backups/repo?password=…`` (or a bare absolute path, or restic's
``local:/path``), ``rest:http(s)://[user:pass@]host/…`` (restic's REST server: its
credentials are in the URL), or — admin only — restic's backends that act with the node's own
identity: ``sftp:`` (ssh with root's keys and ``~/.ssh/config``), ``rclone:`` (root's rclone
config), ``s3:``, ``b2:``, ``azure:``, ``gs:``, ``swift:`` (credentials from the node's
environment, the variables those backends read). Any other form is refused (restic would
take it for a path relative to the dispatcher's directory). A local repository is resolved
inside ``main.filesystem_root`` for queues below admin (anywhere for admin), made when
missing, and handed to restic as the directory's descriptor (``/proc/self/fd/N``), never as
the path again. The password reaches restic on its stdin, never in its argv or environment.

Backup: the container is paused (the runtime's ``pause``: its cgroup frozen) while restic
reads its root clone (the host's view: ``/proc``, ``/sys`` and ``/dev`` excluded) and a
metadata file beside it (``.corex.meta``: the create arguments and the container's user
namespace base), then resumed; the repository is initialised first when it has no config.
Returns the snapshot id; a dispatcher killed meanwhile leaves a mark, and the next one
resumes the container at its start (:func:`thaw_left`). Restore: the snapshot is restored
into the state dir, the root's owners shifted back out of a user namespace's range, stored
as image ``restic-<snapshot id>`` (reused when present), and a container created from it
with the backed-up arguments (``corex.restore``'s tags instead of the old ones, as in
0-core).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import shutil
import signal
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from core0 import cancel
from core0.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PreconditionFailed,
    ToolError,
)
from core0.fspath import Root, oserror
from core0.proc import process
from core0.registry import Role
from core0.sandbox import images, manager, runtime, userns, volumes
from core0.sandbox.store import Record, Store

if TYPE_CHECKING:
    from core0.context import Context

log = logging.getLogger(__name__)

META = ".corex.meta"
#: in a container's dir while a backup holds it frozen
PAUSED = "backup-paused"
#: restic's snapshot ids (short or full) and its "latest"
_SNAPSHOT = re.compile(r"[0-9a-f]{8,64}|latest")
#: a backup or restore of a large root takes its time
TIMEOUT = 6 * 3600.0
#: restic's remote backends a queue below admin may name: the REST server's URL carries its
#: own credentials
OPEN_BACKENDS = frozenset({"rest"})
#: the ones that act as the node (ssh with root's keys, rclone with root's config, the
#: node's cloud credentials): admin only
ADMIN_BACKENDS = frozenset({"sftp", "rclone", "s3", "b2", "azure", "gs", "swift"})
#: the node's environment variables restic's cloud backends read (passed to restic for those
#: backends only)
CLOUD_ENV = ("AWS_", "B2_", "AZURE_", "GOOGLE_", "OS_", "ST_", "RCLONE_")


@dataclass
class Repo:
    """A restic repository as a URL names it (see the module's docstring)."""

    spec: str  #: restic's ``-r``
    password: bytes
    snapshot: str  #: the URL's fragment ("" when none)
    fd: int = -1  #: a local repository's directory (``spec`` is its /proc/self/fd path)
    #: the node's credentials of a cloud backend (from its environment: :data:`CLOUD_ENV`)
    env: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def parse(ctx: Context, url: str, *, create: bool) -> Repo:
    """The repository ``url`` names; a local one resolved (and with ``create`` made) inside
    the queue's root. 400 without a password or for a form restic would take for a relative
    path; 403 for a backend that acts as the node, below admin."""
    base, _, fragment = url.partition("#")
    head, _, query = base.partition("?")
    pw = parse_qs(query).get("password", [""])[0]
    if not pw:
        raise BadRequest("url: the repository's password is missing (…?password=…)",
                         field="url")
    if "\n" in pw or "\0" in pw:
        raise BadRequest("url: the password may not hold a newline", field="url")
    snapshot = unquote(fragment)
    if snapshot and not _SNAPSHOT.fullmatch(snapshot):
        raise BadRequest(f"url: {snapshot!r} is no snapshot id", field="url")
    if head.startswith(("file://", "/", "local:")):
        path = (unquote(urlsplit(head).path) if head.startswith("file://")
                else head.removeprefix("local:"))
        fd = _local(ctx, path, create)
        return Repo(f"/proc/self/fd/{fd}", pw.encode(), snapshot, fd)
    backend = head.partition(":")[0]
    if backend not in OPEN_BACKENDS | ADMIN_BACKENDS:
        raise BadRequest("url: not a restic repository (file:///path, local:/path, "
                         "rest:http(s)://…; for admin also sftp:, rclone:, s3:, b2:, azure:, "
                         "gs:, swift:)", field="url")
    if backend in ADMIN_BACKENDS and ctx.job.role < Role.ADMIN:
        raise Forbidden(f"url: restic's {backend} backend acts with the node's own "
                        "credentials: it needs the admin role")
    if backend == "rest" and not head.startswith(("rest:http://", "rest:https://")):
        raise BadRequest("url: a REST repository is rest:http(s)://…", field="url")
    if backend == "sftp" and any(part.startswith("-") for part in
                                 re.split(r"[:@/]+", head[len("sftp:"):]) if part):
        raise BadRequest("url: an sftp host or user may not start with '-'", field="url")
    env = {k: v for k, v in os.environ.items() if k.startswith(CLOUD_ENV)} \
        if backend in ADMIN_BACKENDS else {}
    return Repo(head, pw.encode(), snapshot, env=env)


def _local(ctx: Context, path: str, create: bool) -> int:
    """An O_PATH descriptor of a local repository's directory (made when asked), resolved as
    a bind mount's source is (:func:`core0.sandbox.volumes.open_source`)."""
    fd = volumes.open_source(ctx, path, "url", create)
    if not stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadRequest(f"url: {path} is not a directory", field="url")
    return fd


async def restic(repo: Repo, *args: str, timeout: float = TIMEOUT) -> process.RunResult:
    """Run ``restic <args>`` on ``repo`` (no cache, the password on stdin). The repository goes
    in restic's environment (``RESTIC_REPOSITORY``), not its argv: a REST URL's credentials
    would otherwise show in every ``process.list``."""
    argv = ["restic", "--no-cache", *args]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": os.environ.get("HOME", "/root"),
           **repo.env, "RESTIC_REPOSITORY": repo.spec}
    run = functools.partial(process.run, stdin=repo.password + b"\n", env=env,
                            keep_fds=(repo.fd,) if repo.fd >= 0 else ())
    try:
        # cut short (job.kill, max_time): SIGINT first, restic's own interrupt
        res = await run(argv, timeout=timeout, stop=(signal.SIGINT, 10.0))
    except FileNotFoundError:
        raise PreconditionFailed("restic is not installed on this node") from None
    except BaseException:
        # restic (0.14) leaves its lock in the repository when it is stopped, for every later
        # command to meet: `restic unlock` removes the locks of processes that are gone
        with contextlib.suppress(Exception):
            await cancel.atomic(run(["restic", "--no-cache", "unlock"], timeout=60),
                                defer=False)
        raise
    if res.status != 0:
        err = res.stderr.strip()
        if "wrong password" in err:
            raise BadRequest("url: wrong password for this repository", field="url")
        if re.search(r"\b40[13] (Unauthorized|Forbidden)\b", err):
            raise Forbidden("url: the repository's server refused the credentials "
                            f"({err.splitlines()[-1][-200:]})")
        if "Is there a repository" in err:
            raise NotFound(f"no restic repository there: {err.splitlines()[0]}")
        if "no matching ID found" in err or "no snapshot found" in err.lower():
            raise NotFound(f"no such snapshot: {repo.snapshot}")
        raise ToolError(argv[:5], res.status, res.stderr, res.stdout)
    return res


def _json_lines(text: str) -> list[Any]:
    out = []
    for line in text.splitlines():
        if line.startswith(("{", "[")):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


async def backup(ctx: Context, rec: Record, url: str, tags: list[str]) -> str:
    """Back container ``rec`` up to ``url``; returns the snapshot id."""
    if rec.state != "running" or not rec.pid:
        raise Conflict(f"container {rec.id} is not running")
    cdir = Store(ctx.config.state_dir).dir(rec.id)
    # the root clone: a ZFS clone's is mounted below zroot/, the others are cdir/rootfs
    root = cdir / "zroot" / "rootfs" if rec.clone_dataset else cdir / "rootfs"
    if not root.is_dir():
        raise Conflict(f"container {rec.id} has no root clone at {root}")
    work = ctx.config.state_dir / "backup" / uuid.uuid4().hex
    repo = parse(ctx, url, create=True)
    try:
        work.mkdir(parents=True, mode=0o700)
        meta = work / META
        meta.write_text(json.dumps({"version": 1, "arguments": rec.arguments,
                                    "image": rec.image, "userns_base": rec.userns_base}))
        try:
            await restic(repo, "cat", "config", timeout=120)
        except NotFound:
            await restic(repo, "init", timeout=120)
        rt = await manager.get_runtime(ctx)
        argv = ["backup", "--json", "--tag=corex"]
        for t in [*rec.tags, *tags]:
            argv.append(f"--tag={t}")  # one argument: a tag can never be an option
        for d in ("proc", "sys", "dev"):
            argv.append(f"--exclude={root}/{d}/*")
        mark = cdir / PAUSED  # a dispatcher killed meanwhile: the next one thaws it
        mark.touch()
        await rt.pause(rec.runtime_id)
        try:
            res = await restic(repo, *argv, "--", str(root), str(meta))
        finally:
            if not await rt.resume(rec.runtime_id):
                log.error("container %d: the runtime did not resume it", rec.id)
            mark.unlink(missing_ok=True)
        for msg in _json_lines(res.stdout):
            if isinstance(msg, dict) and msg.get("message_type") == "summary":
                log.info("container %d backed up: snapshot %s", rec.id, msg["snapshot_id"])
                return str(msg["snapshot_id"])
        raise ToolError(["restic", "backup"], 0, "no snapshot id in restic's output",
                        res.stdout[-2000:])
    finally:
        repo.close()
        shutil.rmtree(work, ignore_errors=True)


async def restore(ctx: Context, url: str, *, data_only: bool = False
                  ) -> tuple[dict[str, Any], str]:
    """Restore the snapshot ``url`` names as an image; returns (the backed-up create
    arguments, the image's name). ``data_only`` (a ``restic:`` root): a snapshot of one
    directory is enough (no arguments then)."""
    repo = parse(ctx, url, create=False)
    # restored where the image will be stored (the persistent disk when there is one), not
    # on the state dir's tmpfs: a large snapshot would fill the node's memory
    work = images.images_dir(ctx.config.state_dir) / f".restore-{uuid.uuid4().hex}"
    try:
        if not repo.snapshot:
            raise BadRequest("url: name the snapshot as its fragment (…#<snapshot id>)",
                             field="url")
        found = _json_lines((await restic(repo, "snapshots", "--json", "--",
                                          repo.snapshot, timeout=300)).stdout)
        snaps = found[0] if found and isinstance(found[0], list) else []
        if not snaps:
            raise NotFound(f"no such snapshot: {repo.snapshot}")
        snap = snaps[-1]
        paths = [str(p) for p in snap.get("paths", [])]
        for p in paths:  # (a repository is the caller's: its snapshot's paths are data)
            if not p.startswith("/") or ".." in p.split("/") or "\0" in p:
                raise PreconditionFailed(f"snapshot {snap.get('short_id')}: {p!r} is not a "
                                         "plain absolute path")
        metas = [p for p in paths if os.path.basename(p) == META]
        roots = [p for p in paths if os.path.basename(p) != META]
        if len(roots) != 1 or len(metas) > 1 or (not metas and not data_only):
            raise PreconditionFailed(f"snapshot {snap.get('short_id')} is no container "
                                     "backup of core0's (no .corex.meta beside one root)")
        name = f"restic-{snap['short_id']}"
        work.mkdir(parents=True, mode=0o700)
        await restic(repo, "restore", "--target", str(work), "--", str(snap["id"]))
        # what was restored is resolved inside the work dir: a symlink in the snapshot
        # cannot lead the import (or the owners' shift) out of it
        meta: Any = {}
        try:
            with Root(str(work)) as wroot:
                if metas:
                    with os.fdopen(wroot.open(metas[0], os.O_RDONLY), "rb") as f:
                        meta = json.loads(f.read(1 << 20) or b"{}")
                tfd = wroot.open(roots[0], os.O_PATH | os.O_DIRECTORY)
        except OSError as e:
            raise oserror(e, f"snapshot {snap.get('short_id')}: {e.filename or ''}") from None
        except ValueError:
            raise PreconditionFailed(f"snapshot {snap.get('short_id')}: its .corex.meta is "
                                     "not JSON") from None
        try:
            args = meta.get("arguments") if isinstance(meta, dict) else None
            if metas and not isinstance(args, dict):
                raise PreconditionFailed(f"snapshot {snap.get('short_id')}: its .corex.meta "
                                         "holds no create arguments")
            if not (images.image_dir(ctx.config.state_dir, name) / "image.json").exists():
                tree = Path(f"/proc/self/fd/{tfd}")
                base = meta.get("userns_base") or 0 if metas else 0
                if not isinstance(base, int) or not 0 <= base < 1 << 32:
                    raise PreconditionFailed(f"snapshot {snap.get('short_id')}: its "
                                             ".corex.meta holds no valid userns_base")
                if base:  # (a cancel waits for the thread: the tree goes below)
                    await ctx.long_work(userns.unshift_tree, tree, base, wait=True)
                await manager.import_image(ctx, name, str(tree), "", f"restic:{snap['id']}")
        finally:
            os.close(tfd)
        return dict(args or {}), name
    finally:
        repo.close()
        # in a thread, to its end (a restored tree of thousands of files: removed on the
        # event loop, it held up every other command for a second or more, killed or not)
        await cancel.atomic(asyncio.to_thread(shutil.rmtree, work, True), defer=False)


async def thaw_left(state_dir: Path) -> int:
    """Dispatcher start: resume the containers a backup froze when its dispatcher died (the
    backup itself is answered "interrupted", never run again). Returns how many."""
    store = Store(state_dir)
    left = [r for r in store.all() if (store.dir(r.id) / PAUSED).exists()]
    if not left:
        return 0
    rt = await runtime.choose(state_dir)
    for rec in left:
        thawed = await rt.resume(rec.runtime_id)
        (store.dir(rec.id) / PAUSED).unlink(missing_ok=True)
        log.warning("container %d: frozen by a backup cut short, %s", rec.id,
                    "resumed" if thawed else "not paused any more")
    return len(left)
