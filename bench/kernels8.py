"""GPU checks and timings of the 8-bit linears' kernels: the fused activation quantizer (int8 / e4m3, with the
low-rank down-projection or the widened-K fold), int4 unpacking, the int8 epilogue, the eager linears against
their torch definitions; then, on FLUX's shapes at 4352 tokens, per-call GPU time of BF16, the FP8 and int8 paths
and of the low-rank branch at rank 16 / 32 / 64: unfused (two more GEMMs, issue 22), fused (down-projection in the
quantizer, up-projection as one addmm) and folded (one widened-K GEMM), each beside the same spec without branch.

    python3 bench/kernels8.py --log rows.jsonl      (needs a CUDA GPU; no ComfyUI)"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import qsched  # noqa: E402,F401

from comfyui_qsched.quant import branch_ops, fp8, int8, linear_ops, numerics  # noqa: E402
from comfyui_qsched.quant.kernels import triton_kernels as tk  # noqa: E402

E4M3 = torch.float8_e4m3fn
# (K, N, calls per step of the full FLUX.1 DiT: 19 double blocks x 2 streams, 38 single blocks); the image stream's
# 4096 tokens and the text's 256 run as separate calls in double blocks, the single blocks see all 4352.
FLUX_SHAPES = [(4096, 3072, 9216, 19), (4096, 3072, 3072, 19), (4096, 3072, 12288, 19), (4096, 12288, 3072, 19),
               (256, 3072, 9216, 19), (256, 3072, 3072, 19), (256, 3072, 12288, 19), (256, 12288, 3072, 19),
               (4352, 3072, 21504, 38), (4352, 15360, 3072, 38)]


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


# relative errors allowed per check kind (booleans must be True): bf16 rounding of x down^T; e4m3 rounding of the
# folded branch columns; the int8 linear against float64 (bf16 output rounding); a layer's fast forward against the
# torch definition of its form (bf16 rounding); a W4A8 / W8A8 layer against the float layer (quantization error)
LIMITS = {"_xd_rel": 8e-3, "_tail_rel": 0.05, "_rel_vs_float64": 8e-3, "_vs_reference_rel": 8e-3, "_error": 0.2}


def failures(result):
    bad = []
    for key, value in result.items():
        limit = next((v for suffix, v in LIMITS.items() if key.endswith(suffix)), None)
        if value is not True and not (limit is not None and isinstance(value, float) and value < limit):
            bad.append(key)
    return bad


def checks(device, smoke=False):
    """Every kernel against its torch definition on fresh random inputs; True / relative error per check."""
    out = {}
    for cols in ((256, 1000) if smoke else (3072, 15360, 1000)):
        for count in ((77,) if smoke else (77, 4352)):
            x = (torch.randn(count, cols, device=device) * torch.logspace(-3, 2, count, device=device)[:, None]).to(
                torch.bfloat16)
            for int8_codes in (True, False):
                kind = "int8" if int8_codes else "fp8"
                padded = int8.padded_rows(count, "cuda") if int8_codes else -(-count // 16) * 16
                ref = (int8.quantize_rows if int8_codes else fp8.quantize_rows)(x, padded)
                for block_m in (1, 16):
                    codes, scales, _ = tk.quantize_act(x, padded, int8_codes, block_m=block_m)
                    out[f"act_{kind}_k{cols}_m{count}_b{block_m}"] = same_bits(codes, ref[0]) and torch.equal(
                        scales, ref[1])
                if cols % 16 == 0:
                    for rank in (16, 32, 64):
                        down = (torch.randn(rank, cols, device=device) / cols ** 0.5).to(torch.bfloat16)
                        codes, scales, xd = tk.quantize_act(x, padded, int8_codes, down=down)
                        exact = x.double() @ down.double().t()
                        out[f"act_{kind}_down_r{rank}_k{cols}_m{count}_codes"] = same_bits(codes, ref[0])
                        out[f"act_{kind}_down_r{rank}_k{cols}_m{count}_xd_rel"] = rel(xd, exact)
                        if not int8_codes:
                            codes, scales, _ = tk.quantize_act(x, padded, False, down=down, fold=True)
                            tail = (exact / ref[1][:count].double()).clamp(-448, 448)
                            out[f"act_fold_r{rank}_k{cols}_m{count}_main_codes"] = same_bits(
                                codes[:, :cols].contiguous(), ref[0])
                            out[f"act_fold_r{rank}_k{cols}_m{count}_tail_rel"] = rel(codes[:count, cols:].float(), tail)
    size, tokens = (256, 40) if smoke else (3072, 4352)
    packed = torch.randint(0, 256, (size, size // 2), device=device, dtype=torch.uint8)
    for dtype in (torch.int8, E4M3):
        wide = torch.zeros((size, size + 32), device=device, dtype=dtype)
        tk.int4_unpack(packed, size, size, dtype, out=wide)
        out[f"int4_unpack_{str(dtype)[6:]}"] = bool(torch.equal(wide[:, :size].float(),
                                                                numerics.unpack_int4(packed, size).float()))
        out[f"int4_unpack_{str(dtype)[6:]}_tail_untouched"] = bool((wide[:, size:].float() == 0).all())
    acc = torch.randint(-2 ** 24, 2 ** 24, (tokens, size), device=device, dtype=torch.int32)
    sx, sw = torch.rand(tokens, 1, device=device) / 1e3, torch.rand(size, 1, device=device) / 1e3
    bias = torch.randn(size, device=device, dtype=torch.bfloat16)
    out["int8_epilogue"] = same_bits(tk.int8_epilogue(acc, sx, sw, bias, tokens - 2, torch.bfloat16),
                                     int8.scale_int32(acc, sx, sw, bias, tokens - 2, torch.bfloat16))
    # whole linears: fast path vs torch definition on the GPU (same codes; the GEMMs are cuBLAS either way)
    x = torch.randn(2, 30 if smoke else 300, size, device=device, dtype=torch.bfloat16)
    w = torch.randn(1024 if size > 1024 else 128, size, device=device) / size ** 0.5
    n = w.shape[0]
    for bits in (8, 4):
        codes, scale = numerics.quantize_weight(w, bits)
        packed = numerics.pack_int4(codes) if bits == 4 else codes
        exact = torch.nn.functional.linear(numerics.fake_quantize_activation(x.double(), 8),
                                           numerics.dequantize_weight(codes, scale, torch.float64), bias[:n].double())
        fast = linear_ops.int8_fast(x, packed, scale, bias[:n], n, bits == 4)
        out[f"int8_linear_w{bits}_equal_reference"] = bool(torch.equal(
            fast, linear_ops.int8_reference(x, packed, scale, bias[:n], n, bits == 4)))
        out[f"int8_linear_w{bits}_rel_vs_float64"] = rel(fast, exact)
        f8 = (w / (w.abs().amax(1, keepdim=True) / 448)).to(E4M3) if bits == 8 else packed
        s8 = w.abs().amax(1, keepdim=True) / 448 if bits == 8 else scale
        out[f"fp8_linear_w{bits}_equal_reference"] = bool(torch.equal(
            linear_ops.fp8_fast(x, f8, s8, bias[:n], n, bits == 4),
            linear_ops.fp8_reference(x, f8, s8, bias[:n], n, bits == 4)))
    out.update(layer_checks(device, smoke))
    return out


def layer_checks(device, smoke=False):
    """Quantized layers with a rank-32 branch, as the loaders build them: the fast forward (fold for W4A8 FP8, fused
    otherwise) against the torch definition of the same form, and the error of both against float64."""
    from torch import nn

    from comfyui_qsched.quant import quantize_module
    size = 256 if smoke else 3072
    out = {}
    for spec, backend in (("W8A8-r32", "fp8"), ("W4A8-r32", "fp8"), ("W8A8-r32", "int8"), ("W4A8-r32", "int8")):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(size, size)).to(device, torch.bfloat16).requires_grad_(False)
        float_weight, float_bias = model[0].weight.double().clone(), model[0].bias.double().clone()
        quantize_module(model, spec, backend=backend, policy="first_last=off")
        layer = model[0]
        x = torch.randn(3, 100, size, device=device, dtype=torch.bfloat16)
        fast = layer(x)
        int8_codes = backend == "int8"
        if not int8_codes and branch_ops.fold_holds(layer.quant_spec):
            down, codes = branch_ops.fold_factors(layer.lowrank_down, layer.lowrank_up, layer.weight_scale)
            reference = branch_ops.fp8_fold_reference(x, layer.fp8_weight(layer.weight), layer.weight_scale,
                                                      layer.bias, down, codes)
        else:
            reference = branch_ops.fused_reference(x, layer.weight, layer.weight_scale, layer.bias, size,
                                                   layer.quant_spec.packed_int4, layer.lowrank_down, layer.lowrank_up,
                                                   int8_codes)
        exact = x.double() @ float_weight.t() + float_bias
        key = f"layer_{spec}_{backend}"
        out[f"{key}_fast_vs_reference_rel"] = rel(fast, reference)
        out[f"{key}_fast_error"] = rel(fast, exact)
        out[f"{key}_reference_error"] = rel(reference, exact)
    return out


def split(weight, rank):
    u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
    root = s[:rank].sqrt()
    up, down = (u[:, :rank] * root).to(torch.bfloat16), (root[:, None] * vh[:rank]).to(torch.bfloat16)
    return down, up, weight.float() - up.float() @ down.float()


def precision(device, rank=32, k=3072, tokens=1024):
    """Errors against the float64 product on a FLUX-sized layer with a decaying spectrum and outlier channels: the
    spec without branch, the branch unfused / fused / folded (W8A8 and W4A8 fp8, W8A8 int8)."""
    g = torch.Generator(device=device).manual_seed(0)
    n = k
    spectrum = torch.logspace(1.3, -1, k, device=device)
    q1, _ = torch.linalg.qr(torch.randn(n, n, device=device, generator=g))
    q2, _ = torch.linalg.qr(torch.randn(k, k, device=device, generator=g))
    weight = (q1 * spectrum) @ q2.t() / k ** 0.5
    x = torch.randn(tokens, k, device=device, generator=g)
    x[:, :16] *= 20
    x = x.to(torch.bfloat16)
    exact = x.double() @ weight.double().t()
    down, up, residual = split(weight, rank)
    branch = x.double() @ down.double().t() @ up.double().t()
    result = {}
    for bits in (8, 4):
        for label, matrix in (("none", weight), (f"r{rank}", residual)):
            codes, scale = numerics.quantize_weight(matrix, bits)
            packed = numerics.pack_int4(codes) if bits == 4 else codes
            main_int8 = linear_ops.int8_fast(x, packed, scale, None, n, bits == 4)
            if bits == 8:
                scale8 = matrix.abs().amax(1, keepdim=True) / 448
                packed8, codes8 = (matrix / scale8).to(E4M3), None
                codes8 = packed8
            else:
                scale8, packed8, codes8 = scale, packed, codes.to(torch.bfloat16).to(E4M3)
            main_fp8 = linear_ops.fp8_fast(x, packed8, scale8, None, n, bits == 4)
            if label == "none":
                result[f"W{bits}A8_fp8_no_branch"] = rel(main_fp8, exact)
                result[f"W{bits}A8_int8_no_branch"] = rel(main_int8, exact)
                continue
            result[f"W{bits}A8_fp8_unfused"] = rel(main_fp8.double() + branch, exact)
            result[f"W{bits}A8_fp8_fused"] = rel(branch_ops.fused_fast(x, packed8, scale8, None, n, bits == 4, down,
                                                                       up, False), exact)
            result[f"W{bits}A8_int8_fused"] = rel(branch_ops.fused_fast(x, packed, scale, None, n, bits == 4, down,
                                                                        up, True), exact)
            down_f, up_codes = branch_ops.fold_factors(down, up, scale8)
            wide = branch_ops.wide_fp8_weight(packed8, bits == 4, up_codes, n, k)
            result[f"W{bits}A8_fp8_fold"] = rel(branch_ops.fold_fast(x, wide, scale8, None, down_f), exact)
            result[f"W{bits}A8_fp8_fold_equal_reference"] = rel(
                branch_ops.fold_fast(x, wide, scale8, None, down_f),
                branch_ops.fp8_fold_reference(x, codes8, scale8, None, down_f, up_codes))
    return result


def gpu_us(fn, inner=10, repeats=7):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / inner)
    return statistics.median(times)


def timings(device, log, ranks=(16, 32, 64), shapes=FLUX_SHAPES):
    totals = {}
    for m, k, n, count in shapes:
        x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=device) / k ** 0.5
        bias = torch.randn(n, device=device, dtype=torch.bfloat16)
        wb = w.to(torch.bfloat16)
        codes8, scale8 = numerics.quantize_weight(w, 8)
        codes4, scale4 = numerics.quantize_weight(w, 4)
        packed4 = numerics.pack_int4(codes4)
        sf = w.abs().amax(1, keepdim=True) / 448
        f8 = (w / sf).to(E4M3)
        paths = {
            "bf16": lambda: torch.nn.functional.linear(x, wb, bias),
            "W8A8_fp8": lambda: linear_ops.fp8_fast(x, f8, sf, bias, n, False),
            "W4A8_fp8": lambda: linear_ops.fp8_fast(x, packed4, scale4, bias, n, True),
            "W8A8_int8": lambda: linear_ops.int8_fast(x, codes8, scale8, bias, n, False),
            "W4A8_int8": lambda: linear_ops.int8_fast(x, packed4, scale4, bias, n, True),
            "act_quant_fp8": lambda: tk.quantize_rows_fp8(x, -(-m // 16) * 16),
            "act_quant_int8": lambda: tk.quantize_act(x, m, True),
        }
        for rank in ranks:
            down = (torch.randn(rank, k, device=device) / k ** 0.5).to(torch.bfloat16)
            up = (torch.randn(n, rank, device=device) / rank ** 0.5).to(torch.bfloat16)
            df, uc = branch_ops.fold_factors(down, up, scale4)
            wide4 = branch_ops.wide_fp8_weight(packed4, True, uc, n, k)
            df8, uc8 = branch_ops.fold_factors(down, up, sf)
            wide8 = branch_ops.wide_fp8_weight(f8, False, uc8, n, k)

            def unfused(base, down=down, up=up):
                out = base()
                return out.view(-1, n).addmm_(torch.nn.functional.linear(x, down), up.t())

            paths.update({
                f"W8A8_fp8_r{rank}_unfused": lambda u=unfused: u(paths["W8A8_fp8"]),
                f"W4A8_fp8_r{rank}_unfused": lambda u=unfused: u(paths["W4A8_fp8"]),
                f"W8A8_int8_r{rank}_unfused": lambda u=unfused: u(paths["W8A8_int8"]),
                f"W8A8_fp8_r{rank}_fused": lambda d=down, u=up: branch_ops.fused_fast(x, f8, sf, bias, n, False, d, u,
                                                                                     False),
                f"W4A8_fp8_r{rank}_fused": lambda d=down, u=up: branch_ops.fused_fast(x, packed4, scale4, bias, n,
                                                                                     True, d, u, False),
                f"W8A8_int8_r{rank}_fused": lambda d=down, u=up: branch_ops.fused_fast(x, codes8, scale8, bias, n,
                                                                                      False, d, u, True),
                f"W4A8_fp8_r{rank}_fold": lambda d=df, u=uc: branch_ops.fold_fast(
                    x, branch_ops.wide_fp8_weight(packed4, True, u, n, k), scale4, bias, d),
                f"W8A8_fp8_r{rank}_fold_prebuilt": lambda d=df8, wd=wide8: branch_ops.fold_fast(x, wd, sf, bias, d),
                f"W4A8_fp8_r{rank}_fold_prebuilt": lambda d=df, wd=wide4: branch_ops.fold_fast(x, wd, scale4, bias, d),
                f"act_quant_fp8_r{rank}_down": lambda d=down: tk.quantize_act(x, -(-m // 16) * 16, False, down=d),
                f"act_quant_fp8_r{rank}_down_b32": lambda d=down: tk.quantize_act(x, -(-m // 16) * 16, False, down=d,
                                                                                 block_m=32),
            })
        row = {"m": m, "k": k, "n": n, "count": count}
        for path, fn in paths.items():
            try:
                row[path] = gpu_us(fn)
                totals[path] = totals.get(path, 0.0) + row[path] * count / 1e3
            except Exception as error:
                row[path] = f"error: {type(error).__name__}: {error}"[:200]
        log({"kernel_us": row})
    log({"kernel_totals_ms_full_flux_linears": totals})
    return totals


def summary(totals, ranks=(16, 32, 64)):
    lines = ["FLUX linears per step (full model, 4352 tokens, GPU ms; ratio to BF16):"]
    bf16 = totals.get("bf16")
    for key in ("bf16", "W8A8_fp8", "W4A8_fp8", "W8A8_int8", "W4A8_int8"):
        if key in totals:
            lines.append(f"  {key:<12} {totals[key]:8.2f} ms  {totals[key] / bf16:5.2f}")
    lines.append("low-rank branch: extra GPU ms per step over the same spec without branch (unfused / fused / fold)")
    for rank in ranks:
        for spec in ("W8A8_fp8", "W4A8_fp8", "W8A8_int8"):
            cells = []
            for form in ("unfused", "fused", "fold", "fold_prebuilt"):
                key = f"{spec}_r{rank}_{form}"
                if key in totals:
                    cells.append(f"{form} {totals[key] - totals[spec]:+7.2f}")
            lines.append(f"  r{rank:<3} {spec:<10} " + "  ".join(cells))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", default="")
    parser.add_argument("--skip-timings", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="small sizes on the CPU under TRITON_INTERPRET=1 (a test "
                        "of this script, no timings)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.smoke:
        raise SystemExit("bench/kernels8.py checks and times CUDA kernels: run it on a machine with a CUDA GPU")
    device = torch.device("cpu" if args.smoke else "cuda")

    def log(record):
        print(json.dumps(record), flush=True)
        if args.log:
            with open(args.log, "a") as handle:
                handle.write(json.dumps(record) + "\n")

    log({"device": "cpu (interpreter)" if args.smoke else torch.cuda.get_device_name(), "torch": torch.__version__,
         "date": time.strftime("%Y-%m-%d")})
    result = checks(device, args.smoke)
    log({"kernel_checks8": result})
    log({"kernel_checks8_failed": failures(result)})
    log({"branch_precision": precision(device, k=256, tokens=64) if args.smoke else precision(device)})
    if not args.skip_timings and not args.smoke:
        print(summary(timings(device, log)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
