#!/usr/bin/env bash
# Issue 22's wide digits variant: train it on the GPU (same data, seeds and recipe, UNet 4x wider), then measure
# the quantizer rows on this machine's CPUs (each (steps, row) its own process, with its FP32 row). Installs
# nothing; writes everything under $OUT (default /tmp/out).
#   bash bench/gpu_digits_wide.sh                      train (~320 s on one H100), pack the weights the rows need
#                                                      into $OUT/weights_wide.tar.part* (< 16 MiB each), then the
#                                                      key rows at 2 steps until the call's budget (BUDGET_S, 580)
#   bash bench/gpu_digits_wide.sh measure 4 [ROWS]     rows at 4 steps (default: the key rows), with the weights in
#                                                      testbed/digits/weights_wide (left by the first call on a warm
#                                                      machine, or unpacked from .device/wide/weights_wide.tar.part*)
# The weights are dev-only (gitignored; their hashes are in testbed/digits/results_wide_training.json).
set -euo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
MODE=${1:-all}
script_start=$SECONDS
WIDE=testbed/digits/weights_wide
KEY_ROWS=fp32,w4a8-g64-gptq-map,w4a4-g64-r8-gptq-map,w4a4-g64-r8-smooth-gptq-map,w4a4-g64-r12-smooth-gptq-map,w4a4-g64-r16-smooth-gptq-map
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
if [ "$MODE" = all ]; then
  start=$(date +%s)
  python3 -m qsched train-digits --only models --width 4 --out "$WIDE" --device cuda 2>&1 | tee "$OUT/train_wide.log"
  echo "training took $(( $(date +%s) - start )) s" | tee -a "$OUT/train_wide.log"
  sha256sum "$WIDE"/* | tee "$OUT/weights_wide.sha256"
  # the teacher is not needed by the rows: only what load_testbed reads comes back
  tar -cf - --exclude='teacher*' -C testbed/digits weights_wide | split -b 15M - "$OUT/weights_wide.tar.part"
  ROWS=$KEY_ROWS; STEPS=2
else
  if [ ! -d "$WIDE" ]; then
    cat .device/wide/weights_wide.tar.part* | tar -xf - -C testbed/digits
  fi
  STEPS=${2:?steps}; ROWS=${3:-$KEY_ROWS}
fi
LIMIT=$(( ${BUDGET_S:-580} - (SECONDS - script_start) ))  # what the device call has left
if [ "$LIMIT" -lt 30 ]; then echo "no time left to measure"; exit 0; fi
UNITS=$(( $(echo "$ROWS" | tr ',' '\n' | grep -vc '^fp32$') ))
THREADS=${THREADS:-$(( $(nproc) / UNITS ))}; [ "$THREADS" -ge 1 ] || THREADS=1  # THREADS: set when calls share the CPUs
JOBS="$OUT/jobs_${STEPS}"
status=0
timeout "$LIMIT" python3 -m qsched digits-quantizer --weights weights_wide --rows "$ROWS" --steps "$STEPS" \
  --jobs "$UNITS" --threads "$THREADS" --jobs-dir "$JOBS" --out "$OUT/results_quantizer_wide_${STEPS}.json" \
  --markdown "$OUT/results_quantizer_wide_${STEPS}.md" | tail -n 25 || status=$?
if [ ! -f "$OUT/results_quantizer_wide_${STEPS}.json" ] && ls "$JOBS"/*.json >/dev/null 2>&1; then
  echo "cut short (exit $status): merging the rows that finished"
  python3 -m qsched digits-quantizer --merge "$JOBS"/*.json --out "$OUT/results_quantizer_wide_${STEPS}.json" \
    --markdown "$OUT/results_quantizer_wide_${STEPS}.md" | tail -n 25
fi
tar -cJf "$OUT/jobs_${STEPS}.tar.xz" -C "$OUT" "jobs_${STEPS}" && rm -rf "$JOBS"
