#!/usr/bin/env bash
# Sets up the lent GPU machine (torch and Triton only) for the GPU scripts of bench/: installs what .device/ carries
# (ignored by git; see docs/tests-and-ci.md, "On a GPU", for how it is filled): the small wheels, comfy-kitchen
# (its wheel unpacked and repacked as tar.xz) and the ComfyUI 0.33.0 release, unpacked to /tmp/ComfyUI-0.33.0.
#     bash bench/device_setup.sh && COMFYUI_DIR=/tmp/ComfyUI-0.33.0 python3 bench/kernels8.py ...
set -euo pipefail
carried="$(cd "$(dirname "$0")/.." && pwd)/.device"
python3 -m pip install -q --no-deps --no-index "$carried"/wheels/*.whl
site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
tar -xJf "$carried/comfy_kitchen-0.2.31.tar.xz" -C "$site"
tar -xzf "$carried/ComfyUI-0.33.0.tar.gz" -C /tmp
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name())'
