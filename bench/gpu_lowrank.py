"""GPU check of the 16-bit low-rank branch (-r<N>) on FLUX-size linears, plain torch (no ComfyUI): for each
backend that takes it, the layer's output must equal its quantized path plus quant.lowrank.branch_output (the torch
reference fused kernels must match) and be closer to the BF16 layer than the same spec without the branch; and the
load-time cost of the SVD split per layer (randomized above quant.lowrank.EXACT_SVD_MAX_SIDE).

    python3 bench/gpu_lowrank.py [--tiny] [--out DIR]   (rows to DIR/gpu_lowrank.jsonl, default $OUT)

--tiny: small shapes on the CPU (a smoke test of this script, no numbers). Exits 1 if any check fails."""
import argparse
import copy
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import qsched  # noqa: E402,F401  (registers the pack as comfyui_qsched)

from comfyui_qsched.quant import backends, branch_ops, linear_ops, lowrank, registry  # noqa: E402
from comfyui_qsched.quant.spec import QuantSpec, bits_per_weight  # noqa: E402

# (out, in) of FLUX.1's linears: qkv/proj 3072 x 3072, mlp up 12288 x 3072, mlp down 3072 x 12288
SHAPES = ((3072, 3072), (12288, 3072), (3072, 12288))
TINY_SHAPES = ((96, 64), (128, 128))
TOKENS, TINY_TOKENS = 4352, 40
CASES = (("W4A8-r32", "fp8"), ("W8A8-r32", "fp8"), ("W4A8-g64-r32", "simulate"), ("W4A16-r32", "weight-only"),
         ("W8A8-r32", "comfy_kitchen"), ("W4A4-g64-r32", "simulate"))
SPLIT_SPECS = ("W4A8-r32", "W4A8-g64-r32")


def trained_like(out_features, in_features, device, generator):
    """A weight with a few strong directions and outlier input channels over a noisy rest (as trained ones have)."""
    strong = torch.randn(out_features, 8, generator=generator, device=device) @ \
        torch.randn(8, in_features, generator=generator, device=device)
    strong[:, :4] *= 10
    return (strong / in_features ** 0.5 + 0.02 * torch.randn(out_features, in_features, generator=generator,
                                                             device=device)).to(torch.bfloat16)


