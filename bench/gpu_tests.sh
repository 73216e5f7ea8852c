#!/usr/bin/env bash
# tests/gpu on the lent GPU machine, one pytest process per file: the DynamicVRAM tests load comfy-aimdo before
# ComfyUI (as main.py does), which a process that already ran other GPU tests cannot (2026-12-07: init_devices
# returned False there). Carry .device/common and .device/tests (docs/tests-and-ci.md); logs under $OUT.
#     bash bench/gpu_tests.sh [0.33.0 0.3.64]
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
[ -d /tmp/ComfyUI-0.33.0 ] || bash "$(dirname "$0")/device_setup.sh" > "$OUT/setup.log" 2>&1
export PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=:4096:8 QSCHED_TEST_DEVICE=cuda
status=0
for release in "${@:-0.33.0}"; do
  for file in tests/gpu/test_*.py; do
    log="$OUT/pytest_gpu_${release}_$(basename "$file" .py).log"
    COMFYUI_DIR=/tmp/ComfyUI-$release timeout "${GPU_TEST_LIMIT:-150}" python3 -m pytest -v -p no:cacheprovider -rs \
      "$file" > "$log" 2>&1 || status=1
    echo "$release $(basename "$file"): $(grep -E '^=+ .* in [0-9.]+s' "$log" | tail -1)"
    grep -E "^E " "$log" | head -5
  done
done
exit $status
