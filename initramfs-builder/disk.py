#!/usr/bin/env python3
"""The raw disk image with an A/B layout (``make image FORMAT=disk``), made from a built image.

    python3 initramfs-builder/disk.py [--flavour core|full] [--image build/image]
                                      [--out build/image/core0.disk.raw] [--append ARG ...]
                                      [--slot-size MiB] [--data-size MiB]

Layout (GPT, 1 MiB aligned; docs/boot-media.md)::

    1  bios      1 MiB   GRUB's i386-pc core image (SeaBIOS, legacy BIOS); boot.img in the MBR
    2  esp      64 MiB   FAT32 ``CORE0-ESP``: EFI/BOOT/BOOTX64.EFI (GRUB x86_64-efi, found by
                         every UEFI without an NVRAM entry), boot/grub/grub.cfg, grubenv
    3  core0-a          ext4 ``core0-a``: vmlinuz, initramfs…, manifest.json(.minisig), slot.env
    4  core0-b          ext4 ``core0-b``: the other slot (empty until the first upgrade)
    5  core0-data       ext4 ``core0-data``: the node's persistent disk (main.persistent_dir)

GRUB's config reads the **grubenv** (``core0_slot`` the known-good slot, ``core0_try`` a slot
on trial, ``core0_tries`` its boots left), counts a trial boot down with ``save_env`` before
booting it and boots the known-good slot once the count is spent. The kernel command line names
the slot (``core0.slot=a``) and the image (``core0.image=<digest>``, from the slot's
``slot.env``). Nothing here needs a loop device: the file systems are made at their offsets in
the image file (``mkfs.vfat --offset``, ``mke2fs -E offset=``), the FAT files copied with
mtools, and GRUB's boot sector and core image are written and patched as ``grub-bios-setup``
does for a BIOS boot partition.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import struct
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from media import REPO, _check_args, image_files

MiB = 1 << 20
SECTOR = 512
GRUB_LIB = Path("/usr/lib/grub")
ESP_LABEL = "CORE0-ESP"
DATA_LABEL = "core0-data"
PERSIST_DIR = "/var/lib/core0/persist"
SLOTS = ("a", "b")
#: GRUB modules built into the core images (everything the config uses, so nothing is
#: loaded from the ESP at boot; the module directories are copied there all the same)
MODULES = ["part_gpt", "fat", "ext2", "search", "search_fs_uuid", "search_label", "normal",
           "linux", "loadenv", "test", "echo", "serial", "terminal", "configfile", "reboot",
           "halt", "sleep"]
PLATFORM_MODULES = {"i386-pc": ["biosdisk"], "x86_64-efi": ["efi_gop"]}
#: what the node mounts as its persistent disk, and where
DISK_ARGS = [f"core0.main.persistent_device=LABEL={DATA_LABEL}",
             f"core0.main.persistent_dir={PERSIST_DIR}"]
#: the largest trial count the node may set (core0's image.boot_tries)
MAX_TRIES = 9
ENV_SIZE = 1024
ENV_HEADER = "# GRUB Environment Block\n"


def grubenv(values: dict[str, str]) -> bytes:
    """A GRUB environment block (what ``grub-editenv`` writes): 1024 bytes, ``#`` padded."""
    body = ENV_HEADER + "".join(f"{k}={v}\n" for k, v in values.items())
    raw = body.encode()
    if len(raw) > ENV_SIZE:
        raise ValueError("grubenv: more than 1024 bytes")
    return raw + b"#" * (ENV_SIZE - len(raw))


