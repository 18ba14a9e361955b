"""``corex.backup`` and ``corex.restore`` (and their ``container.*`` aliases): a container to a
restic repository and back (:mod:`core0.sandbox.backup`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from core0.commands.container import CreateArgs, aliases, create_container
from core0.context import Context
from core0.sandbox import access
from core0.sandbox import backup as bk
from core0.schema import Doc, Len, Pattern, Range, Schema

_URL = Doc("the restic repository: file:///path?password=… (or a bare absolute path), or "
           "another restic backend (sftp:, rest:, s3:…) with ?password=…")


@dataclass(frozen=True)
class BackupArgs(Schema):
    container: Annotated[int, Range(1, 65535)]
    url: Annotated[str, _URL, Len(1, 4096)]
    tags: Annotated[list[Annotated[str, Pattern(r"[^\x00-\x1f,]{1,128}",
                                                what="1-128 characters, no comma")]] | None,
                    Len(0, 32),
                    Doc("snapshot tags, besides the container's own and corex")] = None


@aliases("backup", BackupArgs)
async def backup(ctx: Context, args: BackupArgs) -> str:
    """Back a running container up to a restic repository (0-core's ``corex.backup``): the
    container is paused while restic reads its root (``/proc``, ``/sys``, ``/dev``
    excluded) and its create arguments; a repository without a config is initialised
    first. A local repository is resolved inside ``main.filesystem_root`` below admin and
    made when missing. Returns the snapshot id. 400 without a password or with a wrong one,
    409 when the container is not running, 412 without restic."""
    rec = access.acting_record(ctx, args.container)
    return await bk.backup(ctx, rec, args.url, list(args.tags or []))


@dataclass(frozen=True)
class RestoreArgs(Schema):
    url: Annotated[str, Doc("the repository's URL (as corex.backup's) with the snapshot as "
                            "its fragment: …?password=…#<snapshot id>"), Len(1, 4096)]


@aliases("restore", RestoreArgs)
async def restore(ctx: Context, args: RestoreArgs) -> int:
    """Create a container again from a corex.backup snapshot (0-core's ``corex.restore``):
    its root is stored as image ``restic-<snapshot id>`` and a container is created from it
    with the backed-up create arguments (this command's tags replace the old ones; the
    create's rules and roles apply as for corex.create). Returns the new container's id.
    404 for an unknown repository or snapshot, 412 for a snapshot that is no container
    backup."""
    arguments, image = await bk.restore(ctx, args.url)
    arguments["root"] = image
    arguments["tags"] = list(ctx.tags) or None
    return await create_container(ctx, CreateArgs.parse(arguments, "backup"), arguments)
