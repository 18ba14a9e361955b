#!/usr/bin/env bash
# Build the core0 node image into build/image/: bash initramfs-builder/build.sh [core|full]
# (extra flags go to build.py: --out DIR, --compress xz|zstd|gzip, --base <OCI image>, e.g.
# --base oci:<layout>:<tag> or docker-archive:<tar>: docs/images.md). Needs root only for
# nothing; needs apt lists (apt-get update) and the tools of deps/apt-image.txt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
py=${PYTHON:-$repo/.venv/bin/python}
[ -x "$py" ] || py=python3
exec "$py" "$here/build.py" "$@"
