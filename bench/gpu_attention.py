"""One GPU run for issue 23 items 3 and 4: the 8-bit attention kernel checked and timed, the FLUX step with it,
and every SDXL linear (and convolution) shape timed per compute path.

Sections (each catches its own failure, so one does not lose the others' numbers):
  checks   the Triton kernels against quant/attention.py's torch reference on this GPU: block codes and scales
           bit for bit, the attention within rounding of the reference and near float64 SDPA; fresh random
           inputs per case, outputs poisoned first; the torch.library op under torch.compile equals eager.
  attn     attention alone at FLUX and SDXL shapes: SDPA (flash) vs the int8 kernel (launch sweep), and the
           `sageattention` package where importable (a local wheel, never downloaded).
  flux     FLUX.1 DiT at full width, 8 + 16 blocks, 1024^2: bf16 and W8A8 auto, each with ComfyUI's attention and
           with the int8 override, eager and compiled (each block), interleaved rounds; rel L2 against bf16/sdpa.
  sdxl     every distinct SDXL linear shape at 1024^2 (tokens from a hooked forward): bf16, fp8 rowwise (W8A8 /
           W4A8 fp8 backend) and weight-only (W8A16 / W4A16 storage, 16-bit compute), eager and CUDA-graph
           replay; every conv shape: cuDNN bf16 against the im2col GEMM of the same shape in bf16 and FP8 (the
           implicit-GEMM ceiling, im2col itself not counted).

    COMFYUI_DIR=.device/comfyui python3 bench/gpu_attention.py --out $OUT
Writes $OUT/gpu_attention_rows.jsonl (every row) and prints the short tables last."""
import argparse
import functools
import gc
import json
import os
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quant as bench  # noqa: E402  (ComfyUI path, model configs, seeded init, inputs, compile scopes)

from comfyui_qsched.comfy_adapter.attention import int8_attention_override  # noqa: E402
from comfyui_qsched.comfy_adapter.quant_ops import with_comfy_patching  # noqa: E402
from comfyui_qsched.quant import attention as attn_ref  # noqa: E402
from comfyui_qsched.quant import quantize_module  # noqa: E402
from comfyui_qsched.quant.backends import Fp8Backend, weight_only  # noqa: E402
from comfyui_qsched.quant.spec import QuantSpec  # noqa: E402

ROWS = []
TABLES = []
ROWS_FILE = []  # the open rows file: every row is written as it comes (a timeout keeps what was measured)


def log(row):
    ROWS.append(row)
    print(json.dumps(row, default=str)[:200], flush=True)  # the whole row goes to the file
    for handle in ROWS_FILE:
        handle.write(json.dumps(row, default=str) + "\n")
        handle.flush()


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def poison():
    """Fill freed cache blocks with NaN so an unwritten output element shows."""
    junk = torch.full((64 * 2 ** 20,), float("nan"), device="cuda")
    del junk


def bench_ms(fn, graph=False, rep=50):
    import triton.testing
    if graph:
        return triton.testing.do_bench_cudagraph(fn, rep=rep, return_mode="median")
    return triton.testing.do_bench(fn, warmup=min(10, rep), rep=rep, return_mode="median")


