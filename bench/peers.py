"""This pack's quantized backbones side by side with ComfyUI's own ways to shrink one, on one GPU.

Peers, each loaded the way ComfyUI's UNETLoader loads the file (comfy.sd.load_diffusion_model_state_dict on the
state dict of one random-initialised BF16 model, built from ComfyUI's own classes):
    bf16            weight_dtype "default", forced to BF16 (SDXL would otherwise run FP16)
    comfy fp8       weight_dtype "fp8_e4m3fn": FP8 storage, BF16 compute (weights cast per call)
    comfy fp8_fast  weight_dtype "fp8_e4m3fn_fast": FP8 matmuls with unit scales (activations clamped and cast)
    comfy int8      ComfyUI 0.33+: this pack's W8A8 exported as comfy_quant int8_tensorwise (quant/export.py),
                    loaded by plain ComfyUI: comfy-kitchen's int8_linear
    <spec> <backend> this pack: the BF16 load, then quant.quantize_module and ComfyUI's patching protocol, as the
                    Q-Sched loaders do; backend "auto-int8": auto's plan for a GPU without FP8 (Turing, Ampere: int8
                    GEMMs), run on this GPU (int8 tensor cores) as the stand-in
Every config is timed eager in interleaved rounds (median, min-max) against the others, and, with --compile, with
torch.compile (FLUX: each block, as bench/quant.py); rel. L2 of the output against BF16's, weight bytes.

--kernels: every Linear shape of both models timed alone per kernel path (and the Triton kernels checked against
their torch references on the GPU). --sampler: the Q-Sched sampler's own cost per step against ComfyUI's euler.
--profile: a kernel profile of one eager step of BF16 and of this pack's default configs.
--host-profile: host time per step and per Linear call beside GPU time, per config (bench/host_profile.py), and the
host cost of each call a quantized linear makes.
--cuda-graphs: bf16, W8A8 auto and W4A8 auto again with the loaders' `cuda_graphs: on` (config suffix
" + cuda graphs", any config takes it): the backbone's forward replayed as a CUDA graph, eager otherwise. Their rows
add `graph_counts` (captures, replays, eager calls and why), `equal_to_eager` (the output against the same config
without graphs, bit for bit) and `host_call_ms` (host time of one call on an idle GPU; also on that config's row).

    COMFYUI_DIR=... python3 bench/peers.py --models flux,sdxl --compile flux --kernels --sampler --profile --log rows.jsonl
    python3 bench/peers_table.py rows.jsonl  (the tables, as in bench/results/peers_h200.md)"""
import argparse
import gc
import inspect
import json
import os
import statistics
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quant as bench  # noqa: E402  (bench/quant.py: ComfyUI model configs, seeded init, inputs, compile scopes)

import comfy.sd  # noqa: E402

from comfyui_qsched.comfy_adapter.attention import OVERRIDE_KEY, int8_attention_override  # noqa: E402
from comfyui_qsched.comfy_adapter.cuda_graphs import backbone_options  # noqa: E402
from comfyui_qsched.comfy_adapter.quant_ops import with_comfy_patching  # noqa: E402
from comfyui_qsched.quant import module_bytes, quantize_module  # noqa: E402
from comfyui_qsched.quant.export import comfy_int8_state_dict  # noqa: E402

CONFIGS = ("bf16", "comfy fp8", "comfy fp8_fast", "comfy int8", "W8A8 auto", "W4A8 auto", "W8A8 fp8", "W4A8 fp8",
           "W8A8 int8", "W4A8 int8", "W8A8 auto-int8", "W4A8 auto-int8", "W8A8 comfy_kitchen", "W8A8-r32 auto",
           "W4A8-r32 auto", "W4A8-g64-r32 auto")
COMPILED = ("bf16", "comfy fp8_fast", "W8A8 auto", "W4A8 auto", "W8A8 auto-int8", "W8A8-r32 auto", "W4A8-r32 auto",
            "W4A8-g64 auto")
