##### callE.sh
#!/usr/bin/env bash
# GPU call E (session 2026-12-07 #5): the e4m3 group form (linear_ops.GROUP_GEMM = "e4m3", ratios memoized per
# scale tensor) checked against its torch definition and timed at FLUX's shapes, then FLUX 8+16 eager and compiled.
set -u
s=$SECONDS; bash bench/device_setup.sh > $OUT/setup.log 2>&1; echo "setup exit $? in $((SECONDS-s)) s"
export COMFYUI_DIR=/tmp/ComfyUI-0.33.0 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader | tee $OUT/gpu.txt
s=$SECONDS; timeout 90 python3 bench/gpu_gemm.py --e4m3-form --log $OUT/gpu_gemm_e4m3.jsonl > $OUT/gpu_gemm_e4m3.log 2>&1; echo "e4m3 form exit $? in $((SECONDS-s)) s"
grep -v '^{' $OUT/gpu_gemm_e4m3.log | grep -iv warn | tail -14
C="bf16,W8A8 auto,W4A8 auto,W4A8-g64 fp8 {GROUP_GEMM=e4m3}"
s=$SECONDS; timeout $(( ${BUDGET_S:-560} - SECONDS )) python3 bench/peers.py --models flux --configs "$C" --compile flux --budget-s $(( ${BUDGET_S:-560} - SECONDS - 120 )) --host-profile --rounds 6 --warmup 2 --log $OUT/peers_flux.jsonl > $OUT/peers_flux.log 2>&1; echo "peers exit $? in $((SECONDS-s)) s"
grep -h "Error\|error" $OUT/peers_flux.log | sort | uniq -c | head -5
python3 bench/gpu_table.py $OUT/peers_flux.jsonl 2>&1 | tail -12
##### callE2-E4 (inline, same warm machine)
COMFYUI_DIR=/tmp/ComfyUI-0.33.0 python3 bench/peers.py --models flux --configs "bf16,W8A8 auto,W4A8 auto,W4A8-g64 fp8 {GROUP_GEMM=e4m3}" --cuda-graphs --rounds 6 --warmup 2   # E2
COMFYUI_DIR=/tmp/ComfyUI-0.33.0 python3 bench/peers.py --models sdxl --configs "bf16,W8A8 auto,W4A8 auto" --cuda-graphs --host-profile --rounds 6 --warmup 2   # E3
COMFYUI_DIR=/tmp/ComfyUI-0.33.0 python3 bench/peers.py --models flux --configs "bf16,W4A8 auto,W4A8-g64 fp8 {GROUP_GEMM=e4m3}" --compile flux --rounds 6 --warmup 2   # E4
