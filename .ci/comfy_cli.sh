#!/usr/bin/env bash
# Comfy Registry check: puts comfy-cli (and ruff, which `comfy node validate` runs for its security rules; without
# it the check silently passes) into ROOT/venv-comfycli, then runs `comfy node validate` on the pack. comfy-cli
# only prints warnings for metadata it cannot use and still exits 0, so any warning or error fails here.
# The same environment builds the registry archive for tests/test_registry_archive.py and .ci/install_test.py:
# set QSCHED_COMFY_CLI=ROOT/venv-comfycli/bin/comfy for those.
#   usage: .ci/comfy_cli.sh ROOT
set -euo pipefail
root=$1
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/venv-comfycli"
mkdir -p "$root"
if [ ! -x "$venv/bin/comfy" ] || [ ! -x "$venv/bin/ruff" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check comfy-cli==1.23.0 ruff==0.17.6
fi
cd "$here"
out=$("$venv/bin/comfy" --skip-prompt node validate </dev/null 2>&1) || { echo "$out"; exit 1; }
echo "$out"
if grep -qiE "warning|error" <<<"$out" || ! grep -q "All validation checks passed" <<<"$out"; then
    echo "comfy node validate: not clean (see above)" >&2
    exit 1
fi
