"""The container image store: import, pull, list, inspect, delete.

An image is stored once, unpacked, under ``<state_dir>/sandbox/images/<digest of its name>/``:
``rootfs/`` (the merged layers; a btrfs subvolume when the store is on btrfs) and
``image.json`` (name, source, kind, layer digests, the OCI config's Env/Cmd/Entrypoint/
WorkingDir, size, time, storage). Each container start gets its own
clone of ``rootfs`` (see :mod:`core0.sandbox.roots`); the stored root is never written to.

Sources (``container.image.import``):

- a directory: a root filesystem, copied (special files refused);
- a file: a rootfs tarball (plain, gzip, bzip2 or xz), a ``docker save`` archive
  (``manifest.json`` + layer tars) or an OCI archive (an OCI layout in a tar);
- an OCI image layout directory (``oci-layout`` + ``index.json`` + ``blobs/``).

Layers of OCI layouts are verified against their sha256 digests before they are unpacked;
every layer goes through :func:`core0.sandbox.unpack.extract_layer`. ``pull`` copies a
registry image into a temporary OCI layout with skopeo (which speaks the distribution API,
token auth and verifies digests), then imports that layout.

Blocking work runs in worker threads; the store is written with a temporary directory
renamed into place, so a half-imported image is never visible.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from core0 import cancel
from core0.errors import BadRequest, Conflict, NotFound
from core0.sandbox import roots, unpack

log = logging.getLogger(__name__)

#: layout of an OCI image layout dir
OCI_LAYOUT = "oci-layout"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
#: refuse manifests/configs/indexes bigger than this (they are small JSON)
MAX_JSON = 4 << 20


def _store(state_dir: Path) -> Path:
    return state_dir / "sandbox" / "images"


def images_dir(state_dir: Path) -> Path:
    d = _store(state_dir)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


def image_dir(state_dir: Path, name: str) -> Path:
    """Where image ``name`` is stored (named by a digest: names may hold ':' and '/')."""
    return images_dir(state_dir) / hashlib.sha256(name.encode()).hexdigest()[:32]


def load(state_dir: Path, name: str) -> dict[str, Any]:
    """The metadata of a stored image (404 when there is none)."""
    try:
        meta: dict[str, Any] = json.loads((image_dir(state_dir, name) / "image.json")
                                          .read_text())
    except FileNotFoundError:
        raise NotFound(f"no such image: {name}") from None
    return meta


def rootfs(state_dir: Path, name: str) -> Path:
    load(state_dir, name)
    return image_dir(state_dir, name) / "rootfs"


def list_all(state_dir: Path) -> list[dict[str, Any]]:
    out = []
    for d in sorted(images_dir(state_dir).iterdir()):
        try:
            out.append(json.loads((d / "image.json").read_text()))
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            continue
    return sorted(out, key=lambda m: str(m.get("name")))


#: the image store's work directories: a pull's layout, an import before its rename, a
#: restore's snapshot, a deleted image on its way out (names start with '.', so no listing
#: sees them)
WORK_PREFIXES = (".pull-", ".import-", ".restore-", ".del-")


def sweep_leftovers(state_dir: Path, before: float) -> int:
    """Remove the work directories of the image store made before ``before`` (a time of
    day: the dispatcher's start), which a dispatcher killed mid-pull, -import, -restore or
    -delete left behind — on a persistent store they would stay for good. Returns how many
    went; one that cannot be removed is logged and left (a node with no store yet: 0)."""
    gone = 0
    try:
        entries = list(_store(state_dir).iterdir())
    except FileNotFoundError:
        return 0
    for d in entries:
        if not d.name.startswith(WORK_PREFIXES):
            continue
        try:
            if d.lstat().st_ctime >= before or not d.is_dir() or d.is_symlink():
                continue
            if (d / "rootfs").is_dir() and not (d / "rootfs").is_symlink():
                roots.remove_root_dir(d / "rootfs")
            shutil.rmtree(d)
            gone += 1
        except OSError as e:
            log.warning("image store: %s not removed: %s", d.name, e)
    return gone


def delete(state_dir: Path, name: str) -> None:
    d = image_dir(state_dir, name)
    load(state_dir, name)
    trash = d.with_name(f".del-{d.name}-{os.getpid()}-{time.monotonic_ns()}")
    os.rename(d, trash)
    if (trash / "rootfs").exists():
        roots.remove_root_dir(trash / "rootfs")
    shutil.rmtree(trash)


def _size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        cancel.check()  # (a killed import stops here too: its image never appears)
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


# ---------------------------------------------------------------- sources


def _read_json(f: IO[bytes], what: str) -> Any:
    data = f.read(MAX_JSON + 1)
    if len(data) > MAX_JSON:
        raise BadRequest(f"{what}: larger than {MAX_JSON} bytes")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"{what}: not JSON: {e}") from None


def _digest_path(layout: Path, digest: str) -> Path:
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
        raise BadRequest(f"unsupported or invalid digest {digest!r:.100}")
    return layout / "blobs" / "sha256" / hexd


def _verified(layout: Path, digest: str) -> Path:
    """The blob of ``digest``, after checking its content hashes to it."""
    p = _digest_path(layout, digest)
    h = hashlib.sha256()
    try:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except FileNotFoundError:
        raise BadRequest(f"OCI layout: missing blob {digest}") from None
    if "sha256:" + h.hexdigest() != digest:
        raise BadRequest(f"OCI layout: blob {digest} does not match its digest")
    return p


def _pick_manifest(layout: Path, ref: str) -> tuple[dict[str, Any], str]:
    """(the image manifest named ``ref``, or the only one for this architecture, its digest)."""
    with open(layout / "index.json", "rb") as f:
        index = _read_json(f, "index.json")
    for _ in range(4):  # an index may point to a nested index (multi-arch)
        mans = index.get("manifests") or []
        if ref:
            mans = [m for m in mans if (m.get("annotations") or {}).get(REF_ANNOTATION) == ref
                    ] or [m for m in mans if m.get("mediaType") in INDEX_TYPES]
        if not mans:
            raise NotFound(f"OCI layout: no image {ref!r} in index.json")
        arch = [m for m in mans if (m.get("platform") or {}).get("architecture")
                in (None, _goarch())]
        if len(arch) > 1 and not ref:
            raise BadRequest("OCI layout holds several images: name one with <dir>:<ref>")
        m = (arch or mans)[0]
        with open(_verified(layout, m["digest"]), "rb") as f:
            doc = _read_json(f, "manifest")
        if m.get("mediaType") in INDEX_TYPES or doc.get("manifests") is not None:
            index, ref = doc, ""
            continue
        return dict(doc), str(m["digest"])
    raise BadRequest("OCI layout: indexes nested too deep")


def _goarch() -> str:
    from core0.sandbox.seccomp import host_arch

    return host_arch()


def _config_fields(cfg: dict[str, Any]) -> dict[str, Any]:
    c = cfg.get("config") or {}
    return {"env": list(c.get("Env") or []), "cmd": list(c.get("Cmd") or []),
            "entrypoint": list(c.get("Entrypoint") or []),
            "workdir": str(c.get("WorkingDir") or ""),
            "architecture": str(cfg.get("architecture") or "")}


def unpack_layout(layout: Path, ref: str, dest: Path) -> dict[str, Any]:
    """Unpack image ``ref`` (or the layout's only image) of an OCI layout into ``dest``,
    every blob verified against its digest, every layer through the safe unpacker.

    Returns ``kind``, ``digest`` (the manifest's), ``config`` (the config's digest),
    ``layers`` and the config's Env/Cmd/Entrypoint/WorkingDir/architecture. Also used by the
    node image builder (initramfs-builder/ocibase.py) for an image's base.
    """
    if not (layout / OCI_LAYOUT).is_file():
        raise BadRequest(f"not an OCI image layout: {layout}")
    man, digest = _pick_manifest(layout, ref)
    with open(_verified(layout, man["config"]["digest"]), "rb") as f:
        cfg = _read_json(f, "image config")
    layers = []
    for layer in man.get("layers") or []:
        blob = _verified(layout, layer["digest"])
        if "zstd" in str(layer.get("mediaType", "")):
            raise BadRequest("zstd-compressed layers are not supported")
        with open(blob, "rb") as f:
            unpack.extract_layer(f, dest)
        layers.append(layer["digest"])
    return {"kind": "oci-layout", "digest": digest, "config": man["config"]["digest"],
            "layers": layers, **_config_fields(cfg)}


def _from_docker_archive(tf: tarfile.TarFile, dest: Path) -> dict[str, Any]:
    def member(name: str) -> IO[bytes]:
        try:
            f = tf.extractfile(name)
        except KeyError:
            f = None
        if f is None:
            raise BadRequest(f"docker archive: missing {name!r:.100}")
        return f

    manifest = _read_json(member("manifest.json"), "manifest.json")
    if not isinstance(manifest, list) or len(manifest) != 1:
        raise BadRequest("docker archive: import holds exactly one image")
    m = manifest[0]
    cfg = _read_json(member(m["Config"]), "image config")
    for layer in m.get("Layers") or []:
        unpack.extract_layer(member(layer), dest)
    return {"kind": "docker-archive", "layers": list(m.get("Layers") or []),
            "tags": list(m.get("RepoTags") or []), **_config_fields(cfg)}


def _from_file(path: Path, ref: str, dest: Path, work: Path) -> dict[str, Any]:
    try:
        tf = tarfile.open(path, "r:*")
    except tarfile.TarError as e:
        raise BadRequest(f"not a tar archive: {e}") from None
    with tf:
        names = set()
        for i, m in enumerate(tf):
            names.add(m.name.lstrip("./") if m.name != "." else ".")
            if i > 64:
                break
        if "manifest.json" in names and "oci-layout" not in names:
            return _from_docker_archive(tf, dest)
        if "oci-layout" in names and "index.json" in names:
            layout = work / "layout"
            layout.mkdir()
            unpack.extract_layer(None, layout, str(path))
            return {**unpack_layout(layout, ref, dest), "kind": "oci-archive"}
    unpack.extract_layer(None, dest, str(path))
    return {"kind": "rootfs-tar", "layers": [], "env": [], "cmd": [], "entrypoint": [],
            "workdir": ""}


def import_blocking(state_dir: Path, name: str, source: str, ref: str = "",
                    origin: str = "", into: bool = False) -> dict[str, Any]:
    """Import ``source`` (a canonical host path) as image ``name``; 409 when it exists.

    ``into``: the image's dir exists already (a ZFS dataset made for it) and is filled in
    place; otherwise a temporary dir is renamed into place at the end.
    """
    final = image_dir(state_dir, name)
    if (final / "image.json").exists() or (final.exists() and not into):
        raise Conflict(f"image {name} exists already")
    work = final if into else Path(tempfile.mkdtemp(prefix=".import-",
                                                    dir=images_dir(state_dir)))
    try:
        dest = work / "rootfs"
        storage = "zfs" if into else roots.make_root_dir(work, "rootfs")
        if into:
            dest.mkdir(mode=0o755)
        src = Path(source)
        if src.is_dir() and (src / OCI_LAYOUT).is_file():
            meta = unpack_layout(src, ref, dest)
        elif src.is_dir():
            unpack.copy_tree(src, dest)
            meta = {"kind": "directory", "layers": [], "env": [], "cmd": [],
                    "entrypoint": [], "workdir": ""}
        else:
            meta = _from_file(src, ref, dest, work)
        if (work / "layout").exists():
            shutil.rmtree(work / "layout")
        meta.update(name=name, source=origin or source, size=_size(dest),
                    created=int(time.time()), storage=storage)
        (work / "image.json").write_text(json.dumps(meta, indent=1))
        cancel.check()
        if not into:
            try:
                os.rename(work, final)
            except OSError:
                raise Conflict(f"image {name} exists already") from None
        return meta
    except BaseException:
        with contextlib.suppress(OSError):
            roots.remove_root_dir(work / "rootfs")
        if not into:
            shutil.rmtree(work, ignore_errors=True)
        raise