# FLUX at full width with fewer blocks (the full model has 19 + 38): every block has the same shapes, so the ratios
# are the full model's, and nine configs fit on the GPU together for interleaved timing.
FLUX_BLOCKS = (8, 16)


LOADER_PARAMETERS = inspect.signature(comfy.sd.load_diffusion_model_state_dict).parameters


def comfy_int8_available():
    try:
        import comfy.quant_ops
    except ImportError:
        return False
    return "int8_tensorwise" in getattr(comfy.quant_ops, "QUANT_ALGOS", {})


def comfy_load(state_dict, dtype, fp8_fast=False):
    """The diffusion model as UNETLoader loads it (weight_dtype -> model_options), on the CPU."""
    options = {"dtype": dtype}
    if fp8_fast:
        options["fp8_optimizations"] = True
    extra = {"disable_dynamic": True} if "disable_dynamic" in LOADER_PARAMETERS else {}  # 0.33+: plain ModelPatcher
    patcher = comfy.sd.load_diffusion_model_state_dict(dict(state_dict), model_options=options, **extra)
    if patcher is None:
        raise RuntimeError("ComfyUI did not recognise the model")
    return patcher.model.diffusion_model.eval().requires_grad_(False)


def source_state_dict(name, device, blocks, tiny):
    """The seeded BF16 model's state dict, on the CPU (every config loads from it)."""
    model = bench.build(name, device, tiny, flux_blocks=blocks)
    bench.init_weights_(model, seed=0)
    state = {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}
    del model
    return state


INT8_ATTENTION = " + int8 attention"  # --attention int8: these configs again with the loaders' attention: int8


class WithInt8Attention(torch.nn.Module):
    """The backbone called with the override the loaders install (transformer_options, as the sampler passes it)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *args, transformer_options=None, **kwargs):
        options = {**(transformer_options or {}), OVERRIDE_KEY: int8_attention_override}
        return self.model(*args, transformer_options=options, **kwargs)


CUDA_GRAPHS = " + cuda graphs"  # --cuda-graphs: these configs again with the loaders' cuda_graphs: on
GRAPHED = ("bf16", "W8A8 auto", "W4A8 auto")


class WithCudaGraphs(torch.nn.Module):
    """The backbone called with the loaders' CUDA-graph wrapper in transformer_options, as the sampler passes it."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        backbone = model
        while isinstance(backbone, (WithInt8Attention, WithSwitches)):  # the graphs belong to the ComfyUI model inside
            backbone = backbone.model
        self.options, self.graphs = backbone_options(backbone)

    def forward(self, *args, transformer_options=None, **kwargs):
        return self.model(*args, transformer_options={**(transformer_options or {}), **self.options}, **kwargs)


# A config may end with " {NAME=value;...}": the kernel switches of quant/ set to those values while that config's
# model runs (read per call), e.g. "W4A8 auto {FP8_W4_GEMM=triton}", "W4A8-r32 auto {BRANCH=epilogue}".
SWITCHES = {"INT8_GEMM": ("linear_ops", "INT8_GEMM"), "FP8_W4_GEMM": ("linear_ops", "FP8_W4_GEMM"),
            "GROUP_GEMM": ("linear_ops", "GROUP_GEMM"), "BRANCH": ("branch_ops", "EAGER_FORM"),
            "STREAM_W4": ("fast", "STREAMING_INT4"), "SPLIT_DOWN": ("branch_ops", "SPLIT_DOWN")}


def parse_switches(text):
    """{(module, attribute): value} of a " {NAME=value;...}" suffix; unknown names are an error."""
    import importlib
    settings = {}
    for item in filter(None, (part.strip() for part in text.strip("{} ").split(";"))):
        name, _, value = item.partition("=")
        if name not in SWITCHES:
            raise ValueError(f"unknown switch {name!r} in {text!r}; known: {', '.join(SWITCHES)}")
        module, attribute = SWITCHES[name]
        settings[(importlib.import_module(f"comfyui_qsched.quant.{module}"), attribute)] = \
            {"true": True, "false": False}.get(value.lower(), value)
    return settings


