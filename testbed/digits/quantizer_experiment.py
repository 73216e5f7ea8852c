"""Issue 22 on the digits testbed: the quantizer (per channel, group-wise, wider codes, a 16-bit low-rank branch)
and the closed-form per-step correction (calibration/closed_form.py, fitted to the FP model), every row with its
stored bits per weight.

Rows per step count (every quantized row through the pack's quantizer, simulate backend; every correction through
the pack's closed-form fit on 40 class/noise pairs of its own noise, seed 4242; evaluation on seeds 0, 1, 2, so
held out): FP32; per-channel W4A8 naive, + closed-form bias per channel, + closed-form 8x8 bias map; W4A8 with
groups of 8 and 16 + map; W6A8 per channel + map; W4A4 naive and + map; W4A4 groups of 16 + map; W4A4 groups of 16
+ a rank-16 low-rank branch + map (when the quantizer has the branch). FID on the classifier's features and on raw
8x8 pixels, ratio to FP32 with the per-seed range.

`python -m qsched digits-quantizer [--steps 2,4 --weights DIR --rows ... --out FILE --markdown FILE]` writes the
JSON after every cell and prints the table (and writes it as Markdown).
"""
import argparse
import copy
import json
import math
import os
import time

import torch

from ...atomic_files import write_text_atomic
from ...calibration.closed_form import StepReached, fit_schedule, record_fits, step_recorder
from ...quant import QuantSpec, quantize_module, smoothing
from ...quant.gptq import InputMoments, enough_rows
from ...quant.layers import DIVISOR_BITS
from ...quant.policy import DEFAULT_POLICY
from ...samplers import SAMPLERS, QSchedSchedule
from ...samplers.model_sampling import EPSSampling
from .diffusion import LCMDenoiser, vp_sigmas
from .experiment import CALIBRATION_SEED, evaluate_row, load_testbed
from .generate import FixedNoise, check_steps, generate, sampling_sigmas
from .pixel_fid import PixelFID
from .scoring import FeatureFID

