"""cloud-config user-data, read on every boot and applied idempotently.

Sources, first found wins: the ``source`` argument of ``cloudconfig.apply``; the kernel
command line ``core0.cloud_config=<path | http(s) URL>``; a config drive (a vfat or iso9660
filesystem labelled ``cloudconfig.label``, "cidata" by default, NoCloud style: ``user-data``
and optionally ``network-config``). A config drive is read through a read-only mount under the
state dir when the kernel has the filesystem, else with mtools/isoinfo (no mount).

User-data is ``#cloud-config`` YAML (a safe subset, core0.miniyaml) or a JSON object. Supported
keys: ``hostname``, ``write_files`` (path, content, encoding text/b64/base64/gz+b64/gzip+base64,
permissions, owner, append), ``ssh_authorized_keys``, ``bootcmd`` (init phase), ``runcmd`` (boot
phase), ``network`` (v2 subset: ethernets with match/name, dhcp4, addresses, gateway4/gateway6,
mtu, nameservers). Other keys are listed as ignored. Commands never go through a shell: a list
entry is the argv, a string entry is split with shlex (so ``>``, ``|``, ``$VAR`` are plain
words). bootcmd and runcmd run once per boot for a given list (``force`` runs them again).

Files are written under ``cloudconfig.root`` ("/" on a node; tests redirect it), each one
atomically (temp file + rename) and only when its content, mode or owner differ. The hostname
is set only under ``core0 init`` (or with ``cloudconfig.hostname = "yes"``): never a
developer's host. Every step reports ``ok``/``changed``/``error``; a failing step never stops
the others, nor the boot.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import os
import re
import shlex
import socket
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core0 import miniyaml
from core0.errors import BadRequest, CommandError, NotFound, TooLarge, Unavailable
from core0.fspath import Root
from core0.servicespec import ServiceSpec

if TYPE_CHECKING:
    from core0.config import Config
    from core0.context import Context

CMDLINE_KEY = "core0.cloud_config"
SUPPORTED = {"hostname", "write_files", "ssh_authorized_keys", "bootcmd", "runcmd", "network"}
SSH_SERVICES = {"ssh", "sshd", "dropbear"}
MAX_FILE = 64 << 20
_HOSTNAME = re.compile(r"(?=.{1,64}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*")


def _on_node() -> bool:
    from core0.services import on_node

    return on_node()


def _mode(setting: str) -> bool:
    return setting == "yes" or (setting == "auto" and _on_node())


def wanted(cfg: Config) -> bool:
    """Whether the boot runs the cloud-config services."""
    return cfg.cloudconfig.enabled and (
        bool(cfg.cmdline.get(CMDLINE_KEY)) or _mode(cfg.cloudconfig.configdrive))


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


def state_dir(cfg: Config) -> Path:
    d = cfg.state_dir / "cloudconfig"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


# ---------------------------------------------------------------- sources


async def fetch(ctx: Context, cfg: Config, source: str) -> tuple[str, str, str | None] | None:
    """(description, user-data text, network-config text) of the first source found."""
    source = source or cfg.cmdline.get(CMDLINE_KEY, "")
    if source:
        return source, await _read_source(ctx, cfg, source), None
    if _mode(cfg.cloudconfig.configdrive):
        found = await find_drive(ctx, cfg.cloudconfig.label)
        if found is not None:
            dev, fstype = found
            files = await read_drive(ctx, cfg, dev, fstype, ["user-data", "network-config"])
            if files.get("user-data") is None:
                raise NotFound(f"config drive {dev} has no user-data")
            return (f"configdrive:{dev} ({fstype}, label {cfg.cloudconfig.label})",
                    files["user-data"] or "", files.get("network-config"))
    return None


async def _read_source(ctx: Context, cfg: Config, source: str) -> str:
    limit = cfg.cloudconfig.max_bytes
    if source.startswith(("http://", "https://")):
        return await ctx.to_thread(_http_get, source, cfg.cloudconfig.fetch_timeout, limit)
    if not source.startswith("/") or "\0" in source:
        raise BadRequest(f"cloud-config source {source!r}: an absolute path or an http(s) URL")
    try:
        with open(source, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise NotFound(f"cloud-config source {source}: no such file") from None
    except OSError as e:
        raise Unavailable(f"cloud-config source {source}: {e.strerror}") from None
    if len(data) > limit:
        raise TooLarge(f"cloud-config source {source}: larger than {limit} bytes")
    return data.decode("utf-8", "replace")


def _http_get(url: str, timeout: float, limit: int) -> str:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"User-Agent": "core0"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = resp.read(limit + 1)
    except urllib.error.HTTPError as e:
        raise Unavailable(f"cloud-config source {url}: HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        raise Unavailable(f"cloud-config source {url}: {getattr(e, 'reason', e)}") from None
    if len(data) > limit:
        raise TooLarge(f"cloud-config source {url}: larger than {limit} bytes")
    return bytes(data).decode("utf-8", "replace")


async def find_drive(ctx: Context, label: str) -> tuple[str, str] | None:
    """(device, fstype) of the first vfat/iso9660 filesystem labelled ``label``
    (case-insensitive), probed with blkid over /sys/class/block."""
    devs = []
    for name in sorted(os.listdir("/sys/class/block")):
        try:
            size = int(Path(f"/sys/class/block/{name}/size").read_text())
        except (OSError, ValueError):
            continue
        if size > 0 and os.path.exists(f"/dev/{name}"):
            devs.append(f"/dev/{name}")
    if not devs:
        return None
    res = await ctx.run(["blkid", "-c", "/dev/null", "-o", "export", "--", *devs],
                        check=False, timeout=60)
    for block in res.stdout.split("\n\n"):
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if (fields.get("LABEL", "").lower() == label.lower()
                and fields.get("TYPE") in ("vfat", "iso9660") and fields.get("DEVNAME")):
            return fields["DEVNAME"], fields["TYPE"]
    return None


def _kernel_has(fstype: str) -> bool:
    try:
        return any(line.split()[-1] == fstype for line in
                   Path("/proc/filesystems").read_text().splitlines() if line.strip())
    except OSError:
        return False


async def read_drive(ctx: Context, cfg: Config, dev: str, fstype: str,
                     names: list[str]) -> dict[str, str | None]:
    """Read files from the root of a config drive (None for a missing one)."""
    limit = cfg.cloudconfig.max_bytes
    out: dict[str, str | None] = {}
    if _kernel_has(fstype):
        mnt = state_dir(cfg) / "mnt"
        mnt.mkdir(exist_ok=True)
        await ctx.run(["mount", "-t", fstype, "-o", "ro,nodev,nosuid,noexec", "--", dev,
                       str(mnt)], timeout=30)
        try:
            for n in names:
                p = mnt / n
                if not p.is_file():
                    out[n] = None
                    continue
                with open(p, "rb") as f:
                    data = f.read(limit + 1)
                if len(data) > limit:
                    raise TooLarge(f"{dev}: {n} larger than {limit} bytes")
                out[n] = data.decode("utf-8", "replace")
        finally:
            await ctx.run(["umount", str(mnt)], check=False, timeout=30)
        return out
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "MTOOLS_SKIP_CHECK": "1"}
    for n in names:
        if fstype == "vfat":
            res = await ctx.run(["mcopy", "-n", "-i", dev, f"::{n}", "-"], env=env,
                                check=False, timeout=30)
            text: str | None = res.stdout if res.status == 0 else None
        else:
            text = None
            for ext in ("-R", "-J"):
                res = await ctx.run(["isoinfo", "-i", dev, ext, "-x", f"/{n}"], env=env,
                                    check=False, timeout=30)
                if res.status == 0 and res.stdout:
                    text = res.stdout
                    break
        if text is not None and len(text.encode()) > limit:
            raise TooLarge(f"{dev}: {n} larger than {limit} bytes")
        out[n] = text
    return out


# ---------------------------------------------------------------- parsing


def parse(text: str) -> dict[str, Any]:
    """``#cloud-config`` YAML or a JSON object → dict (BadRequest otherwise)."""
    body = text.lstrip("\ufeff").strip()
    if body.startswith("{"):
        try:
            doc = json.loads(body)
        except ValueError as e:
            raise BadRequest(f"user-data: bad JSON: {e}") from None
    elif body.startswith("#cloud-config"):
        try:
            doc = miniyaml.loads(body)
        except miniyaml.YAMLError as e:
            raise BadRequest(f"user-data: {e}") from None
    elif body.startswith("#!"):
        raise BadRequest("user-data: scripts are not supported (use runcmd)")
    elif not body:
        doc = {}
    else:
        raise BadRequest("user-data: neither '#cloud-config' YAML nor a JSON object")
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise BadRequest("user-data: the document must be a mapping")
    return doc


