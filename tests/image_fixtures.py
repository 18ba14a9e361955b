"""The node image the end-to-end tests boot: each flavour is built once per test session.

Six modules boot the plain image (``core``: test_vm, test_media, test_vm_security; ``full``:
test_kvm_nested, test_vm_full, test_vm_persist). They used to build it each for itself, the
same bytes every time (the build is deterministic): 26 s per ``core`` build and 49 s per
``full`` build here, about 2.5 minutes of the suite spent on copies. The build itself is still
run and checked once per flavour; the images of the upgrade tests (versions, keys, OCI bases)
are their own.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from conftest import ROOT, require

#: flavour → the directory its image was built into during this session
_BUILT: dict[str, Path] = {}


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
    res = subprocess.run(["bash", "initramfs-builder/build.sh", flavour, "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    print(f"\n{flavour} image built in {time.monotonic() - t:.0f}s:\n"
          + "\n".join(line for line in res.stdout.splitlines() if line.startswith("[image]")))
    _BUILT[flavour] = out
    return out
