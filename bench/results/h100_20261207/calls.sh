##### .device/call1.sh
#!/usr/bin/env bash
# GPU call 1: set-up, kernel checks vs torch references, FLUX 8+16 eager+compiled, host profile, int8 attention.
set -u
s=$SECONDS; bash bench/device_setup.sh > $OUT/setup.log 2>&1; echo "setup exit $? in $((SECONDS-s)) s"; tail -2 $OUT/setup.log
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader | tee $OUT/gpu.txt
lscpu | grep -E "Model name|^CPU\(s\)" | tee -a $OUT/gpu.txt
export COMFYUI_DIR=/tmp/ComfyUI-0.33.0 PYTHONUNBUFFERED=1
s=$SECONDS; timeout 150 python3 bench/kernels8.py --log $OUT/kernels8.jsonl > $OUT/kernels8.log 2>&1; echo "kernels8 exit $? in $((SECONDS-s)) s"
s=$SECONDS; timeout 340 python3 bench/peers.py --models flux --configs "bf16,comfy fp8_fast,W8A8 auto,W4A8 auto,W8A8 int8,W4A8-g64 auto,W4A8-g64-r32 auto" --compile flux --host-profile --attention int8 --rounds 8 --warmup 2 --budget-s 210 --log $OUT/peers_flux.jsonl > $OUT/peers_flux.log 2>&1; echo "peers exit $? in $((SECONDS-s)) s"
tail -25 $OUT/kernels8.log; echo ----; grep -v '^{' $OUT/peers_flux.log | tail -25; python3 bench/gpu_table.py $OUT/peers_flux.jsonl $OUT/kernels8.jsonl 2>&1 | tail -40
##### .device/call2.sh
#!/usr/bin/env bash
# GPU call 2: kernel checks (fixed), FLUX 8+16 int8 configs + int8 attention eager/compiled, SDXL eager.
set -u
bash bench/device_setup.sh > $OUT/setup.log 2>&1; nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpu.txt
export COMFYUI_DIR=/tmp/ComfyUI-0.33.0 PYTHONUNBUFFERED=1
s=$SECONDS; timeout 140 python3 bench/kernels8.py --log $OUT/kernels8.jsonl > $OUT/kernels8.log 2>&1; echo "kernels8 exit $? in $((SECONDS-s)) s"
s=$SECONDS; timeout 210 python3 bench/peers.py --models flux --configs "bf16,comfy fp8_fast,W8A8 auto,W8A8 int8" --compile flux --host-profile --attention int8 --rounds 8 --warmup 2 --budget-s 120 --log $OUT/peers_flux.jsonl > $OUT/peers_flux.log 2>&1; echo "peers flux exit $? in $((SECONDS-s)) s"
s=$SECONDS; timeout 170 python3 bench/peers.py --models sdxl --configs "bf16,comfy fp8_fast,W8A8 auto,W4A8 auto,W8A8 int8" --host-profile --rounds 8 --warmup 2 --log $OUT/peers_sdxl.jsonl > $OUT/peers_sdxl.log 2>&1; echo "peers sdxl exit $? in $((SECONDS-s)) s"
grep -v '^{' $OUT/kernels8.log | grep -iv "warn" | tail -30; echo ----; grep -h "Error" $OUT/peers_*.log | sort | uniq -c | head; python3 bench/gpu_table.py $OUT/peers_flux.jsonl $OUT/peers_sdxl.jsonl 2>&1 | tail -30
##### .device/call4.sh
#!/usr/bin/env bash
# GPU call 4: CUDA graphs (GPU tests + SDXL/FLUX timing), the branch's default form (unfused) checked and timed.
set -u
bash bench/device_setup.sh > $OUT/setup.log 2>&1; tail -1 $OUT/setup.log
export COMFYUI_DIR=/tmp/ComfyUI-0.33.0 PYTHONUNBUFFERED=1
s=$SECONDS; QSCHED_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_cuda_graphs_gpu.py > $OUT/pytest_gpu.log 2>&1; echo "pytest gpu exit $? in $((SECONDS-s)) s"; tail -4 $OUT/pytest_gpu.log
s=$SECONDS; timeout 40 python3 bench/gpu_lowrank.py --out $OUT > $OUT/gpu_lowrank.log 2>&1; echo "lowrank exit $? in $((SECONDS-s)) s"; grep "W4A8-r32\|W8A8-r32" $OUT/gpu_lowrank.log | head -4
s=$SECONDS; timeout 130 python3 bench/peers.py --models sdxl --configs "bf16,W8A8 auto,W4A8 auto" --cuda-graphs --host-profile --rounds 8 --warmup 2 --log $OUT/peers_sdxl_graphs.jsonl > $OUT/peers_sdxl_graphs.log 2>&1; echo "peers sdxl exit $? in $((SECONDS-s)) s"
s=$SECONDS; timeout 200 python3 bench/peers.py --models flux --configs "bf16,W8A8 auto,W4A8 auto,W4A8-r32 auto" --cuda-graphs --host-profile --rounds 8 --warmup 2 --log $OUT/peers_flux_graphs.jsonl > $OUT/peers_flux_graphs.log 2>&1; echo "peers flux exit $? in $((SECONDS-s)) s"
grep -h "Error" $OUT/peers_*.log | sort | uniq -c | head -5; python3 bench/gpu_table.py $OUT/peers_sdxl_graphs.jsonl $OUT/peers_flux_graphs.jsonl 2>&1 | tail -20
python3 - <<'PY'
import json, os
for f in ("peers_sdxl_graphs.jsonl", "peers_flux_graphs.jsonl"):
    p = os.path.join(os.environ["OUT"], f)
    if not os.path.exists(p): continue
    for line in open(p):
        if line.startswith("{") and "cuda graphs" in line:
            r = json.loads(line); print({k: r.get(k) for k in ("model", "config", "graph_counts", "equal_to_eager", "host_call_ms", "eager_ms")})
