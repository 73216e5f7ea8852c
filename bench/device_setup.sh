#!/usr/bin/env bash
# Sets up the lent GPU machine (torch and Triton only) for the GPU scripts of bench/ and tests/gpu from what .device/
# carries (ignored by git; docs/tests-and-ci.md, "On a GPU", says how to fill it). Carry .device/common and ONE of:
#   .device/kitchen  comfy-kitchen 0.2.31 whole (its wheel repacked as tar.xz): for the benchmarks (ComfyUI's own
#                    quantized paths call its CUDA kernels)
#   .device/tests    PyAV (ComfyUI imports it) + comfy-kitchen without its 176 MB CUDA library (it falls back to its
#                    Triton and torch backends): for tests/gpu on both releases; both together exceed the 64 MiB carry
# ComfyUI 0.33.0 and 0.3.64 are unpacked to /tmp.
#     bash bench/device_setup.sh && COMFYUI_DIR=/tmp/ComfyUI-0.33.0 python3 bench/kernels8.py ...
set -euo pipefail
carried="$(cd "$(dirname "$0")/.." && pwd)/.device"
python3 -m pip install -q --no-deps --no-index "$carried"/common/wheels/*.whl
site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
for archive in "$carried"/kitchen/*.tar.xz "$carried"/tests/*.tar.xz; do
  if [ -f "$archive" ]; then tar -xJf "$archive" -C "$site"; fi
done
for release in "$carried"/common/ComfyUI-*.tar.gz; do tar -xzf "$release" -C /tmp; done
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name())'
