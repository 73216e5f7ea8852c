"""The Triton GEMM's packed int4 weights in the halves layout (gemm_kernels.halves_layout: two contiguous dots per
step) against the standard layout (nibbles interleaved back into column order in registers), on FLUX's linear
shapes (bench/kernels8.py's FLUX_SHAPES and per-step call counts).

1. Checks: on the first two shapes, each variant's output in the halves layout against the standard layout (int8
   codes: bit for bit; e4m3: rel L2 below CHECK_REL) and, for int8 codes, against quant/qgemm.reference (bit for bit).
2. GPU ms per FLUX step (CUDA events, median of REPEATS x INNER calls; the GEMM alone on ready codes): BF16
   F.linear, the int8 W8 Triton GEMM, and per-channel / g64 / g32 int4 with int8 and e4m3 codes in both layouts; then
   a few tiles for the halves layout on the three largest shapes.

    python3 bench/gpu_int4_halves.py --log $OUT/gpu_int4_halves.jsonl      (one H100: about 60-90 s)
    TRITON_INTERPRET=1 python3 bench/gpu_int4_halves.py --smoke            (tiny shapes on the CPU)

Rows are JSON lines (to --log and stdout); the table is printed last. Exits 1 if a check fails."""
import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
import qsched  # noqa: E402,F401

from kernels8 import FLUX_SHAPES, gpu_us, rel, same_bits  # noqa: E402

from comfyui_qsched.quant import numerics, qgemm  # noqa: E402
from comfyui_qsched.quant.kernels import gemm_kernels as gk, triton_kernels as tk  # noqa: E402

CHECK_REL = 4e-3
INNER, REPEATS = 10, 5
SMOKE_SHAPES = [(40, 256, 128, 1), (300, 128, 64, 2)]
# (label, int8 activation codes, group size)
VARIANTS = [("W4A8 int8", True, None), ("W4A8 e4m3", False, None), ("W4A8-g64 int8", True, 64),
            ("W4A8-g64 e4m3", False, 64), ("W4A8-g32 int8", True, 32)]
SWEEP = [(128, 256, 8, 3), (256, 128, 8, 3), (64, 128, 4, 4), (128, 128, 4, 3)]  # BLOCK_M, BLOCK_N, warps, stages


def operands(m, k, n, int8_codes, group, device, generator):
    x = torch.randn(m, k, device=device, generator=generator).to(torch.bfloat16)
    w = torch.randn(n, k, device=device, generator=generator) / k ** 0.5
    w[:, :8] *= 10
    codes, scale = numerics.quantize_weight(w, 4, group)
    rows = x.contiguous()
    a, sa = tk.quantize_act(rows, m, True)[:2] if int8_codes else tk.quantize_rows_fp8(rows, m)
    packed = numerics.pack_int4(codes)
    return x, a, sa, codes, packed, scale


def run(a, sa, packed, scale, m, n, int8_codes, halves=0, tiles=None):
    return gk.qgemm(a, sa, packed, scale, None, m, n, int8_codes, True, torch.bfloat16, tiles=tiles, halves=halves)


def checks(device, shapes, log):
    results = {}
    generator = torch.Generator(device=device).manual_seed(0)
    for m, k, n, _ in shapes[:2]:
        for name, int8_codes, group in VARIANTS:
            x, a, sa, codes, packed, scale = operands(m, k, n, int8_codes, group, device, generator)
            half = gk.halves_step(m, group or 0)
            standard = run(a, sa, packed, scale, m, n, int8_codes)
            split = run(a, sa, gk.halves_layout(packed, k, half), scale, m, n, int8_codes, half)
            key = f"{name} m{m} k{k} n{n}"
            if int8_codes:
                reference = qgemm.reference(a, sa, codes, scale, None, m, torch.bfloat16)
                results[key] = {"ok": same_bits(split, standard) and same_bits(split, reference),
                                "rel": rel(split, reference)}
            else:
                results[key] = {"ok": rel(split, standard) < CHECK_REL, "rel": rel(split, standard)}
            log({"check": key, **results[key]})
    return results


