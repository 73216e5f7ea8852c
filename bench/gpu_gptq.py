"""GPU check and load-time cost of calibrated rounding (GPTQ, quant/gptq.py) on the FLUX.1 DiT's linear shapes,
plain torch (no ComfyUI): per shape, the input moments taken by quant.gptq.InputMoments hooks (and what the hook adds
to the layer's forward), the GPTQ rounding time on the GPU, GPTQ's output error on held-out inputs against
round-to-nearest with the same scales (must be lower), and the GPU's codes against the CPU's float64 ones (share
equal). Last, the FLUX.1 DiT total: every quantized linear rounded once, and the hooks' cost per pass.

    python3 bench/gpu_gptq.py [--tiny] [--out DIR]   (rows to DIR/gpu_gptq.jsonl, default $OUT)

--tiny: small shapes on the CPU (a smoke test of this script, no numbers). Exits 1 if any check fails."""
import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import qsched  # noqa: E402,F401,I001  (registers the pack as comfyui_qsched)

from comfyui_qsched.quant import numerics  # noqa: E402
from comfyui_qsched.quant.gptq import InputMoments, gptq_quantize_weight  # noqa: E402
from gpu_lowrank import trained_like  # noqa: E402  (bench/, the script's folder, is on sys.path)

# (out, in) of the FLUX.1 DiT's quantized linears and how many it has: 19 double blocks x 2 streams (qkv, proj,
# mlp up, mlp down, modulation), 38 single blocks (linear1, linear2, modulation).
FLUX_LINEARS = (((9216, 3072), 38), ((3072, 3072), 38), ((12288, 3072), 38), ((3072, 12288), 38),
                ((18432, 3072), 38), ((21504, 3072), 38), ((3072, 15360), 38), ((9216, 3072), 38))
TINY_SHAPES = (((96, 64), 2), ((64, 128), 1))
TOKENS, TINY_TOKENS = 4352, 300
SPECS = ((4, None), (4, 64))
CPU_ROWS = 256   # (weight bits, group size): W4 per channel, W4 groups of 64


def activations(tokens, in_features, device, generator, mixing):
    """Inputs with correlated channels and a few large ones (what GPTQ's updates exploit)."""
    x = torch.randn(tokens, in_features, generator=generator, device=device) @ mixing
    x[:, :8] *= 6
    return x.to(torch.bfloat16)


def timed(function, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", default=os.environ.get("OUT", ""))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.tiny:
        raise SystemExit("bench/gpu_gptq.py times CUDA: run it on a GPU machine (or --tiny on the CPU)")
    device = torch.device("cpu" if args.tiny else "cuda")
    shapes, tokens = (TINY_SHAPES, TINY_TOKENS) if args.tiny else (FLUX_LINEARS, TOKENS)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    counts = {}
    for shape, count in shapes:
        counts[shape] = counts.get(shape, 0) + count
    warm = torch.randn(8, 64, device=device)
    gptq_quantize_weight(torch.randn(4, 64, device=device), warm.T @ warm, 4)   # solver libraries load once
    rows, failures = [], []
    for (out_features, in_features), count in counts.items():
        key = (out_features, in_features)
        generator = torch.Generator(device=device).manual_seed(out_features * 7 + in_features)
        layer = torch.nn.Linear(in_features, out_features, bias=False, device=device, dtype=torch.bfloat16)
        with torch.no_grad():
            layer.weight.copy_(trained_like(out_features, in_features, device, generator))
        mixing = torch.randn(in_features, in_features, generator=generator, device=device) / in_features ** 0.5 \
            + torch.eye(in_features, device=device)
        x, held_out = (activations(tokens, in_features, device, generator, mixing) for _ in range(2))
        with torch.no_grad():
            layer(x)   # warm-up
            _, plain = timed(lambda: layer(x), device)
            moments = InputMoments(_Wrap(layer), ["layer"])
            with moments:
                _, hooked = timed(lambda: moments.module(x), device)
        hessian = moments.hessians["layer"]
        weight = layer.weight.detach().float()
        reference = held_out.float() @ weight.T
        for bits, group in SPECS:
            (codes, scale), seconds = timed(lambda: gptq_quantize_weight(weight, hessian, bits, group), device)
            column_scale = scale.repeat_interleave(in_features // scale.shape[1], dim=1)
            limit = numerics.qmax(bits)
            nearest = torch.round(weight / column_scale).clamp(-limit, limit)
            error = {label: float((held_out.float() @ (c * column_scale).T - reference).norm() / reference.norm())
                     for label, c in (("gptq", codes.float()), ("nearest", nearest))}
            # rows round independently (each its own scales, the same H): the CPU reference takes the first 256
            cpu_codes, _ = gptq_quantize_weight(weight[:CPU_ROWS].cpu(), hessian.cpu(), bits, group)
            same = float((cpu_codes == codes[:CPU_ROWS].cpu()).float().mean())
            row = {"device": name, "out": out_features, "in": in_features, "count": count,
                   "spec": f"W{bits}" + (f"-g{group}" if group else ""), "gptq_s": seconds,
                   "forward_ms": plain * 1e3, "forward_hooked_ms": hooked * 1e3, "error_gptq": error["gptq"],
                   "error_nearest": error["nearest"], "codes_equal_cpu_float64": same}
            rows.append(row)
            if not error["gptq"] < error["nearest"]:
                failures.append(f"{key} {row['spec']}: GPTQ error {error['gptq']:.4f} not below nearest "
                                f"{error['nearest']:.4f}")
            if same < 0.98:
                failures.append(f"{key} {row['spec']}: only {same:.3f} of the GPU's codes equal the CPU's float64 ones")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_gptq.jsonl"), "w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    print(f"GPTQ on {name}, {time.strftime('%Y-%m-%d')}, {tokens} tokens per layer input")
    print("| out x in | count | spec | GPTQ s | fwd ms | hooked fwd ms | err GPTQ | err nearest | codes = CPU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['out']} x {r['in']} | {r['count']} | {r['spec']} | {r['gptq_s']:.2f} | {r['forward_ms']:.2f} | "
              f"{r['forward_hooked_ms']:.2f} | {r['error_gptq']:.4f} | {r['error_nearest']:.4f} | "
              f"{r['codes_equal_cpu_float64']:.3f} |")
    for spec in sorted({r["spec"] for r in rows}):
        chosen = [r for r in rows if r["spec"] == spec]
        total = sum(r["gptq_s"] * r["count"] for r in chosen)
        hook = sum((r["forward_hooked_ms"] - r["forward_ms"]) * r["count"] for r in chosen)
        print(f"{spec}: all {sum(r['count'] for r in chosen)} linears rounded in {total:.0f} s; the moments hooks "
              f"add {hook:.0f} ms to a {tokens}-token model call over all passes together")
    for failure in failures:
        print("FAIL", failure)
    return 1 if failures else 0


class _Wrap(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


if __name__ == "__main__":
    sys.exit(main())
