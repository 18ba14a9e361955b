#!/usr/bin/env python3
"""Build the core0 node image: a Debian kernel and a compressed initramfs holding core0.

    python3 initramfs-builder/build.py [--flavour core|full] [--out build/image]

Everything comes from Debian packages (``apt-get download`` + ``dpkg-deb -x``, no maintainer
scripts, cached under ``imagelib.default_cache()``) and from PyPI wheels (cp311, cached): the
kernel and the modules the image's drivers need (``depmod`` writes their dependency data),
busybox, python3.11 with a trimmed standard library, core0 + core0_client from this repository
and their pure or manylinux deps, redis-server, and (``full``) btrfs-progs, zfs-fuse, nftables,
dnsmasq, iproute2, qemu and libvirt. Shared libraries are found from ELF NEEDED entries. The
initramfs is written by a deterministic cpio (newc) writer (sorted, root-owned, fixed mtime,
with /dev/console and /dev/urandom nodes, so Python's hash seeding never waits for the kernel's
entropy pool).

With ``--base <reference>`` (``oci:<layout>[:<tag>]``, ``oci-archive:``, ``docker-archive:``,
``docker://``) the root starts from that OCI image's layers, unpacked by the container image
store's safe unpacker, and the builder's content goes on top (ocibase.py, docs/images.md).

Output in ``--out``: ``vmlinuz``, ``initramfs.cpio.<xz|zst|gz>`` (``initramfs-full…`` for the
full flavour), ``manifest.json`` (``manifest-full.json``): files with sizes and sha256, package
and wheel versions, sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import imagelib  # noqa: E402
import ocibase  # noqa: E402
import pystage  # noqa: E402
import sign  # noqa: E402

PY = "python3.11"
#: parts of the standard library a node never imports (kept although they look optional:
#: unittest and sqlite3, which pyroute2 imports at run time)
STDLIB_EXCLUDE = [
    "test/", "idlelib/", "tkinter/", "turtledemo/", "lib2to3/", "ensurepip/", "pydoc_data/",
    "distutils/", "venv/", "__phello__/", "unittest/test/", "config-3.11-x86_64-linux-gnu/",
    "turtle.py", "pydoc.py", "doctest.py", "__pycache__/", "site-packages/", "dist-packages/",
    "lib-dynload/_test*", "lib-dynload/_ctypes_test*", "lib-dynload/xxlimited*",
    "lib-dynload/_xxtestfuzz*", "lib-dynload/audioop*", "lib-dynload/nis*",
    "lib-dynload/ossaudiodev*", "lib-dynload/_curses*", "lib-dynload/_dbm*",
    "lib-dynload/readline*", "sqlite3/test/", "curses/", "dbm/",
    "lib-dynload/_tkinter*", "lib-dynload/_lsprof*",
]
COMPRESSORS = {
    "xz": (["xz", "-9", "--check=crc32", "-T0", "-c"], "xz"),
    "zstd": (["zstd", "-19", "-T0", "-q", "-c"], "zst"),
    "gzip": (["gzip", "-9", "-n", "-c"], "gz"),
}
DEV_NODES = [("dev/console", 5, 1, 0o600), ("dev/null", 1, 3, 0o666),
             ("dev/zero", 1, 5, 0o666), ("dev/random", 1, 8, 0o666),
             ("dev/urandom", 1, 9, 0o666), ("dev/tty", 5, 0, 0o666)]


def log(msg: str) -> None:
    print(f"[image] {msg}", flush=True)


# ---------------------------------------------------------------- spec

class Spec:
    def __init__(self) -> None:
        self.packages: list[str] = []
        self.files: list[str] = []
        self.links: list[tuple[str, str]] = []
        self.modules: list[str] = []
        self.pip: list[str] = []
        self.dirs: list[str] = []

    @classmethod
    def load(cls, path: Path, into: Spec | None = None) -> Spec:
        spec = into or cls()
        section = ""
        for raw in path.read_text().splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("include "):
                cls.load(path.parent / line.split(None, 1)[1], spec)
                continue
            m = re.fullmatch(r"\[(\w+)\]", line)
            if m:
                section = m.group(1)
                continue
            if section == "packages":
                spec.packages.append(line)
            elif section == "files":
                spec.files.append(line)
            elif section == "links":
                a, b = line.split()
                spec.links.append((a, b))
            elif section == "modules":
                spec.modules.append(line)
            elif section == "pip":
                spec.pip.append(line)
            elif section == "dirs":
                spec.dirs.append(line)
            else:
                raise SystemExit(f"{path}: line outside a section: {raw}")
        return spec


# ---------------------------------------------------------------- packages

def kernel_package() -> str:
    out = imagelib.run(["apt-cache", "depends", "linux-image-amd64"])
    for line in out.splitlines():
        name = line.strip().partition(": ")[2]
        if name.startswith("linux-image-") and name[12:13].isdigit():
            return name
    raise SystemExit("cannot resolve linux-image-amd64 (apt-get update?)")


def fetch(spec: Spec, cache: Path) -> tuple[dict[str, imagelib.Package], list[Path], Path]:
    """Download and extract: (packages, extracted trees of the userland, kernel tree)."""
    try:
        kpkg = kernel_package()
        names = imagelib.closure(spec.packages)
        pkgs = imagelib.candidates([*names, kpkg])
    except RuntimeError:
        log("apt lists missing or stale: apt-get update")
        imagelib.run(["apt-get", "update", "-q"])
        kpkg = kernel_package()
        names = imagelib.closure(spec.packages)
        pkgs = imagelib.candidates([*names, kpkg])
    missing = [n for n in [*spec.packages, kpkg] if n not in pkgs]
    if missing:
        raise SystemExit(f"no candidate for: {', '.join(missing)}")
    debs = imagelib.download(pkgs.values(), cache / "debs")
    trees = [imagelib.extract(debs[n], cache / "x") for n in names if n in pkgs]
    return pkgs, trees, imagelib.extract(debs[kpkg], cache / "x")


# ---------------------------------------------------------------- staging

class Stage:
    def __init__(self, root: Path, sysroot: Path):
        self.root = root
        self.sysroot = sysroot

    def dst(self, path: str) -> Path:
        return self.root / imagelib.usr_path(path).lstrip("/")

    def skeleton(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        for d in ("usr/bin", "usr/sbin", "usr/lib/x86_64-linux-gnu", "usr/lib64", "etc",
                  "proc", "sys", "dev", "run", "tmp", "var/log", "var/lib", "var/cache",
                  "mnt", "root", "home"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"),
                             ("lib64", "usr/lib64"), ("var/run", "../run"),
                             ("var/lock", "../run/lock"), ("var/tmp", "../tmp")):
            os.symlink(target, self.root / link)
        os.chmod(self.root / "tmp", 0o1777)
        os.chmod(self.root / "root", 0o700)

    def copy_tree(self, src: Path) -> None:
        """Copy a directory of this repository over the stage."""
        for p in sorted(src.rglob("*")):
            rel = p.relative_to(src)
            if p.name == ".keep" or "__pycache__" in rel.parts:
                continue
            out = self.root / rel
            if p.is_symlink():
                out.parent.mkdir(parents=True, exist_ok=True)
                if out.is_symlink() or out.exists():
                    out.unlink()
                os.symlink(os.readlink(p), out)
            elif p.is_dir():
                out.mkdir(parents=True, exist_ok=True)
            else:
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, out)

    def copy(self, path: str, optional: bool = False) -> None:
        """A file or directory of the packages into the stage (symlinks dereferenced)."""
        real = imagelib.resolve(self.sysroot, path.rstrip("/"))
        if real is None:
            if optional:
                return
            raise SystemExit(f"not found in the packages: {path}")
        src = self.sysroot / real.lstrip("/")
        out = self.dst(path.rstrip("/"))
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, out, symlinks=True, dirs_exist_ok=True)
        else:
            if out.is_symlink():
                out.unlink()
            shutil.copy2(src, out)

    def link(self, path: str, target: str) -> None:
        out = self.dst(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.is_symlink() or out.exists():
            out.unlink()
        os.symlink(target, out)

    def busybox_links(self) -> int:
        bb = self.root / "usr/bin/busybox"
        applets = imagelib.run([str(bb), "--list-full"]).split()
        n = 0
        for a in applets:
            name = os.path.basename(a)
            if name in ("init", "linuxrc"):
                continue
            out = self.dst("/" + a)
            # a real program of that name (iproute2's ip, util-linux's mount…) wins
            if any((self.root / d / name).exists() or (self.root / d / name).is_symlink()
                   for d in ("usr/bin", "usr/sbin")):
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(bb, out.parent), out)
            n += 1
        return n

    def trim_stdlib(self) -> None:
        base = self.root / "usr/lib" / PY
        for pat in STDLIB_EXCLUDE:
            for p in base.glob(pat.rstrip("/")) if "*" in pat else [base / pat.rstrip("/")]:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                elif p.exists() or p.is_symlink():
                    p.unlink()
        for p in list(base.rglob("__pycache__")):
            shutil.rmtree(p, ignore_errors=True)

    def shared_libraries(self) -> list[str]:
        """Copy every library the stage's ELF files need, transitively; return their names."""
        search = ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib"]
        added: list[str] = []
        have: set[str] = {p.name for p in (self.root / "usr/lib/x86_64-linux-gnu").iterdir()}
        todo = [p for p in self.root.rglob("*") if p.is_file() and not p.is_symlink()]
        interps: set[str] = set()
        while todo:
            p = todo.pop()
            info = imagelib.elf_info(p)
            if info is None:
                continue
            if info.interp:
                interps.add(info.interp)
            origin = "/" + str(p.parent.relative_to(self.root))
            for soname in info.needed:
                if soname in have or (p.parent / soname).exists():
                    continue
                dirs = [d.replace("$ORIGIN", origin) for d in info.runpath] + search
                found = None
                for d in dirs:
                    real = imagelib.resolve(self.sysroot, f"{d}/{soname}")
                    if real is not None:
                        found = (d, real)
                        break
                if found is None:
                    raise SystemExit(f"{p.relative_to(self.root)}: {soname} not in the packages")
                d, real = found
                out = self.dst(f"{d}/{soname}") if d not in search else \
                    self.root / "usr/lib/x86_64-linux-gnu" / soname
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.sysroot / real.lstrip("/"), out)
                have.add(soname)
                added.append(soname)
                todo.append(out)
        for interp in interps:  # /lib64/ld-linux-x86-64.so.2
            out = self.dst(interp)
            if not out.exists():
                real = imagelib.resolve(self.sysroot, interp)
                if real is None:
                    raise SystemExit(f"interpreter {interp} not in the packages")
                name = os.path.basename(interp)
                lib = self.root / "usr/lib/x86_64-linux-gnu" / name
                if not lib.exists():
                    shutil.copy2(self.sysroot / real.lstrip("/"), lib)
                out.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(os.path.relpath(lib, out.parent), out)
        return added


