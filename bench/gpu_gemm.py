"""GPU checks and timings of the Triton quantized GEMM (quant/kernels/gemm_kernels.py) on FLUX's linear shapes
(bench/kernels8.py's FLUX_SHAPES and per-step call counts, 4352 tokens in the single blocks).

1. Checks, each printed ok / FAIL with its relative error: every variant (int8 / e4m3 activations x int8 / e4m3 /
   packed int4 weights x per-channel / g64 / g16 x bias x rank-32 epilogue) through linear_ops.qgemm_fast against
   its torch definition linear_ops.qgemm_reference (int8 codes without branch: bit for bit; otherwise rel L2 below
   CHECK_REL: the output's bf16 rounding); the per-channel int8 kernel against the torch._int_mm path
   (linear_ops.int8_reference) bit for bit; a W4A8-g64 layer through the int8 backend (its Triton GEMM) against
   the simulate backend, and `auto` keeping it on simulate; the 'epilogue' branch form against the unfused one on
   fp8 / int8 layers; the per-channel switches (linear_ops.INT8_GEMM, FP8_W4_GEMM) against the cuBLAS paths.
2. GPU time per FLUX step (sum over the linears weighted by their calls per step; CUDA events, median of
   REPEATS x INNER calls): BF16 F.linear; the cuBLAS paths (W8A8 fp8 _scaled_mm, W4A8 fp8 unpack + _scaled_mm,
   W8A8 / W4A8 int8 torch._int_mm); the Triton GEMM for int8 W8A8, int8 W4A8, e4m3 W8A8 and W4A8, W4A8-g64 and -g16
   (int8 and e4m3 activations; exact and float16-dequantizing group forms); each quantized path + rank-32 branch
   unfused (x down^T, then addmm into y) and, for the Triton paths, with the up-projection in the epilogue. Then a
   small tile sweep on the three largest shapes (stopped at 120 s).

    python3 bench/gpu_gemm.py --log $OUT/gpu_gemm.jsonl          (one H100: < 150 s; no ComfyUI needed)
    TRITON_INTERPRET=1 python3 bench/gpu_gemm.py --smoke          (tiny shapes on the CPU: a test of this script)

Rows are JSON lines (to --log and stdout); the compact table is printed last. Exits 1 if a check fails."""
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

from kernels8 import FLUX_SHAPES, gpu_us  # noqa: E402

from comfyui_qsched.quant import QuantSpec, branch_ops, linear_ops, numerics, quantize_module  # noqa: E402
from comfyui_qsched.quant.kernels import gemm_kernels as gk  # noqa: E402

E4M3 = torch.float8_e4m3fn
RANK = 32
CHECK_REL = 4e-3  # bf16 output rounding (2**-9 relative per element) plus float32 summation order
INNER, REPEATS = 10, 5
SMOKE_SHAPES = [(40, 256, 128, 1), (17, 128, 256, 2)]
# (label, int8 activation codes, weight kind, group size): the Triton GEMM's timed variants
VARIANTS = [("W8A8 int8 triton", True, "int8", None, False), ("W4A8 int8 triton", True, "int4", None, False),
            ("W8A8 e4m3 triton", False, "e4m3", None, False),  # what the fp8 W8A8 layer runs in the epilogue form
            ("W4A8 e4m3 triton", False, "int4", None, False), ("W4A8-g64 int8 triton", True, "int4", 64, False),
            ("W4A8-g64 e4m3 triton", False, "int4", 64, False), ("W4A8-g16 int8 triton", True, "int4", 16, False),
            ("W4A8-g16 e4m3 triton", False, "int4", 16, False),
            # linear_ops.GROUP_GEMM = "fp16": weights dequantized to float16 in registers, float16 MMA
            ("W4A8-g64 int8 fp16-dequant", True, "int4", 64, True),
            ("W4A8-g16 int8 fp16-dequant", True, "int4", 16, True),
            ("W4A8-g64 e4m3 fp16-dequant", False, "int4", 64, True)]