def make(case, layer):
    spec, backend = QuantSpec.parse(case[0]), case[1]
    if backend == "weight-only":
        return backends.weight_only(layer, spec, "weight-only")[0]
    return registry.get_backend(backend).quantize(layer, spec)[0]


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", default=os.environ.get("OUT", ""))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.tiny:
        raise SystemExit("bench/gpu_lowrank.py checks CUDA paths: run it on a GPU machine (or --tiny on the CPU)")
    device = torch.device("cpu" if args.tiny else "cuda")
    name = "cpu" if args.tiny else torch.cuda.get_device_name()
    shapes, tokens = (TINY_SHAPES, TINY_TOKENS) if args.tiny else (SHAPES, TOKENS)
    generator = torch.Generator(device=device).manual_seed(0)
    rows, failures = [], 0
    for out_features, in_features in shapes:
        float_layer = torch.nn.Linear(in_features, out_features, dtype=torch.bfloat16, device=device)
        with torch.no_grad():
            float_layer.weight.copy_(trained_like(out_features, in_features, device, generator))
        float_layer.requires_grad_(False)
        x = torch.randn(1, tokens, in_features, generator=generator, device=device, dtype=torch.bfloat16)
        reference = float_layer(x)
        for rank in (16, 32, 64):  # load-time cost of the split, synchronised
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            lowrank.split(float_layer.weight.float(), rank)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rows.append({"device": name, "shape": [out_features, in_features], "rank": rank,
                         "split_ms": (time.perf_counter() - start) * 1e3})
        for case in CASES:
            row = {"device": name, "shape": [out_features, in_features], "spec": case[0], "backend": case[1],
                   "bits_per_weight": bits_per_weight(case[0], out_features, in_features)}
            try:
                with torch.no_grad():
                    layer = make(case, copy.deepcopy(float_layer))
                    plain = make((QuantSpec.parse(case[0]).base.name, case[1]), copy.deepcopy(float_layer))
                    out = layer(x)
                    packed = layer.weight.to(x.device)
                    bias = layer.bias.to(x.dtype)
                    branch = lowrank.branch_output(x, layer.lowrank_down, layer.lowrank_up)
                    expected = layer.quantized_forward(x, packed, bias) + branch
                    exact = (x.double() @ layer.lowrank_down.double().T) @ layer.lowrank_up.double().T
                    row.update(branch_vs_reference=rel(out, expected), branch_vs_float64=rel(branch, exact),
                               error=rel(out, reference),
                               error_without_branch=rel(plain(x), reference), layer_class=type(layer).__name__)
                row["ok"] = row["branch_vs_reference"] < 1e-2 and row["branch_vs_float64"] < 1e-2 \
                    and row["error"] < row["error_without_branch"]
            except Exception as error:  # one missing backend (comfy_kitchen) must not hide the others
                row.update(ok=None if "comfy_kitchen" in case[1] else False, error_text=f"{type(error).__name__}: "
                           f"{error}"[:200])
            failures += row["ok"] is False
            rows.append(row)
        for spec in SPLIT_SPECS:  # the split fold (branch_ops form "split") against the layer's default form
            row = {"device": name, "shape": [out_features, in_features], "spec": spec, "backend": "fp8 split"}
            try:
                with torch.no_grad():
                    layer = make((spec, "fp8"), copy.deepcopy(float_layer))
                    bias = layer.bias.to(x.dtype)
                    bound, branch_ops.SPLIT_BOUND_MAX = branch_ops.SPLIT_BOUND_MAX, float("inf")  # the kernels' numbers
                    try:                                                                          # whatever the bound
                        split = branch_ops.fast_branch_forward(layer, x, layer.weight, bias, False, form="split")
                    finally:
                        branch_ops.SPLIT_BOUND_MAX = bound
                    default = layer(x)
                    without = layer.quantized_forward(x, layer.weight, bias)
                    exact = (x.double() @ layer.lowrank_down.double().T) @ layer.lowrank_up.double().T
                    ratio, channel, down, tail, split_bound = branch_ops.split_factors(
                        layer.lowrank_down, layer.lowrank_up, layer.weight_scale, x.dtype)
                    row.update(split_vs_default=rel(split, default),
                               split_branch_vs_float64=rel(split.double() - without.double(), exact),
                               default_branch_vs_float64=rel(default.double() - without.double(), exact),
                               split_bound=split_bound)
                    # the kernels against the split's torch definition on the same GPU (same cuBLAS GEMM)
                    weight = linear_ops.group_e4m3_reference(layer.weight, layer.weight_scale, out_features,
                                                             in_features)[0] if ratio is not None else \
                        linear_ops.kernels_free_int4(layer.weight, out_features, in_features, torch.float8_e4m3fn)
                    definition = branch_ops.split_fold_reference(x, weight, channel, bias, down, tail)
                    row["split_vs_definition"] = rel(split, definition)
                    down_form, branch_ops.SPLIT_DOWN = branch_ops.SPLIT_DOWN, "fused"  # x down'^T in the kernel
                    bound, branch_ops.SPLIT_BOUND_MAX = branch_ops.SPLIT_BOUND_MAX, float("inf")
                    try:
                        fused = branch_ops.fast_branch_forward(layer, x, layer.weight, bias, False, form="split")
                    finally:
                        branch_ops.SPLIT_DOWN, branch_ops.SPLIT_BOUND_MAX = down_form, bound
                    row["split_fused_down_vs_definition"] = rel(fused, definition)
                    # what torch.compile runs for the split (the custom op qsched::split_linear)
                    bound, branch_ops.SPLIT_BOUND_MAX = branch_ops.SPLIT_BOUND_MAX, float("inf")
                    torch._dynamo.reset()
                    try:
                        compiled = torch.compile(lambda rows: branch_ops.fast_branch_forward(
                            layer, rows, layer.weight, bias, False, form="split"), fullgraph=True)(x)
                    finally:
                        branch_ops.SPLIT_BOUND_MAX = bound
                        torch._dynamo.reset()
                    row["split_compiled_vs_definition"] = rel(compiled, definition)
                # judged on the kernels; the branch's precision is reported (it holds while split_bound is small)
                row["ok"] = row["split_vs_definition"] < 1e-3 and row["split_fused_down_vs_definition"] < 4e-3 \
                    and row["split_compiled_vs_definition"] < 1e-3
            except Exception as error:
                row.update(ok=False, error_text=f"{type(error).__name__}: {error}"[:200])
            failures += row["ok"] is False
            rows.append(row)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_lowrank.jsonl"), "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    print(f"{name}, torch {torch.__version__}")
    print(f"{'shape':>12} {'spec':>13} {'backend':>13} {'b/w':>5} {'vs ref':>8} {'vs f64':>8} {'error':>7} "
          f"{'no branch':>9} ok")
    for row in rows:
        shape = "x".join(map(str, row["shape"]))
        if "split_ms" in row:
            print(f"{shape:>12} {'split r' + str(row['rank']):>13} {'':>13} {'':>5} {row['split_ms']:>7.1f}ms")
        elif "split_vs_default" in row:
            print(f"{shape:>12} {row['spec']:>13} {'fp8 split':>13} {'':>5} vs its definition "
                  f"{row['split_vs_definition']:.1e} (fused down {row['split_fused_down_vs_definition']:.1e}, "
                  f"compiled {row['split_compiled_vs_definition']:.1e}), "
                  f"vs addmm {row['split_vs_default']:.1e}, "
                  f"branch vs f64 {row['split_branch_vs_float64']:.1e} (addmm {row['default_branch_vs_float64']:.1e})"
                  f", split_bound {row['split_bound']:.0f} {row['ok']}")
        elif "error_text" in row:
            print(f"{shape:>12} {row['spec']:>13} {row['backend']:>13} {row['bits_per_weight']:5.2f} "
                  f"{row['error_text'][:60]}")
        else:
            print(f"{shape:>12} {row['spec']:>13} {row['backend']:>13} {row['bits_per_weight']:5.2f} "
                  f"{row['branch_vs_reference']:8.1e} {row['branch_vs_float64']:8.1e} {row['error']:7.4f} "
                  f"{row['error_without_branch']:9.4f} "
                  f"{row['ok']}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