# ---------------------------------------------------------------- kernel

def kernel(stage: Stage, ktree: Path, wanted: list[str], out_dir: Path) -> tuple[str, int]:
    """vmlinuz into ``out_dir``; the wanted modules (+ dependencies) and depmod's files into
    the stage. Returns (release, number of modules)."""
    mod_root = next((ktree / "lib/modules").iterdir())
    release = mod_root.name
    shutil.copy2(ktree / f"boot/vmlinuz-{release}", out_dir / "vmlinuz")
    by_name: dict[str, Path] = {}
    for ko in (mod_root / "kernel").rglob("*.ko"):
        by_name[ko.name[:-3].replace("-", "_")] = ko
    chosen: dict[str, Path] = {}

    def add(name: str) -> None:
        name = name.replace("-", "_")
        if name in chosen:
            return
        ko = by_name.get(name)
        if ko is None:
            return  # built in, or not in this kernel
        chosen[name] = ko
        for dep in imagelib.modinfo(ko).get("depends", []):
            for d in dep.split(","):
                if d:
                    add(d)

    for w in wanted:
        if w.endswith("/"):
            for ko in (mod_root / w).rglob("*.ko"):
                add(ko.name[:-3])
        elif w.replace("-", "_") in by_name:
            add(w)
        else:
            builtin = (mod_root / "modules.builtin").read_text()
            if not re.search(rf"/{re.escape(w)}\.ko$", builtin.replace("-", "_"), re.M):
                raise SystemExit(f"kernel module {w} not found")
    dest = stage.root / "usr/lib/modules" / release
    for ko in chosen.values():
        out = dest / ko.relative_to(mod_root)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ko, out)
    for f in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (mod_root / f).exists():
            shutil.copy2(mod_root / f, dest / f)
    imagelib.run(["depmod", "-b", str(stage.root), release])
    return release, len(chosen)


