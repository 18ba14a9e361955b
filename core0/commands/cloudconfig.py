"""cloudconfig.*: apply cloud-config user-data (core0.cloudconfig does the work)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from core0.context import Context
from core0.registry import Role, command
from core0.schema import Doc, Len, Pattern, Schema


@dataclass(frozen=True)
class ApplyArgs(Schema):
    source: Annotated[str, Doc("absolute path or http(s) URL of the user-data ('' = the kernel "
                               "command line's core0.cloud_config=, then a config drive)"),
                      Len(0, 4096), Pattern(r"(/|https?://)[^\x00]*|")] = ""
    stage: Annotated[Literal["all", "init", "boot"],
                     Doc("init: network, bootcmd, hostname, write_files, ssh keys; "
                         "boot: runcmd; all: both")] = "all"
    force: Annotated[bool, Doc("run bootcmd/runcmd again although they ran this boot")] = False


@command("cloudconfig.apply", ApplyArgs, role=Role.ADMIN)
async def apply(ctx: Context, args: ApplyArgs) -> dict[str, Any]:
    """Fetch cloud-config user-data and apply it idempotently (the boot runs this as the
    services ``cloudconfig``, init phase, and ``cloudconfig-runcmd``, boot phase). Returns
    ``{"source", "stage", "ok", "steps": [{"step", "ok", "changed", "error"?, …}], "ignored"}``:
    a failing step is reported there and never stops the others; ``ignored`` lists keys this
    subset does not apply. Supported: ``hostname`` (set only under core0 init, or with
    ``cloudconfig.hostname = "yes"``), ``write_files`` (path, content, encoding text / b64 /
    gz+b64, permissions, owner, append), ``ssh_authorized_keys`` (merged into
    /root/.ssh/authorized_keys, mode 600), ``bootcmd``/``runcmd`` (a list entry is the argv, a
    string entry is split with shlex — no shell; once per boot unless ``force``), ``network``
    (v2: ethernets with match, dhcp4, addresses, gateway4/6, routes, mtu, nameservers). Files
    go under ``cloudconfig.root``. 404/413/503 when the source cannot be read, 400 when it is
    not ``#cloud-config`` YAML (safe subset) or a JSON object. With no source at all the
    result says so (``source: null``)."""
    from core0.boot import cloudconfig

    node = ctx.engine.node
    cfg = node.services.cfg if node is not None else ctx.config
    return await cloudconfig.apply(ctx, cfg, args.source, args.stage, args.force)
