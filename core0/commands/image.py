"""core.upgrade and image.*: signed node images, verified before staging, switched by kexec,
assessed at boot and rolled back (docs/images.md). A thin face over :mod:`core0.image`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from core0.context import Context
from core0.image import upgrade as up
from core0.image.store import booted_digest
from core0.registry import Role, command
from core0.schema import Doc, Len, NoArgs, Pattern, Range, Schema

_NO_NUL = Pattern(r"[^\x00]+")


@dataclass(frozen=True)
class UpgradeArgs(Schema):
    url: Annotated[str | None, Doc("http(s) URL of the image's manifest.json (the artifacts "
                                   "and manifest.json.minisig beside it)"), Len(1, 2048)] = None
    path: Annotated[str | None, Doc("path of the manifest on the node (confined to the "
                                    "filesystem root; no '..')"), Len(1, 4096), _NO_NUL] = None
    sha256: Annotated[str | None, Doc("expected sha256 of the manifest (the image digest)"),
                      Pattern(r"[0-9a-f]{64}")] = None
    signature: Annotated[str | None, Doc("the minisign signature (.minisig text); default: "
                                         "fetched beside the manifest"), Len(1, 4096)] = None
    switch: Annotated[Literal["kexec", "reboot", "none"] | None, Doc(
        "kexec: kexec -e at once after the result; reboot: an ordered reboot (as core.reboot) "
        "that ends in the new kernel, no firmware (on the A/B disk: into the written slot "
        "through the firmware and GRUB); none: stage only; default: reboot on a node booted "
        "from the A/B disk, else kexec")] = None


@dataclass(frozen=True)
class HistoryArgs(Schema):
    limit: Annotated[int, Doc("newest entries to return"), Range(1, 200)] = 50


@command("core.upgrade", UpgradeArgs, role=Role.ADMIN)
async def upgrade(ctx: Context, args: UpgradeArgs) -> dict[str, Any]:
    """Upgrade the node to a signed image: fetch its manifest (``url`` or ``path``, and
    ``sha256`` when given), verify the manifest's minisign signature against
    ``image.trusted_keys`` and then every artifact's sha256 **before** anything is staged (a
    refused image leaves nothing behind), stage it beside the current one (the previous one
    stays), and switch by kexec once this result is written (``switch: reboot``: an ordered
    reboot ending in the new kernel; ``none``: stage only).
    Progress is on the job's output (``stream: true``). Returns ``digest``, ``version``,
    ``path`` and the ``kexec`` argv. 400 for a bad signature or hash, 412 without trusted
    keys or (kexec) when core0 is not the machine's init."""
    return await up.upgrade(ctx, url=args.url, path=args.path, sha256=args.sha256,
                            signature=args.signature, how=args.switch)


@command("image.current", role=Role.READ_ONLY, inline=True)
async def current(ctx: Context, args: NoArgs) -> dict[str, Any]:
    """The running image: ``digest`` (from ``core0.image=`` on the kernel command line; null
    when booted from outside), core0's ``version``, ``staged``, and the slot's details
    (``base``: the OCI image its root was built from, or null; ``slot``: a or b on a node
    booted from the A/B disk)."""
    return up.store_of(ctx).running(ctx.config)


@command("image.previous", role=Role.READ_ONLY, inline=True)
async def previous(ctx: Context, args: NoArgs) -> dict[str, Any] | None:
    """The image a rollback goes to (its slot's details), or null."""
    store = up.store_of(ctx)
    slot = store.slot(store.state()["previous"])
    return None if slot is None else slot.describe()


@command("image.list", role=Role.READ_ONLY, inline=True)
async def list_images(ctx: Context, args: NoArgs) -> list[dict[str, Any]]:
    """Every staged image with ``current``, ``previous``, ``pending`` and ``running`` flags."""
    store = up.store_of(ctx)
    state = store.state()
    pending = state["pending"]["digest"] if isinstance(state["pending"], dict) else None
    running = booted_digest(ctx.config)
    return [{**s.describe(), "current": s.digest == state["current"],
             "previous": s.digest == state["previous"], "pending": s.digest == pending,
             "running": s.digest == running} for s in store.slots_list()]


@command("image.history", HistoryArgs, role=Role.READ_ONLY, inline=True)
async def history(ctx: Context, args: HistoryArgs) -> dict[str, Any]:
    """What happened to images, newest last: ``staged``, ``upgrade``/``rollback`` (a switch
    by command: ``digest`` its target, ``from`` the running image, ``how``), ``booted`` (passed
    the boot assessment), ``failed`` (with the ``reason``), ``rollback`` after a failure
    (``digest`` the failed image, ``to`` its target, ``how``), ``rollback-refused``,
    ``rollback-failed`` and ``switch-failed``; plus ``pending``, ``current``, ``previous``."""
    state = up.store_of(ctx).state()
    return {"history": state["history"][-args.limit:], "pending": state["pending"],
            "current": state["current"], "previous": state["previous"]}


@command("image.rollback", role=Role.ADMIN)
async def rollback(ctx: Context, args: NoArgs) -> dict[str, Any]:
    """Switch back to the previous image by kexec (after this result is written); on a node
    booted from the A/B disk: to the other slot's image by GRUB's environment and a reboot.
    404 when no previous image is staged; 412 when core0 is not the machine's init."""
    return await up.rollback(ctx)
