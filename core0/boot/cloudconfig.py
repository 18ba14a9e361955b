"""cloud-config user-data, read on every boot and applied idempotently.

Sources, first found wins: the ``source`` argument of ``cloudconfig.apply``; the kernel
command line ``core0.cloud_config=<path | http(s) URL>``; a config drive (a vfat or iso9660
filesystem labelled ``cloudconfig.label``, "cidata" by default, NoCloud style: ``user-data``
and optionally ``network-config``). A config drive is read through a read-only mount under the
state dir when the kernel has the filesystem, else with mtools/isoinfo (no mount).

User-data is ``#cloud-config`` YAML (PyYAML, stricter: core0.boot.safeyaml) or a JSON object.
Supported keys: ``hostname``, ``write_files`` (path, content, encoding
text/b64/base64/gz+b64/gzip+base64, permissions, owner, append), ``ssh_authorized_keys``,
``bootcmd`` (init phase), ``runcmd`` (boot phase), ``network`` (v2 subset: ethernets with
match/name, dhcp4, addresses, gateway4/gateway6, mtu, nameservers). Other keys are listed as
ignored. Commands never go through a shell: a list entry is the argv, a string entry is split
with shlex (so ``>``, ``|``, ``$VAR`` are plain words). bootcmd and runcmd run once per boot for
a given list (``force`` runs them again).

Files are written under ``cloudconfig.root`` ("/" on a node; tests redirect it), each one
atomically (temp file + rename) and only when its content, mode or owner differ. The hostname
is set only under ``core0 init`` (or with ``cloudconfig.hostname = "yes"``): never a
developer's host. Every step reports ``ok``/``changed``/``error``; a failing step never stops
the others, nor the boot.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import socket
from typing import TYPE_CHECKING, Annotated, Any

from core0.boot.cloudfiles import ensure_file, read_file
from core0.boot.cloudnet import Network, apply_v2
from core0.boot.cloudparse import (
    decode_content,
    parse,
    parse_mode,
    parse_network,
    parse_owner,
    write_file,
)
from core0.boot.cloudsource import CMDLINE_KEY, fetch, setting_on, state_dir
from core0.boot.spec import ServiceSpec
from core0.errors import BadRequest, CommandError
from core0.fspath import Root
from core0.jobs.env import job_env
from core0.schema import SAFE_TEXT, Pattern, Schema, check, check_field

if TYPE_CHECKING:
    from core0.config import Config
    from core0.context import Context

SSH_SERVICES = {"ssh", "sshd", "dropbear"}
_HOSTNAME = (r"(?=.{1,64}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
             r"(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*")
#: one authorized key: a line (blanks around it are dropped)
_SSH_KEY = Annotated[str, Pattern(r"\s*[^\n\x00]*\s*", what="one line")]
#: a bootcmd/runcmd entry: the argv (numbers are words), or a string split with shlex
COMMAND = Annotated[str, SAFE_TEXT] | list[Annotated[str, SAFE_TEXT] | int | float]


@dataclasses.dataclass(frozen=True)
class UserData(Schema):
    """The user-data keys core0 applies. Each key is checked on its own when its step runs
    (:func:`check_field`), so a bad key fails its step only; list entries of ``write_files``
    (:class:`~core0.boot.cloudparse.WriteFile`), ``bootcmd`` and ``runcmd`` (:data:`COMMAND`)
    are checked one by one, each failing alone. Any other key is listed as ignored (cloud-init
    has many core0 does not apply)."""

    __unknown__ = "key"

    hostname: Annotated[str, Pattern(_HOSTNAME, what="a valid host name")] | None = None
    write_files: list[Any] | None = None
    ssh_authorized_keys: list[_SSH_KEY] | _SSH_KEY | None = None
    bootcmd: list[Any] | str | None = None
    runcmd: list[Any] | str | None = None
    network: Network | None = None


SUPPORTED = {f.name for f in dataclasses.fields(UserData)}


def wanted(cfg: Config) -> bool:
    """Whether the boot runs the cloud-config services."""
    return cfg.cloudconfig.enabled and (
        bool(cfg.cmdline.get(CMDLINE_KEY)) or setting_on(cfg.cloudconfig.configdrive))


def boot_services(cfg: Config) -> dict[str, ServiceSpec]:
    """The services core0 adds at boot: ``cloudconfig`` (init phase: fetch, network, bootcmd,
    hostname, files, keys) and ``cloudconfig-runcmd`` (boot phase: runcmd)."""
    if not wanted(cfg):
        return {}
    src = "core0 (cloud-config)"
    return {
        "cloudconfig": ServiceSpec(id="cloudconfig", source=src, name="cloudconfig.apply",
                                   args={"stage": "init"}, after=("init",), running_delay=-1),
        "cloudconfig-runcmd": ServiceSpec(
            id="cloudconfig-runcmd", source=src, name="cloudconfig.apply",
            args={"stage": "boot"}, after=("boot", "cloudconfig"), running_delay=-1),
    }


# ---------------------------------------------------------------- steps


def _step(name: str, **kw: Any) -> dict[str, Any]:
    return {"step": name, "ok": True, "changed": False, **kw}


def _fail(step: dict[str, Any], e: BaseException) -> dict[str, Any]:
    step["ok"] = False
    step["error"] = e.message if isinstance(e, CommandError) else f"{type(e).__name__}: {e}"
    return step


def apply_hostname(cfg: Config, root: Root, name: Any) -> dict[str, Any]:
    step = _step("hostname", hostname=name)
    try:
        name = check_field(UserData, "hostname", name)
        allowed = setting_on(cfg.cloudconfig.hostname)
        if allowed or cfg.cloudconfig.root != "/":
            step["changed"] = ensure_file(root, "/etc/hostname", (name + "\n").encode(), 0o644)
        if allowed:
            if socket.gethostname() != name:
                socket.sethostname(name)
                step["changed"] = True
        else:
            step["detail"] = ("the running hostname is left alone outside core0 init "
                              "(cloudconfig.hostname)")
    except Exception as e:
        _fail(step, e)
    return step


def apply_write_files(root: Root, entries: Any) -> dict[str, Any]:
    step = _step("write_files", files=[])
    try:
        entries = check_field(UserData, "write_files", entries)
    except BadRequest as e:
        return _fail(step, e)
    for i, entry in enumerate(entries):
        item: dict[str, Any] = {"path": entry.get("path") if isinstance(entry, dict) else None}
        try:
            wf = write_file(entry, f"write_files[{i}]")
            path = wf.path
            data = decode_content(wf.content, wf.encoding or "text")
            mode = parse_mode(wf.permissions)
            owner = parse_owner(wf.owner)
            if wf.append:
                old = read_file(root, path) or b""
                if old.endswith(data):
                    data = old
                else:
                    data = old + data
            item["changed"] = ensure_file(root, path, data, mode, owner)
            item["ok"] = True
            step["changed"] = step["changed"] or item["changed"]
        except Exception as e:
            item["ok"] = False
            item["error"] = e.message if isinstance(e, CommandError) else str(e)
            step["ok"] = False
        step["files"].append(item)
    if not step["ok"]:
        step["error"] = f"{sum(not f['ok'] for f in step['files'])} file(s) failed"
    return step


def apply_ssh_keys(cfg: Config, root: Root, keys: Any) -> dict[str, Any]:
    step = _step("ssh_authorized_keys", path="/root/.ssh/authorized_keys")
    try:
        keys = check_field(UserData, "ssh_authorized_keys", keys)
        new = [k.strip() for k in ([keys] if isinstance(keys, str) else keys) if k.strip()]
        old = (read_file(root, "/root/.ssh/authorized_keys") or b"").decode("utf-8", "replace")
        lines = [ln for ln in old.splitlines()]
        have = {ln.strip() for ln in lines}
        added = [k for k in dict.fromkeys(new) if k not in have]
        text = "\n".join(lines + added)
        text = text + "\n" if text else ""
        root.mkdir("/root", 0o700)
        root.mkdir("/root/.ssh", 0o700)
        step["changed"] = ensure_file(root, "/root/.ssh/authorized_keys", text.encode(), 0o600,
                                      dir_mode=0o700)
        step["added"] = len(added)
        ssh = sorted(sid for sid, raw in cfg.startup.items()
                     if sid in SSH_SERVICES or "ssh" in (raw.get("tags") or []))
        step["ssh_service"] = ssh[0] if ssh else None
    except Exception as e:
        _fail(step, e)
    return step


def command_argv(entry: Any, where: str = "command") -> list[str]:
    """A bootcmd/runcmd entry (:data:`COMMAND`) → argv: a list is the argv, a string is split
    with shlex."""
    entry = check(COMMAND, entry, where)
    if isinstance(entry, str):
        try:
            argv = shlex.split(entry)
        except ValueError as e:
            raise BadRequest(f"{where}: {entry!r}: {e}") from None
    else:
        argv = [str(a) for a in entry]
    if not argv:
        raise BadRequest(f"{where}: empty command")
    return argv


async def run_commands(ctx: Context, cfg: Config, name: str, entries: Any,
                       force: bool) -> dict[str, Any]:
    step = _step(name, commands=[])
    try:
        entries = check_field(UserData, name, entries)
    except BadRequest as e:
        return _fail(step, e)
    if isinstance(entries, str):
        entries = [entries]
    digest = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()[:16]
    marker = state_dir(cfg) / f"ran-{name}-{digest}"
    if marker.exists() and not force:
        step["detail"] = "already ran this boot (force: true runs it again)"
        return step
    env = job_env(None)
    for i, entry in enumerate(entries):
        item: dict[str, Any] = {"command": entry}
        try:
            argv = command_argv(entry, f"{name}[{i}]")
            ctx.emit(1, f"{name}: {shlex.join(argv)}")
            res = await ctx.run(argv, env=env, timeout=cfg.cloudconfig.command_timeout,
                                check=False)
            item.update(status=res.status, stdout=res.stdout[-2000:], stderr=res.stderr[-2000:])
            item["ok"] = res.status == 0
        except TimeoutError:
            item.update(ok=False, error=f"timed out after {cfg.cloudconfig.command_timeout:g}s")
        except Exception as e:
            item.update(ok=False, error=e.message if isinstance(e, CommandError) else str(e))
        if not item["ok"]:
            step["ok"] = False
        step["changed"] = True
        step["commands"].append(item)
    marker.write_text(json.dumps(entries))
    if not step["ok"]:
        step["error"] = f"{sum(not c['ok'] for c in step['commands'])} command(s) failed"
    return step


async def apply_network(ctx: Context, cfg: Config, root: Root, net: Any) -> dict[str, Any]:
    step = _step("network")
    try:
        network: Network = check_field(UserData, "network", net)
        if network.config == "disabled":
            step["detail"] = "disabled"
            return step
        step.update(await apply_v2(ctx, cfg, root, network))
    except Exception as e:
        _fail(step, e)
    return step


# ---------------------------------------------------------------- the whole thing


async def apply(ctx: Context, cfg: Config, source: str = "", stage: str = "all",
                force: bool = False) -> dict[str, Any]:
    """Fetch (or, for the boot stage, reload the saved) user-data and apply a stage of it."""
    saved = state_dir(cfg) / "user-data.json"
    doc: dict[str, Any] | None = None
    desc: str | None = None
    net: Any = None
    if stage == "boot" and not source and saved.exists():
        try:
            body = json.loads(saved.read_text())
            doc, desc, net = body["doc"], body["source"], body.get("network")
        except (OSError, ValueError, KeyError):
            doc = None
    if doc is None:
        found = await fetch(ctx, cfg, source)
        if found is None:
            return {"source": None, "stage": stage, "ok": True, "steps": [],
                    "detail": "no cloud-config source (core0.cloud_config=, config drive)"}
        desc, text, net_text = found
        doc = parse(text)
        net = doc.get("network")
        if net is None and net_text:
            net = parse_network(net_text)
        tmp = saved.with_suffix(".tmp")
        tmp.write_text(json.dumps({"source": desc, "doc": doc, "network": net}))
        os.chmod(tmp, 0o600)
        os.replace(tmp, saved)
    steps: list[dict[str, Any]] = []
    rootdir = cfg.cloudconfig.root
    os.makedirs(rootdir, exist_ok=True)
    with Root(rootdir) as root:
        if stage in ("init", "all"):
            if net is not None:
                steps.append(await apply_network(ctx, cfg, root, net))
            if "bootcmd" in doc:
                steps.append(await run_commands(ctx, cfg, "bootcmd", doc["bootcmd"], force))
            if "hostname" in doc:
                steps.append(apply_hostname(cfg, root, doc["hostname"]))
            if "write_files" in doc:
                steps.append(apply_write_files(root, doc["write_files"]))
            if "ssh_authorized_keys" in doc:
                steps.append(apply_ssh_keys(cfg, root, doc["ssh_authorized_keys"]))
        if stage in ("boot", "all") and "runcmd" in doc:
            steps.append(await run_commands(ctx, cfg, "runcmd", doc["runcmd"], force))
    for s in steps:
        ctx.emit(1 if s["ok"] else 2, f"{s['step']}: {'ok' if s['ok'] else s.get('error')}"
                                      f"{' (changed)' if s['changed'] else ''}")
    return {"source": desc, "stage": stage, "ok": all(s["ok"] for s in steps), "steps": steps,
            "ignored": sorted(k for k in doc if k not in SUPPORTED)}

