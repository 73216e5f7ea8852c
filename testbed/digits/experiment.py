"""The digits experiment: the distilled few-step model in FP32 vs naive W8A8 / W4A8 / W4A4 vs W4A8 and W4A4 with
Q-Sched coefficients, at 2, 4 and 8 LCM steps, through the pack's own code paths: samplers.SAMPLERS['lcm'],
quant.quantize_module (simulate backend) and calibration.search.run_search with the testbed's JAQ as objective.

`python -m qsched digits-experiment [--samples 700 --seeds 0,1,2 --steps 2,4,8 ...]` writes a JSON of every cell
(written after each one, so a long run can be read while it goes), then prints report.tables of it.
"""
import copy
import json
import math
import os
import time

import torch

from ...atomic_files import write_text_atomic
from ...calibration.search import DEFAULT_STRATEGY, STRATEGIES, run_search
from ...cli_args import Parser, integer, output_file
from ...quant import QuantSpec, quantize_module
from ...quant.policy import KEEP, LayerPolicy
from ...samplers import NonFiniteLatentError, QSchedSchedule
from .diffusion import LCMDenoiser
from .generate import FixedNoise, check_steps, generate
from .networks import DigitsUNet
from .ptqd import calibrate_ptqd
from .report import mean_std, tables
from .scoring import DigitsScorer, FeatureFID
from .weights import load_weights

SUPPORTED_BITS = ("FP32", "W8A8", "W6A8", "W4A8", "W4A6", "W4A4", "W4A8-paper")
# The official Q-Sched W4A8 (torchao int8-dynamic-activation int4-weight): int4 weights in groups of 32 on every
# linear layer, int8 per-token activations, convolutions left at full precision. Plain W4A8 here quantizes every
# conv too (per channel), a much harsher setting.
PAPER_LIKE = {"W4A8-paper": "W4A8-g32"}
CALIBRATION_PAIRS = 20       # class/noise pairs: classes 0-9 x 2 noises, as the paper's 20 prompts
CALIBRATION_SEED = 4242      # never used for evaluation (eval seeds draw whole batches from 0, 1, 2)
HERE = os.path.dirname(os.path.abspath(__file__))


def check_bits(bits):
    name = {b.upper(): b for b in SUPPORTED_BITS}.get(str(bits).upper())
    if name is None:
        raise ValueError(f"unsupported bit width {bits!r} for the digits testbed; supported: {', '.join(SUPPORTED_BITS)}")
    return name


def load_testbed(folder=None):
    """(student UNet, DigitsScorer) from the shipped weights; WeightsError naming --retrain if unusable."""
    kwargs = {} if folder is None else {"folder": folder}
    unet, _ = load_weights(DigitsUNet, "student_lcm", **kwargs)
    return unet, DigitsScorer.load(folder)


def quantized_student(unet, bits):
    """An LCMDenoiser over a copy of `unet`, quantized with the pack's quantizer (simulate backend) unless FP32."""
    unet = copy.deepcopy(unet)
    report, bits = None, check_bits(bits)
    if bits in PAPER_LIKE:
        convs = tuple((name, KEEP) for name, layer in unet.named_modules() if isinstance(layer, torch.nn.Conv2d))
        policy = LayerPolicy(keep=(), weight_only=(), overrides=convs, keep_first_last=False)
        report = quantize_module(unet, QuantSpec.parse(PAPER_LIKE[bits]), policy=policy, backend="simulate")
    elif bits != "FP32":
        report = quantize_module(unet, QuantSpec.parse(bits), backend="simulate")
    return LCMDenoiser(unet).eval(), report


class Calibration:
    """The search's objective: mean JAQ per class/noise pair of the quantized model under a schedule."""

    def __init__(self, denoiser, steps, scorer, pairs=CALIBRATION_PAIRS, seed=CALIBRATION_SEED):
        self.denoiser, self.steps, self.scorer = denoiser, check_steps(steps), scorer
        self.labels = torch.arange(pairs) % 10
        self.noise = FixedNoise(pairs, steps, seed)

    def __call__(self, schedule, prompt_indices):
        rows = torch.tensor(prompt_indices)
        try:
            x = generate(self.denoiser, self.labels[rows], self.steps, 0, schedule=schedule,
                         noise=self.noise.subset(rows))
        except NonFiniteLatentError:
            return [math.nan] * len(prompt_indices)
        return self.score(x, rows).tolist()

    def score(self, x, rows):
        """Per-pair score of samples `x` drawn for calibration pairs `rows` (a subclass changes the objective)."""
        return self.scorer.score_tensors(x, self.labels[rows]).jaq


def search_schedule(denoiser, steps, scorer, strategy=DEFAULT_STRATEGY, budget_images=None, **options):
    calibration = Calibration(denoiser, steps, scorer)
    return run_search(calibration, steps, CALIBRATION_PAIRS, strategy, budget_images=budget_images,
                      sampler="lcm", **options)


def evaluate_cell(denoiser, steps, schedule, scorer, fids, seed, count, noise_scale=None):
    """Each Fréchet distance of `fids` (name -> FID callable), TC / IQ / JAQ and the mean pixel of `count` samples
    (classes balanced) at one noise seed; NaN for all of them when the sampler diverges."""
    labels = torch.arange(count) % 10
    try:
        x = generate(denoiser, labels, steps, seed, schedule=schedule, noise_scale=noise_scale)
    except NonFiniteLatentError as error:
        return {name: math.nan for name in (*fids, "tc", "iq", "jaq", "mean_pixel")} | {"error": str(error)}
    s = scorer.score_tensors(x, labels)
    return {**{name: fid(x) for name, fid in fids.items()}, "tc": s.tc.mean().item(), "iq": s.iq.mean().item(),
            "jaq": s.jaq.mean().item(), "mean_pixel": x.mean().item()}