# ---------------------------------------------------------------- archive

def write_archive(stage: Stage, path: Path, compress: str, mtime: int,
                  level: int | None = None) -> int:
    """cpio of the stage through the compressor (``level``: instead of its best); returns the
    uncompressed size."""
    argv, _ = COMPRESSORS[compress]
    if level is not None:
        argv = [argv[0], f"-{level}", *argv[2:]]
    with path.open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out)
        assert proc.stdin is not None
        w = imagelib.CpioWriter(proc.stdin, mtime)
        entries = list(imagelib.tree_entries(stage.root))
        for name, major, minor, mode in DEV_NODES:
            entries.append(imagelib.Entry(name, stat.S_IFCHR | mode, rdev=(major, minor)))
        entries.sort(key=lambda e: e.path)
        for e in entries:
            w.add(e)
        w.finish()
        proc.stdin.close()
        if proc.wait() != 0:
            raise SystemExit(f"{argv[0]} failed")
    return w.size


def manifest(stage: Stage, out: Path, info: dict[str, object]) -> dict[str, object]:
    files: list[dict[str, object]] = []
    by_area: dict[str, int] = {}
    for p in sorted(stage.root.rglob("*")):
        rel = "/" + str(p.relative_to(stage.root))
        if p.is_symlink():
            files.append({"path": rel, "link": os.readlink(p)})
        elif p.is_file():
            size = p.stat().st_size
            files.append({"path": rel, "size": size, "mode": oct(stat.S_IMODE(p.stat().st_mode)),
                          "sha256": imagelib.sha256_file(p)})
            by_area[area(rel)] = by_area.get(area(rel), 0) + size
    data = dict(info)
    data["areas"] = dict(sorted(by_area.items(), key=lambda kv: -kv[1]))
    data["files"] = files
    out.write_text(json.dumps(data, indent=1) + "\n")
    return data


