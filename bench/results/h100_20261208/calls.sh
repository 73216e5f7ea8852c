# The device calls of 2026-12-08 (session #7) as run (.device/tests/call{M,N,O}.sh; carry .device/common)
### call M
#!/usr/bin/env bash
# GPU call M (session 2026-12-08 #7): the split fold under torch.compile (traced torch definition) checked against
# its definition, then FLUX 8+16: W4A8(-g64)(-r32) auto eager, compiled and with CUDA graphs against the addmm form.
set -u
[ -d /tmp/ComfyUI-0.33.0 ] || { s=$SECONDS; bash bench/device_setup.sh > $OUT/setup.log 2>&1; echo "setup exit $? in $((SECONDS-s)) s"; }
export COMFYUI_DIR=/tmp/ComfyUI-0.33.0 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader | tee $OUT/gpu.txt
s=$SECONDS; timeout 150 python3 bench/gpu_lowrank.py --out $OUT > $OUT/gpu_lowrank.log 2>&1; echo "gpu_lowrank exit $? in $((SECONDS-s)) s"; grep "split" $OUT/gpu_lowrank.log
C="bf16,W4A8 auto,W4A8-r32 auto,W4A8-r32 auto {BRANCH=addmm},W4A8-g64 auto,W4A8-g64-r32 auto,W4A8 auto + cuda graphs,W4A8-r32 auto + cuda graphs,W4A8-g64-r32 auto + cuda graphs"
s=$SECONDS; timeout $(( ${BUDGET_S:-570} - SECONDS )) python3 bench/peers.py --models flux --configs "$C" --compile flux --compile-configs "bf16,W4A8 auto,W4A8-r32 auto,W4A8-r32 auto {BRANCH=addmm},W4A8-g64 auto,W4A8-g64-r32 auto" --budget-s $(( ${BUDGET_S:-570} - SECONDS - 100 )) --rounds 10 --warmup 3 --log $OUT/peers_flux_M.jsonl > $OUT/peers_flux_M.log 2>&1; echo "peers exit $? in $((SECONDS-s)) s"
grep -h "Error\|error" $OUT/peers_flux_M.log | sort | uniq -c | head -5
grep "^built\|^compiled" $OUT/peers_flux_M.log | head -14
python3 bench/gpu_table.py $OUT/peers_flux_M.jsonl 2>&1 | tail -14
grep -h "graph_counts" $OUT/peers_flux_M.jsonl | python3 -c "import json,sys; [print(r['config'], r.get('graph_counts'), r.get('equal_to_eager')) for r in map(json.loads, sys.stdin)]"
### call N
#!/usr/bin/env bash
# GPU call N (session 2026-12-08 #7): full FLUX (19 + 38 blocks): the rank-32 branch's cost eager and compiled,
# W4A8-g64-r32's weight bytes; SDXL W4A8 against W4A8-r32.
set -u
[ -d /tmp/ComfyUI-0.33.0 ] || { s=$SECONDS; bash bench/device_setup.sh > $OUT/setup.log 2>&1; echo "setup exit $? in $((SECONDS-s)) s"; }
export COMFYUI_DIR=/tmp/ComfyUI-0.33.0 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader | tee $OUT/gpu.txt
C="bf16,W4A8 auto,W4A8-r32 auto,W4A8-g64 auto,W4A8-g64-r32 auto"
s=$SECONDS; timeout $(( ${BUDGET_S:-420} - SECONDS )) python3 bench/peers.py --models flux --full-flux --configs "$C" --compile flux --compile-configs "$C" --budget-s $(( ${BUDGET_S:-420} - SECONDS - 90 )) --rounds 8 --warmup 2 --log $OUT/peers_full_flux_N.jsonl > $OUT/peers_full_flux_N.log 2>&1; echo "peers flux exit $? in $((SECONDS-s)) s"
grep -h "Error\|error" $OUT/peers_full_flux_N.log | sort | uniq -c | head -5
grep "^built\|^compiled" $OUT/peers_full_flux_N.log | head -12
python3 bench/gpu_table.py $OUT/peers_full_flux_N.jsonl 2>&1 | tail -8
s=$SECONDS; timeout $(( 575 - SECONDS )) python3 bench/peers.py --models sdxl --configs "bf16,W4A8 auto,W4A8-r32 auto" --rounds 8 --warmup 2 --log $OUT/peers_sdxl_N.jsonl > $OUT/peers_sdxl_N.log 2>&1; echo "peers sdxl exit $? in $((SECONDS-s)) s"
python3 bench/gpu_table.py $OUT/peers_sdxl_N.jsonl 2>&1 | tail -5

### call O (not run: no machine in four starts, then no device time left)
#!/usr/bin/env bash
# GPU call O (session 2026-12-08 #7): the split as one custom op under torch.compile, the weight-only branch folded
# into the widened weight: SDXL eager, FLUX 8+16 eager + compiled, then full FLUX (short of device time: in that order).
set -u
[ -d /tmp/ComfyUI-0.33.0 ] || { s=$SECONDS; bash bench/device_setup.sh > $OUT/setup.log 2>&1; echo "setup exit $? in $((SECONDS-s)) s"; }
export COMFYUI_DIR=/tmp/ComfyUI-0.33.0 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader | tee $OUT/gpu.txt
s=$SECONDS; timeout 60 python3 bench/peers.py --models sdxl --configs "bf16,W4A8 auto,W4A8-r32 auto" --rounds 8 --warmup 2 --log $OUT/peers_sdxl_O.jsonl > $OUT/peers_sdxl_O.log 2>&1; echo "peers sdxl exit $? in $((SECONDS-s)) s"
python3 bench/gpu_table.py $OUT/peers_sdxl_O.jsonl 2>&1 | tail -3
C="bf16,W4A8 auto,W4A8-r32 auto"
s=$SECONDS; timeout 100 python3 bench/peers.py --models flux --configs "$C" --compile flux --compile-configs "$C" --rounds 8 --warmup 2 --log $OUT/peers_flux_O.jsonl > $OUT/peers_flux_O.log 2>&1; echo "peers flux exit $? in $((SECONDS-s)) s"
grep "^compiled" $OUT/peers_flux_O.log | head -6
python3 bench/gpu_table.py $OUT/peers_flux_O.jsonl 2>&1 | tail -3
s=$SECONDS; timeout 170 python3 bench/peers.py --models flux --full-flux --configs "$C" --compile flux --compile-configs "$C" --rounds 6 --warmup 2 --log $OUT/peers_full_flux_O.jsonl > $OUT/peers_full_flux_O.log 2>&1; echo "peers full flux exit $? in $((SECONDS-s)) s"
python3 bench/gpu_table.py $OUT/peers_full_flux_O.jsonl 2>&1 | tail -3
