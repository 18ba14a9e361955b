"""Release steps of the image builder: the image's version stamp and its minisign signature.

Why minisign: it is a kept, packaged tool (Debian's ``minisign``, 48 kB plus libsodium) doing
one thing, Ed25519 signatures with a signed "trusted comment", and its keys are one line of
base64 that fits a config file or a kernel command line. The node verifies with the same
binary (``minisign -V``), so no crypto code of our own exists on either side.

The signed object is the manifest (``manifest.json``): it holds the sha256 of every artifact
(``vmlinuz``, ``initramfs.cpio.*``) and core0's version, so one signature covers the image.
The signature goes beside it as ``manifest.json.minisig`` (``manifest-full.json.minisig``).
A key for tests or a build host is made with ``minisign -G -W -p key.pub -s key.sec`` (``-W``:
no password; the build signs without a prompt).

Build tooling: runs on the build host and may use subprocess. Standard library only.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

MINISIGN = "minisign"
#: a local version label (PEP 440 ``+label``): letters, digits and dots
TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9.]{0,31}")


def tagged_version(version: str, tag: str) -> str:
    """``version+tag`` (``tag`` "" leaves it as it is)."""
    if not tag:
        return version
    if not TAG.fullmatch(tag):
        raise SystemExit(f"--version-tag {tag!r}: letters, digits and dots only (32 at most)")
    return f"{version}+{tag}"


def stamp_version(core0_pkg: Path, version: str) -> None:
    """Write ``version`` as ``__version__`` into the image's copy of core0 (never the repo's)."""
    init = core0_pkg / "__init__.py"
    text = init.read_text()
    new, n = re.subn(r'^__version__ = ".*"$', f'__version__ = "{version}"', text, flags=re.M)
    if n != 1:
        raise SystemExit(f"{init}: no __version__ line to stamp")
    init.write_text(new)


def sign(manifest: Path, secret_key: Path, comment: str) -> Path:
    """Sign ``manifest`` with the minisign secret key (no password) → ``<manifest>.minisig``."""
    sig = manifest.with_name(manifest.name + ".minisig")
    sig.unlink(missing_ok=True)
    res = subprocess.run([MINISIGN, "-S", "-s", str(secret_key), "-m", str(manifest),
                          "-x", str(sig), "-t", comment], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"minisign -S failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    return sig


def public_key(pub_file: Path) -> str:
    """The base64 key line of a minisign ``.pub`` file (what ``image.trusted_keys`` holds)."""
    lines = [ln.strip() for ln in pub_file.read_text().splitlines() if ln.strip()]
    keys = [ln for ln in lines if not ln.startswith("untrusted comment:")]
    if len(keys) != 1:
        raise SystemExit(f"{pub_file}: not a minisign public key file")
    return keys[0]