def area(path: str) -> str:
    for prefix, name in (("/usr/lib/python3.11/", "python stdlib"),
                         ("/usr/lib/python3/dist-packages/core0", "core0"),
                         ("/usr/lib/python3/dist-packages/", "python packages"),
                         ("/usr/lib/modules/", "kernel modules"),
                         ("/usr/lib/x86_64-linux-gnu/", "shared libraries"),
                         ("/usr/share/", "data"), ("/usr/bin/", "programs"),
                         ("/usr/sbin/", "programs")):
        if path.startswith(prefix):
            return name
    return "other"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("flavour", nargs="?", default="core", choices=["core", "full"])
    ap.add_argument("--out", default=str(REPO / "build/image"))
    ap.add_argument("--cache", default=str(imagelib.default_cache()))
    ap.add_argument("--work", default=str(REPO / "build/work"))
    ap.add_argument("--compress", default=os.environ.get("COMPRESS", "zstd"),
                    choices=sorted(COMPRESSORS),
                    help="zstd (default: unpacks twice as fast as xz at boot), xz, gzip")
    ap.add_argument("--compress-level", type=int,
                    default=int(os.environ.get("COMPRESS_LEVEL", "0")) or None,
                    help="the compressor's level (default: its best, zstd -19, xz -9, gzip -9; "
                         "the tests build with 3: zstd -19 takes ~40 s of a 2-core machine per "
                         "image, -3 under a second, for a 25 %% larger image in the same format)")
    ap.add_argument("--sources", default="core0", choices=["core0", "all"],
                    help="which Python modules keep their .py files (default: core0's only)")
    ap.add_argument("--fetch-only", action="store_true",
                    help="only download the flavour's packages and wheels into --cache (CI "
                         "runs this while installing, so image builds in tests need no network)")
    ap.add_argument("--version-tag", default="", help="core0's version in the image becomes "
                    "<version>+<tag> (told apart in upgrade tests and rollouts)")
    ap.add_argument("--sign-key", help="minisign secret key (no password: minisign -G -W): "
                    "writes manifest*.json.minisig (docs/images.md)")
    ap.add_argument("--base", help="an OCI image as the base of the root: oci:<layout>[:<tag>], "
                    "oci-archive:<tar>, docker-archive:<tar>, docker://<host>/<repo>:<tag> "
                    "(docs/images.md)")
    ap.add_argument("--kernel-from", default="debian", choices=["debian", "base"],
                    help="the kernel and modules: Debian's package (default) or the base's "
                         "/boot/vmlinuz-* and /lib/modules/<release>")
    ns = ap.parse_args(argv)
    if ns.kernel_from == "base" and not ns.base:
        ap.error("--kernel-from base needs --base")
    t0 = time.monotonic()
    out_dir, cache, work = Path(ns.out), Path(ns.cache), Path(ns.work) / ns.flavour
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = Spec.load(HERE / f"{ns.flavour}.list")
    base = None
    if ns.base and not ns.fetch_only:  # first: a bad base fails before anything is fetched
        base = ocibase.unpack(ns.base, work, keep_kernel=ns.kernel_from == "base")
        log(f"base {ns.base}: manifest {base.meta['digest']}, unpacked in "
            f"{time.monotonic() - t0:.1f}s")

    log(f"{ns.flavour}: resolving and fetching {len(spec.packages)} package(s) + deps")
    pkgs, trees, ktree = fetch(spec, cache)
    if ns.fetch_only:
        pystage.download_wheels(pystage.tested_pins(spec.pip), cache)
        log(f"{ns.flavour}: packages and wheels in {cache} ({time.monotonic() - t0:.0f}s)")
        return
    sysroot = work / "sysroot"
    imagelib.merge_trees(trees, sysroot)
    t_fetch = time.monotonic()

    stage = Stage(work / "root", sysroot)
    stage.skeleton()
    for f in spec.files:
        stage.copy(f.rstrip("?"), optional=f.endswith("?"))
    for path, target in spec.links:
        stage.link(path, target)
    for d in spec.dirs:
        stage.dst(d).mkdir(parents=True, exist_ok=True)
    stage.trim_stdlib()
    stage.copy_tree(HERE / "rootfs")
    if (HERE / f"rootfs-{ns.flavour}").is_dir():  # what only this flavour adds (services…)
        stage.copy_tree(HERE / f"rootfs-{ns.flavour}")
    n_applets = stage.busybox_links()
    versions = pystage.python_packages(stage.root, spec.pip, cache, ns.version_tag)
    with (stage.root / "etc/os-release").open("a") as rel:
        rel.write(f'VERSION_ID="{versions["core0"]}"\nVARIANT_ID={ns.flavour}\n')
    libs = stage.shared_libraries()
    if base is not None and ns.kernel_from == "base":
        release, n_mods = ocibase.base_kernel(base, out_dir)
    else:
        release, n_mods = kernel(stage, ktree, spec.modules, out_dir)
    pystage.compile_python(stage.root, ns.sources)
    log(f"staged: {n_applets} busybox applets, {len(libs)} shared libraries, {n_mods} modules "
        f"(kernel {release}) in {time.monotonic() - t_fetch:.1f}s")
    if base is not None:
        log(ocibase.compose(base, stage.root, work, release, ns.kernel_from))
        stage = Stage(base.root, sysroot)

    suffix = "" if ns.flavour == "core" else f"-{ns.flavour}"
    ext = COMPRESSORS[ns.compress][1]
    for old in out_dir.glob(f"initramfs{suffix}.cpio.*"):
        old.unlink()
    image = out_dir / f"initramfs{suffix}.cpio.{ext}"
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    t = time.monotonic()
    raw = write_archive(stage, image, ns.compress, mtime, ns.compress_level)
    log(f"compressed with {ns.compress}"
        f"{f' -{ns.compress_level}' if ns.compress_level else ''} in {time.monotonic() - t:.1f}s")
    sizes = {"vmlinuz": (out_dir / "vmlinuz").stat().st_size, "initramfs": image.stat().st_size,
             "initramfs_uncompressed": raw}
    sizes["total"] = sizes["vmlinuz"] + sizes["initramfs"]
    info: dict[str, object] = {
        "flavour": ns.flavour,
        "version": versions["core0"],
        "kernel": release,
        "initramfs": image.name,
        "compression": ns.compress,
        "sizes": sizes,
        "sha256": {"vmlinuz": imagelib.sha256_file(out_dir / "vmlinuz"),
                   image.name: imagelib.sha256_file(image)},
        "packages": {p.name: p.version for p in sorted(pkgs.values(), key=lambda p: p.name)},
        "python": versions,
        **({"base": base.record(ns.kernel_from)} if base is not None else {}),
        "build_seconds": round(time.monotonic() - t0, 1),
    }
    data = manifest(stage, out_dir / f"manifest{suffix}.json", info)
    if ns.sign_key:
        sign.sign(out_dir / f"manifest{suffix}.json", Path(ns.sign_key),
                  f"core0 image {versions['core0']} {ns.flavour}")
        log(f"signed: manifest{suffix}.json.minisig")
    else:  # a signature left by an earlier build would not match this manifest
        (out_dir / f"manifest{suffix}.json.minisig").unlink(missing_ok=True)
    mb = 1 << 20
    log(f"{ns.flavour} image in {out_dir}: vmlinuz {sizes['vmlinuz'] / mb:.1f} MiB, "
        f"{image.name} {sizes['initramfs'] / mb:.1f} MiB ({raw / mb:.1f} MiB unpacked, "
        f"{len(data['files'])} entries), total {sizes['total'] / mb:.1f} MiB, "  # type: ignore[arg-type]
        f"built in {time.monotonic() - t0:.0f}s")
    for name, size in data["areas"].items():  # type: ignore[attr-defined]
        log(f"  {name:18} {size / mb:7.1f} MiB")


if __name__ == "__main__":
    main()
