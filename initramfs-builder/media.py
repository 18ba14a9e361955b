#!/usr/bin/env python3
"""Boot media for real machines, made from a built image (``build.py``'s vmlinuz + initramfs).

    python3 initramfs-builder/media.py iso  [--flavour core|full] [--image build/image]
                                            [--out build/image/core0.iso] [--append ARG ...]
    python3 initramfs-builder/media.py ipxe [--flavour …] [--base-url http://host/path/]

* ``iso``: a hybrid ISO 9660 image that boots under BIOS (El Torito and an MBR for USB
  sticks) and under UEFI (an EFI system partition image), made by ``grub-mkrescue`` (GRUB's own
  tool, with xorriso and mtools): the same kernel and initramfs, a ``grub.cfg`` that boots them
  at once with the serial and VGA consoles. Written to a CD, a USB stick (``dd``) or a virtual
  machine's CD drive.
* ``ipxe``: an iPXE script (0-core's and CeranaOS's network boot) that fetches the kernel and
  the initramfs from ``--base-url`` (an HTTP server holding the image directory) and boots them.

``--append`` adds kernel command line arguments (core0's ``core0.<section>.<key>=value``
settings, ``ip=…``); a node's password goes there only as its SHA-256
(``core0.redis.password_sha256=``), never in clear. Without one, a node serves its Redis on
loopback only (secure by default) and takes its settings from a config drive.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: what every medium puts on the kernel command line before ``--append``
BASE_ARGS = ["console=tty0", "console=ttyS0", "panic=-1", "random.trust_cpu=on"]


def image_files(image: Path, flavour: str) -> tuple[Path, Path]:
    """(vmlinuz, initramfs) of a built image directory."""
    suffix = "" if flavour == "core" else f"-{flavour}"
    kernel = image / "vmlinuz"
    initrds = sorted(image.glob(f"initramfs{suffix}.cpio.*"))
    if not kernel.is_file() or not initrds:
        raise SystemExit(f"no {flavour} image in {image}: build it first "
                         f"(bash initramfs-builder/build.sh {flavour})")
    return kernel, initrds[0]


def _check_args(args: list[str]) -> list[str]:
    for a in args:
        # one word each: grub.cfg and iPXE scripts are line- and word-based
        if not a or any(c in a for c in " \t\r\n\"'`$;\\{}#"):
            raise SystemExit(f"kernel argument {a!r}: one word, no quotes or shell/grub syntax")
    return [*BASE_ARGS, *args]


def grub_cfg(initrd_name: str, args: list[str]) -> str:
    """GRUB's configuration: boot the image at once, on the serial and the VGA console."""
    return "\n".join([
        "serial --unit=0 --speed=115200",
        "terminal_input serial console",
        "terminal_output serial console",
        "set timeout=0",
        "set default=0",
        'menuentry "core0" {',
        f"    linux /boot/vmlinuz {' '.join(args)}",
        f"    initrd /boot/{initrd_name}",
        "}",
        "",
    ])


def make_iso(image: Path, flavour: str, out: Path, append: list[str]) -> Path:
    """A hybrid BIOS + UEFI ISO of the image (grub-mkrescue)."""
    args = _check_args(append)
    tools = {t: shutil.which(t) for t in ("grub-mkrescue", "xorriso", "mformat")}
    for tool, path in tools.items():
        if path is None:
            raise SystemExit(f"{tool} not found (deps/apt-image.txt: grub-pc-bin, "
                             "grub-efi-amd64-bin, xorriso, mtools)")
    kernel, initrd = image_files(image, flavour)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="core0-iso-") as tmp:
        root = Path(tmp) / "root"
        (root / "boot/grub").mkdir(parents=True)
        shutil.copy2(kernel, root / "boot/vmlinuz")
        shutil.copy2(initrd, root / "boot" / initrd.name)
        (root / "boot/grub/grub.cfg").write_text(grub_cfg(initrd.name, args))
        # (what follows "--" goes to xorriso)
        res = subprocess.run([str(tools["grub-mkrescue"]), "--output", str(out), str(root), "--",
                              "-volid", "CORE0"],
                             capture_output=True, text=True, check=False)
        if res.returncode != 0 or not out.is_file():
            raise SystemExit(f"grub-mkrescue failed: {res.stderr.strip()[-2000:]}")
    return out


def ipxe_script(image: Path, flavour: str, base_url: str, append: list[str]) -> str:
    """An iPXE script booting the image from ``base_url`` (the image directory over HTTP)."""
    args = _check_args(append)
    if not base_url.startswith(("http://", "https://")) or any(c in base_url for c in " \n"):
        raise SystemExit(f"--base-url {base_url!r}: an http(s) URL")
    kernel, initrd = image_files(image, flavour)
    base = base_url.rstrip("/") + "/"
    return "\n".join([
        "#!ipxe",
        "dhcp",
        f"kernel {base}{kernel.name} initrd={initrd.name} {' '.join(args)}",
        f"initrd {base}{initrd.name}",
        "boot",
        "",
    ])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("format", choices=["iso", "ipxe"])
    ap.add_argument("--flavour", default="core", choices=["core", "full"])
    ap.add_argument("--image", default=str(REPO / "build/image"),
                    help="the built image directory (vmlinuz, initramfs…)")
    ap.add_argument("--out", help="output file (default: in the image directory)")
    ap.add_argument("--append", action="append", default=[], metavar="ARG",
                    help="a kernel command line argument (repeatable)")
    ap.add_argument("--base-url", help="ipxe: where the image directory is served over HTTP")
    ns = ap.parse_args(argv)
    image = Path(ns.image)
    suffix = "" if ns.flavour == "core" else f"-{ns.flavour}"
    if ns.format == "iso":
        out = Path(ns.out or image / f"core0{suffix}.iso")
        make_iso(image, ns.flavour, out, ns.append)
    else:
        if not ns.base_url:
            raise SystemExit("ipxe needs --base-url")
        out = Path(ns.out or image / f"core0{suffix}.ipxe")
        out.write_text(ipxe_script(image, ns.flavour, ns.base_url, ns.append))
    print(f"[media] {ns.format}: {out} ({out.stat().st_size / (1 << 20):.1f} MiB)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
