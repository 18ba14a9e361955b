"""Kernel module loading for PID 1: a small modprobe over the kernel's dependency data.

The image carries ``/lib/modules/<release>/`` with ``modules.dep``, ``modules.alias`` and
``modules.builtin`` written by ``depmod`` at build time. At boot, :func:`coldplug` reads the
``modalias`` of every device on every bus, matches it against ``modules.alias`` and loads the
matching modules, dependencies first (depth-first over ``modules.dep``), with
``finit_module(2)`` — in process, so a driver costs no fork/exec (that matters under TCG). It
repeats until no new module loads (a virtio PCI driver makes virtio devices appear, which need
their own drivers). Later on-demand loads (``fs-iso9660``…) go through the kernel's usermode
helper, ``/sbin/modprobe`` (busybox) with the same files.
"""

from __future__ import annotations

import ctypes
import errno
import fnmatch
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("core0.init.modules")

_libc = ctypes.CDLL(None, use_errno=True)
SYS_FINIT_MODULE = 313  # x86_64


class ModuleError(OSError):
    """A module could not be found or loaded."""


def normalize(name: str) -> str:
    """Module names treat '-' and '_' alike."""
    return name.replace("-", "_")


def _stem(path: str) -> str:
    base = os.path.basename(path)
    for ext in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(ext):
            return normalize(base[: -len(ext)])
    return normalize(base)


class Glob:
    """A modules.alias pattern. Compiling hundreds of regexes at boot costs seconds under
    TCG, so ``*``-only patterns (nearly all) are matched with string operations."""

    __slots__ = ("pattern", "parts", "simple")

    def __init__(self, pattern: str):
        self.pattern = pattern
        self.simple = "?" not in pattern and "[" not in pattern
        self.parts = pattern.split("*")

    def match(self, text: str) -> bool:
        if not self.simple:
            return fnmatch.fnmatchcase(text, self.pattern)
        parts = self.parts
        if len(parts) == 1:
            return text == parts[0]
        first, last = parts[0], parts[-1]
        if not text.startswith(first) or not text.endswith(last):
            return False
        pos, end = len(first), len(text) - len(last)
        if pos > end:
            return False
        for mid in parts[1:-1]:
            if mid:
                pos = text.find(mid, pos, end)
                if pos < 0:
                    return False
                pos += len(mid)
        return True


class ModuleIndex:
    """modules.dep / modules.alias / modules.builtin of one kernel release."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root or f"/lib/modules/{os.uname().release}")
        #: name → (path relative to root, [dependency paths])
        self.deps: dict[str, tuple[str, list[str]]] = {}
        #: bus prefix ("pci", "virtio", "acpi*"…) → [(glob, module)]
        self.aliases: dict[str, list[tuple[Glob, str]]] = {}
        #: exact aliases ("fs-btrfs", "char-major-10-229"…)
        self.plain: dict[str, list[str]] = {}
        self.builtin: set[str] = set()
        self._read()

    def _read(self) -> None:
        try:
            for line in (self.root / "modules.dep").read_text().splitlines():
                path, sep, rest = line.partition(":")
                if sep:
                    self.deps[_stem(path)] = (path, rest.split())
        except OSError as e:
            log.debug("no modules.dep: %s", e)
        try:
            for line in (self.root / "modules.alias").read_text().splitlines():
                parts = line.split()
                if len(parts) != 3 or parts[0] != "alias":
                    continue
                pattern, mod = parts[1], normalize(parts[2])
                if any(c in pattern for c in "*?["):
                    prefix = pattern.split(":", 1)[0] if ":" in pattern else ""
                    self.aliases.setdefault(prefix, []).append((Glob(pattern), mod))
                else:
                    self.plain.setdefault(pattern, []).append(mod)
        except OSError as e:
            log.debug("no modules.alias: %s", e)
        try:
            for line in (self.root / "modules.builtin").read_text().splitlines():
                self.builtin.add(_stem(line.strip()))
        except OSError:
            pass

    def resolve(self, alias: str) -> list[str]:
        """Modules matching a module name or a modalias."""
        name = normalize(alias)
        if name in self.deps or name in self.builtin:
            return [name]
        if alias in self.plain:
            return list(self.plain[alias])
        prefix = alias.split(":", 1)[0] if ":" in alias else ""
        out: list[str] = []
        for key in (prefix, ""):
            for rx, mod in self.aliases.get(key, []):
                if rx.match(alias) and mod not in out:
                    out.append(mod)
        if prefix and not out:  # patterns like "acpi*:…" start with a glob
            for key, pats in self.aliases.items():
                if key and any(c in key for c in "*?["):
                    for rx, mod in pats:
                        if rx.match(alias) and mod not in out:
                            out.append(mod)
        return out


def loaded_modules() -> set[str]:
    try:
        text = Path("/proc/modules").read_text()
    except OSError:
        return set()
    return {line.split(" ", 1)[0] for line in text.splitlines() if line}


def finit_module(path: str, params: str = "") -> None:
    """Load one module file; EEXIST (already loaded) is not an error."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        rc = _libc.syscall(ctypes.c_long(SYS_FINIT_MODULE), ctypes.c_long(fd),
                           ctypes.c_char_p(params.encode()), ctypes.c_long(0))
    finally:
        os.close(fd)
    if rc != 0:
        err = ctypes.get_errno()
        if err != errno.EEXIST:
            raise ModuleError(err, f"{os.path.basename(path)}: {os.strerror(err)}")