def parse_network(text: str) -> dict[str, Any] | None:
    """A config drive's network-config (YAML or JSON, optionally under ``network:``)."""
    body = text.strip()
    if not body:
        return None
    try:
        doc = json.loads(body) if body.startswith("{") else miniyaml.loads(body)
    except (ValueError, miniyaml.YAMLError) as e:
        raise BadRequest(f"network-config: {e}") from None
    if isinstance(doc, dict) and isinstance(doc.get("network"), dict):
        doc = doc["network"]
    return doc if isinstance(doc, dict) else None


# ---------------------------------------------------------------- files


def decode_content(content: Any, encoding: str) -> bytes:
    enc = (encoding or "text").lower()
    if not isinstance(content, str):
        if content is None:
            content = ""
        elif isinstance(content, (int, float, bool)):
            content = str(content)
        else:
            raise BadRequest("content: expected a string")
    if enc in ("text", "text/plain", ""):
        return content.encode()
    try:
        if enc in ("b64", "base64"):
            return base64.b64decode(content, validate=False)
        if enc in ("gz", "gzip", "gz+b64", "gz+base64", "gzip+b64", "gzip+base64"):
            raw = base64.b64decode(content, validate=False)
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            data = d.decompress(raw, MAX_FILE)
            if d.unconsumed_tail:
                raise TooLarge(f"content: more than {MAX_FILE} bytes once decompressed")
            return data
    except (binascii.Error, zlib.error, gzip.BadGzipFile) as e:
        raise BadRequest(f"content: cannot decode {enc}: {e}") from None
    raise BadRequest(f"encoding {encoding!r}: expected text, b64, base64 or gz+b64")


