"""Helpers of the image builder: Debian packages (apt-get download + dpkg-deb -x, cached),
ELF dependencies, kernel module metadata and a cpio (newc) writer.

Build tooling: it runs on the build host and may use subprocess. Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import struct
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------- Debian packages

#: never downloaded: maintainer-script machinery and things the image brings itself
APT_EXCLUDE = {
    "debconf", "debconf-2.0", "dpkg", "perl-base", "perl", "adduser", "passwd", "login",
    "init-system-helpers", "lsb-base", "sysvinit-utils", "sensible-utils", "systemd",
    "systemd-sysv", "libpam-systemd", "dbus", "python3", "python3.11", "python3-minimal",
    "libpam-runtime", "libpam0g", "libpam-modules", "libpam-modules-bin", "base-files",
    "coreutils", "tzdata", "ucf", "install-info", "mime-support", "media-types", "logrotate",
    "bash", "dash", "debianutils", "gcc-12-base", "readline-common", "netbase",
    "libsemanage2", "libsemanage-common", "libsepol2", "cron", "anacron", "udev", "pci.ids",
    "usb.ids", "libvirt-daemon-system", "libvirt-daemon-config-network",
    "libvirt-daemon-config-nwfilter", "apparmor", "iptables", "polkitd", "pkexec",
}


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    filename: str  #: basename of the .deb in the pool
    sha256: str
    size: int


def run(argv: list[str], **kw: object) -> str:
    """Run a build tool, return its stdout; raise with its stderr on failure."""
    res = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {res.returncode}: {res.stderr.strip()}")
    return str(res.stdout)


def _records(text: str) -> Iterator[dict[str, str]]:
    for block in text.split("\n\n"):
        rec: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                rec[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                rec[key] = value.strip()
        if rec:
            yield rec


def closure(roots: Iterable[str], exclude: set[str] | None = None) -> list[str]:
    """``roots`` and what they depend on (Depends and Pre-Depends; of alternatives the first;
    of a virtual package its first provider), without expanding ``exclude``/APT_EXCLUDE."""
    skip = APT_EXCLUDE | (exclude or set())
    order: list[str] = []
    seen: set[str] = set()
    wanted = set(roots)  # named packages are fetched even when listed in the exclusions
    todo = list(roots)
    while todo:
        batch = []
        for name in todo:
            if name not in seen and (name not in skip or name in wanted):
                seen.add(name)
                batch.append(name)
        order += batch
        todo = []
        if not batch:
            break
        out = run(["apt-cache", "depends", "--no-recommends", "--no-suggests", "--no-conflicts",
                   "--no-breaks", "--no-replaces", "--no-enhances", *batch])
        alt_open = False  # the previous line was "|Depends:": this one is an alternative
        virtual = False
        for line in out.splitlines():
            if not line.startswith(" "):
                alt_open = virtual = False
                continue
            if line.startswith("    "):  # providers of a virtual package
                if virtual:
                    todo.append(line.strip())
                    virtual = False
                continue
            kind, _, dep = line.strip().partition(": ")
            if kind.lstrip("|") not in ("Depends", "PreDepends"):
                alt_open = False
                continue
            chosen_before = alt_open
            alt_open = kind.startswith("|")
            if chosen_before:
                continue
            virtual = dep.startswith("<")
            if not virtual:
                todo.append(dep.split(":")[0])
    return order


def candidates(names: list[str]) -> dict[str, Package]:
    """The candidate version of each package (from the local apt lists)."""
    out: dict[str, Package] = {}
    for i in range(0, len(names), 200):
        text = run(["apt-cache", "show", "--no-all-versions", *names[i : i + 200]])
        for rec in _records(text):
            name = rec.get("Package", "")
            if name and "Filename" in rec and name not in out:
                out[name] = Package(name, rec["Version"], os.path.basename(rec["Filename"]),
                                    rec.get("SHA256", ""), int(rec.get("Size", "0")))
    return out


def _deb_name(pkg: Package) -> str:
    return pkg.filename


def default_cache() -> Path:
    """Where downloaded packages and wheels are kept between builds: ``$CORE0_BUILD_CACHE``,
    else ``$XDG_CACHE_HOME/core0/image`` (``~/.cache``): outside the work tree, so a fresh
    clone (CI) reuses what an earlier build on the machine fetched (every .deb is checked
    against its size; names carry the exact version)."""
    env = os.environ.get("CORE0_BUILD_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "core0" / "image"


def download(pkgs: Iterable[Package], cache: Path) -> dict[str, Path]:
    """The .deb of each package, downloaded into ``cache`` unless present and intact."""
    cache.mkdir(parents=True, exist_ok=True)
    pkgs = list(pkgs)
    missing = [p for p in pkgs if not _intact(cache / _deb_name(p), p)]
    if missing:
        argv = ["apt-get", "download", "-q", *[f"{p.name}={p.version}" for p in missing]]
        # a mirror's or the resolver's passing failure is retried (for about 3 minutes)
        for attempt in range(7):
            res = subprocess.run(argv, cwd=cache, capture_output=True, text=True, check=False)
            if res.returncode == 0:
                break
            time.sleep(min(2 ** attempt * 2, 60))
        else:
            raise RuntimeError(f"apt-get download failed: {res.stderr.strip()[-2000:]}")
        for p in missing:
            # apt-get names files with the epoch encoded as %3a, the pool without the epoch
            for cand in cache.glob(f"{p.name}_*{p.version.split(':')[-1]}_*.deb"):
                if cand.name != _deb_name(p):
                    cand.replace(cache / _deb_name(p))
            if not _intact(cache / _deb_name(p), p):
                raise RuntimeError(f"{p.name} {p.version}: download missing or corrupt")
    return {p.name: cache / _deb_name(p) for p in pkgs}


def _intact(path: Path, pkg: Package) -> bool:
    if not path.exists() or (pkg.size and path.stat().st_size != pkg.size):
        return False
    return not pkg.sha256 or sha256_file(path) == pkg.sha256


def extract(deb: Path, cache: Path) -> Path:
    """dpkg-deb -x into ``cache/<deb name>/`` once (no maintainer scripts run)."""
    dest = cache / deb.name.removesuffix(".deb")
    stamp = dest / ".extracted"
    if not stamp.exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        run(["dpkg-deb", "-x", str(deb), str(dest)])
        stamp.write_text("ok\n")
    return dest


def merge_trees(trees: Iterable[Path], dest: Path) -> None:
    """Hard-link the extracted packages into one sysroot (later ones do not overwrite)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for tree in trees:
        run(["cp", "-al", "--no-clobber", f"{tree}/.", str(dest)])
    (dest / ".extracted").unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- sysroot paths