FIT_PAIRS = 40
GPTQ = "gptq"
GPTQ_ROW_RULE = "gptq, row rule"
GPTQ_SMOOTHED = "gptq, smoothed"
SMOOTH_ALPHA = smoothing.ALPHA
MAP_SIZE = 8
HERE = os.path.dirname(os.path.abspath(__file__))
# (row name, quantization spec or None for FP32, correction: None, "channel" or "map"[, rounding: "gptq"]); rows
# without a rounding round to nearest
ROWS = {
    "fp32": ("FP32", None, None),
    "w4a8": ("W4A8 per channel, none", "W4A8", None),
    "w4a8-channel": ("W4A8 per channel + closed-form bias per channel", "W4A8", "channel"),
    "w4a8-map": ("W4A8 per channel + closed-form bias map 8x8", "W4A8", "map"),
    "w4a8-g16-map": ("W4A8 g16 + bias map", "W4A8-g16", "map"),
    "w4a8-g8-map": ("W4A8 g8 + bias map", "W4A8-g8", "map"),
    "w6a8-map": ("W6A8 per channel + bias map", "W6A8", "map"),
    "w4a4": ("W4A4 per channel, none", "W4A4", None),
    "w4a4-map": ("W4A4 per channel + bias map", "W4A4", "map"),
    "w4a4-g16-map": ("W4A4 g16 + bias map", "W4A4-g16", "map"),
    "w4a4-g16-r16-map": ("W4A4 g16 + rank 16 + bias map", "W4A4-g16-r16", "map"),
    # for the wide variant (weights_wide), whose layers take groups of 64 at a few % of storage
    "w4a8-g64-map": ("W4A8 g64 + bias map", "W4A8-g64", "map"),
    "w4a4-g64-map": ("W4A4 g64 + bias map", "W4A4-g64", "map"),
    "w4a4-g64-r8-map": ("W4A4 g64 + rank 8 + bias map", "W4A4-g64-r8", "map"),
    "w4a4-g64-r16-map": ("W4A4 g64 + rank 16 + bias map", "W4A4-g64-r16", "map"),
    "w4a4-g64-r32-map": ("W4A4 g64 + rank 32 + bias map", "W4A4-g64-r32", "map"),
    # calibrated rounding (quant/gptq.py): GPTQ against each layer's input moments on the calibration pairs
    "w4a8-gptq-map": ("W4A8 per channel, GPTQ + bias map", "W4A8", "map", GPTQ),
    "w4a8-g16-gptq-map": ("W4A8 g16, GPTQ + bias map", "W4A8-g16", "map", GPTQ),
    "w4a8-g8-gptq-map": ("W4A8 g8, GPTQ + bias map", "W4A8-g8", "map", GPTQ),
    "w4a4-g16-r16-gptq-map": ("W4A4 g16 + rank 16, GPTQ + bias map", "W4A4-g16-r16", "map", GPTQ),
    "w4a8-g64-gptq-map": ("W4A8 g64, GPTQ + bias map", "W4A8-g64", "map", GPTQ),
    "w4a4-g64-r16-gptq-map": ("W4A4 g64 + rank 16, GPTQ + bias map", "W4A4-g64-r16", "map", GPTQ),
    "w4a4-g64-r8-gptq-map": ("W4A4 g64 + rank 8, GPTQ + bias map", "W4A4-g64-r8", "map", GPTQ),
    # as the calibrated loader rounds: layers under quant.gptq.MIN_ROWS_PER_COLUMN calibration rows to nearest
    "w4a8-g16-gptqrule-map": ("W4A8 g16, GPTQ (loader's row rule) + map", "W4A8-g16", "map", GPTQ_ROW_RULE),
    "w4a8-r4-gptq-map": ("W4A8 per channel + rank 4, GPTQ + bias map", "W4A8-r4", "map", GPTQ),
    "w4a4-g16-gptq-map": ("W4A4 g16, GPTQ + bias map", "W4A4-g16", "map", GPTQ),
    "w4a4-g16-r4-gptq-map": ("W4A4 g16 + rank 4, GPTQ + bias map", "W4A4-g16-r4", "map", GPTQ),
    # SmoothQuant's migration before the branch and GPTQ (smooth(), issue 22: "only if it measurably helps")
    "w4a4-g16-smooth-gptq-map": ("W4A4 g16, smoothed, GPTQ + bias map", "W4A4-g16", "map", GPTQ_SMOOTHED),
    "w4a4-g16-r4-smooth-gptq-map": ("W4A4 g16 + rank 4, smoothed, GPTQ + bias map", "W4A4-g16-r4", "map",
                                    GPTQ_SMOOTHED),
    "w4a4-g16-r8-gptq-map": ("W4A4 g16 + rank 8, GPTQ + bias map", "W4A4-g16-r8", "map", GPTQ),
    "w4a4-g16-r8-smooth-gptq-map": ("W4A4 g16 + rank 8, smoothed, GPTQ + bias map", "W4A4-g16-r8", "map",
                                    GPTQ_SMOOTHED),
    "w4a4-g16-r16-smooth-gptq-map": ("W4A4 g16 + rank 16, smoothed, GPTQ + bias map", "W4A4-g16-r16", "map",
                                     GPTQ_SMOOTHED),
    # the wide variant's W4A4 at <= 5.5 b/w (issue 22): smoothing with the ranks that fit
    "w4a4-g64-r8-smooth-gptq-map": ("W4A4 g64 + rank 8, smoothed, GPTQ + bias map", "W4A4-g64-r8", "map",
                                    GPTQ_SMOOTHED),
    "w4a4-g64-r12-smooth-gptq-map": ("W4A4 g64 + rank 12, smoothed, GPTQ + bias map", "W4A4-g64-r12", "map",
                                     GPTQ_SMOOTHED),
    "w4a4-g64-r16-smooth-gptq-map": ("W4A4 g64 + rank 16, smoothed, GPTQ + bias map", "W4A4-g64-r16", "map",
                                     GPTQ_SMOOTHED),
    # activations with one scale per group of 64 input channels of each token (spec -ag64; SVDQuant's W4A4 groups)
    "w4a4-g64-ag64-gptq-map": ("W4A4 g64, act. g64, GPTQ + bias map", "W4A4-g64-ag64", "map", GPTQ),
    "w4a4-g64-ag64-smooth-gptq-map": ("W4A4 g64, act. g64, smoothed, GPTQ + bias map", "W4A4-g64-ag64", "map",
                                      GPTQ_SMOOTHED),
    "w4a4-g64-ag64-r4-smooth-gptq-map": ("W4A4 g64, act. g64 + rank 4, smoothed, GPTQ + bias map",
                                         "W4A4-g64-ag64-r4", "map", GPTQ_SMOOTHED),
    "w4a4-g64-ag64-r8-smooth-gptq-map": ("W4A4 g64, act. g64 + rank 8, smoothed, GPTQ + bias map",
                                         "W4A4-g64-ag64-r8", "map", GPTQ_SMOOTHED),
    "w4a4-g64-ag64-r12-smooth-gptq-map": ("W4A4 g64, act. g64 + rank 12, smoothed, GPTQ + bias map",
                                          "W4A4-g64-ag64-r12", "map", GPTQ_SMOOTHED),
    "w4a4-g16-ag16-smooth-gptq-map": ("W4A4 g16, act. g16, smoothed, GPTQ + bias map", "W4A4-g16-ag16", "map",
                                      GPTQ_SMOOTHED),
    "w4a4-g16-ag16-r8-smooth-gptq-map": ("W4A4 g16, act. g16 + rank 8, smoothed, GPTQ + bias map",
                                         "W4A4-g16-ag16-r8", "map", GPTQ_SMOOTHED),
    # linear_ops.GROUP_GEMM "e4m3" (one cuBLAS FP8 GEMM for group-wise W4A8): the same codes, each weight rounded once
    # more to e4m3 relative to its row's largest group scale (on_e4m3_grid); activations as in the rows above
    "w4a8-g16-gptq-map-e4m3w": ("W4A8 g16, GPTQ + bias map, e4m3 form's weights", "W4A8-g16", "map", GPTQ),
    "w4a8-g64-gptq-map-e4m3w": ("W4A8 g64, GPTQ + bias map, e4m3 form's weights", "W4A8-g64", "map", GPTQ),
}
E4M3_GRID_ROWS = ("w4a8-g16-gptq-map-e4m3w", "w4a8-g64-gptq-map-e4m3w")
GPTQ_ROWS = "fp32,w4a8-gptq-map,w4a8-g16-gptq-map,w4a8-g8-gptq-map,w4a4-g16-r16-gptq-map"
DEFAULT_ROWS = ",".join(list(ROWS)[:11])
WIDE_ROWS = ("fp32,w4a8,w4a8-map,w4a8-g64-map,w4a8-g64-gptq-map,w4a8-g16-gptq-map,w4a4,w4a4-g64-map,w4a4-g64-r8-map,"
             "w4a4-g64-r16-map,w4a4-g64-r32-map,w4a4-g64-r8-gptq-map,w4a4-g64-r16-gptq-map")