def evaluate_row(method, denoiser, steps, schedule, noise_scale, scorer, fids, seeds, count):
    """One results cell: `evaluate_cell` at every seed, with the schedule and the time taken."""
    started = time.time()
    per_seed = [evaluate_cell(denoiser, steps, schedule, scorer, fids, seed, count, noise_scale) for seed in seeds]
    return {"method": method, "steps": steps, "schedule": schedule.to_dict(), "per_seed": per_seed,
            "seconds": round(time.time() - started, 1)}


def _write_json(path, results):
    write_text_atomic(path, json.dumps(results, indent=1))


def main(argv=None):
    parser = Parser(prog="python -m qsched digits-experiment", description=(
        "The digits testbed's quality table: FP32 vs naive W8A8 / W4A8 / W4A4 vs quantized with Q-Sched "
        "coefficients, through the pack's own code; writes a JSON of every cell and prints the tables."))
    parser.add_argument("--steps", default="4,2,8", help="comma-separated LCM step counts (default 4,2,8)")
    parser.add_argument("--bits", default="W8A8,W4A8,W4A4", help="naive quantized rows")
    parser.add_argument("--qsched-bits", default="W4A8,W4A4", help="rows with searched Q-Sched coefficients")
    parser.add_argument("--ptqd-bits", default="W4A8,W4A4", help="rows with the PTQD-style correction (FP calibration)")
    parser.add_argument("--no-fp", action="store_true", help="leave out the FP32 row (e.g. a PTQD-only run)")
    parser.add_argument("--samples", type=integer(10), default=700, help="samples per seed (classes balanced)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated evaluation noise seeds (default 0,1,2)")
    parser.add_argument("--strategy", default=DEFAULT_STRATEGY, choices=list(STRATEGIES),
                        help=f"search strategy of the Q-Sched rows (default {DEFAULT_STRATEGY})")
    parser.add_argument("--grid-points", type=integer(2), default=9, help="grid points per coefficient (default 9)")
    parser.add_argument("--c-range", default="0.8,1.2", help="search range of the start coefficients")
    parser.add_argument("--threads", type=integer(1), default=1,
                        help="torch threads (1 avoids OpenMP stalls on a busy 2-core machine)")
    parser.add_argument("--out", default=os.path.join(HERE, "results.json"), type=output_file,
                        help="results JSON, rewritten after each cell (default: testbed/digits/results.json)")
    parser.add_argument("--weights", default=None, help="weights folder (default: the shipped weights), e.g. a "
                        "retrain's --out, to check that the conclusions hold on it")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps_list = [check_steps(int(s)) for s in args.steps.split(",")]
    naive_bits = [check_bits(b) for b in args.bits.split(",") if b]
    qsched_bits = [check_bits(b) for b in args.qsched_bits.split(",") if b]
    ptqd_bits = [check_bits(b) for b in args.ptqd_bits.split(",") if b]
    seeds = [int(s) for s in args.seeds.split(",")]
    c_range = tuple(float(c) for c in args.c_range.split(","))
    unet, scorer = load_testbed(args.weights)
    fid = FeatureFID(scorer)
    results = {"samples_per_seed": args.samples, "seeds": seeds, "real_count": fid.real_count,
               "strategy": args.strategy, "grid_points": args.grid_points, "c_range": c_range,
               "calibration_pairs": CALIBRATION_PAIRS,
               "cells": [], "searches": []}
    models = {bits: quantized_student(unet, bits) for bits in ["FP32"] + naive_bits + qsched_bits + ptqd_bits}
    for bits, (_, report) in models.items():
        if report is not None:
            results.setdefault("quant", {})[bits] = {"bytes_before": report.bytes_before,
                                                     "bytes_after": report.bytes_after}
    for steps in steps_list:
        identity = QSchedSchedule.identity(steps)
        plan = [] if args.no_fp else [("FP32", models["FP32"][0], identity, None)]
        plan += [(f"{b} naive", models[b][0], identity, None) for b in naive_bits]
        for bits in qsched_bits:
            start = time.time()
            result = search_schedule(models[bits][0], steps, scorer, args.strategy, grid_points=args.grid_points,
                                     c_range=c_range)
            results["searches"].append({"bits": bits, "steps": steps, "best": result.best.to_dict(),
                                        "best_score": result.best_score, "identity_score": result.identity_score,
                                        "images_generated": result.images_generated,
                                        "seconds": round(time.time() - start, 1)})
            print(f"search {bits} {steps} steps: {result.best.label} JAQ {result.best_score:.4f} "
                  f"(identity {result.identity_score:.4f}, {result.images_generated} images)", flush=True)
            label = "" if c_range == (0.8, 1.2) else f" [{c_range[0]:g}, {c_range[1]:g}]"
            plan.append((f"{bits} + Q-Sched{label}", models[bits][0], result.best, None))
        for bits in ptqd_bits:
            corrected = calibrate_ptqd(models["FP32"][0], models[bits][0], steps)
            plan.append((f"{bits} + PTQD", corrected, identity, corrected.noise_scale))
        for method, denoiser, schedule, noise_scale in plan:
            cell = evaluate_row(method, denoiser, steps, schedule, noise_scale, scorer, {"fid": fid}, seeds,
                                args.samples)
            results["cells"].append(cell)
            per_seed = cell["per_seed"]
            _write_json(args.out, results)
            print(f"{steps} steps {method}: " + ", ".join(
                f"{k} {mean_std([r[k] for r in per_seed])[0]:.4f}" for k in ("fid", "tc", "iq", "jaq")), flush=True)
    print(tables([args.out]))
    return 0