def grub_cfg(args: list[str], slot_uuids: dict[str, str]) -> str:
    """GRUB's configuration: pick the slot from the grubenv (counting a trial down), boot it
    on the serial and VGA consoles; the other slot when the chosen one cannot be loaded."""
    countdown = []
    for i, n in enumerate(range(MAX_TRIES, 0, -1)):  # GRUB has no arithmetic
        kw = "if" if i == 0 else "elif"
        countdown.append(f'    {kw} [ "$core0_tries" = {n} ]; then '
                         f"set core0_tries={n - 1}; set core0_boot=$core0_try")
    lines = [
        "serial --unit=0 --speed=115200",
        "terminal_input serial console",
        "terminal_output serial console",
        "set timeout=0",
        "# grubenv (docs/boot-media.md): core0_slot the known-good slot, core0_try a slot on",
        "# trial, core0_tries the trial boots left (counted down here, before the boot)",
        "set core0_slot=a",
        "set core0_try=",
        "set core0_tries=0",
        "load_env --skip-sig core0_slot core0_try core0_tries",
        'if [ "$core0_slot" != b ]; then set core0_slot=a; fi',
        "set core0_boot=$core0_slot",
        'if [ "$core0_try" = a ]; then set core0_trial=1; fi',
        'if [ "$core0_try" = b ]; then set core0_trial=1; fi',
        'if [ "$core0_trial" = 1 ]; then',
        *countdown,
        "    fi",
        "    save_env core0_tries",
        "fi",
        "function core0_boot_slot {",
        "    set core0_root=",
        *[f'    if [ "$1" = {s} ]; then search --no-floppy --fs-uuid --set=core0_root '
          f"{slot_uuids[s]}; fi" for s in SLOTS],
        '    if [ -z "$core0_root" ]; then return; fi',
        "    set core0_initrd=",
        "    set core0_digest=",
        "    load_env --skip-sig --file ($core0_root)/slot.env core0_initrd core0_digest",
        '    if [ -z "$core0_initrd" ]; then return; fi',
        '    echo "core0: slot $1"',
        f"    linux ($core0_root)/vmlinuz {' '.join(args)} core0.slot=$1 "
        "core0.image=$core0_digest",
        "    initrd ($core0_root)/$core0_initrd",
        "    boot",
        "}",
        "core0_boot_slot $core0_boot",
        'echo "core0: slot $core0_boot does not boot: the other one"',
        'if [ "$core0_boot" = a ]; then core0_boot_slot b; else core0_boot_slot a; fi',
        'echo "core0: no slot boots"',
        "sleep 10",
        "reboot",
        "",
    ]
    return "\n".join(lines)


def early_cfg(esp_uuid: str) -> str:
    """Built into both core images: find the ESP, then normal mode reads its grub.cfg."""
    return (f"search --no-floppy --fs-uuid --set=root {esp_uuid}\n"
            "set prefix=($root)/boot/grub\n")


def _run(argv: list[str]) -> None:
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({res.returncode}): {res.stderr.strip()[-1500:]}")


def _need(*tools: str) -> None:
    for t in tools:
        if shutil.which(t) is None:
            raise SystemExit(f"{t} not found (deps/apt-image.txt, deps/apt-storage.txt: "
                             "parted, dosfstools, mtools, e2fsprogs, grub-common, grub-pc-bin, "
                             "grub-efi-amd64-bin)")


def slot_files(image: Path, flavour: str, dest: Path) -> dict[str, str]:
    """Fill a slot directory from the built image; → its slot.env values."""
    kernel, initrd = image_files(image, flavour)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(kernel, dest / "vmlinuz")
    shutil.copy2(initrd, dest / initrd.name)
    env = {"core0_initrd": initrd.name}
    manifest = image / ("manifest.json" if flavour == "core" else f"manifest-{flavour}.json")
    if not manifest.is_file():
        manifest = image / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("initramfs") == initrd.name:
        shutil.copy2(manifest, dest / "manifest.json")
        sig = manifest.with_name(manifest.name + ".minisig")
        if sig.is_file():
            shutil.copy2(sig, dest / "manifest.json.minisig")
        env["core0_digest"] = hashlib.sha256(manifest.read_bytes()).hexdigest()
        env["core0_version"] = str(json.loads(manifest.read_text()).get("version", ""))
    (dest / "slot.env").write_bytes(grubenv(env))
    return env