# The smallest quantizer that met issue 22's targets in every measured cell, with GPTQ rounding (the demo's last row;
# results_quantizer_gptq.json)
BEST_QUANTIZER = {"W4A8": "W4A8-g16", "W4A4": "W4A4-g16-r16", "W4A6": "W4A6-g16-r16"}


def weight_shapes(module):
    """(rows, columns) of each quantizable layer's weight as the quantizer sees it ([out, in * kernel])."""
    return {name: (layer.weight.shape[0], layer.weight[0].numel()) for name, layer in module.named_modules()
            if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d))}


def stored_bits(spec, rows, columns):
    """Bits one quantized [rows, columns] weight stores: codes, one 16-bit scale per row (or per group), and 16-bit
    low-rank factors [rows, r] and [r, columns] when the spec has a branch."""
    groups = columns // spec.group_size if spec.group_size else 1
    rank = min(getattr(spec, "rank", None) or 0, rows, columns)
    return spec.w_bits * rows * columns + 16 * rows * groups + 16 * rank * (rows + columns)


def bits_per_weight(spec, shapes, quantized):
    """Stored bits per weight over the layers the quantizer changed (quant.spec.bits_per_weight when it exists)."""
    from ...quant import spec as spec_module
    exact = getattr(spec_module, "bits_per_weight", None)
    total_bits = total = 0
    for name in quantized:
        rows, columns = shapes[name]
        total_bits += exact(spec, rows, columns) * rows * columns if exact else stored_bits(spec, rows, columns)
        total += rows * columns
    return total_bits / total