class WithSwitches(torch.nn.Module):
    """The backbone run with some of quant/'s kernel switches set, restored after each call."""

    def __init__(self, model, settings):
        super().__init__()
        self.model, self.settings = model, settings

    def forward(self, *args, **kwargs):
        saved = {key: getattr(*key) for key in self.settings}
        for (module, attribute), value in self.settings.items():
            setattr(module, attribute, value)
        try:
            return self.model(*args, **kwargs)
        finally:
            for (module, attribute), value in saved.items():
                setattr(module, attribute, value)


def build_config(config, state, device):
    """(model on `device`, row with how it was made and its weight bytes)."""
    if config.endswith("}") and " {" in config:
        base, _, suffix = config.rpartition(" {")
        settings = parse_switches(suffix)
        model, row = build_config(base, state, device)
        return WithSwitches(model, settings), {**row, "config": config}
    if config.endswith(CUDA_GRAPHS):
        model, row = build_config(config[:-len(CUDA_GRAPHS)], state, device)
        return WithCudaGraphs(model), {**row, "config": config}
    if config.endswith(INT8_ATTENTION):
        model, row = build_config(config[:-len(INT8_ATTENTION)], state, device)
        return WithInt8Attention(model), {**row, "config": config}
    row = {"config": config}
    start = time.perf_counter()
    if config == "bf16":
        model = comfy_load(state, torch.bfloat16).to(device)
    elif config in ("comfy fp8", "comfy fp8_fast"):
        model = comfy_load(state, torch.float8_e4m3fn, fp8_fast=config.endswith("fast")).to(device)
    elif config == "comfy int8":
        if not comfy_int8_available():
            raise RuntimeError("this ComfyUI has no int8_tensorwise format (needs 0.33+)")
        ours = comfy_load(state, torch.bfloat16).to(device)
        report = quantize_module(ours, "W8A8", backend="simulate", device=device)
        exported, counts = comfy_int8_state_dict(ours)
        del ours
        model = comfy_load(exported, torch.bfloat16).to(device)
        row["how"] = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
        row["layers"] = f"{report.quantized}q/{report.kept}k"
    else:
        spec, backend = config.split()
        model = comfy_load(state, torch.bfloat16).to(device)
        if backend == "auto-int8":
            from comfyui_qsched.quant import fp8
            saved, fp8.fp8_supported = fp8.fp8_supported, lambda device: False
            try:
                report = quantize_module(model, spec, backend="auto", device=device)
            finally:
                fp8.fp8_supported = saved
        else:
            report = quantize_module(model, spec, backend=backend, device=device)
        with_comfy_patching(model)  # as the Q-Sched loaders do
        row["how"] = ", ".join(f"{n} {how}" for how, n in sorted(report.by_backend().items()))
        row["layers"] = f"{report.quantized}q/{report.kept}k"
    row["load_s"] = time.perf_counter() - start
    row["weight_bytes"] = module_bytes(model)
    return model, row


def interleaved(runs, batch, device, rounds, warmup):
    """{key: [ms per round]} with every callable timed once per round, after `warmup` calls each."""
    for fn in runs.values():
        for _ in range(warmup):
            bench.timed_forward(fn, batch, device)
    times = {key: [] for key in runs}
    for _ in range(rounds):
        for key, fn in runs.items():
            times[key].append(bench.timed_forward(fn, batch, device)[0] * 1e3)
    return times


def rel_l2(out, reference):
    return float((out.float() - reference).norm() / reference.norm())