_MERGED = ("/bin", "/sbin", "/lib", "/lib64")


def usr_path(path: str) -> str:
    """The merged-/usr location of a package path (/lib/x → /usr/lib/x)."""
    for top in _MERGED:
        if path == top or path.startswith(top + "/"):
            return "/usr" + path
    return path


def resolve(sysroot: Path, path: str, depth: int = 0) -> str | None:
    """Follow symlinks of ``path`` inside ``sysroot`` (with merged /usr); the final real
    path, or None when it does not exist."""
    if depth > 40:
        return None
    parts = [p for p in path.split("/") if p]
    cur = ""
    for i, part in enumerate(parts):
        nxt = f"{cur}/{part}"
        real = _exists(sysroot, nxt)
        if real is None:
            return None
        full = sysroot / real.lstrip("/")
        if full.is_symlink():
            target = os.readlink(full)
            base = target if target.startswith("/") else f"{os.path.dirname(real)}/{target}"
            rest = "/".join(parts[i + 1 :])
            return resolve(sysroot, os.path.normpath(f"{base}/{rest}" if rest else base),
                           depth + 1)
        cur = real
    return cur or "/"


def _exists(sysroot: Path, path: str) -> str | None:
    for cand in (path, usr_path(path), path.removeprefix("/usr") or "/"):
        full = sysroot / cand.lstrip("/")
        if full.exists() or full.is_symlink():
            return cand
    return None


# ---------------------------------------------------------------- ELF

@dataclass
class ElfInfo:
    needed: list[str]
    runpath: list[str]
    interp: str | None


