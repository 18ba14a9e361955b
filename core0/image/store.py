"""Where images are staged and what the node knows about them.

Layout of the images directory (``<main.persistent_dir>/images``, else ``image.dir``, else
``<state_dir>/images``)::

    state.json                 current, previous, pending switch, history (atomic writes)
    slots/<digest>/            one verified image: vmlinuz, initramfs.cpio.*, manifest.json,
                               manifest.json.minisig
    .incoming-<random>/        an image being fetched (removed when refused)

An image is named by its **digest**: the sha256 of its manifest, the signed file that holds the
sha256 of every artifact. The running image is the one named by ``core0.image=<digest>`` on the
kernel command line (put there by the kexec switch); an image booted another way (qemu
``-kernel``, boot media) has no digest and is reported as ``booted from outside``.

Slots kept: the current one, the previous one and a pending one; older slots are removed when a
new image is staged. History is a bounded list (``HISTORY_MAX`` entries, newest last).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core0 import __version__

if TYPE_CHECKING:
    from core0.config import Config

DIGEST = re.compile(r"[0-9a-f]{64}")
#: the kernel command line word naming the image this boot came from (one dot: not a config key)
CMDLINE_KEY = "core0.image"
HISTORY_MAX = 200
STATE = "state.json"


def images_dir(cfg: Config) -> Path:
    """The images directory for this configuration."""
    if cfg.main.persistent_dir:
        return Path(cfg.main.persistent_dir) / "images"
    if cfg.image.dir:
        return Path(cfg.image.dir)
    return cfg.state_dir / "images"


def booted_digest(cfg: Config) -> str | None:
    """The digest of the image this boot came from (None: booted from outside)."""
    value = cfg.cmdline.get(CMDLINE_KEY, "")
    return value if DIGEST.fullmatch(value) else None


@dataclass
class Slot:
    """One staged image."""

    digest: str
    path: Path
    manifest: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", ""))

    @property
    def kernel(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def initramfs(self) -> Path:
        return self.path / str(self.manifest["initramfs"])

    @property
    def base(self) -> dict[str, str] | None:
        """The OCI image the node's root was built from (reference and manifest digest, from
        the signed manifest), or None for an image built from Debian packages alone."""
        base = self.manifest.get("base")
        if not isinstance(base, dict):
            return None
        return {"reference": str(base.get("reference", "")), "digest": str(base.get("digest", ""))}

    def describe(self) -> dict[str, Any]:
        return {"digest": self.digest, "version": self.version,
                "flavour": self.manifest.get("flavour", ""),
                "kernel": self.manifest.get("kernel", ""), "base": self.base,
                "sizes": self.manifest.get("sizes", {}), "path": str(self.path)}


class Store:
    """The images directory: slots, state, history."""

    def __init__(self, root: Path):
        self.root = root
        self.slots = root / "slots"

    # ------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        """The saved state (empty fields when there is none yet)."""
        data: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            data = json.loads((self.root / STATE).read_text())
        if not isinstance(data, dict):
            data = {}
        return {"current": data.get("current"), "previous": data.get("previous"),
                "pending": data.get("pending"), "history": list(data.get("history") or [])}

    def save(self, state: dict[str, Any]) -> None:
        """Write the state atomically (temp file, fsync, rename, fsync of the directory)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        state["history"] = state["history"][-HISTORY_MAX:]
        tmp = self.root / f".{STATE}.{secrets.token_hex(4)}"
        with tmp.open("w") as f:
            json.dump(state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / STATE)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def record(self, state: dict[str, Any], event: str, **fields: Any) -> dict[str, Any]:
        """Append a history entry to ``state`` (the caller saves)."""
        entry = {"time": round(time.time(), 3), "event": event, **fields}
        state["history"].append(entry)
        return entry

    # ------------------------------------------------------------ slots

    def incoming(self) -> Path:
        """A fresh private directory to fetch an image into (the caller removes it on error)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.root / f".incoming-{secrets.token_hex(8)}"
        path.mkdir(mode=0o700)
        return path

    def stage(self, incoming: Path, digest: str) -> Slot:
        """Move a verified image into its slot (an existing slot of that digest is kept)."""
        if not DIGEST.fullmatch(digest):
            raise ValueError(f"not a digest: {digest!r}")
        self.slots.mkdir(mode=0o700, parents=True, exist_ok=True)
        dest = self.slots / digest
        if dest.is_dir():
            shutil.rmtree(incoming, ignore_errors=True)
        else:
            for f in incoming.iterdir():
                os.chmod(f, 0o400)
            os.rename(incoming, dest)
        slot = self.slot(digest)
        if slot is None:
            raise RuntimeError(f"slot {digest} unreadable after staging")
        return slot

    def slot(self, digest: str | None) -> Slot | None:
        """The staged image ``digest`` (None when it is not staged)."""
        if not digest or not DIGEST.fullmatch(digest):
            return None
        path = self.slots / digest
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except (OSError, ValueError):
            return None
        return Slot(digest, path, manifest)

    def slots_list(self) -> list[Slot]:
        out = []
        with contextlib.suppress(FileNotFoundError):
            for p in sorted(self.slots.iterdir()):
                s = self.slot(p.name)
                if s is not None:
                    out.append(s)
        return out

    def prune(self, keep: set[str | None]) -> list[str]:
        """Remove slots not in ``keep`` and leftover incoming directories; → removed digests."""
        removed = []
        for s in self.slots_list():
            if s.digest not in keep:
                shutil.rmtree(s.path, ignore_errors=True)
                removed.append(s.digest)
        with contextlib.suppress(FileNotFoundError):
            for p in self.root.glob(".incoming-*"):
                shutil.rmtree(p, ignore_errors=True)
        return removed

    # ------------------------------------------------------------ views

    def running(self, cfg: Config) -> dict[str, Any]:
        """The running image: its digest (None when booted from outside), version, slot."""
        digest = booted_digest(cfg)
        slot = self.slot(digest)
        out: dict[str, Any] = {"digest": digest, "version": __version__,
                               "staged": slot is not None}
        if digest is None:
            out["note"] = "booted from outside (no core0.image= on the kernel command line)"
        if slot is not None:
            out.update({k: v for k, v in slot.describe().items() if k != "version"})
        disk_slot = cfg.cmdline.get("core0.slot", "")
        if disk_slot in ("a", "b"):  # booted from the A/B disk image (core0.image.slots)
            out["slot"] = disk_slot
        return out