CUBLAS = ["W8A8 fp8 cublas", "W4A8 fp8 cublas (unpack)", "W8A8 int8 cublas (_int_mm)", "W4A8 int8 cublas (_int_mm)",
          "W4A8-g64 fp8 cublas (e4m3 form)"]  # linear_ops.GROUP_GEMM = "e4m3"
# alternative tiles (BLOCK_M, BLOCK_N, BLOCK_K or 0 for the group size, warps, stages) timed on the largest shapes
# (256-row tiles halve the in-register weight unpacking per multiply-add: each weight tile serves twice the rows)
SWEEP = [(128, 256, 128, 8, 3), (256, 128, 128, 8, 3), (128, 128, 64, 8, 4), (64, 128, 128, 4, 4)]
SWEEP_VARIANTS = ("W8A8 int8 triton", "W4A8 e4m3 triton", "W4A8-g64 int8 triton")


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def weights(n, k, kind, group, device, generator):
    """(stored codes, scales) of a random weight with outlier input columns: int8 / packed int4 codes with
    per-channel or group scales (the simulate layout), or e4m3 codes with per-channel scales (fp8 W8)."""
    w = torch.randn(n, k, device=device, generator=generator) / k ** 0.5
    w[:, :8] *= 10
    if kind == "e4m3":
        scale = w.abs().amax(1, keepdim=True) / 448
        return (w / scale).to(E4M3), scale
    codes, scale = numerics.quantize_weight(w, 4 if kind == "int4" else 8, group)
    return (numerics.pack_int4(codes) if kind == "int4" else codes), scale


def check_variants(device, shapes, log):
    results = {}
    generator = torch.Generator(device=device).manual_seed(0)
    kinds = [(True, "int8"), (True, "int4"), (False, "e4m3"), (False, "int4")]
    for m, k, n, _ in shapes:
        x = (torch.randn(m, k, device=device, generator=generator)
             * torch.logspace(-2, 1, m, device=device)[:, None]).to(torch.bfloat16)
        down = (torch.randn(RANK, k, device=device, generator=generator) / k ** 0.5).to(torch.bfloat16)
        up = (torch.randn(n, RANK, device=device, generator=generator) / RANK ** 0.5).to(torch.bfloat16)
        bias = torch.randn(n, device=device, generator=generator).to(torch.bfloat16)
        xd = torch.nn.functional.linear(x, down)
        for int8_codes, kind in kinds:
            for group in (None, 64, 16):
                if group and kind == "e4m3":
                    continue
                packed, scale = weights(n, k, kind, group, device, generator)
                # bias with and without the branch (what the timings compile too), no bias once per kind: each
                # combination is a Triton compilation (~1-2 s), the budget is 150 s
                for with_bias, branch in ((True, False), (True, True), *(((False, False),) if not group else ())):
                    args = (x, packed, scale, bias if with_bias else None, n, kind == "int4", int8_codes,
                            xd if branch else None, up if branch else None)
                    name = (f"{'int8' if int8_codes else 'e4m3'}_x_{kind}_g{group or 'ch'}"
                            f"{'_bias' if with_bias else ''}{'_r32' if branch else ''}_m{m}_k{k}_n{n}")
                    fast, ref = linear_ops.qgemm_fast(*args), linear_ops.qgemm_reference(*args)
                    error = rel(fast, ref)
                    exact = int8_codes and not branch
                    ok = same_bits(fast, ref) if exact else error < CHECK_REL
                    results[name] = {"ok": bool(ok), "rel": error, "bit_exact": same_bits(fast, ref)}
                    if group and with_bias:  # the float16-dequantizing form against its definition
                        fast = linear_ops.qgemm_fast(*args, group_gemm="fp16")
                        ref16 = linear_ops.qgemm_reference(*args, group_gemm="fp16")
                        results[name + "_fp16_dequant"] = {"ok": rel(fast, ref16) < CHECK_REL, "rel": rel(fast, ref16),
                                                           "rel_vs_exact_form": rel(fast, ref)}
                if int8_codes and not group:  # per channel: the torch._int_mm path's numbers, bit for bit
                    fast = linear_ops.qgemm_fast(x, packed, scale, bias, n, kind == "int4", True)
                    ref = linear_ops.int8_reference(x, packed, scale, bias, n, kind == "int4")
                    results[f"int8_x_{kind}_ch_equals_int_mm_path_m{m}_k{k}_n{n}"] = {
                        "ok": same_bits(fast, ref), "rel": rel(fast, ref)}
    results.update(layer_checks(device, shapes[0]))
    for name, result in results.items():
        log({"check": name, **result})
    return results