def bench_model(name, args, device, log):
    configs = [c.strip() for c in args.configs.split(",")]
    blocks = FLUX_BLOCKS if name == "flux" and not (args.full_flux or args.tiny) else None
    state = source_state_dict(name, device, blocks, args.tiny)
    batch = bench.inputs(name, device, args.tiny)
    models, rows = {}, {}
    for config in configs:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            base = config[:-len(CUDA_GRAPHS)] if config.endswith(CUDA_GRAPHS) else None
            if base in models:  # the same model with the graphs' wrapper: no second copy of the weights
                model = WithCudaGraphs(models[base])
                row = {**{k: v for k, v in rows[base].items() if k not in ("model", "out")}, "config": config}
            else:
                model, row = build_config(config, state, device)
            row["out"] = bench.timed_forward(model, batch, device)[1].float()
        except Exception as error:  # one failing peer must not lose the others' numbers
            traceback.print_exc()
            log({"model": name, "config": config, "error": f"{type(error).__name__}: {error}"[:200]})
            continue
        models[config], rows[config] = model, {"model": name, **row}
        print("built", name, config, f"{row['load_s']:.1f} s", row.get("how", ""), flush=True)
    del state
    times = interleaved(models, batch, device, args.rounds, args.warmup)
    reference = rows.get("bf16")
    for config, row in rows.items():
        row["eager_ms"] = statistics.median(times[config])
        row["eager_spread_ms"] = [min(times[config]), max(times[config])]
        if reference is not None:
            row["rel_l2"] = rel_l2(row["out"], reference["out"])
    for config, model in list(models.items()):
        if isinstance(model, WithCudaGraphs):
            base = config[:-len(CUDA_GRAPHS)]
            graphs_row(rows[config], rows.get(base), model, batch, device)
            if base in models and "host_call_ms" not in rows[base]:  # the same call eager, for comparison
                rows[base]["host_call_ms"] = host_call_ms(models[base], batch, device)
    for row in rows.values():
        log({key: value for key, value in row.items() if key != "out"})
    if args.sampler and name == "sdxl" and "bf16" in models:
        try:
            log({"model": name, "sampler": sampler_overhead(models["bf16"], batch, device)})
        except Exception as error:
            traceback.print_exc()
            log({"model": name, "sampler": {"error": f"{type(error).__name__}: {error}"[:200]}})
    if args.profile:
        from quant_profile import kernel_profile
        for config in ("bf16", "W8A8 auto", "W4A8 auto"):
            if config in models:
                try:
                    log({"model": name, "profile": config, **kernel_profile(models[config], batch)})
                except Exception as error:
                    traceback.print_exc()
                    log({"model": name, "profile": config, "error": f"{type(error).__name__}: {error}"[:200]})
    if args.host_profile:
        from host_profile import profile_config
        from quant_profile import kernel_profile
        for config, model in models.items():
            if isinstance(model, WithCudaGraphs):  # replays run no module code to time: see host_call_ms
                continue
            try:
                log({"model": name, "host_profile": config, **profile_config(model, batch, device, kernel_profile)})
            except Exception as error:
                traceback.print_exc()
                log({"model": name, "host_profile": config, "error": f"{type(error).__name__}: {error}"[:200]})
    if name in args.compile.split(","):
        compile_phase(name, models, rows, batch, device, args, log)
    models.clear()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def host_call_ms(model, batch, device):
    """Host milliseconds of one forward started on an idle GPU (bench/host_profile.py's host_us)."""
    from host_profile import host_us

    def step():
        with torch.inference_mode():
            model(**batch)

    return host_us(step, device, calls=20) / 1e3


def graphs_row(row, eager_row, model, batch, device):
    """A CUDA-graph config's checks beside its timing: what ran (captures, replays, eager and why), its output
    against the same config without graphs (bit for bit), the host time of one call."""
    row["host_call_ms"] = host_call_ms(model, batch, device)
    counts = row["graph_counts"] = dict(model.graphs.runner.counts)
    eager = sum(n for key, n in counts.items() if key.startswith("eager"))
    summary = f"graphs: {counts.get('capture', 0)} captured, {counts.get('replay', 0)} replays, {eager} eager"
    if eager_row is not None:
        row["equal_to_eager"] = bool(torch.equal(row["out"], eager_row["out"]))
        summary += ", equal to eager" if row["equal_to_eager"] else ", DIFFERS from eager"
    row["how"] = "; ".join(part for part in (row.get("how"), summary) if part)  # shown in peers_table.py's table