PY
##### /tmp/devlite/call5.sh
#!/usr/bin/env bash
# GPU call 5 (ComfyUI 0.3.64: no comfy_kitchen needed, so PyAV fits the carry): the GPU tests.
set -u
here=.device/lite
python3 -m pip install -q --no-deps --no-index $here/wheels/*.whl > $OUT/setup.log 2>&1
site=$(python3 -c 'import site; print(site.getsitepackages()[0])'); tar -xJf $here/av-19.0.2.tar.xz -C "$site"; tar -xzf $here/ComfyUI-0.3.64.tar.gz -C /tmp
export COMFYUI_DIR=/tmp/ComfyUI-0.3.64 PYTHONUNBUFFERED=1
python3 -c "import av, torch; print('av', av.__version__, torch.cuda.get_device_name())"
s=$SECONDS; CUBLAS_WORKSPACE_CONFIG=:4096:8 QSCHED_TEST_DEVICE=cuda timeout 300 python3 -m pytest -v -p no:cacheprovider -rs tests/gpu/test_cuda_graphs_gpu.py -k "not dynamic" > $OUT/pytest_gpu.log 2>&1; echo "pytest gpu exit $? in $((SECONDS-s)) s"; grep -E "passed|failed|^FAILED|^ERROR|SKIP" $OUT/pytest_gpu.log | tail -15
grep -E "^E " $OUT/pytest_gpu.log | head -20
##### call3 (inline)
bash bench/device_setup.sh; COMFYUI_DIR=/tmp/ComfyUI-0.33.0 python3 bench/gpu_attention.py --out $OUT; python3 bench/gpu_lowrank.py --out $OUT
##### call6-8 (inline)
COMFYUI_DIR=/tmp/ComfyUI-0.33.0 python3 bench/peers.py --models flux --full-flux --configs "bf16,comfy fp8_fast,W8A8 auto,W4A8 auto" --attention int8 --host-profile --rounds 6 --warmup 2   # call6; call7: "bf16,W8A8 auto" --attention int8 --cuda-graphs; call8: "bf16,W8A8 auto" --attention int8
##### call9 (session 2026-12-07 #3): the wide digits variant, no carry
export PYTHONUNBUFFERED=1; nvidia-smi --query-gpu=name --format=csv,noheader; BUDGET_S=570 timeout 590 bash bench/gpu_digits_wide.sh 2>&1 | tail -40
##### call10 (session #3): carry .device/common + .device/tests
#!/usr/bin/env bash
# GPU call A (session 2026-12-07 #3): the Triton GEMM checked and timed at FLUX shapes, then FLUX 8+16 end to end
# with each kernel switch. Carry .device/common and .device/tests.
set -u
s=$SECONDS; bash bench/device_setup.sh > $OUT/setup.log 2>&1; echo "setup exit $? in $((SECONDS-s)) s"; tail -1 $OUT/setup.log
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader | tee $OUT/gpu.txt
export COMFYUI_DIR=/tmp/ComfyUI-0.33.0 PYTHONUNBUFFERED=1
s=$SECONDS; timeout 120 python3 bench/gpu_gemm.py --skip-sweep --log $OUT/gpu_gemm.jsonl > $OUT/gpu_gemm.log 2>&1; echo "gpu_gemm exit $? in $((SECONDS-s)) s"
grep -v '^{' $OUT/gpu_gemm.log | grep -iv warn | tail -60
C="bf16,W8A8 auto,W4A8 auto {FP8_W4_GEMM=triton},W8A8 int8 {INT8_GEMM=triton},W4A8-g64 auto,W4A8-g64 auto {GROUP_GEMM=fp16},W4A8-r32 auto {BRANCH=epilogue;FP8_W4_GEMM=triton},W4A8-g64-r32 auto {BRANCH=epilogue;GROUP_GEMM=fp16}"
s=$SECONDS; timeout $(( 340 - SECONDS )) python3 bench/peers.py --models flux --configs "$C" --host-profile --rounds 8 --warmup 3 --log $OUT/peers_flux.jsonl > $OUT/peers_flux.log 2>&1; echo "peers exit $? in $((SECONDS-s)) s"
grep -h "Error\|error" $OUT/peers_flux.log | sort | uniq -c | head -5
python3 bench/gpu_table.py $OUT/peers_flux.jsonl 2>&1 | tail -30
##### call11 (session #3, the same warm machine): LIMIT=120 bash .device/tests/callB.sh
#!/usr/bin/env bash
# GPU call B (warm machine after call A): tests/gpu on ComfyUI 0.33.0 (DynamicVRAM, CUDA graphs), the 16-bit group
# scales' dequantize kernel at FLUX shapes. Carry .device/common and .device/tests.
set -u
[ -d /tmp/ComfyUI-0.33.0 ] || bash bench/device_setup.sh > $OUT/setup.log 2>&1
export PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=:4096:8 QSCHED_TEST_DEVICE=cuda COMFYUI_DIR=/tmp/ComfyUI-0.33.0
s=$SECONDS; timeout ${LIMIT:-130} python3 -m pytest -v -p no:cacheprovider -rs tests/gpu/ > $OUT/pytest_gpu_0.33.0.log 2>&1
echo "pytest gpu 0.33.0 exit $? in $((SECONDS-s)) s"; grep -E "passed|failed|^FAILED|^ERROR|SKIP" $OUT/pytest_gpu_0.33.0.log | tail -14
grep -E "^E " $OUT/pytest_gpu_0.33.0.log | head -10
s=$SECONDS; timeout 60 python3 bench/gpu_scales16.py --out $OUT > $OUT/gpu_scales16.log 2>&1; echo "scales16 exit $? in $((SECONDS-s)) s"; tail -5 $OUT/gpu_scales16.log
##### call12 (session 2026-12-07 #4): no carry
BUDGET_S=570 bash bench/gpu_digits_wide.sh 2>&1 | tail -40
##### call13 (warm, same machine)
BUDGET_S=330 bash bench/gpu_digits_wide.sh measure 4 2>&1 | tail -14
##### call14: carry .device/common + .device/tests; kernel then split into even/odd columns (reverted)
#!/usr/bin/env bash
# GPU call C (session 2026-12-07 #4): the Triton GEMM with packed int4 split into even/odd halves (no interleave),
# checked and timed at FLUX shapes; FLUX 8+16 end to end with the int4 / group-wise paths; the Q-Sched sampler's own
# cost on SDXL; tests/gpu (DynamicVRAM in its own process). Carry .device/common and .device/tests.
set -u
s=$SECONDS; bash bench/device_setup.sh > $OUT/setup.log 2>&1; echo "setup exit $? in $((SECONDS-s)) s"; tail -1 $OUT/setup.log
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader | tee $OUT/gpu.txt
export COMFYUI_DIR=/tmp/ComfyUI-0.33.0 PYTHONUNBUFFERED=1
s=$SECONDS; timeout 130 python3 bench/gpu_gemm.py --skip-sweep --log $OUT/gpu_gemm.jsonl > $OUT/gpu_gemm.log 2>&1; echo "gpu_gemm exit $? in $((SECONDS-s)) s"
grep -v '^{' $OUT/gpu_gemm.log | grep -iv warn | grep -E "FAIL|checks|ms|\|" | tail -45
C="bf16,W8A8 auto,W4A8 auto,W4A8 auto {FP8_W4_GEMM=triton},W4A8 int8,W4A8-g64 auto,W4A8-g64 int8,W4A8-g64-r32 int8 {BRANCH=epilogue}"
s=$SECONDS; timeout 230 python3 bench/peers.py --models flux --configs "$C" --host-profile --rounds 8 --warmup 3 --log $OUT/peers_flux.jsonl > $OUT/peers_flux.log 2>&1; echo "peers exit $? in $((SECONDS-s)) s"
grep -h "Error\|error" $OUT/peers_flux.log | sort | uniq -c | head -5
python3 bench/gpu_table.py $OUT/peers_flux.jsonl 2>&1 | tail -14
GPU_TEST_LIMIT=75 OUT=$OUT bash bench/gpu_tests.sh 0.33.0
left=$(( ${BUDGET_S:-575} - SECONDS ))
if [ $left -gt 60 ]; then
  s=$SECONDS; timeout $(( left - 40 )) python3 bench/peers.py --models sdxl --configs bf16 --sampler --rounds 4 --warmup 1 --log $OUT/peers_sampler.jsonl > $OUT/peers_sampler.log 2>&1; echo "sampler exit $? in $((SECONDS-s)) s"
  grep '"sampler"' $OUT/peers_sampler.jsonl | cut -c1-400
fi
##### call15: no carry
timeout 300 python3 bench/gpu_int4_halves.py --log $OUT/gpu_int4_halves.jsonl
##### call16 (warm)
timeout 330 python3 bench/gpu_int4_halves.py --sweep-all 170 --log $OUT/gpu_int4_halves_sweep.jsonl
##### call17: carry .device/common + .device/tests; the per-step sync change (reverted after this call)
bash bench/device_setup.sh; COMFYUI_DIR=/tmp/ComfyUI-0.33.0 timeout 200 python3 bench/peers.py --models sdxl --configs bf16 --sampler --rounds 4 --warmup 1 --log $OUT/peers_sampler.jsonl
##### not run (device time ran out): .device/tests/callD.sh
#!/usr/bin/env bash
# GPU call D (session 2026-12-07 #4): the e4m3 group form (linear_ops.GROUP_GEMM = "e4m3") checked against its
# torch definition and timed at FLUX's shapes, then FLUX 8+16 end to end. Carry .device/common and .device/tests.
set -u
s=$SECONDS; bash bench/device_setup.sh > $OUT/setup.log 2>&1; echo "setup exit $? in $((SECONDS-s)) s"
export COMFYUI_DIR=/tmp/ComfyUI-0.33.0 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader | tee $OUT/gpu.txt
s=$SECONDS; timeout 70 python3 bench/gpu_gemm.py --e4m3-form --log $OUT/gpu_gemm_e4m3.jsonl > $OUT/gpu_gemm_e4m3.log 2>&1; echo "e4m3 form exit $? in $((SECONDS-s)) s"
grep -v '^{' $OUT/gpu_gemm_e4m3.log | grep -iv warn | tail -12
C="bf16,W4A8 auto,W4A8-g64 auto,W4A8-g64 fp8 {GROUP_GEMM=e4m3}"
s=$SECONDS; timeout $(( ${BUDGET_S:-200} - SECONDS )) python3 bench/peers.py --models flux --configs "$C" --host-profile --rounds 6 --warmup 2 --log $OUT/peers_flux.jsonl > $OUT/peers_flux.log 2>&1; echo "peers exit $? in $((SECONDS-s)) s"
grep -h "Error\|error" $OUT/peers_flux.log | sort | uniq -c | head -5
python3 bench/gpu_table.py $OUT/peers_flux.jsonl 2>&1 | tail -7

# call H (session #6): bench/gpu_lowrank.py, then FLUX 8+16 eager with the host diagnostics
s=$SECONDS; timeout 150 python3 bench/gpu_lowrank.py --out $OUT > $OUT/gpu_lowrank.log 2>&1; echo "gpu_lowrank exit $? in $((SECONDS-s)) s"; grep "split" $OUT/gpu_lowrank.log
C="bf16,W8A8 auto,W4A8 auto,W4A8 auto {STREAM_W4=true},W4A8-r32 auto,W4A8-r32 auto {BRANCH=unfused},W4A8-r32 auto {BRANCH=split},W4A8-r32 auto {BRANCH=split;SPLIT_DOWN=fused},W4A8-g64 auto,W4A8-g64-r32 auto,W4A8-g64-r32 auto {BRANCH=split},W4A8-g64 auto + cuda graphs"
s=$SECONDS; timeout $(( ${BUDGET_S:-560} - SECONDS )) python3 bench/peers.py --models flux --configs "$C" --host-profile --rounds 6 --warmup 2 --log $OUT/peers_flux_H.jsonl > $OUT/peers_flux_H.log 2>&1; echo "peers exit $? in $((SECONDS-s)) s"
grep -h "Error\|error" $OUT/peers_flux_H.log | sort | uniq -c | head -5
