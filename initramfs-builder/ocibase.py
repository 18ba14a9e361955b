"""An OCI image as the base of the node's root (``build.py --base <reference>``).

References (skopeo's transports):

- ``oci:<layout-dir>[:<tag>]``: a local OCI image layout, read in place;
- ``oci-archive:<tar>``, ``docker-archive:<tar>`` (``docker save`` / ``podman save``),
  ``docker://<registry>/<repo>:<tag>`` and any other skopeo transport: copied by
  ``skopeo copy`` into a temporary OCI layout first (skopeo verifies registry digests).

The layout is read and its layers unpacked by the container image store's own code
(:func:`core0.sandbox.images.unpack_layout`: every blob checked against its sha256, every layer
through :mod:`core0.sandbox.unpack`, which refuses ``..``, absolute members, links out of the
root and device nodes). The unpacked root is then made safe for the builder to write into and
merged-/usr like the builder's own tree (absolute symlinks become relative ones with the same
meaning inside the root; a real ``/bin``, ``/sbin``, ``/lib`` or ``/lib64`` is moved into
``/usr``), ``/boot`` is emptied (the kernel is an artifact beside the initramfs) and kernel
modules the image will not boot are dropped. Finally :func:`overlay` puts the builder's stage
(core0, Python, busybox, modules, rootfs/) on top, through the same unpacker: on a path both
hold, the builder's file wins, so core0 stays ``/init``.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (REPO / "client", REPO):  # core0's image store (and the client's error codes)
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import imagelib  # noqa: E402

from core0.errors import CommandError as Error  # noqa: E402
from core0.sandbox import images  # noqa: E402

#: transports skopeo copies into a local layout first (``oci:`` is read in place)
COPIED = ("oci-archive:", "docker-archive:", "docker://", "containers-storage:", "dir:")
MERGED = ("bin", "sbin", "lib", "lib64")


class BaseError(SystemExit):
    """The base image cannot be used (the builder exits with this message)."""

    def __init__(self, reference: str, msg: str) -> None:
        super().__init__(f"--base {reference}: {msg}")


@dataclass
class Base:
    """An unpacked base image: where its root is and what it was."""

    reference: str
    root: Path
    meta: dict[str, Any] = field(default_factory=dict)

    def kernel_release(self) -> str | None:
        """The release of the kernel the base holds (``/boot/vmlinuz-<r>`` with
        ``/usr/lib/modules/<r>``), the newest if several; None without one."""
        boot = self.root / "boot"
        found = sorted(p.name[len("vmlinuz-"):] for p in boot.glob("vmlinuz-*")
                       if p.is_file() and (self.root / "usr/lib/modules" / p.name[8:]).is_dir())
        return found[-1] if found else None

    def record(self, kernel_from: str) -> dict[str, Any]:
        """What the manifest says of the base."""
        return {"reference": self.reference, "digest": self.meta["digest"],
                "config": self.meta["config"], "layers": self.meta["layers"],
                "architecture": self.meta.get("architecture", ""), "kernel_from": kernel_from}


def split_oci(rest: str) -> tuple[Path, str]:
    """``<dir>[:<tag>]`` → (dir, tag); a tag holds no ``/``."""
    path, sep, tag = rest.rpartition(":")
    if sep and path and "/" not in tag:
        return Path(path), tag
    return Path(rest), ""


def layout_of(reference: str, work: Path) -> tuple[Path, str]:
    """(an OCI layout directory, the image's tag in it) for ``reference``."""
    if reference.startswith("oci:"):
        layout, tag = split_oci(reference[4:])
        if not layout.is_dir():
            raise BaseError(reference, f"no OCI layout directory {layout}")
        return layout, tag
    if not reference.startswith(COPIED):
        raise BaseError(reference, "not a base reference: oci:<dir>[:<tag>], "
                        "oci-archive:<tar>, docker-archive:<tar> or docker://<host>/<repo>:<tag>")
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise BaseError(reference, "skopeo is needed to copy it (deps/apt-image.txt)")
    dest = work / "base-layout"
    shutil.rmtree(dest, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([skopeo, "copy", "--quiet", "--", reference, f"oci:{dest}:base"],
                         capture_output=True, text=True, timeout=1800, check=False)
    if res.returncode != 0:
        raise BaseError(reference, f"skopeo copy failed: {res.stderr.strip()[-1500:]}")
    return dest, "base"


def unpack(reference: str, work: Path, keep_kernel: bool) -> Base:
    """The base image unpacked into ``work/base`` and prepared (see the module's doc);
    ``keep_kernel``: its kernel modules stay (``--kernel-from base``)."""
    layout, tag = layout_of(reference, work)
    root = work / "base"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        meta = images.unpack_layout(layout, tag, root)
    except Error as e:  # UnsafeMember, a bad blob digest, no such tag…
        raise BaseError(reference, str(e)) from None
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise BaseError(reference, f"unreadable OCI layout: {e!r}") from None
    if reference.startswith(COPIED):
        shutil.rmtree(layout, ignore_errors=True)
    base = Base(reference, root, meta)
    relative_links(root)
    merge_usr(reference, root)
    if keep_kernel and base.kernel_release() is None:
        raise BaseError(reference, "--kernel-from base: the image holds no "
                        "/boot/vmlinuz-<release> with /lib/modules/<release>")
    return base


def relative_links(root: Path) -> int:
    """Rewrite the absolute symlinks of ``root`` as relative ones (same target inside the
    root), so that nothing the builder does on the host follows one out of it."""
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                continue
            target = os.readlink(p)
            if target.startswith("/"):
                here = "/" + os.path.relpath(dirpath, root)
                os.unlink(p)
                os.symlink(posixpath.relpath(posixpath.normpath(target), here), p)
                n += 1
    return n


def _inside(root: Path, path: Path) -> bool:
    real = os.path.realpath(path)
    return os.path.commonpath([real, os.path.realpath(root)]) == os.path.realpath(root)


def merge_usr(reference: str, root: Path) -> None:
    """A real ``/bin`` (``/sbin``, ``/lib``, ``/lib64``) of the base moves into ``/usr``
    (what ``/usr`` holds already wins) and becomes a symlink, like the builder's own tree."""
    for top in MERGED:
        src, dst = root / top, root / "usr" / top
        if src.is_symlink() or not src.is_dir():
            continue
        dst.mkdir(parents=True, exist_ok=True)
        if not _inside(root, dst):
            raise BaseError(reference, f"/usr/{top} leads out of the image's root")
        for entry in sorted(os.listdir(src)):
            if not os.path.lexists(dst / entry):
                os.rename(src / entry, dst / entry)
        shutil.rmtree(src)
        os.symlink(f"usr/{top}", src)


def trim(base: Base, release: str | None) -> list[str]:
    """Empty ``/boot`` and drop kernel modules of any release but ``release``; returns what
    was dropped (for the log)."""
    dropped = []
    boot = base.root / "boot"
    if boot.is_dir() and not boot.is_symlink():
        for p in sorted(boot.iterdir()):
            dropped.append(f"/boot/{p.name}")
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    mods = base.root / "usr/lib/modules"
    if mods.is_dir() and not mods.is_symlink() and _inside(base.root, mods):
        for p in sorted(mods.iterdir()):
            if p.name != release:
                dropped.append(f"/usr/lib/modules/{p.name}")
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    return dropped


def overlay(stage: Path, base: Base, work: Path) -> int:
    """The builder's stage on top of the base root (a tar of the stage through the safe
    unpacker); the modes the unpacker strips (sticky /tmp) are put back. Returns the number
    of entries laid over."""
    tar = work / "stage-overlay.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as tf:
        for entry in sorted(os.listdir(stage)):
            tf.add(stage / entry, arcname=entry)
    try:
        from core0.sandbox import unpack as unpacker

        n = unpacker.extract_layer(None, base.root, str(tar))
    except Error as e:
        raise BaseError(base.reference, f"the builder's files do not fit on it: {e}") from None
    finally:
        tar.unlink()
    for rel in ("tmp", "var/tmp"):
        p = base.root / rel
        if p.is_dir() and not p.is_symlink():
            os.chmod(p, 0o1777)
    return n


def base_kernel(base: Base, out_dir: Path) -> tuple[str, int]:
    """``--kernel-from base``: the base's vmlinuz into ``out_dir``; its whole module tree
    stays in the root (depmod runs on it in :func:`compose`). Returns (release, modules)."""
    release = base.kernel_release()
    if release is None:
        raise BaseError(base.reference, "--kernel-from base: the image holds no "
                        "/boot/vmlinuz-<release> with /lib/modules/<release>")
    shutil.copy2(base.root / "boot" / f"vmlinuz-{release}", out_dir / "vmlinuz")
    mods = base.root / "usr/lib/modules" / release
    return release, sum(1 for p in mods.rglob("*.ko*") if p.is_file())


def compose(base: Base, stage: Path, work: Path, release: str, kernel_from: str) -> str:
    """The final root in ``base.root``: the base trimmed, the stage laid over it, depmod run
    when the modules are the base's. Returns a line for the log."""
    dropped = trim(base, release if kernel_from == "base" else None)
    n = overlay(stage, base, work)
    if kernel_from == "base":
        imagelib.run(["depmod", "-b", str(base.root), release])
    return (f"base {base.reference} ({base.meta['digest'][:19]}, {len(base.meta['layers'])} "
            f"layer(s)): {n} builder entries laid over it, {len(dropped)} kernel files dropped")
