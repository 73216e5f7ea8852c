"""Where a quantized backbone's step time goes, on the GPU: why FP8 W8A8 pays on FLUX and not (yet) on SDXL.

1. GEMM table: every Linear shape one SDXL/FLUX step runs (recorded with hooks, with its count), timed alone with
   CUDA events: BF16 F.linear; FP8 _scaled_mm with row-wise scales (as quant/fp8.py), with fast accumulation,
   with per-tensor scales; the per-token activation quantization alone; and the whole compiled FP8 linear against
   the compiled BF16 one. Totals are weighted by how often each shape runs in one step. Calls are issued back to
   back from Python, so shapes whose kernel is shorter than the host's launch cost (on an H100 about 16 us for
   F.linear, 65+ us for a compiled function) measure that cost, not the kernel: read the kernel profile for those.
2. Kernel profile (torch.profiler) of one eager step per config: device time by kernel, top kernels and total
   (bench/quant_interleaved.py --profile does the same for compiled models).

    python3 bench/quant_profile.py --model sdxl --configs "bf16,W8A8 fp8" [--no-gemm] [--log rows.jsonl]"""
import argparse
import collections
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernels8  # noqa: E402  (bench/kernels8.py: the CUDA-event timer)
import quant as bench  # noqa: E402

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max


def linear_shapes(model, batch):
    """Counter of (tokens, in_features, out_features, has_bias) over one forward."""
    shapes = collections.Counter()

    def hook(module, args, _out):
        x = args[0]
        shapes[(x.numel() // x.shape[-1], module.in_features, module.out_features, module.bias is not None)] += 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.inference_mode():
        model(**batch)
    for handle in handles:
        handle.remove()
    return shapes


def gpu_us(fn):
    """Median microseconds of one call, from CUDA events around 20 back-to-back calls (launch cost included)."""
    return kernels8.gpu_us(fn, inner=20, repeats=9)


def quantize_rows(x):
    scale = (x.abs().amax(dim=1, keepdim=True).float() / E4M3_MAX).clamp(min=1e-12)
    return (x.float() / scale).to(E4M3), scale


def fp8_linear(x, w8, w_scale, bias):
    x8, scale = quantize_rows(x)
    return torch._scaled_mm(x8, w8.t(), scale_a=scale, scale_b=w_scale, bias=bias, out_dtype=torch.bfloat16)


def fp8_linear_fast(x, w8, w_scale, bias):
    x8, scale = quantize_rows(x)
    return torch._scaled_mm(x8, w8.t(), scale_a=scale, scale_b=w_scale, bias=bias, out_dtype=torch.bfloat16,
                            use_fast_accum=True)


def bf16_linear(x, w, b):
    return F.linear(x, w, b)


COMPILED = {}


def compiled(fn):
    """One dynamic-shape compile per function, shared by every GEMM shape (a compile per shape takes minutes)."""
    if fn not in COMPILED:
        COMPILED[fn] = torch.compile(fn, dynamic=True)
    return COMPILED[fn]


def gemm_row(tokens, k, n, has_bias, device):
    m = -(-tokens // 16) * 16
    x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=device, dtype=torch.bfloat16) / k ** 0.5
    b = torch.randn(n, device=device, dtype=torch.bfloat16) if has_bias else None
    w_scale = (w.float().abs().amax(dim=1, keepdim=True) / E4M3_MAX).reshape(1, -1)
    w8 = (w.float() / w_scale.reshape(-1, 1)).to(E4M3)
    x8, x_scale = quantize_rows(x)
    one = torch.ones((), device=device)
    return {"m": tokens, "k": k, "n": n,
            "bf16": gpu_us(lambda: F.linear(x, w, b)),
            "fp8_rowwise": gpu_us(lambda: torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=w_scale, bias=b,
                                                           out_dtype=torch.bfloat16)),
            "fp8_rowwise_fast": gpu_us(lambda: torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=w_scale,
                                                                bias=b, out_dtype=torch.bfloat16, use_fast_accum=True)),
            "fp8_tensorwise_fast": gpu_us(lambda: torch._scaled_mm(x8, w8.t(), scale_a=one, scale_b=one, bias=b,
                                                                   out_dtype=torch.bfloat16, use_fast_accum=True)),
            "act_quant_compiled": gpu_us(lambda: compiled(quantize_rows)(x)),
            "bf16_compiled": gpu_us(lambda: compiled(bf16_linear)(x, w, b)),
            "fp8_linear_compiled": gpu_us(lambda: compiled(fp8_linear)(x, w8, w_scale, b)),
            "fp8_linear_fast_compiled": gpu_us(lambda: compiled(fp8_linear_fast)(x, w8, w_scale, b))}


def gemm_table(shapes, device, log):
    totals = collections.Counter()
    for (tokens, k, n, has_bias), count in sorted(shapes.items()):
        row = gemm_row(tokens, k, n, has_bias, device)
        row["count"] = count
        for key, value in row.items():
            if key not in ("m", "k", "n", "count"):
                totals[key] += value * count
        log({"gemm": row})
    log({"gemm_totals_ms": {key: value / 1e3 for key, value in totals.items()}})


def device_time(event):
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(event, name):
            return getattr(event, name)
    return 0.0


def kernel_profile(fn, batch, steps=3):
    """Device time per kernel over `steps` forwards (CPU op time on a machine without a GPU: smoke tests)."""
    from torch.profiler import ProfilerActivity, profile
    cuda = torch.cuda.is_available()
    with torch.inference_mode():
        fn(**batch)
        with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                torch.compiler.cudagraph_mark_step_begin()
                fn(**batch)
            if cuda:
                torch.cuda.synchronize()
    time_of = device_time if cuda else (lambda event: event.self_cpu_time_total)
    kernels = [(e.key, time_of(e) / steps / 1e3, e.count // steps) for e in prof.key_averages() if time_of(e) > 0]
    kernels.sort(key=lambda item: -item[1])
    return {"total_ms": sum(k[1] for k in kernels), "kernels": len(kernels),
            "launches": sum(k[2] for k in kernels),
            "top": [{"name": name[:110], "ms": round(ms, 3), "calls": calls} for name, ms, calls in kernels[:25]]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sdxl", choices=("sdxl", "flux"))
    parser.add_argument("--configs", default="bf16,W8A8 fp8")
    parser.add_argument("--no-gemm", action="store_true")
    parser.add_argument("--log", default="")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench/quant_profile.py times CUDA kernels: run it on a machine with a CUDA GPU")
    device = torch.device("cuda")
    torch._dynamo.config.cache_size_limit = 64

    def log(record):
        print(json.dumps(record), flush=True)
        bench.append_jsonl(args.log, record)

    batch = bench.inputs(args.model, device, tiny=False)
    for config in args.configs.split(","):
        spec, backend = bench.split_config(config)
        model = bench.build_config(args.model, spec, backend, device, tiny=False)[0]
        if backend is None and not args.no_gemm:
            shapes = linear_shapes(model, batch)
            log({"linear_shapes": [[*key, count] for key, count in sorted(shapes.items())]})
            gemm_table(shapes, device, log)
        wall_ms = bench.time_step(model, batch, device, repeats=5)[0]
        log({"config": config, "mode": "eager", "wall_ms": wall_ms, **kernel_profile(model, batch)})
        del model
    return 0


if __name__ == "__main__":
    sys.exit(main())