def elf_info(path: Path) -> ElfInfo | None:
    """NEEDED, RUNPATH/RPATH and the interpreter of a 64-bit little-endian ELF file."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads: list[tuple[int, int, int]] = []
    dyn: tuple[int, int] | None = None
    interp = None
    for i in range(phnum):
        p_type, _flags, off, vaddr, _paddr, filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1:
            loads.append((vaddr, off, filesz))
        elif p_type == 2:
            dyn = (off, filesz)
        elif p_type == 3:
            interp = data[off : off + filesz].rstrip(b"\0").decode()
    if dyn is None:
        return ElfInfo([], [], interp)
    entries = []
    for off in range(dyn[0], dyn[0] + dyn[1], 16):
        tag, val = struct.unpack_from("<qQ", data, off)
        if tag == 0:
            break
        entries.append((tag, val))
    strtab = next((v for t, v in entries if t == 5), None)
    if strtab is None:
        return ElfInfo([], [], interp)
    base = next((off + strtab - vaddr for vaddr, off, sz in loads
                 if vaddr <= strtab < vaddr + sz), strtab)

    def string(o: int) -> str:
        end = data.index(b"\0", base + o)
        return data[base + o : end].decode()

    needed = [string(v) for t, v in entries if t == 1]
    runpath = []
    for t, v in entries:
        if t in (15, 29):
            runpath += [p for p in string(v).split(":") if p]
    return ElfInfo(needed, runpath, interp)


def elf_section(path: Path, name: str) -> bytes:
    """The contents of a section (e.g. ``.modinfo`` of a kernel module)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return b""
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = []
    for i in range(shnum):
        sh_name, _t, _f, _a, off, size = struct.unpack_from("<IIQQQQ", data,
                                                            shoff + i * shentsize)
        sections.append((sh_name, off, size))
    _n, str_off, _s = sections[shstrndx]
    for sh_name, off, size in sections:
        end = data.index(b"\0", str_off + sh_name)
        if data[str_off + sh_name : end].decode() == name:
            return data[off : off + size]
    return b""


def modinfo(path: Path) -> dict[str, list[str]]:
    """key → values of a module's .modinfo (depends, alias, …)."""
    out: dict[str, list[str]] = {}
    for item in elf_section(path, ".modinfo").split(b"\0"):
        k, sep, v = item.decode(errors="replace").partition("=")
        if sep:
            out.setdefault(k, []).append(v)
    return out


# ---------------------------------------------------------------- cpio (newc)

@dataclass
class Entry:
    path: str  #: inside the archive, no leading slash
    mode: int
    data: bytes | Path = b""
    rdev: tuple[int, int] = (0, 0)


class CpioWriter:
    """Deterministic newc archive: sorted, owner root, fixed mtime."""

    def __init__(self, out: object, mtime: int = 0):
        self.out = out
        self.mtime = mtime
        self.ino = 1
        self.size = 0

    def _write(self, b: bytes) -> None:
        self.out.write(b)  # type: ignore[attr-defined]
        self.size += len(b)

    def add(self, e: Entry) -> None:
        body = e.data.read_bytes() if isinstance(e.data, Path) else e.data
        name = e.path.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08X}" for v in (
            self.ino, e.mode, 0, 0, 2 if stat.S_ISDIR(e.mode) else 1, self.mtime, len(body),
            0, 0, e.rdev[0], e.rdev[1], len(name), 0))
        self.ino += 1
        self._write(hdr.encode() + name + b"\0" * ((-(110 + len(name))) % 4))
        self._write(body + b"\0" * ((-len(body)) % 4))

    def finish(self) -> None:
        self.add(Entry("TRAILER!!!", 0))


def tree_entries(root: Path) -> Iterator[Entry]:
    """Entries of a staging tree, parents first."""
    paths = sorted(p for p in root.rglob("*"))
    for p in paths:
        rel = str(p.relative_to(root))
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            yield Entry(rel, stat.S_IFLNK | 0o777, os.readlink(p).encode())
        elif stat.S_ISDIR(st.st_mode):
            yield Entry(rel, stat.S_IFDIR | stat.S_IMODE(st.st_mode))
        elif stat.S_ISREG(st.st_mode):
            yield Entry(rel, stat.S_IFREG | stat.S_IMODE(st.st_mode), p)