class Loader:
    """Loads modules and their dependencies once each."""

    def __init__(self, index: ModuleIndex | None = None):
        self.index = index or ModuleIndex()
        self.loaded = loaded_modules()
        self.failed: set[str] = set()
        self.count = 0

    def load(self, name: str) -> bool:
        """Load a module (by name or alias) and what it depends on; False if it failed."""
        mods = self.index.resolve(name)
        if not mods:
            log.debug("no module for %s", name)
            return False
        ok = True
        for mod in mods:
            ok = self._load_one(mod, set()) and ok
        return ok

    def _load_one(self, name: str, stack: set[str]) -> bool:
        if name in self.loaded or name in self.index.builtin:
            return True
        if name in self.failed or name in stack:
            return name not in self.failed
        entry = self.index.deps.get(name)
        if entry is None:
            self.failed.add(name)
            log.debug("module %s is not in modules.dep", name)
            return False
        path, deps = entry
        stack = stack | {name}
        for dep in reversed(deps):
            self._load_one(_stem(dep), stack)
        try:
            finit_module(str(self.index.root / path))
        except ModuleError as e:
            self.failed.add(name)
            # ENODEV: no such hardware (kvm_intel on AMD…); not worth a warning
            level = logging.DEBUG if e.errno in (errno.ENODEV, errno.ENXIO) else logging.WARNING
            log.log(level, "module %s", e)
            return False
        except OSError as e:
            self.failed.add(name)
            log.warning("module %s: %s", name, e)
            return False
        self.loaded.add(name)
        self.count += 1
        log.debug("loaded %s", name)
        return True


def device_aliases(sysfs: str = "/sys") -> set[str]:
    """The modalias of every device on every bus."""
    out: set[str] = set()
    base = Path(sysfs, "bus")
    try:
        buses = list(base.iterdir())
    except OSError:
        return out
    for bus in buses:
        try:
            devices = list((bus / "devices").iterdir())
        except OSError:
            continue
        for dev in devices:
            try:
                alias = (dev / "modalias").read_text().strip()
            except OSError:
                continue
            if alias:
                out.add(alias)
    return out


def coldplug(loader: Loader | None = None, rounds: int = 4) -> int:
    """Load drivers for the devices present; return the number of modules loaded."""
    loader = loader or Loader()
    seen: set[str] = set()
    before = loader.count
    for _ in range(rounds):
        new = device_aliases() - seen
        if not new:
            break
        seen |= new
        n = loader.count
        for alias in sorted(new):
            for mod in loader.index.resolve(alias):
                loader.load(mod)
        if loader.count == n:
            break
    return loader.count - before


def static_nodes(index: ModuleIndex, dev: str = "/dev") -> list[str]:
    """Create the device nodes of ``modules.devname`` (/dev/fuse, /dev/net/tun, /dev/kvm…)
    that are missing, as kmod's static-nodes does: opening one loads its module on demand
    (the kernel asks ``/sbin/modprobe`` for ``char-major-M-N``)."""
    made: list[str] = []
    try:
        lines = (index.root / "modules.devname").read_text().splitlines()
    except OSError:
        return made
    for line in lines:
        parts = line.split()
        if len(parts) != 3 or line.startswith("#") or parts[2][:1] not in ("c", "b"):
            continue
        _mod, name, spec = parts
        try:
            major, minor = (int(x) for x in spec[1:].split(":"))
        except ValueError:
            continue
        path = os.path.join(dev, name)
        if os.path.exists(path):
            continue
        kind = stat.S_IFCHR if spec[0] == "c" else stat.S_IFBLK
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.mknod(path, kind | 0o600, os.makedev(major, minor))
            made.append(name)
        except OSError as e:
            log.debug("static node %s: %s", path, e)
    return made


def set_modprobe_helper(path: str = "/sbin/modprobe") -> None:
    """Point the kernel's on-demand loader at ``path`` when it exists."""
    if os.path.exists(path):
        try:
            Path("/proc/sys/kernel/modprobe").write_text(path)
        except OSError as e:
            log.debug("kernel.modprobe not set: %s", e)
