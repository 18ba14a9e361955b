"""Where cloud-config user-data comes from: a path or URL, the kernel command line, a config
drive (mounted read-only, or read with mtools/isoinfo).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from core0.boot.node import on_node
from core0.errors import BadRequest, NotFound, TooLarge, Unavailable
from core0.storage.parse import parse_blkid_export

if TYPE_CHECKING:
    from core0.config import Config
    from core0.context import Context


CMDLINE_KEY = "core0.cloud_config"


def setting_on(setting: str) -> bool:
    """A yes/no/auto setting: auto means yes on a node (core0 init), no on a host."""
    return setting == "yes" or (setting == "auto" and on_node())


def state_dir(cfg: Config) -> Path:
    """cloud-config's own state (markers, mount point, last user-data), mode 700."""
    d = cfg.state_dir / "cloudconfig"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


# ---------------------------------------------------------------- sources


async def fetch(ctx: Context, cfg: Config, source: str) -> tuple[str, str, str | None] | None:
    """(description, user-data text, network-config text) of the first source found."""
    source = source or cfg.cmdline.get(CMDLINE_KEY, "")
    if source:
        return source, await _read_source(ctx, cfg, source), None
    if setting_on(cfg.cloudconfig.configdrive):
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
    for dev, fields in parse_blkid_export(res.stdout).items():
        if (fields.get("LABEL", "").lower() == label.lower()
                and fields.get("TYPE") in ("vfat", "iso9660")):
            return dev, fields["TYPE"]
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
