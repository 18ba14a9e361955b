"""The node images the end-to-end tests boot, each built once per test session.

Six modules boot the plain image (``core``: test_vm, test_media, test_vm_security; ``full``:
test_kvm_nested, test_vm_full, test_vm_persist), and two build signed, versioned images (A, B…:
test_boot_disk, test_upgrade). They used to build them each for itself, the same bytes every
time (the build is deterministic): 26 s per ``core`` build and 49 s per ``full`` build here,
about three minutes of the suite spent on copies. Each distinct image is still built and
checked once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import ROOT, require

#: images built by tests are compressed at level 3 (zstd -19, the release default, spends
#: ~40 s of this 2-core machine per image, -3 under a second: same format and boot path)
TEST_BUILD_ENV = {**os.environ, "COMPRESS_LEVEL": "3"}

#: flavour → the directory its image was built into during this session
_BUILT: dict[str, Path] = {}


def _build_sh(*args: str) -> subprocess.CompletedProcess[str]:
    """``initramfs-builder/build.sh`` with ``args``; fails the test with its output's tail."""
    res = subprocess.run(["bash", "initramfs-builder/build.sh", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=1200, env=TEST_BUILD_ENV)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def node_image(flavour: str = "core") -> Path:
    """The directory holding ``flavour``'s image built from this tree (``build/image``; both
    flavours live side by side there), or ``CORE0_E2E_IMAGE`` when set (an image already
    built: quick local reruns)."""
    prebuilt = os.environ.get("CORE0_E2E_IMAGE")
    if prebuilt:
        return Path(prebuilt)
    out = _BUILT.get(flavour)
    if out is not None:
        return out
    require("apt-get", "dpkg-deb", "depmod", "zstd")
    out = ROOT / "build" / "image"
    t = time.monotonic()
    res = _build_sh(flavour, "--out", str(out))
    print(f"\n{flavour} image built in {time.monotonic() - t:.0f}s:\n"
          + "\n".join(line for line in res.stdout.splitlines() if line.startswith("[image]")))
    _BUILT[flavour] = out
    return out


def build(out: Path, work: Path, tag: str, key: Path, base: str = "") -> Path:
    """A ``core`` image with version tag ``tag``, signed with ``key`` (on the OCI image
    ``base`` if given), built into ``out``."""
    extra = ["--base", base] if base else []
    _build_sh("core", "--out", str(out), "--work", str(work), "--version-tag", tag,
              "--sign-key", str(key), *extra)
    return out


@dataclass
class SignedBuilds:
    """Images signed with one key made for the session (``sec``/``pub``, minisign); each
    (tag, base) is built once and copied where a test module serves it from."""

    root: Path
    sec: Path
    pub: Path
    _built: dict[tuple[str, str], Path] = field(default_factory=dict)

    def image(self, tag: str, dest: Path, base: str = "") -> Path:
        """The image ``tag`` (on ``base``), copied to ``dest``."""
        src = self._built.get((tag, base))
        if src is None:
            src = build(self.root / f"{tag}-{len(self._built)}", self.root / "work", tag,
                        self.sec, base)
            self._built[(tag, base)] = src
        shutil.copytree(src, dest)
        return dest


@pytest.fixture(scope="session")
def signed_builds(tmp_path_factory: pytest.TempPathFactory) -> SignedBuilds:
    require("apt-get", "dpkg-deb", "depmod", "zstd", "minisign")
    d = tmp_path_factory.mktemp("signed-images")
    sec, pub = d / "k.sec", d / "k.pub"
    subprocess.run(["minisign", "-G", "-W", "-p", str(pub), "-s", str(sec)], check=True,
                   capture_output=True, stdin=subprocess.DEVNULL)
    return SignedBuilds(d, sec, pub)