def quantize(unet, spec_text, hessians=None, smoothed=False):
    """(LCMDenoiser over a quantized copy, bits per weight) with the pack's quantizer, simulate backend; with
    `hessians` (calibration_moments) the layers' codes are rounded by GPTQ, after smooth() when `smoothed`."""
    unet = copy.deepcopy(unet)
    if spec_text is None:
        return LCMDenoiser(unet).eval(), 32.0
    spec = QuantSpec.parse(spec_text)
    shapes = weight_shapes(unet)
    channels = {}  # input channels of the smoothed layers
    if smoothed:
        channels = {name: unet.get_submodule(name).weight.shape[1] for name in hessians}
        hessians = smooth(unet, hessians)
    report = quantize_module(unet, spec, backend="simulate", hessians=hessians)
    quantized = [layer.name for layer in report.layers if layer.spec is not None]
    bits = bits_per_weight(spec, shapes, quantized)
    # the smoothed layers' divisors, one per input channel, as quant.layers.bits_per_weight_of counts them
    bits += DIVISOR_BITS * sum(channels.get(name, 0) for name in quantized) / sum(
        shapes[name][0] * shapes[name][1] for name in quantized)
    return LCMDenoiser(unet).eval(), bits


def on_e4m3_grid(denoiser):
    """The denoiser with each group-wise 4-bit layer's weight as linear_ops.GROUP_GEMM "e4m3" computes it,
    s_c * e4m3(code * s_g / s_c) (linear_ops.group_e4m3_reference), in place; the activations stay as the simulate
    backend quantizes them, so the row differs from its plain twin by the weights' extra rounding only."""
    from ...quant.layers import PackedWeightMixin
    from ...quant.linear_ops import group_e4m3_reference
    for layer in denoiser.modules():
        if not isinstance(layer, PackedWeightMixin) or layer.quant_spec is None or not layer.quant_spec.group_size:
            continue

        def dequantize(packed=None, dtype=torch.float32, device=None, layer=layer):
            packed = layer.weight if packed is None else packed
            device = packed.device if device is None else device
            scale = layer.weight_scale.to(device)
            weight, channel = group_e4m3_reference(packed.to(device), scale, scale.shape[0], layer._matrix_columns())
            return (weight.float() * channel).to(dtype).reshape(layer.float_weight_shape())
        layer.dequantize = dequantize
    return denoiser