# ---------------------------------------------------------------- checks
def checks():
    from comfyui_qsched.quant.kernels import attention_kernels as ak
    g = torch.Generator(device="cuda").manual_seed(0)
    cases = [(1, 24, 4352, 4352, 128, torch.bfloat16, True), (2, 3, 333, 77, 64, torch.float16, False),
             (1, 10, 4096, 77, 64, torch.bfloat16, False), (1, 4, 200, 1000, 128, torch.float16, True)]
    for b, h, nq, nk, d, dtype, hnd in cases:
        name = f"B{b} H{h} Nq{nq} Nk{nk} D{d} {str(dtype)[6:]} {'HND' if hnd else 'NHD view'}"
        try:
            def make(n, offset=0.0):
                t = torch.randn(b, n, h, d, device="cuda", generator=g) * 2 + offset
                t = t.to(dtype)
                return t.transpose(1, 2).contiguous() if hnd else t.transpose(1, 2)
            q, k, v = make(nq), make(nk, 1.5), make(nk)
            scale = d ** -0.5
            poison()
            codes, scales = ak.quantize_blocks(q, attn_ref.BLOCK_Q, scale)
            ref_codes, ref_scales = attn_ref.quantize_blocks(q, attn_ref.BLOCK_Q, scale)
            mean = attn_ref.key_mean(k)
            k_codes, k_scales = ak.quantize_blocks(k, attn_ref.BLOCK_K, 1.0, mean)
            ref_k_codes, ref_k_scales = attn_ref.quantize_blocks(k, attn_ref.BLOCK_K, mean=mean)
            poison()
            out = ak.attention(q, k, v, scale)
            torch.cuda.synchronize()
            ref = attn_ref.reference(q, k, v, scale)
            exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
            sdpa = F.scaled_dot_product_attention(q, k, v)
            row = {"section": "checks", "case": name,
                   "q_codes_equal": torch.equal(codes, ref_codes), "q_scales_equal": torch.equal(scales, ref_scales),
                   "k_codes_equal": torch.equal(k_codes, ref_k_codes),
                   "k_scales_equal": torch.equal(k_scales, ref_k_scales),
                   "finite": bool(torch.isfinite(out).all()), "kernel_vs_reference": rel(out, ref),
                   "kernel_vs_exact": rel(out, exact), "reference_vs_exact": rel(ref, exact),
                   "sdpa_vs_exact": rel(sdpa, exact)}
            row["ok"] = (row["q_codes_equal"] and row["k_codes_equal"] and row["finite"]
                         and row["kernel_vs_reference"] < 1e-2 and row["kernel_vs_exact"] < 0.05)
            log(row)
        except Exception as error:
            traceback.print_exc()
            log({"section": "checks", "case": name, "ok": False, "error": f"{type(error).__name__}: {error}"[:300]})
    for d in (64, 128):
        name = f"P.V in FP8, B1 H8 N2000 D{d} bf16"
        try:
            q, k, v = (torch.randn(1, 2000, 8, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2) * 2
                       for _ in range(3))
            poison()
            out = ak.attention(q, k, v, d ** -0.5, pv_fp8=True)
            exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
            row = {"section": "checks", "case": name, "finite": bool(torch.isfinite(out).all()),
                   "kernel_vs_exact": rel(out, exact),
                   "reference_vs_exact": rel(attn_ref.reference(q, k, v, pv_fp8=True), exact),
                   "int8_pv16_vs_exact": rel(ak.attention(q, k, v, d ** -0.5), exact)}
            row["ok"] = row["finite"] and row["kernel_vs_exact"] < 0.06
            log(row)
        except Exception as error:
            traceback.print_exc()
            log({"section": "checks", "case": name, "ok": False, "error": f"{type(error).__name__}: {error}"[:300]})
    try:
        q, k, v = (torch.randn(1, 8, 1000, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        eager = attn_ref.int8_attention(q, k, v)
        compiled = torch.compile(lambda a, b_, c: attn_ref.int8_attention(a, b_, c) * 1.0, fullgraph=True)(q, k, v)
        log({"section": "checks", "case": "torch.compile(fullgraph) of the op", "ok": torch.equal(eager, compiled)})
    except Exception as error:
        traceback.print_exc()
        log({"section": "checks", "case": "torch.compile of the op", "ok": False,
             "error": f"{type(error).__name__}: {error}"[:300]})


# ---------------------------------------------------------------- attention alone
ATTN_SHAPES = {"flux 4096+256 tok": (1, 24, 4352, 4352, 128), "sdxl 64^2 self": (1, 10, 4096, 4096, 64),
               "sdxl 32^2 self": (1, 20, 1024, 1024, 64), "sdxl 64^2 cross": (1, 10, 4096, 77, 64),
               "sdxl 32^2 cross": (1, 20, 1024, 77, 64)}
SWEEP = ((4, 2), (4, 3), (4, 4), (8, 2), (8, 3), (8, 4))


def attention_alone():
    from comfyui_qsched.quant.kernels import attention_kernels as ak
    try:
        from sageattention import sageattn
    except Exception as error:
        sageattn = None
        log({"section": "attn", "sageattention": f"not importable: {type(error).__name__}: {error}"[:200]})
    lines = ["| shape | SDPA bf16 ms | int8 ms (best launch) | ratio | int8 + FP8 P.V ms | sageattention ms | "
             "best (warps, stages) |", "|---|---|---|---|---|---|---|"]
    for name, (b, h, nq, nk, d) in ATTN_SHAPES.items():
        try:
            q = torch.randn(b, nq, h, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2)  # the models' layout
            k = torch.randn(b, nk, h, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
            v = torch.randn(b, nk, h, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
            row = {"section": "attn", "shape": name, "dims": [b, h, nq, nk, d]}
            row["sdpa_ms"] = bench_ms(lambda: F.scaled_dot_product_attention(q, k, v))
            sweep = {}
            for warps, stages in SWEEP:
                try:
                    sweep[f"{warps},{stages}"] = bench_ms(lambda: ak.attention(q, k, v, d ** -0.5, warps, stages))
                except Exception as error:
                    sweep[f"{warps},{stages}"] = f"{type(error).__name__}"
            row["int8_sweep_ms"] = sweep
            timed = {key: ms for key, ms in sweep.items() if isinstance(ms, float)}
            best = min(timed, key=timed.get)
            row["int8_default_ms"] = bench_ms(lambda: ak.attention(q, k, v, d ** -0.5))
            row["int8_best_ms"], row["int8_best_launch"] = timed[best], best
            try:
                fp8 = {f"{w},{st}": bench_ms(lambda: ak.attention(q, k, v, d ** -0.5, w, st, pv_fp8=True))
                       for w, st in ((4, 3), (8, 3), (8, 4))}
                row["pv_fp8_sweep_ms"] = fp8
                row["pv_fp8_best_ms"] = min(fp8.values())
                row["pv_fp8_vs_exact"] = rel(ak.attention(q, k, v, d ** -0.5, pv_fp8=True),
                                             F.scaled_dot_product_attention(q.double(), k.double(), v.double()))
            except Exception as error:
                row["pv_fp8_best_ms"] = f"{type(error).__name__}: {error}"[:120]
            if sageattn is not None:
                try:
                    row["sage_ms"] = bench_ms(lambda: sageattn(q, k, v, tensor_layout="HND", is_causal=False))
                    row["sage_vs_exact"] = rel(sageattn(q, k, v, tensor_layout="HND"),
                                               F.scaled_dot_product_attention(q.double(), k.double(), v.double()))
                except Exception as error:
                    row["sage_ms"] = f"{type(error).__name__}: {error}"[:120]
            log(row)
            sage, fp8 = row.get("sage_ms", "-"), row.get("pv_fp8_best_ms", "-")
            lines.append(f"| {name} | {row['sdpa_ms']:.3f} | {row['int8_best_ms']:.3f} (default "
                         f"{row['int8_default_ms']:.3f}) | {row['int8_best_ms'] / row['sdpa_ms']:.2f} | "
                         f"{fp8 if isinstance(fp8, str) else f'{fp8:.3f}'} | "
                         f"{sage if isinstance(sage, str) else f'{sage:.3f}'} | {best} |")
        except Exception as error:
            traceback.print_exc()
            log({"section": "attn", "shape": name, "error": f"{type(error).__name__}: {error}"[:300]})
    TABLES.append("\n".join(lines))


# ---------------------------------------------------------------- FLUX step
def flux_step(device, rounds, deadline):
    calls = {"n": 0}

    def counted(*args, **kwargs):
        calls["n"] += 1
        return int8_attention_override(*args, **kwargs)

    models = {}
    for config in ("bf16", "W8A8 auto"):
        model = bench.build("flux", device, False, flux_blocks=(8, 16))
        bench.init_weights_(model, seed=0)
        if config != "bf16":
            report = quantize_module(model, "W8A8", backend="auto", device=device)
            with_comfy_patching(model)
            log({"section": "flux", "config": config, "how": {k: v for k, v in report.by_backend().items()}})
        models[config] = model
    batch = bench.inputs("flux", device, False)
    runs = {}
    overrides = {"sdpa": None, "int8": counted, "int8 + FP8 P.V": functools.partial(counted, pv_fp8=True)}
    for config, model in models.items():
        for attention, override in overrides.items():
            if attention == "int8 + FP8 P.V" and config == "bf16":
                continue
            extra = {"transformer_options": {"optimized_attention_override": override}} if override else {}
            runs[(config, attention)] = (lambda m=model, e=extra: m(**batch, **e))
    outs = {key: bench.timed_forward(fn, {}, device)[1].float() for key, fn in runs.items()}
    log({"section": "flux", "override_calls_in_three_int8_forwards": calls["n"]})
    reference = outs[("bf16", "sdpa")]
    times = interleaved(runs, device, rounds)
    rows = {}
    for key in runs:
        rows[key] = {"section": "flux", "config": key[0], "attention": key[1],
                     "eager_ms": statistics.median(times[key]), "eager_spread_ms": [min(times[key]), max(times[key])], "rel_l2": rel(outs[key], reference)}
        log(rows[key])
    if time.time() < deadline:
        for name in ("cache_size_limit", "recompile_limit"):  # two attention variants per block graph
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)
        for model in models.values():
            bench.compile_model("flux", model)
        compiled_out = {}
        for key, fn in runs.items():
            start = time.perf_counter()
            compiled_out[key] = bench.timed_forward(fn, {}, device)[1].float()
            rows[key]["compile_s"] = time.perf_counter() - start
        ctimes = interleaved(runs, device, rounds)
        for key in runs:
            rows[key]["compiled_ms"] = statistics.median(ctimes[key])
            rows[key]["compiled_spread_ms"] = [min(ctimes[key]), max(ctimes[key])]
            rows[key]["rel_l2_compiled"] = rel(compiled_out[key], reference)
            log({"section": "flux", "compiled": True, **{k: v for k, v in rows[key].items() if k != "section"}})
    else:
        log({"section": "flux", "compiled": "skipped: --budget-s reached"})
    base = rows[("bf16", "sdpa")]
    lines = ["| config | attention | eager ms | ratio | compiled ms | ratio | rel L2 | rel L2 compiled |",
             "|---|---|---|---|---|---|---|---|"]
    for key, row in rows.items():
        c = row.get("compiled_ms")
        lines.append(f"| {key[0]} | {key[1]} | {row['eager_ms']:.1f} | {row['eager_ms'] / base['eager_ms']:.3f} | "
                     + (f"{c:.1f} | {c / base['compiled_ms']:.3f} | " if c else "- | - | ")
                     + f"{row['rel_l2']:.4f} | {row.get('rel_l2_compiled', float('nan')):.4f} |")
    TABLES.append("FLUX 8+16 blocks, 1024^2, batch 1 (interleaved rounds, median)\n" + "\n".join(lines))
    models.clear()
    torch._dynamo.reset()


def interleaved(runs, device, rounds, warmup=3):
    for fn in runs.values():
        for _ in range(warmup):
            bench.timed_forward(fn, {}, device)
    times = {key: [] for key in runs}
    for _ in range(rounds):
        for key, fn in runs.items():
            times[key].append(bench.timed_forward(fn, {}, device)[0] * 1e3)
    return times


# ---------------------------------------------------------------- SDXL shapes
def sdxl_shapes(device):
    """{(kind, tokens, in, out[, conv geometry]): count} from one hooked forward of the full SDXL UNet, 1024^2."""
    model = bench.build("sdxl", device, False)
    bench.init_weights_(model, seed=0)
    shapes = {}

    def hook(module, args, _out):
        x = args[0]
        if isinstance(module, torch.nn.Linear):
            key = ("linear", x.numel() // x.shape[-1], module.in_features, module.out_features)
        else:
            key = ("conv", x.shape[-2], x.shape[-1], module.in_channels, module.out_channels,
                   module.kernel_size[0], module.stride[0])
        shapes[key] = shapes.get(key, 0) + 1

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    with torch.inference_mode():
        model(**bench.inputs("sdxl", device, False))
    for handle in handles:
        handle.remove()
    names = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            names.setdefault((module.in_features, module.out_features), []).append(name)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return shapes, names


def linear_paths(tokens, k, n, device, graph=True):
    x = torch.randn(tokens, k, device=device, dtype=torch.bfloat16)
    base = torch.nn.Linear(k, n, device=device, dtype=torch.bfloat16)
    layers = {"bf16": base}
    for spec_name, path in (("W8A8", "fp8"), ("W8A8", "weight-only"), ("W4A8", "fp8"), ("W4A8", "weight-only")):
        layer = torch.nn.Linear(k, n, device=device, dtype=torch.bfloat16)
        layer.load_state_dict(base.state_dict())
        spec = QuantSpec.parse(spec_name)
        if path == "fp8":
            layer, _ = Fp8Backend().quantize(layer, spec, None, device)
        else:
            layer, _ = weight_only(layer, spec, "weight-only", None, device)
        layers[f"{spec_name} {path}"] = layer
    row = {}
    with torch.inference_mode():
        reference = base(x).float()
        for name, layer in layers.items():
            row[f"{name} rel_l2"] = rel(layer(x).float(), reference)
            row[f"{name} eager_ms"] = bench_ms(lambda: layer(x), rep=20)
            try:
                row[f"{name} graph_ms"] = bench_ms(lambda: layer(x), graph=True, rep=20) if graph else "-"
            except Exception as error:
                row[f"{name} graph_ms"] = f"{type(error).__name__}"
    return row


def conv_paths(h, w, cin, cout, kernel, stride, device):
    from comfyui_qsched.quant.kernels import triton_kernels as tk
    x = torch.randn(1, cin, h, w, device=device, dtype=torch.bfloat16)
    conv = torch.nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, device=device, dtype=torch.bfloat16)
    m = ((h + 2 * (kernel // 2) - kernel) // stride + 1) * ((w + 2 * (kernel // 2) - kernel) // stride + 1)
    kk = cin * kernel * kernel
    a = torch.randn(m, kk, device=device, dtype=torch.bfloat16)
    b = torch.randn(cout, kk, device=device, dtype=torch.bfloat16)
    row = {}
    with torch.inference_mode():
        row["cudnn bf16 ms"] = bench_ms(lambda: conv(x), rep=20)
        row["gemm bf16 ms"] = bench_ms(lambda: a @ b.t(), rep=20)
        if kk % 16 == 0 and cout % 16 == 0:
            b8 = b.to(torch.float8_e4m3fn)
            one = torch.ones((), device=device)
            a8 = a.to(torch.float8_e4m3fn)
            row["gemm fp8 ms"] = bench_ms(lambda: torch._scaled_mm(a8, b8.t(), one, one, out_dtype=torch.bfloat16),
                                          rep=20)
            padded = (m + 15) // 16 * 16
            row["act quant ms"] = bench_ms(lambda: tk.quantize_rows_fp8(a, padded), rep=20)
    return row


def sdxl(device):
    shapes, names = sdxl_shapes(device)
    lines = ["| image | tokens | in -> out | calls | bf16 | W8A8 fp8 | W8A8 w-only | W4A8 fp8 | W4A16 w-only | "
             "graph: bf16 / W8A8 fp8 / W8A8 w-only | W8A8 pick |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    totals = {}
    # 512^2 (SDXL-Turbo's size) too, for the layers whose token count depends on the image
    linear_keys = [(tokens, k, n, count, res) for (kind, tokens, k, n, *_), count in sorted(shapes.items())
                   if kind == "linear" for tokens, res in ((tokens, 1024), (tokens // 4, 512)) if res == 1024 or
                   tokens > 77]
    for tokens, k, n, count, resolution in linear_keys:
        try:
            row = {"section": "sdxl_linear", "resolution": resolution, "tokens": tokens, "in": k, "out": n,
                   "calls": count, "layers": names.get((k, n), [])[:3],
                   **linear_paths(tokens, k, n, device, graph=resolution == 1024)}
            log(row)
            if resolution == 1024:
                for path in ("bf16", "W8A8 fp8", "W8A8 weight-only", "W4A8 fp8", "W4A8 weight-only"):
                    totals[path] = totals.get(path, 0.0) + count * row[f"{path} eager_ms"]
                totals["W8A8 best per shape"] = totals.get("W8A8 best per shape", 0.0) + count * min(
                    row["W8A8 fp8 eager_ms"], row["W8A8 weight-only eager_ms"])
            pick = "fp8" if row["W8A8 fp8 eager_ms"] < row["W8A8 weight-only eager_ms"] else "weight-only"
            g = [row[f"{p} graph_ms"] for p in ("bf16", "W8A8 fp8", "W8A8 weight-only")]
            lines.append(f"| {resolution} | {tokens} | {k} -> {n} | {count} | " + " | ".join(
                f"{row[f'{p} eager_ms'] * 1e3:.0f}" for p in ("bf16", "W8A8 fp8", "W8A8 weight-only", "W4A8 fp8",
                                                               "W4A8 weight-only"))
                + " | " + " / ".join(f"{t * 1e3:.0f}" if isinstance(t, float) else t for t in g) + f" | {pick} |")
        except Exception as error:
            traceback.print_exc()
            log({"section": "sdxl_linear", "tokens": tokens, "in": k, "out": n,
                 "error": f"{type(error).__name__}: {error}"[:300]})
    TABLES.append("SDXL linears, µs per call (eager = do_bench median incl. launch; graph = CUDA-graph "
                  "replay)\n" + "\n".join(lines) + "\nsum over the 1024^2 step's calls (ms): "
                  + ", ".join(f"{p} {t:.2f}" for p, t in totals.items()))
    lines = ["| HxW | cin -> cout | k/s | calls | cuDNN bf16 | GEMM bf16 | GEMM fp8 | + act quant |",
             "|---|---|---|---|---|---|---|---|"]
    for key, count in sorted(shapes.items()):
        if key[0] != "conv":
            continue
        _, h, w, cin, cout, kernel, stride = key
        try:
            row = {"section": "sdxl_conv", "hw": [h, w], "in": cin, "out": cout, "kernel": kernel, "stride": stride,
                   "calls": count, **conv_paths(h, w, cin, cout, kernel, stride, device)}
            log(row)
            lines.append(f"| {h}x{w} | {cin} -> {cout} | {kernel}/{stride} | {count} | " + " | ".join(
                f"{row[p] * 1e3:.0f}" if p in row else "-"
                for p in ("cudnn bf16 ms", "gemm bf16 ms", "gemm fp8 ms", "act quant ms")) + " |")
        except Exception as error:
            traceback.print_exc()
            log({"section": "sdxl_conv", "key": list(key), "error": f"{type(error).__name__}: {error}"[:300]})
    TABLES.append("SDXL convolutions, 1024^2, µs per call\n" + "\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--sections", default="checks,attn,sdxl,flux")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--budget-s", type=float, default=190, help="no FLUX compile starts after this")
    args = parser.parse_args(argv)
    start = time.time()
    device = torch.device("cuda")
    props = torch.cuda.get_device_properties(device)
    import triton
    os.makedirs(args.out, exist_ok=True)
    ROWS_FILE.append(open(os.path.join(args.out, "gpu_attention_rows.jsonl"), "w", encoding="utf-8"))
    log({"section": "device", "gpu": props.name, "capability": f"{props.major}.{props.minor}",
         "torch": torch.__version__, "triton": triton.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                         time.gmtime())})
    sections = args.sections.split(",")
    steps = {"checks": checks, "attn": attention_alone, "sdxl": lambda: sdxl(device),
             "flux": lambda: flux_step(device, args.rounds, start + args.budget_s)}
    for section in sections:
        fn = steps[section]
        printed = len(TABLES)
        t0 = time.time()
        try:
            fn()
        except Exception as error:
            traceback.print_exc()
            log({"section": section, "error": f"{type(error).__name__}: {error}"[:300]})
        gc.collect()
        torch.cuda.empty_cache()
        log({"section": section, "seconds": time.time() - t0})
        for table in TABLES[printed:]:  # now too: a timeout later keeps what is done
            print("\n" + table, flush=True)
    checks_rows = [r for r in ROWS if r.get("section") == "checks" and "ok" in r]
    print(f"\n{props.name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; checks "
          f"{sum(r['ok'] for r in checks_rows)}/{len(checks_rows)} ok; {time.time() - start:.0f} s")
    for row in checks_rows:
        if not row["ok"]:
            print("CHECK FAILED", json.dumps(row, default=str)[:400])
    for table in TABLES:
        print("\n" + table)


if __name__ == "__main__":
    main()
