"""Checking an image before anything of it is staged: the minisign signature of its manifest
against ``image.trusted_keys``, then the manifest's shape (version, artifact names and sha256).

The signature is checked by the ``minisign`` binary (``minisign -V -P <key> -m <manifest> -x
<signature>``: Ed25519 over the file and over its trusted comment), once per trusted key until
one verifies. The manifest is parsed only after that, so an unsigned one is never even read
as JSON. Artifact names come from the signed manifest and must still match ``ARTIFACT``
(no path, no dot-dot): a signing key is trusted with an image, not with the node's file tree.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core0.errors import BadRequest, PreconditionFailed

if TYPE_CHECKING:
    from core0.context import Context

MINISIGN = "minisign"
#: a minisign public key: "RW" + base64 of (2-byte algorithm, 8-byte key id, 32-byte key)
PUBLIC_KEY = re.compile(r"RW[A-Za-z0-9+/]{54}")
KERNEL = "vmlinuz"
INITRAMFS = re.compile(r"initramfs(-[a-z0-9]{1,16})?\.cpio\.(zst|xz|gz)")
MAX_MANIFEST = 16 << 20
MAX_SIGNATURE = 4096


@dataclass(frozen=True)
class Verified:
    """A manifest whose signature checked: its digest, content and artifacts."""

    digest: str
    raw: bytes
    signature: bytes
    manifest: dict[str, Any]
    #: artifact name → sha256 (vmlinuz and one initramfs)
    artifacts: dict[str, str]
    #: what minisign printed as the trusted comment
    comment: str

    @property
    def version(self) -> str:
        return str(self.manifest["version"])


def trusted_keys(keys: list[str]) -> list[str]:
    """The configured keys, each checked; 412 when there is none or one is malformed."""
    if not keys:
        raise PreconditionFailed("no image.trusted_keys configured: every image is refused "
                                 "(docs/images.md)")
    for k in keys:
        if not PUBLIC_KEY.fullmatch(k):
            raise PreconditionFailed(f"image.trusted_keys: not a minisign public key: {k[:60]!r}")
    return keys


def check_signature_text(sig: bytes) -> None:
    """400 for something that is not a minisign signature file (before minisign sees it)."""
    if len(sig) > MAX_SIGNATURE:
        raise BadRequest(f"signature: more than {MAX_SIGNATURE} bytes", field="signature")
    try:
        lines = sig.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise BadRequest("signature: not a minisign signature (not ASCII)",
                         field="signature") from None
    if len(lines) != 4 or not lines[2].startswith("trusted comment: "):
        raise BadRequest("signature: not a minisign signature (4 lines: untrusted comment, "
                         "signature, trusted comment, global signature)", field="signature")


async def verify(ctx: Context, raw: bytes, sig: bytes, keys: list[str],
                 expected_sha256: str | None) -> Verified:
    """The manifest ``raw`` checked against ``sig`` and the trusted keys, then parsed.

    400 on a digest mismatch, a signature no trusted key verifies, or a manifest without a
    version and its two artifacts' sha256. Nothing is written outside a private temp dir.
    """
    digest = hashlib.sha256(raw).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise BadRequest(f"sha256: the manifest's digest is {digest}, not {expected_sha256}",
                         field="sha256")
    check_signature_text(sig)
    comment = ""
    errors = []
    with tempfile.TemporaryDirectory(prefix="core0-verify-") as tmp:
        (Path(tmp) / "manifest.json").write_bytes(raw)
        (Path(tmp) / "manifest.json.minisig").write_bytes(sig)
        for key in keys:
            res = await ctx.run([MINISIGN, "-V", "-P", key, "-m", f"{tmp}/manifest.json",
                                 "-x", f"{tmp}/manifest.json.minisig"], check=False, timeout=60)
            if res.status == 0:
                out = res.stdout
                comment = next((ln.partition(": ")[2] for ln in out.splitlines()
                                if ln.startswith("Trusted comment: ")), "")
                break
            errors.append(res.stderr.strip()[-200:])
        else:
            raise BadRequest("signature: no trusted key verifies this manifest ("
                             + "; ".join(e for e in errors if e)[:400] + ")", field="signature")
    return Verified(digest, raw, sig, *parse_manifest(raw), comment)


def parse_manifest(raw: bytes) -> tuple[dict[str, Any], dict[str, str]]:
    """(manifest, artifacts) of a signed manifest; 400 when it lacks what an upgrade needs."""
    try:
        manifest = json.loads(raw)
    except ValueError as e:
        raise BadRequest(f"manifest: not JSON: {e}", field="manifest") from None
    if not isinstance(manifest, dict):
        raise BadRequest("manifest: not a JSON object", field="manifest")
    version = manifest.get("version")
    if not isinstance(version, str) or not re.fullmatch(r"[A-Za-z0-9.+_-]{1,64}", version):
        raise BadRequest("manifest: no usable version (an image built before signed "
                         "upgrades?)", field="manifest")
    sums = manifest.get("sha256")
    initrd = manifest.get("initramfs")
    if not isinstance(sums, dict) or not isinstance(initrd, str) or not INITRAMFS.fullmatch(
            initrd):
        raise BadRequest("manifest: no initramfs artifact", field="manifest")
    artifacts: dict[str, str] = {}
    for name in (KERNEL, initrd):
        value = sums.get(name)
        if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
            raise BadRequest(f"manifest: no sha256 for {name}", field="manifest")
        artifacts[name] = value
    return manifest, artifacts