def compile_phase(name, models, rows, batch, device, args, log):
    """torch.compile of the COMPILED configs (in place: their eager timings are taken before), timed interleaved;
    one record per config with its compiled timing, merged with the eager row when rendering."""
    compiled, records = {}, {}
    for config in [c for c in COMPILED if c in models]:
        if time.time() > args.deadline:
            log({"model": name, "config": config, "compiled": True, "compile_error": "skipped: time budget"})
            continue
        start = time.perf_counter()
        try:
            fn = bench.compile_model(name, models[config])
            out = bench.timed_forward(fn, batch, device)[1].float()
        except Exception as error:
            traceback.print_exc()
            log({"model": name, "config": config, "compiled": True,
                 "compile_error": f"{type(error).__name__}: {error}"[:200]})
            continue
        records[config] = {"model": name, "config": config, "compiled": True,
                           "compile_s": time.perf_counter() - start, "out": out}
        compiled[config] = fn
        print("compiled", name, config, f"{records[config]['compile_s']:.0f} s", flush=True)
    times = interleaved(compiled, batch, device, args.rounds, args.warmup)
    reference = records.get("bf16")
    for config, record in records.items():
        record["compiled_ms"] = statistics.median(times[config])
        record["compiled_spread_ms"] = [min(times[config]), max(times[config])]
        if reference is not None:
            record["rel_l2_compiled"] = rel_l2(record["out"], reference["out"])
    for record in records.values():
        record.pop("out")
        log(record)
    torch._dynamo.reset()


# ----------------------------------------------------------------------------------------------------------
# --sampler: the Q-Sched sampler's own cost per step

def sampler_overhead(unet, batch, device, steps=4, rounds=15):
    """Q-Sched euler (non-identity coefficients) against ComfyUI's sample_euler on the same denoiser, and both
    with a denoiser that costs one kernel, so the difference per step is the sampler's own overhead."""
    from comfy.k_diffusion.sampling import sample_euler as comfy_euler

    from comfyui_qsched.samplers.k_qsched import sample_euler as qsched_euler
    from comfyui_qsched.samplers.schedule import QSchedSchedule
    sigmas = torch.tensor([14.6, 3.0, 1.0, 0.3, 0.0], device=device)
    schedule = QSchedSchedule(c_x=(0.99, 0.98, 1.01, 1.0), c_eps=(1.02, 0.97, 1.0, 1.03))
    extra = {key: value for key, value in batch.items() if key != "x"}

    def unet_denoiser(x, sigma, **_):  # the latent stays float32, the backbone runs in BF16, as in ComfyUI
        eps = unet((x / (sigma[:, None, None, None] ** 2 + 1) ** 0.5).to(torch.bfloat16), **extra)
        return x - sigma[:, None, None, None] * eps.float()

    def null_denoiser(x, sigma, **_):
        return x * 0.5

    x = batch["x"].float() * 14.6
    samplers = {"comfy": lambda model: comfy_euler(model, x, sigmas, disable=True),
                "qsched": lambda model: qsched_euler(model, x, sigmas, schedule=schedule, disable=True)}
    result = {"steps": steps}
    for label, model in (("unet", unet_denoiser), ("null", null_denoiser)):
        runs = {sampler: (lambda sampler=sampler, model=model: samplers[sampler](model)) for sampler in samplers}
        with torch.inference_mode():
            for fn in runs.values():
                fn()
            times = {key: [] for key in runs}
            for index in range(rounds):  # alternate which sampler goes first
                for key, fn in (list(runs.items()) if index % 2 == 0 else list(runs.items())[::-1]):
                    bench.sync(device)
                    start = time.perf_counter()
                    fn()
                    bench.sync(device)
                    times[key].append((time.perf_counter() - start) * 1e3 / steps)
        for key, values in times.items():
            result[f"{label}_{key}_ms_per_step"] = statistics.median(values)
            result[f"{label}_{key}_min_ms_per_step"] = min(values)
    step = result["unet_comfy_ms_per_step"]
    result["overhead_ms_per_step"] = result["unet_qsched_ms_per_step"] - step
    result["overhead_share"] = result["overhead_ms_per_step"] / step
    result["sampler_only_share"] = (result["null_qsched_ms_per_step"] - result["null_comfy_ms_per_step"]) / step
    return result