def bios_setup(disk: Path, start: int, core: bytes) -> None:
    """What ``grub-bios-setup`` does for a core image in a BIOS boot partition at LBA
    ``start``: boot.img in the MBR (keeping the partition table) pointing at the core image,
    whose first sector (diskboot) lists the sectors that follow it."""
    nsec = (len(core) + SECTOR - 1) // SECTOR
    core = bytearray(core + b"\0" * (nsec * SECTOR - len(core)))
    # the blocklist at the end of diskboot: (start u64, len u16, segment u16), then a zero one
    end = SECTOR - 12
    core[end:end + 12] = struct.pack("<QHH", start + 1, nsec - 1, 0x820)
    core[end - 12:end] = b"\0" * 12
    boot = bytearray((GRUB_LIB / "i386-pc/boot.img").read_bytes())
    with disk.open("r+b") as f:
        mbr = f.read(SECTOR)
        boot[0x5C:0x64] = struct.pack("<Q", start)  # GRUB_BOOT_MACHINE_KERNEL_SECTOR
        boot[0x66:0x68] = b"\x90\x90"  # a hard disk: ignore a BIOS's wrong boot drive
        boot[0x1B8:0x1FE] = mbr[0x1B8:0x1FE]  # disk signature and (protective) partitions
        f.seek(0)
        f.write(bytes(boot))
        f.seek(start * SECTOR)
        f.write(bytes(core))