def smooth(unet, hessians, alpha=SMOOTH_ALPHA):
    """SmoothQuant's migration (quant/smoothing.py, the pack's one definition: s_j = rms_j^alpha / max|W_j|^(1 -
    alpha), rms from the moments' diagonal): each layer of `hessians` divides its input channel j by s_j at run time
    (a forward pre-hook) and its weight's column j is multiplied by s_j, so the float model is unchanged. Returns
    the moments of the smoothed inputs (D^-1 H D^-1, D the columns' factors) for GPTQ."""
    smoothed = {}
    for name, hessian in hessians.items():
        layer = unet.get_submodule(name)
        factors = smoothing.factors(layer.weight.data, hessian, alpha)
        layer.weight.data = smoothing.smoothed_weight(layer.weight.data, factors)
        def divide(module, inputs, channel_dim=smoothing.channel_dim(layer), factors=factors):
            return (smoothing.divide_input(inputs[0], factors, channel_dim),) + tuple(inputs[1:])
        layer.register_forward_pre_hook(divide)
        smoothed[name] = smoothing.smoothed_moments(hessian, factors)
    return smoothed


@torch.no_grad()
def calibration_moments(unet, spec_text, steps, pairs=FIT_PAIRS, seed=CALIBRATION_SEED, row_rule=False):
    """{layer: E[x xᵀ] of its input} for the layers `spec_text` quantizes, while the FP model samples the closed
    form's calibration class/noise pairs (its noise, never evaluated) with the LCM sampler at `steps`.
    row_rule: leave out the layers the calibrated loader rounds to nearest (quant.gptq.enough_rows)."""
    unet = copy.deepcopy(unet)
    planned = [d.name for d in DEFAULT_POLICY.plan(unet, QuantSpec.parse(spec_text)) if d.spec is not None]
    with InputMoments(unet, planned) as moments:
        generate(LCMDenoiser(unet).eval(), torch.arange(pairs) % 10, steps, seed)
    return {name: hessian for name, hessian in moments.hessians.items()
            if not row_rule or enough_rows(moments.counts[name], hessian.shape[0])}


class Trajectory:
    """fit_schedule's trajectory on the testbed: FIT_PAIRS class/noise pairs (calibration noise, never evaluated),
    the quantized model sampled with the LCM sampler up to step i, both models' predictions at the latent reached."""

    def __init__(self, fp, quantized, steps, pairs=FIT_PAIRS, seed=CALIBRATION_SEED):
        self.fp, self.quantized, self.steps = fp, quantized, steps
        self.labels = torch.arange(pairs) % 10
        self.noise = FixedNoise(pairs, steps, seed)
        self.sigmas = sampling_sigmas(steps)

    @torch.no_grad()
    def __call__(self, schedule, step):
        record = []
        rows = torch.arange(len(self.labels))
        x = self.noise.initial * (1 + self.sigmas[0] ** 2) ** 0.5
        try:
            SAMPLERS["lcm"].function(step_recorder(self.quantized, step, record), x, self.sigmas,
                                     extra_args={"labels": self.labels}, disable=True, schedule=schedule,
                                     noise_sampler=self.noise.sampler_for(rows), model_sampling=EPSSampling(vp_sigmas()))
        except StepReached:
            pass
        x, sigma, denoised_q = record[0]
        return x, sigma, denoised_q, self.fp(x, sigma, labels=self.labels)


def correction(fp, quantized, steps, form):
    """(schedule, fit record) of the closed-form correction, or the identity without one."""
    if form is None:
        return QSchedSchedule.identity(steps), None
    started = time.time()
    schedule, fits = fit_schedule(Trajectory(fp, quantized, steps), steps, "lcm", form=form, map_size=MAP_SIZE)
    return schedule, {"fits": record_fits(fits), "seconds": round(time.time() - started, 2)}


def ratio_summary(cell, fp_cell, key):
    """(mean ratio to FP32, min and max per-seed ratio) of a FID, seeds paired."""
    ratios = [a[key] / b[key] for a, b in zip(cell["per_seed"], fp_cell["per_seed"])]
    mean = sum(r[key] for r in cell["per_seed"]) / sum(r[key] for r in fp_cell["per_seed"])
    return mean, min(ratios), max(ratios)