def layer_checks(device, shape):
    """Through the backends as the loaders build layers: W4A8-g64-r32 via the int8 backend (its Triton GEMM on a CUDA
    GPU) against simulate, and auto keeping it on simulate (quant/auto.py); the 'epilogue' branch form against the
    unfused one on group-wise and per-channel fp8 / int8 layers; the per-channel switches (linear_ops.INT8_GEMM,
    FP8_W4_GEMM = "triton") against the cuBLAS paths."""
    m, k, n, _ = shape
    out = {}
    torch.manual_seed(0)
    base = torch.nn.Linear(k, n).to(device, torch.bfloat16).requires_grad_(False)
    x = torch.randn(2, m // 2, k, device=device, dtype=torch.bfloat16)

    def build(spec, backend):
        model = torch.nn.Sequential(torch.nn.Linear(k, n)).to(device, torch.bfloat16).requires_grad_(False)
        model[0].load_state_dict(base.state_dict())
        report = quantize_module(model, spec, backend=backend, policy="first_last=off", device=device)
        return model[0], report.layers[0].backend

    how = build("W4A8-g64-r32", "auto")[1]
    out["auto_keeps_group_wise_on_simulate"] = {"ok": how.startswith("auto: simulate"), "how": how}
    fast = build("W4A8-g64-r32", "int8")[0]
    simulated = build("W4A8-g64-r32", "simulate")[0](x)
    out["int8_g64_r32_vs_simulate"] = {"ok": rel(fast(x), simulated) < 2e-2, "rel": rel(fast(x), simulated)}
    for spec, backend in (("W4A8-g64-r32", "int8"), ("W4A8-g64-r32", "fp8"), ("W4A8-r32", "fp8"),
                          ("W8A8-r32", "fp8"), ("W8A8-r32", "int8"), ("W4A8-r32", "int8")):
        layer = fast if spec == "W4A8-g64-r32" and backend == "int8" else build(spec, backend)[0]
        unfused = layer(x)
        epilogue = branch_ops.fast_branch_forward(layer, x, layer.weight, layer.bias, backend != "fp8",
                                                  form="epilogue")
        if epilogue is not None:  # None off CUDA: the fast forms step aside
            out[f"epilogue_vs_unfused_{spec}_{backend}"] = {"ok": rel(epilogue, unfused) < 2 * CHECK_REL,
                                                            "rel": rel(epilogue, unfused)}
    out.update(e4m3_form_checks(device, x, n, k, base.bias))
    for switch, bits in (("INT8_GEMM", 8), ("INT8_GEMM", 4), ("FP8_W4_GEMM", 4)):
        int8_codes = switch == "INT8_GEMM"
        packed, scale = weights(n, k, "int4" if bits == 4 else "int8", None, device, torch.Generator(
            device=device).manual_seed(bits))
        reference = (linear_ops.int8_reference if int8_codes else linear_ops.fp8_reference)(
            x, packed, scale, base.bias, n, bits == 4)
        setattr(linear_ops, switch, "triton")
        try:
            got = (linear_ops.int8_fast if int8_codes else linear_ops.fp8_fast)(x, packed, scale, base.bias, n,
                                                                              bits == 4)
        finally:
            setattr(linear_ops, switch, "cublas")
        # int8: exact int32 sums either way, the same scaling: bit for bit; e4m3: float32 sums in another order
        ok = same_bits(got, reference) if int8_codes else rel(got, reference) < CHECK_REL
        out[f"switch_{switch}_triton_w{bits}"] = {"ok": bool(ok), "rel": rel(got, reference)}
    return out


def e4m3_form_checks(device, x, n, k, bias, group=64, suffix=""):
    """GROUP_GEMM "e4m3": the unpacking kernel bit for bit, the cuBLAS product against its float64 definition, and
    how far the form is from the exact group-wise product."""
    out = {}
    packed, scale = weights(n, k, "int4", group, device, torch.Generator(device=device).manual_seed(64))
    scale = scale.half()
    ratio, _ = linear_ops.group_ratios(scale)
    unpacked = linear_ops.kernels.triton_kernels.int4_groups_e4m3(packed, ratio, n, k)
    defined, _ = linear_ops.group_e4m3_reference(packed, scale, n, k)
    out[f"e4m3_form_unpack_bit_exact{suffix}"] = {"ok": same_bits(unpacked, defined),
                                                  "rel": rel(unpacked.float(), defined.float())}
    got = linear_ops.fp8_group_fast(x, packed, scale, bias, n)
    expected = linear_ops.fp8_group_reference(x, packed, scale, bias, n)
    exact_form = linear_ops.qgemm_reference(x, packed, scale, bias, n, True, False)
    out[f"e4m3_form_vs_definition{suffix}"] = {"ok": rel(got, expected) < CHECK_REL, "rel": rel(got, expected),
                                               "rel_vs_exact_form": rel(got, exact_form)}
    return out


def e4m3_form_only(device, shapes, log):
    """--e4m3-form: the e4m3 group form's checks on the first two shapes (g64 and g16), then GPU ms per FLUX step
    of BF16, W4A8 per channel (unpack + cuBLAS FP8) and W4A8-g64 in the e4m3 form."""
    results, totals = {}, {}
    generator = torch.Generator(device=device).manual_seed(3)
    for m, k, n, _ in shapes[:2]:
        x = torch.randn(m, k, device=device, generator=generator).to(torch.bfloat16)
        bias = torch.randn(n, device=device, generator=generator).to(torch.bfloat16)
        for group in (64, 16):
            results.update(e4m3_form_checks(device, x, n, k, bias, group, f"_g{group}_m{m}_k{k}_n{n}"))
    measure = timer(device)
    for m, k, n, count in shapes:
        calls, _ = paths_for(m, k, n, device, generator)
        row = {"m": m, "k": k, "n": n, "count": count}
        for name in ("bf16", CUBLAS[0], CUBLAS[1], CUBLAS[4]):
            row[name] = measure(calls[name][0])
            totals[name] = totals.get(name, 0.0) + row[name] * count / 1e3
        log({"gemm_us": row})
        del calls
    for name, result in results.items():
        log({"check": name, **result})
    log({"gemm_totals_ms_per_flux_step": totals})
    return results, totals


def timer(device):
    def measure(fn, inner=INNER, repeats=REPEATS):
        if device.type == "cuda":
            return gpu_us(fn, inner, repeats)
        fn()
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e6
    return measure


def paths_for(m, k, n, device, generator):
    """name -> (base call, call with the rank-32 branch unfused, with it in the epilogue or None)."""
    x = torch.randn(m, k, device=device, generator=generator).to(torch.bfloat16)
    bias = torch.randn(n, device=device, generator=generator).to(torch.bfloat16)
    down = (torch.randn(RANK, k, device=device, generator=generator) / k ** 0.5).to(torch.bfloat16)
    up = (torch.randn(n, RANK, device=device, generator=generator) / RANK ** 0.5).to(torch.bfloat16)
    wb = (torch.randn(n, k, device=device, generator=generator) / k ** 0.5).to(torch.bfloat16)
    f8, s8 = weights(n, k, "e4m3", None, device, generator)
    i8, si8 = weights(n, k, "int8", None, device, generator)
    i4, si4 = weights(n, k, "int4", None, device, generator)
    g4, sg4 = weights(n, k, "int4", 64, device, generator)
    sg4 = sg4.half()  # float16 group scales, as the layers keep them

    def unfused(call):
        def run():
            return call().view(-1, n).addmm_(torch.nn.functional.linear(x, down), up.t())
        return run

    calls = {"bf16": (lambda: torch.nn.functional.linear(x, wb, bias), None, None)}
    cublas = {CUBLAS[0]: lambda: linear_ops.fp8_fast(x, f8, s8, bias, n, False),
              CUBLAS[1]: lambda: linear_ops.fp8_fast(x, i4, si4, bias, n, True),
              CUBLAS[2]: lambda: linear_ops.int8_fast(x, i8, si8, bias, n, False),
              CUBLAS[3]: lambda: linear_ops.int8_fast(x, i4, si4, bias, n, True),
              CUBLAS[4]: lambda: linear_ops.fp8_group_fast(x, g4, sg4, bias, n)}
    for name, call in cublas.items():
        calls[name] = (call, unfused(call), None)
    for name, int8_codes, kind, group, dequant in VARIANTS:
        packed, scale = (i8, si8) if kind == "int8" else weights(n, k, kind, group, device, generator)
        form = "fp16" if dequant else "exact"

        def base(packed=packed, scale=scale, int8_codes=int8_codes, kind=kind, form=form):
            return linear_ops.qgemm_fast(x, packed, scale, bias, n, kind == "int4", int8_codes, group_gemm=form)

        def epilogue(packed=packed, scale=scale, int8_codes=int8_codes, kind=kind, form=form):
            return linear_ops.qgemm_fast(x, packed, scale, bias, n, kind == "int4", int8_codes,
                                         torch.nn.functional.linear(x, down), up, group_gemm=form)
        calls[name] = (base, unfused(base), epilogue)
    return calls, (x, bias, i8, si8, i4, si4, generator)


def timings(device, shapes, log):
    measure = timer(device)
    totals = {}
    generator = torch.Generator(device=device).manual_seed(1)
    for m, k, n, count in shapes:
        calls, _ = paths_for(m, k, n, device, generator)
        row = {"m": m, "k": k, "n": n, "count": count}
        for name, variants in calls.items():
            for suffix, fn in zip(("", " +r32 unfused", " +r32 epilogue"), variants):
                if fn is None:
                    continue
                try:
                    row[name + suffix] = measure(fn)
                    totals[name + suffix] = totals.get(name + suffix, 0.0) + row[name + suffix] * count / 1e3
                except Exception as error:  # reported in the row and the table, the other paths still run
                    row[name + suffix] = f"error: {type(error).__name__}: {error}"[:300]
        log({"gemm_us": row})
        del calls
    log({"gemm_totals_ms_per_flux_step": totals})
    return totals


def sweep(device, shapes, log, deadline):
    """The SWEEP tiles for SWEEP_VARIANTS, summed over the given shapes (weighted), next to the default tiles."""
    measure = timer(device)
    generator = torch.Generator(device=device).manual_seed(2)
    totals = {}
    for m, k, n, count in shapes:
        x = torch.randn(m, k, device=device, generator=generator).to(torch.bfloat16)
        for name, int8_codes, kind, group, _ in VARIANTS:
            if name not in SWEEP_VARIANTS:
                continue
            packed, scale = weights(n, k, kind, group, device, generator)
            rows = x.contiguous()
            codes, row_scale = (linear_ops.kernels.triton_kernels.quantize_act(rows, m, True)[:2] if int8_codes
                                else linear_ops.kernels.triton_kernels.quantize_rows_fp8(rows, m))
            for tiles in [None, *SWEEP]:
                if time.monotonic() > deadline:
                    return totals
                if tiles is not None and group:
                    tiles = (tiles[0], tiles[1], group, tiles[3], tiles[4])
                if tiles == gk.config(m, group or 0):
                    continue  # the default, timed first
                key = f"{name} tiles {tiles or gk.config(m, group or 0)}"
                try:
                    us = measure(lambda t=tiles: gk.qgemm(codes, row_scale, packed, scale, None, m, n, int8_codes,
                                                          kind == "int4", torch.bfloat16, tiles=t))
                    totals[key] = totals.get(key, 0.0) + us * count / 1e3
                except Exception as error:
                    totals[key] = f"error: {type(error).__name__}: {error}"[:200]
    log({"gemm_sweep_ms_largest_shapes": totals})
    return totals


def table(totals, results, sweep_totals, device_name):
    lines = [f"Checks: {sum(r['ok'] for r in results.values())} ok, {sum(not r['ok'] for r in results.values())} "
             f"FAIL" + "".join(f"\n  FAIL {name}: {r}" for name, r in results.items() if not r["ok"])]
    worst = max((r.get("rel", 0.0) for r in results.values()), default=0.0)
    lines.append(f"  worst rel error of any check: {worst:.2e}")
    bf16 = totals.get("bf16")
    unit = "CPU interpreter ms, tiny shapes: no timing" if device_name.startswith("cpu") else "4352 tokens; GPU ms"
    lines.append(f"FLUX linears per step ({device_name}, {time.strftime('%Y-%m-%d')}; {unit}; ratio to BF16; +r32: "
                 f"extra ms over the same path, % of its time)")
    lines.append(f"  {'path':<28}{'ms':>8}{'ratio':>7}{'+r32 unfused':>20}{'+r32 epilogue':>20}")
    for name in ["bf16", *CUBLAS, *(v[0] for v in VARIANTS)]:
        base = totals.get(name)
        if not isinstance(base, float):
            lines.append(f"  {name:<28} error (see the rows)")
            continue
        cells = []
        for suffix in (" +r32 unfused", " +r32 epilogue"):
            extra = totals.get(name + suffix)
            cells.append(f"{extra - base:+7.2f} ({100 * (extra - base) / base:+5.1f}%)" if isinstance(extra, float)
                         else "-")
        ratio = base / bf16 if bf16 else float("nan")
        lines.append(f"  {name:<28}{base:8.2f}{ratio:7.2f}{cells[0]:>20}{cells[1]:>20}")
    if sweep_totals:
        lines.append("Tile sweep (ms over the 3 largest-weight shapes, weighted; the first of each is the default):")
        for key, value in sweep_totals.items():
            lines.append(f"  {key:<60} {value if isinstance(value, str) else f'{value:8.2f}'}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", default="")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU under TRITON_INTERPRET=1")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--e4m3-form", action="store_true", help="only the e4m3 group form's checks and timings")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.smoke:
        raise SystemExit("bench/gpu_gemm.py checks and times CUDA kernels: run it on a GPU (or --smoke on the CPU "
                         "with TRITON_INTERPRET=1)")
    if args.smoke and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("--smoke runs the kernels under Triton's interpreter: set TRITON_INTERPRET=1")
    started = time.monotonic()
    device = torch.device("cpu" if args.smoke else "cuda")
    shapes = SMOKE_SHAPES if args.smoke else FLUX_SHAPES
    linear_ops.FP8_W4_GEMM = linear_ops.INT8_GEMM = "cublas"  # the cuBLAS rows time cuBLAS, whatever the default

    def log(record):
        print(json.dumps(record), flush=True)
        if args.log:
            with open(args.log, "a") as handle:
                handle.write(json.dumps(record) + "\n")

    device_name = "cpu (interpreter)" if args.smoke else torch.cuda.get_device_name()
    log({"device": device_name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
         "spec_check": QuantSpec.parse("W4A8-g64-r32").name})
    check_shapes = shapes if args.smoke else [(4352, 3072, 3072, 1), (4352, 15360, 3072, 1)]
    if args.e4m3_form:
        results, totals = e4m3_form_only(device, check_shapes if args.smoke else shapes, log)
        print(table({}, results, {}, device_name).split("\nFLUX")[0])
        print(f"FLUX linears per step, GEMM with its unpacking and activation quantization ({device_name}, "
              f"{time.strftime('%Y-%m-%d')}; ms; ratio to BF16)")
        for name, value in totals.items():
            print(f"  {name:<36}{value:9.2f}{value / totals['bf16']:7.2f}")
        return 0 if all(r["ok"] for r in results.values()) else 1
    results = check_variants(device, check_shapes, log)
    log({"checks_seconds": time.monotonic() - started})
    totals = timings(device, shapes, log)
    largest = sorted(shapes, key=lambda s: -s[1] * s[2] * s[3])[:1 if args.smoke else 3]
    sweep_totals = {} if args.skip_sweep else sweep(device, largest, log, started + (1e9 if args.smoke else 120))
    log({"seconds": time.monotonic() - started})
    print(table(totals, results, sweep_totals, device_name))
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