def parse_mode(value: Any, default: int = 0o644) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise BadRequest("permissions: expected an octal string such as '0644'")
    if isinstance(value, int):
        mode = value
    elif isinstance(value, str) and re.fullmatch(r"(0o|0)?[0-7]{1,4}", value.strip()):
        mode = int(value.strip().removeprefix("0o"), 8)
    else:
        raise BadRequest(f"permissions {value!r}: expected an octal string such as '0644'")
    if not 0 <= mode <= 0o7777:
        raise BadRequest(f"permissions {value!r}: out of range")
    return mode


def parse_owner(value: Any) -> tuple[int, int] | None:
    if value is None or value == "":
        return None
    import grp
    import pwd

    if not isinstance(value, str):
        raise BadRequest("owner: expected 'user[:group]'")
    user, _, group = value.partition(":")
    try:
        pw = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
        uid, gid = pw.pw_uid, pw.pw_gid
        if group:
            gid = grp.getgrnam(group).gr_gid if not group.isdigit() else int(group)
    except KeyError:
        raise BadRequest(f"owner {value!r}: no such user or group") from None
    return uid, gid


def ensure_file(root: Root, path: str, data: bytes, mode: int,
                owner: tuple[int, int] | None = None, dir_mode: int = 0o755) -> bool:
    """Make ``path`` (inside ``root``) hold ``data`` with ``mode``/``owner``; atomic; returns
    whether anything changed."""
    parent = os.path.dirname(path.rstrip("/")) or "/"
    root.mkdir(parent, dir_mode)
    with root.at(path) as (dfd, name):
        if not name:
            raise BadRequest(f"{path}: not a file path")
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except FileNotFoundError:
            fd = -1
        if fd >= 0:
            try:
                st = os.fstat(fd)
                same = (st.st_size == len(data) and (st.st_mode & 0o7777) == mode
                        and (owner is None or (st.st_uid, st.st_gid) == owner))
                if same:
                    chunks = []
                    while True:
                        b = os.read(fd, 1 << 20)
                        if not b:
                            break
                        chunks.append(b)
                    if b"".join(chunks) == data:
                        return False
            finally:
                os.close(fd)
        tmp = f".{name}.core0-{os.getpid()}"
        wfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=dfd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(wfd, view):]
            if owner is not None:
                os.fchown(wfd, *owner)
            os.fchmod(wfd, mode)
            os.fsync(wfd)
        except BaseException:
            os.close(wfd)
            os.unlink(tmp, dir_fd=dfd)
            raise
        os.close(wfd)
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        return True


