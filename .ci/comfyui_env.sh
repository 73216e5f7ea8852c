#!/usr/bin/env bash
# Sets up one real ComfyUI release for the integration tests: unpacks its unmodified source from
# ../shared/comfyui and makes a virtual environment for it on top of the base Python (which already has torch,
# the pack's requirements and the test extras). One environment per version: their pins differ (frontend,
# transformers, comfy-kitchen). Never installs or upgrades the torch family.
#   usage: .ci/comfyui_env.sh VERSION ROOT   -> ROOT/ComfyUI-VERSION and ROOT/venv-VERSION
set -euo pipefail
version=$1
root=$2
here="$(cd "$(dirname "$0")/.." && pwd)"
archive="${COMFYUI_ARCHIVES:-$here/../shared/comfyui}/ComfyUI-$version.tar.gz"
mkdir -p "$root"
if [ ! -f "$root/ComfyUI-$version/main.py" ]; then
    tar -xzf "$archive" -C "$root"
fi
venv="$root/venv-$version"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv --system-site-packages "$venv"
fi
grep -viE '^(torch|torchvision|torchaudio)([<>=~ ]|$)' "$root/ComfyUI-$version/requirements.txt" \
    > "$root/requirements-$version.txt"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$root/requirements-$version.txt"
# ComfyUI 0.33 imports torchaudio at start-up; this release installs beside torch 2.14 without touching it.
if ! "$venv/bin/python" -c 'import torchaudio' 2>/dev/null; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps torchaudio==2.11.1
fi
