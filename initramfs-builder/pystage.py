"""The node image's Python: wheels for CPython 3.11 (cp311 manylinux or pure) into
dist-packages, core0 and its client from this repository, byte-compiled (part of build.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import sign

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = "python3.11"


def log(msg: str) -> None:
    print(f"[image] {msg}", flush=True)


WHEEL_PLATFORM = ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
                  "--abi", "cp311", "--abi", "abi3", "--abi", "none",
                  *[arg for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
                                  "manylinux2014_x86_64", "linux_x86_64", "any")
                    for arg in ("--platform", p)]]


def tested_pins(reqs: list[str]) -> list[str]:
    """The list's ``name==version`` pins, each moved to the version installed beside this builder.

    The image then carries the versions the test suite ran against, and the builder needs no
    release that the index which installed the virtualenv lacks (a mirror may hold an older one).
    """
    from importlib import metadata

    out = []
    for req in reqs:
        name, sep, ver = req.partition("==")
        try:
            ver = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
        out.append(f"{name}=={ver}" if sep or ver else name)
    return out


def download_wheels(reqs: list[str], cache: Path) -> Path:
    """The wheels of ``reqs`` (cp311 manylinux or pure) in ``cache/wheels``, fetched if absent.

    An index's or the resolver's passing failure is retried for about 3 minutes.
    """
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    have = {w.name.split("-")[0].lower().replace("_", "-") + "==" + w.name.split("-")[1]
            for w in wheels.glob("*.whl")}
    if all(r.lower().replace("_", "-") in have for r in reqs):
        return wheels
    argv = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", "download",
            "--dest", str(wheels), *WHEEL_PLATFORM, *reqs]
    for attempt in range(7):
        res = subprocess.run(argv, env=dict(os.environ, PIP_NO_INPUT="1"), check=False,
                             capture_output=True, text=True)
        if res.returncode == 0:
            return wheels
        log(f"pip download failed (attempt {attempt + 1}), retrying")
        time.sleep(min(2 ** attempt * 2, 60))
    raise SystemExit(f"pip download failed: {res.stderr.strip()[-2000:]}")


def _is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def python_packages(root: Path, reqs: list[str], cache: Path, tag: str = "") -> dict[str, str]:
    """Wheels (cp311 manylinux or pure) into dist-packages; core0 and its client from here
    (core0's version + ``tag``, see sign.tagged_version)."""
    target = root / "usr/lib/python3/dist-packages"
    target.mkdir(parents=True, exist_ok=True)
    reqs = tested_pins(reqs)
    wheels = download_wheels(reqs, cache)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    env = dict(os.environ, PIP_NO_INPUT="1")
    subprocess.run([*pip, "install", "--no-index", "--find-links", str(wheels), "--target",
                    str(target), "--no-compile", *WHEEL_PLATFORM, *reqs], check=True, env=env)
    # the wheels' shared objects carry debug symbols the node never reads (uvloop's: 13 MB of
    # its 14 MB); binutils is a build dependency (deps/apt-image.txt)
    objects = sorted(str(p) for p in target.rglob("*.so*") if p.is_file() and _is_elf(p))
    strip = shutil.which("strip")
    if objects and strip is None:
        raise SystemExit("strip not found: install binutils (deps/apt-image.txt)")
    if objects:
        subprocess.run([str(strip), "--strip-unneeded", "--", *objects], check=True)
    # PyYAML's libyaml binding: core0 uses the pure-Python SafeLoader (core0/boot/safeyaml.py)
    unused = [*target.glob("yaml/_yaml.*.so"), *target.glob("_yaml")]
    for junk in list(target.glob("*.dist-info/RECORD")) + list(target.glob("bin")) + unused:
        if junk.is_dir():
            shutil.rmtree(junk)
        else:
            junk.unlink()
    versions: dict[str, str] = {}
    for d in target.glob("*.dist-info"):
        name, _, ver = d.name[: -len(".dist-info")].partition("-")
        versions[name] = ver
    for pkg, src in (("core0", REPO / "core0"), ("core0_client", REPO / "client/core0_client")):
        shutil.copytree(src, target / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                        dirs_exist_ok=True)
    sys.path.insert(0, str(REPO))
    from core0 import __version__

    versions["core0"] = sign.tagged_version(__version__, tag)
    sign.stamp_version(target / "core0", versions["core0"])
    for name, mod in (("core0", "core0.cli"), ("core0ctl", "core0_client.cli")):
        script = root / "usr/bin" / name
        script.write_text(f"#!/usr/bin/{PY}\nimport sys\nfrom {mod} import main\n"
                          f"sys.exit(main())\n")
        script.chmod(0o755)
    return versions


def compile_python(root: Path, sources: str) -> None:
    """Byte-compile with unchecked hashes (valid whatever the file times are). With
    ``sources = "core0"`` only core0 and its client keep their .py files (readable
    tracebacks); the standard library and the wheels ship sourceless .pyc, which is smaller
    and unpacks faster at boot."""
    if sys.version_info[:2] != (3, 11):
        log(f"python {sys.version.split()[0]} cannot compile for 3.11: no .pyc in the image")
        return
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    site = root / "usr/lib/python3/dist-packages"
    ours = [site / "core0", site / "core0_client"]
    rest = [root / "usr/lib" / PY, site]
    base = [sys.executable, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode",
            "unchecked-hash", "-s", str(root), "-p", "/"]
    if sources == "all":
        subprocess.run([*base, *map(str, rest)], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        return
    subprocess.run([*base, *map(str, ours)], check=True, env=env, stdout=subprocess.DEVNULL)
    skip = "|".join(re.escape(str(d)) for d in ours)
    subprocess.run([*base, "-b", "-x", f"^({skip})", *map(str, rest)], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    for d in rest:
        for py in d.rglob("*.py"):
            if not any(py.is_relative_to(o) for o in ours) and py.with_suffix(".pyc").exists():
                py.unlink()