def read_file(root: Root, path: str) -> bytes | None:
    try:
        fd = root.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotFound):
        return None
    try:
        chunks: list[bytes] = []
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                return b"".join(chunks)
            chunks.append(b)
    finally:
        os.close(fd)


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
        if not isinstance(name, str) or not _HOSTNAME.fullmatch(name):
            raise BadRequest(f"hostname {name!r}: not a valid host name")
        allowed = _mode(cfg.cloudconfig.hostname)
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


_WRITE_KEYS = {"path", "content", "encoding", "permissions", "owner", "append", "defer"}


def apply_write_files(root: Root, entries: Any) -> dict[str, Any]:
    step = _step("write_files", files=[])
    if not isinstance(entries, list):
        return _fail(step, BadRequest("write_files: expected a list"))
    for i, entry in enumerate(entries):
        item: dict[str, Any] = {"path": entry.get("path") if isinstance(entry, dict) else None}
        try:
            if not isinstance(entry, dict):
                raise BadRequest(f"write_files[{i}]: expected a mapping")
            unknown = sorted(set(entry) - _WRITE_KEYS)
            if unknown:
                raise BadRequest(f"write_files[{i}]: unsupported keys {', '.join(unknown)}")
            path = entry.get("path")
            if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
                raise BadRequest(f"write_files[{i}].path: an absolute path is required")
            data = decode_content(entry.get("content", ""), entry.get("encoding") or "text")
            mode = parse_mode(entry.get("permissions"))
            owner = parse_owner(entry.get("owner"))
            if entry.get("append"):
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
        if isinstance(keys, str):
            keys = [keys]
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise BadRequest("ssh_authorized_keys: expected a list of strings")
        new = [k.strip() for k in keys if k.strip()]
        for k in new:
            if "\n" in k or "\0" in k:
                raise BadRequest("ssh_authorized_keys: a key must be one line")
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


def command_argv(entry: Any) -> list[str]:
    """A bootcmd/runcmd entry → argv: a list is the argv, a string is split with shlex."""
    if isinstance(entry, str):
        try:
            argv = shlex.split(entry)
        except ValueError as e:
            raise BadRequest(f"{entry!r}: {e}") from None
    elif isinstance(entry, list) and all(isinstance(a, (str, int, float)) and
                                         not isinstance(a, bool) for a in entry):
        argv = [str(a) for a in entry]
    else:
        raise BadRequest(f"{entry!r}: expected a string or a list of strings")
    if not argv:
        raise BadRequest("empty command")
    if any("\0" in a for a in argv):
        raise BadRequest("NUL byte in a command")
    return argv


async def run_commands(ctx: Context, cfg: Config, name: str, entries: Any,
                       force: bool) -> dict[str, Any]:
    from core0.commands.core import job_env

    step = _step(name, commands=[])
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, list):
        return _fail(step, BadRequest(f"{name}: expected a list"))
    digest = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()[:16]
    marker = state_dir(cfg) / f"ran-{name}-{digest}"
    if marker.exists() and not force:
        step["detail"] = "already ran this boot (force: true runs it again)"
        return step
    env = job_env(None)
    for entry in entries:
        item: dict[str, Any] = {"command": entry}
        try:
            argv = command_argv(entry)
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
    from core0.cloudnet import apply_v2

    step = _step("network")
    try:
        if not isinstance(net, dict):
            raise BadRequest("network: expected a mapping")
        if net.get("config") == "disabled":
            step["detail"] = "disabled"
            return step
        if net.get("version") not in (2, None):
            raise BadRequest(f"network: version {net.get('version')!r} not supported (use 2)")
        step.update(await apply_v2(ctx, cfg, root, net))
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