# ----------------------------------------------------------------------------------------------------------
# --kernels: each Linear shape alone, per path; kernel checks against the torch references

def kernel_table(device, log, blocks):
    from quant_profile import gpu_us, linear_shapes

    from comfyui_qsched.quant import numerics
    from comfyui_qsched.quant.kernels import triton_kernels as tk
    check_kernels(device, log)
    e4m3 = torch.float8_e4m3fn
    for name in ("flux", "sdxl"):
        model = bench.build(name, device, tiny=False, flux_blocks=blocks if name == "flux" else None)
        bench.init_weights_(model, seed=0)
        shapes = linear_shapes(model, bench.inputs(name, device, tiny=False))
        del model
        torch.cuda.empty_cache()
        totals = {}
        for (tokens, k, n, has_bias), count in sorted(shapes.items()):
            x = torch.randn(tokens, k, device=device, dtype=torch.bfloat16)
            w = torch.randn(n, k, device=device, dtype=torch.bfloat16) / k ** 0.5
            b = torch.randn(n, device=device, dtype=torch.bfloat16) if has_bias else None
            codes8, scale8 = numerics.quantize_weight(w, 8)
            codes4, scale4 = numerics.quantize_weight(w, 4)
            packed4 = numerics.pack_int4(codes4)
            w_scale = (w.float().abs().amax(dim=1, keepdim=True) / 448.0)
            w8 = (w.float() / w_scale).to(e4m3)
            scale_row = w_scale.reshape(1, -1)
            padded = -(-tokens // 16) * 16
            one = torch.ones((), device=device)
            aligned = k % 16 == 0 and n % 16 == 0

            def a8(fast, weight=None):
                x8, sa = tk.quantize_rows_fp8(x, padded)
                wt = w8 if weight is None else weight()
                return torch._scaled_mm(x8, wt.t(), scale_a=sa, scale_b=scale_row, bias=b, out_dtype=torch.bfloat16,
                                        use_fast_accum=fast)

            def a8_torch():  # the fp8 backend before the Triton quantizer: five elementwise kernels and a pad
                rows = torch.nn.functional.pad(x, (0, 0, 0, padded - tokens)) if padded != tokens else x
                sa = (rows.abs().amax(dim=1, keepdim=True).float() / 448.0).clamp(min=1e-12)
                return torch._scaled_mm((rows.float() / sa).to(e4m3), w8.t(), scale_a=sa, scale_b=scale_row, bias=b,
                                        out_dtype=torch.bfloat16)

            def comfy_fp8_fast():
                xc = torch.clamp(x, min=-448, max=448).to(e4m3).contiguous()
                return torch._scaled_mm(xc, w8.t(), scale_a=one, scale_b=one, bias=b, out_dtype=torch.bfloat16,
                                        use_fast_accum=True)

            def comfy_fp8_storage():
                return torch.nn.functional.linear(x, w8.to(torch.bfloat16), b)

            scale8_bf16 = scale8.to(torch.bfloat16)
            paths = {"bf16": lambda: torch.nn.functional.linear(x, w, b),
                     "comfy_fp8_storage": comfy_fp8_storage,
                     "wo_int8_mul_cublas": lambda: torch.nn.functional.linear(x, torch.mul(codes8, scale8_bf16), b),
                     "wo_int4_dequant_cublas": lambda: torch.nn.functional.linear(
                         x, tk.dequantize(packed4, scale4, n, k, torch.bfloat16, True), b)}
            if tokens <= 16:
                paths["wo_int8_triton_gemm"] = lambda: tk.weight_only_linear(x, codes8, scale8, b, False, n)
            if aligned:
                paths.update({"comfy_fp8_fast": comfy_fp8_fast, "a8_fp8_torch_quant": a8_torch,
                              "act_quant_only": lambda: tk.quantize_rows_fp8(x, padded),
                              "a8_fp8": lambda: a8(False), "a8_fp8_fast_accum": lambda: a8(True),
                              "w4a8_unpack_cublas": lambda: a8(True, lambda: tk.int4_to_fp8(packed4, n, k))})
                try:
                    import comfy_kitchen
                    paths["ck_int8_linear"] = lambda: comfy_kitchen.int8_linear(x, codes8, scale8.reshape(-1), b,
                                                                                 out_dtype=torch.bfloat16)
                except ImportError:
                    pass
            row = {"model": name, "m": tokens, "k": k, "n": n, "count": count}
            for path, fn in paths.items():
                try:
                    row[path] = gpu_us(fn)
                    totals[path] = totals.get(path, 0.0) + row[path] * count
                except Exception as error:
                    row[path] = f"error: {type(error).__name__}: {error}"[:160]
            log({"gemm": row})
        log({"gemm_totals_ms": {"model": name, **{key: value / 1e3 for key, value in totals.items()}}})


def check_kernels(device, log):
    """The Triton kernels against the torch code they replace, on this GPU (fresh random inputs)."""
    from comfyui_qsched.quant import numerics
    from comfyui_qsched.quant.kernels import triton_kernels as tk
    from comfyui_qsched.quant.fp8 import quantize_rows
    results = {}
    for cols in (3072, 15360, 1000):
        x = torch.randn(77, cols, device=device, dtype=torch.bfloat16) * \
            torch.logspace(-3, 2, 77, device=device)[:, None]
        ref_codes, ref_scales = quantize_rows(x, 80)
        for launch in ("first", "fast"):  # the first launch compiles and checks the fast launcher, later ones use it
            codes, scales = tk.quantize_rows_fp8(x, 80)
            results[f"act_quant_k{cols}_{launch}_codes_equal"] = bool(torch.equal(codes.view(torch.uint8),
                                                                                  ref_codes.view(torch.uint8)))
            results[f"act_quant_k{cols}_{launch}_scales_equal"] = bool(torch.equal(scales, ref_scales))
    x = torch.randn(1, 3072, device=device, dtype=torch.bfloat16)
    for _ in range(2):  # compile this specialization and check its fast launch first (H200 run 3 timed that too)
        tk.quantize_rows_fp8(x, 16)
    for fast in (True, False):  # host microseconds per launch, one row (the GPU idles: this is launch cost)
        tk.Launcher.fast, saved = fast, tk.Launcher.fast
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(200):
            tk.quantize_rows_fp8(x, 16)
        results[f"act_quant_host_us_{'fast_launch' if fast else 'triton_run'}"] = (time.perf_counter() - start) / 200 * 1e6
        torch.cuda.synchronize()
        tk.Launcher.fast = saved
    w = torch.randn(384, 1024, device=device)
    c8, s8 = numerics.quantize_weight(w, 8)
    c4, s4 = numerics.quantize_weight(w, 4)
    p4 = numerics.pack_int4(c4)
    results["int4_to_fp8_equal"] = bool(torch.equal(tk.int4_to_fp8(p4, 384, 1024).float(), c4.float()))
    for label, (c, s, packed, int4) in {"int8": (c8, s8, c8, False), "int4": (c4, s4, p4, True)}.items():
        results[f"dequant_{label}_equal"] = bool(torch.equal(tk.dequantize(packed, s, 384, 1024, torch.bfloat16, int4),
                                                             numerics.dequantize_weight(c, s, torch.bfloat16)))
        for rows in (1, 16):
            xi = torch.randn(rows, 1024, device=device, dtype=torch.bfloat16)
            bias = torch.randn(384, device=device, dtype=torch.bfloat16)
            exact = xi.double() @ numerics.dequantize_weight(c, s, torch.float64).t() + bias.double()
            out = tk.weight_only_linear(xi, packed, s, bias, int4, 384)
            results[f"wo_{label}_rows{rows}_rel"] = float((out.double() - exact).norm() / exact.norm())
    results["int8_torch_mul_equal"] = bool(torch.equal(torch.mul(c8, s8.to(torch.bfloat16)),
                                                       numerics.dequantize_weight(c8, s8, torch.bfloat16)))
    for k in (3072, 15360):  # cuBLAS' fast FP8 accumulation: its error against exact products of the same codes
        x8, xs = tk.quantize_rows_fp8(torch.randn(4352, k, device=device, dtype=torch.bfloat16), 4352)
        wk = torch.randn(3072, k, device=device)
        ws = wk.abs().amax(dim=1, keepdim=True) / 448.0
        w8 = (wk / ws).to(torch.float8_e4m3fn)
        exact = (x8.double() @ w8.double().t()) * xs.double() * ws.double().t()
        for fast in (False, True):
            out = torch._scaled_mm(x8, w8.t(), scale_a=xs, scale_b=ws.reshape(1, -1), out_dtype=torch.bfloat16,
                                   use_fast_accum=fast)
            results[f"scaled_mm_k{k}_{'fast' if fast else 'exact'}_accum_rel"] = float((out.double() - exact).norm()
                                                                                       / exact.norm())
    results["fast_launch"] = tk.Launcher.fast
    log({"kernel_checks": results})


def main(argv=None):
    global COMPILED
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="flux,sdxl")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--compile", default="", help="models to also time compiled, e.g. 'flux'")
    parser.add_argument("--compile-configs", default="", help="configs to compile, for the default: "
                        + ", ".join(COMPILED))
    parser.add_argument("--full-flux", action="store_true", help=f"all 19 + 38 FLUX blocks, not {FLUX_BLOCKS}")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="tiny FLUX (CPU smoke test of this script, no numbers)")
    parser.add_argument("--kernels", action="store_true")
    parser.add_argument("--sampler", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--host-profile", action="store_true", help="host time per step and per layer call "
                        "beside GPU time (bench/host_profile.py)")
    parser.add_argument("--log", default="")
    parser.add_argument("--budget-s", type=float, default=1e9, help="no compile starts after this many seconds")
    parser.add_argument("--attention", choices=("sdpa", "int8"), default="sdpa",
                        help="int8: also bf16 and W8A8 auto with the 8-bit attention (eager and compiled)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help=f"also {', '.join(GRAPHED)} with the loaders' cuda_graphs: on (eager, replayed)")
    args = parser.parse_args(argv)
    if args.compile_configs:
        COMPILED = tuple(config.strip() for config in args.compile_configs.split(","))
    if args.cuda_graphs:
        args.configs += "," + ",".join(config + CUDA_GRAPHS for config in GRAPHED)
    if args.attention == "int8":
        extra = [config + INT8_ATTENTION for config in ("bf16", "W8A8 auto")]
        args.configs += "," + ",".join(extra)
        COMPILED = (*COMPILED, *extra)
    args.deadline = time.time() + args.budget_s
    if not torch.cuda.is_available() and not args.tiny:
        raise SystemExit("bench/peers.py times GPU kernels: run it on a machine with a CUDA GPU (or --tiny)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch._dynamo.config.cache_size_limit = 64

    def log(record):
        print(json.dumps(record), flush=True)
        bench.append_jsonl(args.log, record)

    log({"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
         "comfyui_int8": comfy_int8_available()})
    if args.kernels:
        try:
            kernel_table(device, log, None if args.full_flux else FLUX_BLOCKS)
        except Exception as error:
            traceback.print_exc()
            log({"kernels_error": f"{type(error).__name__}: {error}"[:300]})
    if args.host_profile and device.type == "cuda":
        from host_profile import pieces
        try:
            log({"host_pieces_us": pieces(device)})
        except Exception as error:
            traceback.print_exc()
            log({"host_pieces_error": f"{type(error).__name__}: {error}"[:300]})
    for name in args.models.split(","):
        bench_model(name, args, device, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
