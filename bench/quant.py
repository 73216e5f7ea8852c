"""GPU benchmark of the quantized backbones: SDXL UNet (1024x1024 -> 128x128 latent) and FLUX.1-schnell DiT
(1024x1024), random-initialised from ComfyUI's own model classes, batch 1, each config against BF16:
weight memory ratio, peak GPU memory, one denoising step's latency (median after warm-up, eager and
torch.compile), output relative L2 vs BF16.

    COMFYUI_DIR=/work/comfyui python3 bench/quant.py --models sdxl,flux [--tiny] [--out bench/results/x.md]

--tiny builds small models of the same classes (a CPU smoke test of this script, not a measurement)."""
import argparse
import gc
import json
import os
import statistics
import sys
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.environ.get("COMFYUI_DIR", os.path.join(ROOT, ".device", "comfyui")))
import qsched  # noqa: E402,F401
import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = not torch.cuda.is_available()
import comfy.ops  # noqa: E402
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: E402

from comfyui_qsched.comfy_adapter.comfy_compat import flux_model  # noqa: E402
from comfyui_qsched.quant import module_bytes, quantize_module  # noqa: E402

SDXL = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
            num_classes="sequential", adm_in_channels=2816, in_channels=4, model_channels=320,
            num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, 2, 2, 10, 10], channel_mult=[1, 2, 4],
            transformer_depth_middle=10, use_linear_in_transformer=True, context_dim=2048, num_head_channels=64,
            transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], use_temporal_attention=False,
            use_temporal_resblock=False)
FLUX_SCHNELL = dict(in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=3072,
                    mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56],
                    theta=10000, patch_size=2, qkv_bias=True, guidance_embed=False)
TINY = {"sdxl": dict(SDXL, model_channels=64, transformer_depth=[0, 0, 1, 1, 1, 1], transformer_depth_middle=1,
                     transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1], context_dim=64, adm_in_channels=64,
                     num_head_channels=32),
        "flux": dict(FLUX_SCHNELL, hidden_size=256, num_heads=2, depth=1, depth_single_blocks=2, context_in_dim=64,
                     vec_in_dim=32)}  # head size 128, as ComfyUI's FLUX detection assumes

# (spec, backend, also compiled); bf16 first: the reference for every other row.
CONFIGS = [("bf16", None, True), ("W8A8", "fp8", True), ("W4A8", "fp8", True),
           ("W8A8", "simulate", False), ("W6A8", "simulate", False), ("W4A8", "simulate", False),
           ("W4A6", "simulate", False), ("W4A5", "simulate", False), ("W4A4", "simulate", False),
           ("W4A8-g128", "simulate", False),
           ("W8A8", "torchao", True), ("W8A8", "bitsandbytes", False), ("W4A16", "bitsandbytes", False)]


def build(name, device, tiny, flux_blocks=None):
    """flux_blocks: (double, single) block counts instead of the configured ones."""
    config = dict((TINY if tiny else {"sdxl": SDXL, "flux": FLUX_SCHNELL})[name])
    if name == "flux" and flux_blocks:
        config.update(depth=flux_blocks[0], depth_single_blocks=flux_blocks[1])
    ops, dtype = comfy.ops.disable_weight_init, torch.bfloat16
    with torch.device(device):
        model = UNetModel(**config, dtype=dtype, device=device, operations=ops) if name == "sdxl" else \
            flux_model(**config, dtype=dtype, device=device, operations=ops)
    return model.eval().requires_grad_(False)