def timings(device, shapes, log, sweep_deadline):
    generator = torch.Generator(device=device).manual_seed(1)
    totals = {}

    def add(key, us, count):
        totals[key] = totals.get(key, 0.0) + us * count / 1e3

    measure = (lambda fn: gpu_us(fn, INNER, REPEATS)) if device.type == "cuda" else (lambda fn: (fn(), 0.0)[1])
    largest = sorted(shapes, key=lambda s: -s[1] * s[2] * s[3])[:3]
    for m, k, n, count in shapes:
        row = {"m": m, "k": k, "n": n, "count": count}
        x = torch.randn(m, k, device=device, generator=generator).to(torch.bfloat16)
        wb = (torch.randn(n, k, device=device, generator=generator) / k ** 0.5).to(torch.bfloat16)
        row["bf16"] = measure(lambda: torch.nn.functional.linear(x, wb))
        codes8, scale8 = numerics.quantize_weight(wb.float(), 8, None)
        a8, sa8 = tk.quantize_act(x.contiguous(), m, True)[:2]
        row["W8A8 int8"] = measure(lambda: gk.qgemm(a8, sa8, codes8, scale8, None, m, n, True, False, torch.bfloat16))
        for name, int8_codes, group in VARIANTS:
            _, a, sa, _, packed, scale = operands(m, k, n, int8_codes, group, device, generator)
            half = gk.halves_step(m, group or 0)
            split = gk.halves_layout(packed, k, half)
            row[name + " standard"] = measure(lambda: run(a, sa, packed, scale, m, n, int8_codes))
            row[name + " halves"] = measure(lambda: run(a, sa, split, scale, m, n, int8_codes, half))
            if (m, k, n, count) in largest and time.monotonic() < sweep_deadline:
                block_k = gk.config(m, group or 0)[2]
                for block_m, block_n, warps, stages in SWEEP:
                    tiles = (block_m, block_n, block_k, warps, stages)
                    try:
                        row[f"{name} halves {tiles}"] = measure(
                            lambda: run(a, sa, split, scale, m, n, int8_codes, half, tiles))
                    except Exception as error:  # e.g. shared memory: reported, the rest still runs
                        row[f"{name} halves {tiles}"] = f"error: {type(error).__name__}: {error}"[:200]
        for key, value in row.items():
            if key not in ("m", "k", "n", "count") and isinstance(value, float) and "(" not in key:
                add(key, value, count)
        log({"gemm_us": row})
    log({"totals_ms_per_flux_step": totals})
    return totals


# --sweep-all: candidate (BLOCK_M, BLOCK_N, warps, stages) per variant kind, timed on every shape
SWEEP_ALL = {"channel": [(256, 128, 8, 3), (256, 128, 8, 4), (128, 256, 8, 3), (128, 128, 4, 3), (64, 128, 4, 4),
                         (64, 64, 4, 4)],
             "group": [(128, 128, 4, 3), (64, 128, 4, 4), (128, 64, 4, 3), (64, 64, 4, 4), (128, 128, 8, 3),
                       (64, 64, 4, 3)]}


def sweep_all(device, shapes, log, deadline):
    """ms per FLUX step of each candidate tile on every shape, and of the best tile per shape (halves layout)."""
    generator = torch.Generator(device=device).manual_seed(2)
    totals, best = {}, {}
    for m, k, n, count in shapes:
        row = {"m": m, "k": k, "n": n, "count": count}
        for name, int8_codes, group in VARIANTS:
            _, a, sa, _, packed, scale = operands(m, k, n, int8_codes, group, device, generator)
            half = gk.halves_step(m, group or 0)
            split = gk.halves_layout(packed, k, half)
            times = {}
            for block_m, block_n, warps, stages in SWEEP_ALL["group" if group else "channel"]:
                if time.monotonic() > deadline:
                    break
                tiles = (block_m, block_n, 2 * half, warps, stages)
                try:
                    times[tiles] = gpu_us(lambda: run(a, sa, split, scale, m, n, int8_codes, half, tiles),
                                          INNER, REPEATS)
                except Exception as error:
                    row[f"{name} {tiles}"] = f"error: {type(error).__name__}: {error}"[:200]
                    continue
                row[f"{name} {tiles}"] = times[tiles]
                key = f"{name} {tiles}"
                totals[key] = totals.get(key, 0.0) + times[tiles] * count / 1e3
            if times:
                tiles = min(times, key=times.get)
                best[name] = best.get(name, 0.0) + times[tiles] * count / 1e3
                row[f"{name} best"] = list(tiles)
        log({"sweep_us": row})
    log({"sweep_totals_ms_per_flux_step": totals, "best_per_shape_ms_per_flux_step": best})
    for key, value in sorted(totals.items()):
        print(f"  sweep {key:<48}{value:9.2f}")
    for key, value in best.items():
        print(f"  best tile per shape: {key:<28}{value:9.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", default="")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU under TRITON_INTERPRET=1")
    parser.add_argument("--sweep-all", type=float, default=0, metavar="SECONDS",
                        help="then time SWEEP_ALL's tiles on every shape for up to SECONDS (GPU only)")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.smoke else "cuda")
    shapes = SMOKE_SHAPES if args.smoke else FLUX_SHAPES
    handle = open(args.log, "a") if args.log else None

    def log(row):
        line = json.dumps(row)
        print(line, flush=True)
        if handle:
            handle.write(line + "\n")
            handle.flush()

    name = "cpu (interpreter)" if args.smoke else torch.cuda.get_device_name()
    results = checks(device, shapes, log)
    totals = timings(device, shapes, log, time.monotonic() + 60)
    print(f"Checks: {sum(r['ok'] for r in results.values())} ok, {sum(not r['ok'] for r in results.values())} FAIL")
    for key, result in results.items():
        if not result["ok"]:
            print(f"  FAIL {key}: {result}")
    bf16 = totals.get("bf16") or float("nan")
    print(f"FLUX linears per step, GEMM only ({name}, {time.strftime('%Y-%m-%d')}; ms; ratio to BF16)")
    for key, value in totals.items():
        print(f"  {key:<28}{value:9.2f}{value / bf16:7.2f}")
    if args.sweep_all and device.type == "cuda":
        sweep_all(device, shapes, log, time.monotonic() + args.sweep_all)
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