def make_disk(image: Path, flavour: str, out: Path, append: list[str], slot_mib: int = 0,
              data_mib: int = 512) -> Path:
    """The A/B disk image of a built image (slot A filled, B empty, data empty)."""
    _need("parted", "mkfs.vfat", "mke2fs", "mcopy", "mmd", "grub-mkimage")
    args = _check_args([*DISK_ARGS, *append])
    kernel, initrd = image_files(image, flavour)
    need = (kernel.stat().st_size + initrd.stat().st_size) // MiB + 1
    slot_mib = slot_mib or max(256, need * 5 // 2)
    if slot_mib < need + 16:
        raise SystemExit(f"--slot-size {slot_mib} MiB: the image needs {need + 16} MiB")
    # partitions: (name, start MiB, size MiB)
    parts = [("bios", 1, 1), ("esp", 2, 64), ("core0-a", 66, slot_mib),
             ("core0-b", 66 + slot_mib, slot_mib), ("core0-data", 66 + 2 * slot_mib, data_mib)]
    total = parts[-1][1] + data_mib + 1
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.{secrets.token_hex(4)}")
    esp_id = secrets.token_hex(4).upper()
    esp_uuid = f"{esp_id[:4]}-{esp_id[4:]}"
    slot_uuids = {s: str(uuid.uuid4()) for s in SLOTS}
    try:
        with tmp_out.open("wb") as f:
            f.truncate(total * MiB)
        label = ["parted", "-s", "-a", "optimal", str(tmp_out), "mklabel", "gpt"]
        for i, (name, start, size) in enumerate(parts, 1):
            kind = "fat32" if name == "esp" else "ext4"
            label += ["mkpart", name, kind, f"{start}MiB", f"{start + size}MiB"]
            if name == "bios":
                label += ["set", str(i), "bios_grub", "on"]
            elif name == "esp":
                label += ["set", str(i), "esp", "on"]
        _run(label)
        with tempfile.TemporaryDirectory(prefix="core0-disk-") as t:
            work = Path(t)
            _esp(tmp_out, work, parts[1], esp_id, esp_uuid, args, slot_uuids)
            slot_a = work / "slot-a"
            slot_files(image, flavour, slot_a)
            empty = work / "empty"
            empty.mkdir()
            for (name, start, size), src, fs_uuid in (
                    (parts[2], slot_a, slot_uuids["a"]), (parts[3], empty, slot_uuids["b"]),
                    (parts[4], empty, None)):
                argv = ["mke2fs", "-q", "-F", "-t", "ext4", "-L", name, "-d", str(src),
                        "-E", f"offset={start * MiB}", "-O", "^metadata_csum_seed,^orphan_file"]
                if fs_uuid:
                    argv += ["-U", fs_uuid]
                _run([*argv, str(tmp_out), f"{size * 1024}k"])
            core = work / "core.img"
            _run(["grub-mkimage", "-O", "i386-pc", "-o", str(core), "-c", str(work / "early.cfg"),
                  "-p", "/boot/grub", *PLATFORM_MODULES["i386-pc"], *MODULES])
            if core.stat().st_size > MiB:
                raise SystemExit("GRUB's i386-pc core image does not fit its 1 MiB partition")
            bios_setup(tmp_out, parts[0][1] * MiB // SECTOR, core.read_bytes())
        os.replace(tmp_out, out)
    finally:
        tmp_out.unlink(missing_ok=True)
    return out


def _esp(disk: Path, work: Path, part: tuple[str, int, int], esp_id: str, esp_uuid: str,
         args: list[str], slot_uuids: dict[str, str]) -> None:
    """The EFI system partition: FAT32, GRUB for UEFI, grub.cfg, grubenv, module dirs."""
    _name, start, size = part
    _run(["mkfs.vfat", "-F", "32", "-s", "1", "-n", ESP_LABEL, "-i", esp_id,
          f"--offset={start * MiB // SECTOR}", str(disk), str(size * 1024)])
    (work / "early.cfg").write_text(early_cfg(esp_uuid))
    efi = work / "BOOTX64.EFI"
    _run(["grub-mkimage", "-O", "x86_64-efi", "-o", str(efi), "-c", str(work / "early.cfg"),
          "-p", "/boot/grub", *PLATFORM_MODULES["x86_64-efi"], *MODULES])
    grub = work / "grub"
    for platform in ("i386-pc", "x86_64-efi"):
        shutil.copytree(GRUB_LIB / platform, grub / platform,
                        ignore=shutil.ignore_patterns("*.img", "*.efi", "*.image", "*.module",
                                                      "*.exec", "*.S", "*.h", "config.h"))
    (grub / "grub.cfg").write_text(grub_cfg(args, slot_uuids))
    (grub / "grubenv").write_bytes(grubenv({"core0_slot": "a", "core0_try": "",
                                            "core0_tries": "0"}))
    img = f"{disk}@@{start * MiB}"
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    for argv in (["mmd", "-i", img, "::/EFI", "::/EFI/BOOT", "::/boot"],
                 ["mcopy", "-i", img, str(efi), "::/EFI/BOOT/BOOTX64.EFI"],
                 ["mcopy", "-i", img, "-s", str(grub), "::/boot/"]):
        res = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if res.returncode != 0:
            raise SystemExit(f"{argv[0]} failed: {res.stderr.strip()[-1500:]}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flavour", default="core", choices=["core", "full"])
    ap.add_argument("--image", default=str(REPO / "build/image"),
                    help="the built image directory (vmlinuz, initramfs, manifest…)")
    ap.add_argument("--out", help="output file (default: <image>/core0-<flavour>.disk.raw)")
    ap.add_argument("--append", action="append", default=[], metavar="ARG",
                    help="a kernel command line argument (repeatable)")
    ap.add_argument("--slot-size", type=int, default=0, metavar="MiB",
                    help="size of each slot partition (default: 2.5 × the image, ≥ 256)")
    ap.add_argument("--data-size", type=int, default=512, metavar="MiB",
                    help="size of the persistent partition (grow it on the real disk)")
    ns = ap.parse_args(argv)
    image = Path(ns.image)
    out = Path(ns.out or image / f"core0-{ns.flavour}.disk.raw")
    make_disk(image, ns.flavour, out, ns.append, ns.slot_size, ns.data_size)
    print(f"[disk] {out} ({out.stat().st_size / MiB:.0f} MiB, sparse)", file=sys.stderr)


if __name__ == "__main__":
    main()