def init_weights_(model, seed):
    """Same values for the same seed and device: every config starts from the identical BF16 model."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if not tensor.dtype.is_floating_point:
            continue
        if tensor.ndim >= 2:
            fan_in = tensor[0].numel()
            values = torch.randn(tensor.shape, generator=generator, device=tensor.device) / fan_in ** 0.5
        elif name.endswith(("scale", ".weight")):  # norm gains
            values = torch.ones(tensor.shape, device=tensor.device)
        else:
            values = 0.02 * torch.randn(tensor.shape, generator=generator, device=tensor.device)
        tensor.copy_(values)


def inputs(name, device, tiny, seed=1):
    g = torch.Generator(device=device).manual_seed(seed)
    bf16 = dict(device=device, dtype=torch.bfloat16, generator=g)
    side = 16 if tiny else 128
    if name == "sdxl":
        context_dim, adm = (64, 64) if tiny else (2048, 2816)
        return dict(x=torch.randn(1, 4, side, side, **bf16), timesteps=torch.tensor([500.0], device=device),
                    context=torch.randn(1, 77, context_dim, **bf16), y=torch.randn(1, adm, **bf16))
    context_dim, vec = (64, 32) if tiny else (4096, 768)
    return dict(x=torch.randn(1, 16, side, side, **bf16), timestep=torch.tensor([0.5], device=device),
                context=torch.randn(1, 256, context_dim, **bf16), y=torch.randn(1, vec, **bf16))


COMPILED_BLOCKS = ("DoubleStreamBlock", "SingleStreamBlock")
# FLUX: regional compilation of its 57 identical-shaped blocks (one graph each, shared code). SDXL: the whole
# UNet as one graph (no graph breaks with ComfyUI's PyTorch attention); compiling its transformer blocks alone
# recompiled per shape and ran slower than eager (146 vs 66 ms in the first H100 run).
COMPILE_SCOPE = {"sdxl": "whole model", "flux": "blocks"}


def compile_model(name, model, mode=None):
    """mode: torch.compile's ('reduce-overhead' replays CUDA graphs: no per-kernel launch cost on the CPU)."""
    if COMPILE_SCOPE[name] == "whole model":
        return torch.compile(model, dynamic=False, mode=mode)
    for module in model.modules():
        if type(module).__name__ in COMPILED_BLOCKS:
            module.compile(dynamic=False, mode=mode)
    return model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_forward(model, batch, device):
    """(seconds, output) of one forward, synchronised on both sides."""
    sync(device)
    torch.compiler.cudagraph_mark_step_begin()  # each call is a new step: CUDA graph outputs may be reused
    start = time.perf_counter()
    with torch.inference_mode():
        out = model(**batch)
    sync(device)
    return time.perf_counter() - start, out


def time_step(model, batch, device, repeats):
    times = []
    for index in range(repeats + 2):  # two warm-ups
        seconds, out = timed_forward(model, batch, device)
        if index >= 2:
            times.append(seconds)
    return statistics.median(times) * 1e3, out


def split_config(config):
    """A config name as the scripts take it: 'bf16' -> ('bf16', None), 'W8A8 fp8' -> ('W8A8', 'fp8')."""
    return ("bf16", None) if config == "bf16" else tuple(config.split())


def append_jsonl(path, record):
    """Append `record` as one JSON line to `path` (nothing without a path), so rows outlive a run killed later."""
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def build_config(name, spec, backend, device, tiny):
    """The seeded BF16 model, quantized with `backend` unless None; (model, row with its size and layer report)."""
    model = build(name, device, tiny)
    init_weights_(model, seed=0)
    bf16_bytes = module_bytes(model)
    row = {"model": name, "config": "bf16" if backend is None else f"{spec} {backend}"}
    start = time.perf_counter()
    if backend is not None:
        report = quantize_module(model, spec, backend=backend, device=device)
        row["layers"] = f"{report.quantized}q/{report.kept}k"
        row["how"] = ", ".join(f"{n} {how}" for how, n in sorted(report.by_backend().items()))
    row["quantize_s"] = time.perf_counter() - start
    row["weight_ratio"] = module_bytes(model) / bf16_bytes
    row["weight_gib"] = module_bytes(model) / 2 ** 30
    return model, row


def run_config(name, spec, backend, compiled, device, tiny, repeats, reference, no_compile=False):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    model, row = build_config(name, spec, backend, device, tiny)
    batch = inputs(name, device, tiny)
    slow_eager = backend == "torchao"  # torchao int8 dynamic must be compiled; eager is measured once
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    row["eager_ms"], out = time_step(model, batch, device, 1 if slow_eager else repeats)
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    out = out.float()
    if reference is not None:
        row["rel_l2"] = float((out - reference).norm() / reference.norm())
    row["finite"] = bool(torch.isfinite(out).all())
    if compiled and not no_compile:
        model = compile_model(name, model)
        row["compile_s"] = timed_forward(model, batch, device)[0]
        row["compiled_ms"], compiled_out = time_step(model, batch, device, repeats)
        if reference is not None:
            row["rel_l2_compiled"] = float((compiled_out.float() - reference).norm() / reference.norm())
    del model
    if compiled and not no_compile:
        torch._dynamo.reset()
    return row, out