def table(results):
    """Markdown: one row per (weights, steps, row): b/w, FID, ratio to FP32 [per-seed range], both feature sets."""
    lines = ["| weights | steps | quantizer + correction | b/w | FID (classifier) | ratio [seeds] | pixel FID | "
             "ratio [seeds] |", "|---|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        for steps in sorted({c["steps"] for c in run["cells"]}):
            cells = [c for c in run["cells"] if c["steps"] == steps]
            fp_cell = next((c for c in cells if c["row"] == "fp32"), None)
            for cell in cells:
                mean = {k: sum(r[k] for r in cell["per_seed"]) / len(cell["per_seed"]) for k in ("fid", "fid_pixels")}
                parts = []
                for key in ("fid", "fid_pixels"):
                    if fp_cell is None or any(math.isnan(r[key]) for r in cell["per_seed"]):
                        parts += [f"{mean[key]:.3f}", "-"]
                        continue
                    ratio, low, high = ratio_summary(cell, fp_cell, key)
                    parts += [f"{mean[key]:.3f}", f"{ratio:.2f} [{low:.2f}-{high:.2f}]"]
                bits = "32" if cell["bits_per_weight"] == 32 else f"{cell['bits_per_weight']:.2f}"
                lines.append(f"| {run['weights']} | {steps} | {cell['method']} | {bits} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def small_sample_floor(scorer, count=700, splits=20):
    """FID of real digits against real digits at the evaluation's sample size, both feature sets: two disjoint random
    samples of `count` ("disjoint"), one sample against all the other real digits ("vs_rest"), and one sample against
    the full real set the rows are scored against, which contains it ("vs_reference"); mean and standard deviation over `splits` seeded draws. No generated row can go below these."""
    from .data import load_digits_tensors
    from .pixel_fid import to_pixels
    from .scoring import frechet_distance, gaussian_stats
    real = load_digits_tensors()[0]
    features = {"fid": scorer.features(real), "fid_pixels": to_pixels(real)}
    values = {f"{key}_{kind}": [] for key in features for kind in ("disjoint", "vs_rest", "vs_reference")}
    for split in range(splits):
        order = torch.randperm(real.shape[0], generator=torch.Generator().manual_seed(split))
        first, second = order[:count], order[count:2 * count]
        for key, feats in features.items():
            values[f"{key}_disjoint"].append(frechet_distance(gaussian_stats(feats[first]), gaussian_stats(feats[second])))
            values[f"{key}_vs_rest"].append(frechet_distance(gaussian_stats(feats[first]),
                                                             gaussian_stats(feats[order[count:]])))
            values[f"{key}_vs_reference"].append(frechet_distance(gaussian_stats(feats[first]), gaussian_stats(feats)))
    summary = {}
    for name, found in values.items():
        t = torch.tensor(found, dtype=torch.float64)
        summary[name] = {"mean": t.mean().item(), "std": t.std().item()}
    return {"count": count, "splits": splits, "real_count": real.shape[0], **summary}


def merge(runs_files):
    """One results dict of several runs' JSONs (e.g. rows or step counts run as separate processes): cells of the
    same weights folder are pooled; a (steps, row) measured twice keeps the first."""
    merged, by_weights, seen = None, {}, set()
    for data in runs_files:
        merged = merged or {key: value for key, value in data.items() if key != "runs"}
        for run in data["runs"]:
            target = by_weights.setdefault(run["weights"], {**run, "cells": []})
            for cell in run["cells"]:
                key = (run["weights"], cell["steps"], cell["row"])
                if key not in seen:
                    seen.add(key)
                    target["cells"].append(cell)
    order = list(ROWS)
    for run in by_weights.values():
        run["cells"].sort(key=lambda cell: (cell["steps"], order.index(cell["row"])))
    return {**(merged or {}), "runs": list(by_weights.values())}


def run_weights(folder, label, row_keys, steps_list, seeds, samples, results, out):
    unet, scorer = load_testbed(folder)
    fids = {"fid": FeatureFID(scorer), "fid_pixels": PixelFID()}
    run = {"weights": label, "cells": [], "small_sample_floor": small_sample_floor(scorer, samples)}
    results["runs"].append(run)
    fp = quantize(unet, None)[0]
    models = {}
    for steps in steps_list:
        for key in row_keys:
            method, spec, form, *rounding = ROWS[key]
            model_key = (spec, steps, *rounding) if rounding else spec   # GPTQ's moments: the sampler at `steps`
            if model_key not in models:
                models[model_key] = quantize(unet, spec, calibration_moments(
                    unet, spec, steps, row_rule=rounding[0] == GPTQ_ROW_RULE) if rounding else None,
                    smoothed=bool(rounding) and rounding[0] == GPTQ_SMOOTHED)
            if key in E4M3_GRID_ROWS:  # the same codes as the plain twin, on the e4m3 form's grid
                grid_key = (model_key, "e4m3 grid")
                if grid_key not in models:
                    plain, bits = models[model_key]
                    models[grid_key] = (on_e4m3_grid(copy.deepcopy(plain)), bits)
                model_key = grid_key
            denoiser, bits = models[model_key]
            schedule, fit = correction(fp, denoiser, steps, form)
            cell = evaluate_row(method, denoiser, steps, schedule, None, scorer, fids, seeds, samples)
            cell.update({"row": key, "spec": spec, "correction": form, "rounding": rounding[0] if rounding else
                         "nearest", "bits_per_weight": bits, "fit": fit})
            run["cells"].append(cell)
            write_text_atomic(out, json.dumps(results, indent=1))
            mean = lambda name: sum(r[name] for r in cell["per_seed"]) / len(cell["per_seed"])   # noqa: E731
            print(f"{label} {steps} steps {method}: FID {mean('fid'):.3f}, pixel FID {mean('fid_pixels'):.3f} "
                  f"({cell['seconds']} s)", flush=True)


def available_rows(keys):
    """The requested rows whose spec this quantizer parses (the low-rank rows need the branch, spec -r<N>)."""
    usable = []
    for key in keys:
        spec = ROWS[key][1]
        try:
            if spec is not None:
                QuantSpec.parse(spec)
        except ValueError as error:
            print(f"skipping row {key!r}: {error}", flush=True)
            continue
        usable.append(key)
    return usable


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m qsched digits-quantizer", description=(
        "The digits testbed's quantizer table: per channel, group-wise, wider codes and a 16-bit low-rank branch, "
        "with the closed-form per-step correction fitted to the FP model; every row with its stored bits per weight."))
    parser.add_argument("--steps", default="2,4", help="comma-separated sampling step counts (default 2,4)")
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated rows of {', '.join(ROWS)} (default "
                        f"{DEFAULT_ROWS}; for the wide variant: {WIDE_ROWS})")
    parser.add_argument("--samples", type=int, default=700, help="samples per seed (classes balanced)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated held-out sampling seeds (default 0,1,2)")
    parser.add_argument("--weights", default="weights,weights_retrained",
                        help="comma-separated weight folders (relative to testbed/digits/ or absolute)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default=os.path.join(HERE, "results_quantizer.json"),
                        help="results JSON to write (default: testbed/digits/results_quantizer.json)")
    parser.add_argument("--markdown", default=None, help="also write the table here")
    parser.add_argument("--jobs", type=int, default=1, help="N > 1: run every (weights, steps, row) as its own "
                        "process (each with its FP32 row), N at a time, then merge them into --out")
    parser.add_argument("--jobs-dir", default=None, help="with --jobs: keep each process's JSON and log here "
                        "(default: a new temporary folder), so that a run cut short can still be merged")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="measure nothing: merge these results files into --out and print the table")
    args = parser.parse_args(argv)
    if args.merge:
        results = merge([json.loads(open(path).read()) for path in args.merge])
        write_text_atomic(args.out, json.dumps(results, indent=1))
        return _report(results, args.markdown)
    torch.set_num_threads(args.threads)
    steps_list = [check_steps(int(s)) for s in args.steps.split(",")]
    unknown = [k for k in args.rows.split(",") if k not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; known: {', '.join(ROWS)}")
    rows = available_rows(args.rows.split(","))
    if "fp32" not in rows:
        rows.insert(0, "fp32")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.jobs > 1:
        return _run_parallel(args, steps_list, rows)
    results = {"issue": 22, "samples_per_seed": args.samples, "seeds": seeds, "fit_pairs": FIT_PAIRS,
               "fit_seed": CALIBRATION_SEED, "map_size": MAP_SIZE, "sampler": "lcm", "runs": []}
    started = time.time()
    for folder in args.weights.split(","):
        path = folder if os.path.isabs(folder) else os.path.join(HERE, folder)
        run_weights(path, os.path.basename(folder.rstrip("/")), rows, steps_list, seeds, args.samples, results,
                    args.out)
    results["seconds"] = round(time.time() - started, 1)
    write_text_atomic(args.out, json.dumps(results, indent=1))
    return _report(results, args.markdown)


def _run_parallel(args, steps_list, rows):
    """Each (weights, steps, row) in a child process of this command (at most args.jobs at once), then --merge."""
    import subprocess
    import sys
    import tempfile
    root = os.path.dirname(os.path.dirname(HERE))
    folder = args.jobs_dir or tempfile.mkdtemp(prefix="digits-quantizer-")
    os.makedirs(folder, exist_ok=True)
    units = [(weights, steps, row) for weights in args.weights.split(",") for steps in steps_list
             for row in rows if row != "fp32"]
    outputs, running, failed = [], [], []
    for index, (weights, steps, row) in enumerate(units):
        out = os.path.join(folder, f"{index:03d}.json")
        command = [sys.executable, "-m", "qsched", "digits-quantizer", "--weights", weights, "--steps", str(steps),
                   "--rows", f"fp32,{row}", "--samples", str(args.samples), "--seeds", args.seeds, "--threads",
                   str(args.threads), "--out", out]
        log = open(out[:-5] + ".log", "w")
        running.append((subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT), out, log, command))
        while len(running) >= args.jobs or (index == len(units) - 1 and running):
            process, done_out, done_log, done_command = running.pop(0)
            if process.wait() != 0:
                failed.append(" ".join(done_command))
            else:
                outputs.append(done_out)
                print(f"done: {os.path.basename(done_out)} ({len(outputs)} of {len(units)})", flush=True)
            done_log.close()
    if failed:
        print(f"{len(failed)} run(s) failed (logs in {folder}): " + "; ".join(failed), file=sys.stderr)
    results = merge([json.loads(open(path).read()) for path in outputs])
    write_text_atomic(args.out, json.dumps(results, indent=1))
    _report(results, args.markdown)
    return 1 if failed else 0


def _report(results, markdown=None):
    text = table(results) + "\n\n" + floor_text(results)
    if markdown:
        write_text_atomic(markdown, text + "\n")
    print(text)
    return 0


def floor_text(results):
    """The small-sample floor line of the first run that measured it."""
    floor = next((run["small_sample_floor"] for run in results["runs"] if run.get("small_sample_floor")), None)
    if floor is None:
        return ""
    value = lambda key: f"{floor[key]['mean']:.3f} ± {floor[key]['std']:.3f}"   # noqa: E731
    return (f"Small-sample floor ({floor['count']} real digits, {floor['splits']} draws; classifier / pixels): two "
            f"disjoint samples {value('fid_disjoint')} / {value('fid_pixels_disjoint')}; against the other "
            f"{floor['real_count'] - floor['count']} {value('fid_vs_rest')} / {value('fid_pixels_vs_rest')}; against "
            f"the full reference that contains it {value('fid_vs_reference')} / {value('fid_pixels_vs_reference')}.")
