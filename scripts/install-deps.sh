#!/usr/bin/env bash
# Install everything core0 and its tests need on Debian 12: apt packages listed in
# deps/apt-*.txt, then a virtualenv at .venv with core0, core0-client and the test tools.
# Idempotent: run it as often as you like.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

pkgs=$(cat deps/apt-*.txt | sed 's/#.*//' | tr -s ' \t' '\n' | sed '/^$/d' | sort -u)
missing=$(for p in $pkgs; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"; done)
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then echo "install-deps: need root to apt-get install: $missing" >&2; exit 1; fi
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ./client -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import core0, core0_client, redis, psutil, msgpack, zeroos.core0.client"
echo "install-deps: ok"
