#!/usr/bin/env bash
# One GPU session for issues 22-23 (about 6-8 minutes on an H100): (a) every new kernel against its torch definition,
# the low-rank branch's precision and its FLUX-shape timings (bench/kernels8.py); (b) bench/peers.py on FLUX (8 + 16
# full-width blocks, so that all configs fit on one GPU for interleaved timing) eager and compiled, and on SDXL
# eager, with --host-profile; (c) the short table last. Rows and logs under $OUT; installs nothing.
#     COMFYUI_DIR=<ComfyUI 0.33.0 tree> bash bench/gpu_session.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/qsched_gpu_session}
mkdir -p "$OUT"
if [ -z "${COMFYUI_DIR:-}" ]; then
    for candidate in .device/comfyui .device/ComfyUI-0.33.0 shared/ComfyUI-0.33.0 /tmp/qsched-ci/ComfyUI-0.33.0; do
        [ -d "$candidate/comfy" ] && COMFYUI_DIR=$(cd "$candidate" && pwd) && break
    done
fi
export COMFYUI_DIR PYTHONUNBUFFERED=1
echo "ComfyUI: ${COMFYUI_DIR:-none}; $(date -u)" | tee "$OUT/session.log"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee -a "$OUT/session.log"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/session.log"

FLUX_CONFIGS=${FLUX_CONFIGS:-"bf16,comfy fp8_fast,W8A8 auto,W4A8 auto,W8A8 auto-int8,W4A8 auto-int8"}
FLUX_EXTRA=${FLUX_EXTRA:-}  # e.g. --full-flux (all 19 + 38 blocks; then fewer FLUX_CONFIGS fit on one GPU)
# the low-rank branch against the same spec without it, in a run of its own (one truncated SVD per layer at load)
RANK_CONFIGS=${RANK_CONFIGS:-"W4A8 auto,W4A8-r32 auto"}
SDXL_CONFIGS=${SDXL_CONFIGS:-"bf16,comfy fp8_fast,W8A8 auto,W4A8 auto,W8A8 int8"}

start=$SECONDS
timeout 200 python3 bench/kernels8.py --log "$OUT/kernels8.jsonl" > "$OUT/kernels8.log" 2>&1
echo "kernels8: exit $? after $((SECONDS - start)) s" | tee -a "$OUT/session.log"
tail -12 "$OUT/kernels8.log"

start=$SECONDS
timeout 260 python3 bench/peers.py --models flux --configs "$FLUX_CONFIGS" --compile flux --host-profile $FLUX_EXTRA \
    --rounds 10 --warmup 3 --budget-s 150 --log "$OUT/peers.jsonl" > "$OUT/peers_flux.log" 2>&1
echo "peers flux: exit $? after $((SECONDS - start)) s" | tee -a "$OUT/session.log"

start=$SECONDS
timeout 200 python3 bench/peers.py --models flux --configs "$RANK_CONFIGS" --compile flux --host-profile \
    --rounds 10 --warmup 3 --budget-s 150 --log "$OUT/peers_rank.jsonl" > "$OUT/peers_rank.log" 2>&1
echo "peers flux rank: exit $? after $((SECONDS - start)) s" | tee -a "$OUT/session.log"

start=$SECONDS
timeout 120 python3 bench/peers.py --models sdxl --configs "$SDXL_CONFIGS" --host-profile --rounds 10 --warmup 3 \
    --log "$OUT/peers.jsonl" > "$OUT/peers_sdxl.log" 2>&1
echo "peers sdxl: exit $? after $((SECONDS - start)) s" | tee -a "$OUT/session.log"

grep -h "Error\|error" "$OUT"/peers_*.log | grep -v "^ " | sort | uniq -c | head -8
python3 bench/gpu_table.py "$OUT/peers.jsonl" "$OUT/kernels8.jsonl" | tee "$OUT/table.md"
echo "low-rank branch, FLUX 8+16 (its own run):" | tee -a "$OUT/table.md"
python3 bench/gpu_table.py "$OUT/peers_rank.jsonl" | grep "^| flux" | tee -a "$OUT/table.md"
