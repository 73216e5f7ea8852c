"""GPU check of float16 group scales: the Triton dequantize against numerics.dequantize_weight bit for bit at FLUX's
linear shapes (int4 / int8 codes, float16 group scales and float32 ones as a pre-float16 cache holds, bf16 / fp16
out), then FLUX.1 with 8 + 16 full-width blocks (bench/peers.py's model) quantized W4A8-g64 and W4A8-g64-r32: the
weight bytes of the actual buffers against BF16 and against the arithmetic of the layer plan
(quant.spec.bits_per_weight(stored=True) per quantized layer, every other tensor as it is). Issue 22's target:
W4A8-g64-r32 weights <= 0.30 of BF16.

    bash bench/device_setup.sh && COMFYUI_DIR=/tmp/ComfyUI-0.33.0 python3 bench/gpu_scales16.py [--tiny] [--out DIR]

Rows to DIR/gpu_scales16.jsonl (default $OUT). --tiny: a small FLUX on the CPU, no kernel checks (a smoke test of this
script). Exits 1 if any check fails."""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quant as bench  # noqa: E402  (bench/quant.py: ComfyUI's FLUX class, seeded init)

from comfyui_qsched.quant import module_bytes, numerics, quantize_module  # noqa: E402
from comfyui_qsched.quant.apply import layer_plan  # noqa: E402
from comfyui_qsched.quant.layers import float_weight_shape  # noqa: E402
from comfyui_qsched.quant.spec import bits_per_weight  # noqa: E402

SHAPES = ((3072, 3072), (12288, 3072), (3072, 12288))
SPECS = ("W4A8-g64", "W4A8-g64-r32")
TARGET = 0.30


def kernel_checks(device):
    from comfyui_qsched.quant.kernels import triton_kernels as tk
    rows = []
    generator = torch.Generator(device=device).manual_seed(0)
    for out_features, in_features in SHAPES:
        w = torch.randn(out_features, in_features, device=device, generator=generator) / in_features ** 0.5
        for bits in (4, 8):
            codes, scale = numerics.quantize_weight(w, bits, 64)
            packed = numerics.pack_int4(codes) if bits == 4 else codes
            for scale_dtype in (torch.float16, torch.float32):
                for dtype in (torch.bfloat16, torch.float16):
                    stored = scale.to(scale_dtype)
                    equal = torch.equal(tk.dequantize(packed, stored, out_features, in_features, dtype, bits == 4),
                                        numerics.dequantize_weight(codes, stored, dtype))
                    rows.append({"check": "dequantize", "shape": [out_features, in_features], "bits": bits,
                                 "scales": str(scale_dtype), "out": str(dtype), "stored_scale": str(scale.dtype),
                                 "equal": equal})
    return rows


def planned_bytes(model, spec):
    """The model's bytes after quantize_module(spec, simulate), from the layer plan and the shapes alone."""
    total = module_bytes(model)
    _, decisions = layer_plan(model, spec, None, "simulate")
    for decision in decisions:
        if decision.spec is None:
            continue
        layer = model.get_submodule(decision.name)
        rows, *rest = float_weight_shape(layer)
        columns = int(torch.Size(rest).numel())
        total += bits_per_weight(decision.spec, rows, columns, stored=True) * rows * columns / 8 \
            - layer.weight.numel() * layer.weight.element_size()
    return total


def weight_rows(device, tiny):
    rows = []
    for spec in SPECS:
        model = bench.build("flux", device, tiny, flux_blocks=None if tiny else (8, 16))
        bench.init_weights_(model, seed=0)
        before, planned = module_bytes(model), planned_bytes(model, spec)
        start = time.perf_counter()
        report = quantize_module(model, spec, backend="simulate", device=device)
        seconds = time.perf_counter() - start
        after = module_bytes(model)
        scales = {str(layer.weight_scale.dtype) for layer in model.modules() if hasattr(layer, "weight_scale")}
        rows.append({"check": "weights", "spec": spec, "bf16_bytes": before, "bytes": after, "planned_bytes": planned,
                     "ratio": after / before, "planned_equal": after == planned, "scale_dtypes": sorted(scales),
                     "bits_per_weight": report.bits_per_weight, "quantize_s": seconds, "layers": report.quantized})
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args(argv)
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench/gpu_scales16.py checks Triton kernels: run it on a CUDA GPU (or --tiny)")
    name = "CPU" if args.tiny else torch.cuda.get_device_name()
    rows = ([] if args.tiny else kernel_checks(device)) + weight_rows(device, args.tiny)
    with open(os.path.join(args.out, "gpu_scales16.jsonl"), "w") as handle:
        for row in rows:
            handle.write(json.dumps({"device": name, "date": time.strftime("%Y-%m-%d"), **row}) + "\n")
    kernels = [row for row in rows if row["check"] == "dequantize"]
    failed = [row for row in kernels if not row["equal"]]
    print(f"{name}, torch {torch.__version__}; FLUX {'tiny' if args.tiny else '8 + 16 blocks'}")
    if kernels:
        print(f"Triton dequantize, float16 / float32 group scales, bf16 / fp16 out: {len(kernels) - len(failed)} of "
              f"{len(kernels)} equal to numerics.dequantize_weight")
    print("| spec | weights / BF16 | planned | bits per weight (nominal) | scales | quantize s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        if row["check"] == "weights":
            print(f"| {row['spec']} | {row['ratio']:.4f} | {'equal' if row['planned_equal'] else 'DIFFERS'} | "
                  f"{row['bits_per_weight']:.3f} | {', '.join(row['scale_dtypes'])} | {row['quantize_s']:.1f} |")
            failed += [] if row["planned_equal"] else [row]
    target = next((row for row in rows if row.get("spec") == "W4A8-g64-r32"), None)
    if target and not args.tiny:
        print(f"W4A8-g64-r32 weights {target['ratio']:.4f} of BF16: target <= {TARGET} "
              f"{'met' if target['ratio'] <= TARGET else 'missed'} (margin {TARGET - target['ratio']:+.4f})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