def bench_model(name, device, tiny, repeats, deadline, configs, no_compile=False, log_path=None):
    rows, reference = [], None
    for spec, backend, compiled in configs:
        if time.time() > deadline:
            rows.append({"model": name, "config": f"{spec} {backend}", "error": "skipped: time budget"})
            continue
        try:
            row, out = run_config(name, spec, backend, compiled, device, tiny, repeats, reference, no_compile)
            if backend is None:
                reference = out
        except Exception as error:  # one failing backend must not lose the others' numbers
            traceback.print_exc()
            row = {"model": name, "config": f"{spec} {backend}", "error": f"{type(error).__name__}: {error}"[:160]}
        print("ROW", row, flush=True)
        append_jsonl(log_path, row)
        rows.append(row)
    return _with_ratios(rows)


def _cell(row, key, fmt):
    return fmt.format(row[key]) if key in row else "-"


def table(rows, device_name, torch_version=torch.__version__):
    lines = [f"Device: {device_name}; torch {torch_version}; batch 1, one backbone forward (no CFG) per step; "
             f"compiled = torch.compile(dynamic=False) of the SDXL UNet as a whole and of FLUX's "
             f"{' and '.join(COMPILED_BLOCKS)} modules.", "",
             "| model | config | weight GiB | weight ratio | peak GiB | eager ms | eager ratio | compiled ms "
             "| compiled ratio | rel L2 vs bf16 | layers | how |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['config']} | error: {r['error']} |||||||||| ")
            continue
        l2 = _cell(r, "rel_l2", "{:.4f}") + ("" if "rel_l2_compiled" not in r else f" ({r['rel_l2_compiled']:.4f} compiled)")
        lines.append(f"| {r['model']} | {r['config']} | {r['weight_gib']:.2f} | {r['weight_ratio']:.3f} | "
                     f"{_cell(r, 'peak_gib', '{:.2f}')} | {_cell(r, 'eager_ms', '{:.1f}')} | "
                     f"{_cell(r, 'eager_ratio', '{:.2f}')} | {_cell(r, 'compiled_ms', '{:.1f}')} | "
                     f"{_cell(r, 'compiled_ratio', '{:.2f}')} | {l2} | {r.get('layers', '-')} | {r.get('how', '-')} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="sdxl,flux")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--budget-s", default="540", help="seconds per model after which no new config starts: "
                        "one number, or one per model ('230,330')")
    parser.add_argument("--log", default="", help="append each row as JSON to this file as it is measured")
    parser.add_argument("--only", default="", help="comma-separated config names ('bf16', 'W8A8 fp8', ...)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", default="")
    parser.add_argument("--from-log", default="", help="only render the table of a --log file (and its device name)")
    parser.add_argument("--device-name", default="NVIDIA H100 80GB HBM3")
    parser.add_argument("--torch-version", default="2.11.0+cu130")
    args = parser.parse_args(argv)
    if args.from_log:
        with open(args.from_log) as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        return _write(table(_with_ratios(rows), args.device_name, args.torch_version), args.out)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch._dynamo.config.cache_size_limit = 64
    torch.backends.cuda.matmul.allow_tf32 = True
    if device.type == "cuda":
        print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    configs = CONFIGS
    if args.only:
        wanted = {c.strip() for c in args.only.split(",")}
        configs = [c for c in CONFIGS if ("bf16" if c[1] is None else f"{c[0]} {c[1]}") in wanted or c[1] is None]
    models = args.models.split(",")
    budgets = [float(b) for b in args.budget_s.split(",")]
    budgets += budgets[-1:] * (len(models) - len(budgets))
    rows = []
    for name, budget in zip(models, budgets):
        rows += bench_model(name, device, args.tiny, args.repeats, time.time() + budget, configs, args.no_compile,
                            args.log)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke test, not a measurement)"
    return _write(table(rows, device_name), args.out)


def _with_ratios(rows):
    for name in {row["model"] for row in rows}:
        base = next((r for r in rows if r["model"] == name and r["config"] == "bf16" and "error" not in r), {})
        for row in (r for r in rows if r["model"] == name):
            for key in ("eager_ms", "compiled_ms"):
                if key in row and key in base:
                    row[key.replace("_ms", "_ratio")] = row[key] / base[key]
    return rows


def _write(text, path):
    print(text)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
