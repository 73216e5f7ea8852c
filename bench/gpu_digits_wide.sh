#!/usr/bin/env bash
# Issue 22's wide digits variant: train it on the GPU (same data, seeds and recipe, UNet 4x wider), then measure
# the quantizer rows on this machine's CPUs. Installs nothing; writes everything under $OUT (default /tmp/out).
#   bash bench/gpu_digits_wide.sh           train (about 6-8 min on one H100/H200), then the 2-step key rows (~3 min)
#   bash bench/gpu_digits_wide.sh measure 2 every wide row at 2 steps (~6-9 min; then again with 4; needs the weights
#                                            in testbed/digits/weights_wide, e.g. copied back from the first run)
# Copy $OUT/weights_wide/ to testbed/digits/weights_wide/ (dev-only, like weights_retrained) and commit it.
set -euo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
MODE=${1:-all}
script_start=$SECONDS
WIDE=testbed/digits/weights_wide
KEY_ROWS=fp32,w4a8-map,w4a8-g64-gptq-map,w4a4-g64-map,w4a4-g64-r8-gptq-map,w4a4-g64-r16-gptq-map
ALL_ROWS=$(python3 -c "import qsched; from comfyui_qsched.testbed.digits.quantizer_experiment import WIDE_ROWS; print(WIDE_ROWS)")
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
if [ "$MODE" = all ]; then
  start=$(date +%s)
  python3 -m qsched train-digits --only models --width 4 --out "$WIDE" --device cuda 2>&1 | tee "$OUT/train_wide.log"
  echo "training took $(( $(date +%s) - start )) s" | tee -a "$OUT/train_wide.log"
  cp -r "$WIDE" "$OUT/weights_wide"
  ROWS=$KEY_ROWS; STEPS=2; THREADS=2
  LIMIT=$(( ${BUDGET_S:-580} - (SECONDS - script_start) ))  # what the device call has left
else
  ROWS=$ALL_ROWS; STEPS=${2:-2}; LIMIT=560; THREADS=1
fi
if [ "$LIMIT" -lt 30 ]; then echo "no time left to measure: run 'bash bench/gpu_digits_wide.sh measure 2'"; exit 0; fi
timeout "$LIMIT" python3 -m qsched digits-quantizer --weights weights_wide --rows "$ROWS" --steps "$STEPS" \
  --jobs "$(nproc)" --threads "$THREADS" --out "$OUT/results_quantizer_wide_${STEPS}.json" \
  --markdown "$OUT/results_quantizer_wide_${STEPS}.md" | tail -n 25
