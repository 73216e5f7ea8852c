"""Calibration against the full-precision model on the digits testbed (issue 16), through the pack's own code:
calibration.reference (the objective), calibration.search.run_search with its per-step refinement
(calibration.optimise, scipy Powell) and calibration.ptqd (the PTQD-style fit as an offset schedule).

Rows per step count and bit width (every quantized row on the same quantized model):
- naive; Q-Sched with JAQ by successive halving (the pack's old default) and by Algorithm 1's full grid;
- reference objective (match the FP model's samples from the same noise and class: pixel MSE, the testbed's
  latent) on the same linspace(start, 1) grid; the same grid winner plus one fitted scalar offset per step
  (issue 16's table); every step free (c_x, c_eps, offset) fitted by the refinement from the grid;
- JAQ with a reference penalty (JAQ - w * relative error), grid plus the same refinement;
- PTQD-style: the testbed's (gain, mean and the re-injected noise's variance) and the pack's schedule form of it
  (gain and mean only: what Q-Sched samplers in ComfyUI apply).
Calibration uses its own noise (seed 4242), PTQD seed 777; evaluation draws seeds 0, 1, 2: everything reported
is held out. FID on the classifier's features and on raw 8x8 pixels (pixel_fid.py).

`python -m qsched digits-reference [--steps 2,4,8 --bits W4A8,W4A4 --samples 700 --seeds 0,1,2 --weights DIR]`
writes a JSON after every cell and prints the tables (reference_report.py).
"""
import os
import time

import torch

from ...atomic_files import write_text_atomic
from ...calibration.optimise import DEFAULT_OFFSET_BOUND, REFINE_C_RANGE
from ...calibration.ptqd import ptqd_schedule
from ...calibration.reference import (DEFAULT_REFERENCE_WEIGHT as REFERENCE_WEIGHT, feature_distance, jaq_with_reference,
                                      latent_distance)
from ...calibration.search import run_search
from ...cli_args import Parser, integer, output_file
from ...samplers import QSchedSchedule
from .experiment import (CALIBRATION_SEED, Calibration, check_bits, evaluate_row, load_testbed, quantized_student,
                         search_schedule)
from .generate import check_steps, generate
from .pixel_fid import PixelFID
from .ptqd import calibrate_ptqd
from .scoring import FeatureFID

REFERENCE_PAIRS = 40          # class/noise pairs (classes 0-9 x 4 noises) the reference objectives calibrate on
REFINE_EVALUATIONS = 300      # candidates the per-step refinement may score (each on every pair)
GRID_POINTS = 9
C_RANGE = (0.8, 1.2)
HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE_ROW_OBJECTIVES = ("reference_latent", "reference_features")   # what --reference-objective may choose
TESTBED_OBJECTIVES = (*REFERENCE_ROW_OBJECTIVES, "jaq_reference")


class ReferenceCalibration(Calibration):
    """run_search's objective on the testbed, per pair: minus the pixel MSE to the FP model's sample from the same
    noise and class (`objective="reference_latent"`); minus the cosine distance of the two samples' classifier
    features (`"reference_features"`: the pack's reference_clip with the testbed's image model in CLIP's place);
    or JAQ minus `weight` times the relative error (`"jaq_reference"`). The FP samples are drawn once."""

    def __init__(self, fp, quantized, steps, scorer=None, objective="reference_latent", weight=REFERENCE_WEIGHT,
                 pairs=REFERENCE_PAIRS, seed=CALIBRATION_SEED):
        if objective not in TESTBED_OBJECTIVES:
            raise ValueError(f"unsupported testbed objective {objective!r}; supported: {', '.join(TESTBED_OBJECTIVES)}")
        if objective != "reference_latent" and scorer is None:
            raise ValueError(f"{objective} needs the testbed scorer")
        super().__init__(quantized, steps, scorer, pairs, seed)
        self.objective, self.weight, self.pairs = objective, weight, pairs
        self.reference = generate(fp, self.labels, steps, 0, noise=self.noise)
        if objective == "reference_features":
            self.reference_features = scorer.features(self.reference)

    def score(self, x, rows):
        if self.objective == "reference_latent":
            return -latent_distance(x, self.reference[rows])
        if self.objective == "reference_features":
            return -feature_distance(self.scorer.features(x), self.reference_features[rows])
        return jaq_with_reference(super().score(x, rows), x, self.reference[rows], self.weight)

    def search(self, refine=None, strategy="paper_grid", grid_points=GRID_POINTS, c_range=C_RANGE):
        return run_search(self, self.steps, self.pairs, strategy, c_range=c_range, sampler="lcm",
                          grid_points=grid_points, refine=refine)


def refine_options(evaluations=REFINE_EVALUATIONS, form="per_step_offset"):
    return {"form": form, "evaluations": evaluations, "channels": 1, "c_range": REFINE_C_RANGE,
            "offset_bound": DEFAULT_OFFSET_BOUND}


def warm_up_schedule(result):
    """The grid winner with fitted offsets only (the refinement's first warm-up): issue 16's '+ one scalar
    offset per step' row."""
    warm = result.refinement.get("warm_ups") or []
    return QSchedSchedule.from_dict(warm[0]["schedule"]) if warm else None


def _search_record(name, bits, steps, result, started):
    return {"method": name, "bits": bits, "steps": steps, "best": result.best.to_dict(),
            "best_score": result.best_score, "identity_score": result.identity_score,
            "images_generated": result.images_generated, "refinement": result.refinement,
            "seconds": round(time.time() - started, 1)}


def plan_rows(fp, quantized, bits, steps, scorer, searches, refine_evaluations, pairs=REFERENCE_PAIRS,
              only_reference=False, objective="reference_latent"):
    """(method, denoiser, schedule, noise_scale) for one bit width and step count; appends search records.
    `only_reference` keeps the naive row and the reference objective's three rows (a calibration-set-size run);
    `objective` is the reference objective those three rows calibrate with."""
    identity = QSchedSchedule.identity(steps)
    rows = [(f"{bits} naive", quantized, identity, None)]
    if only_reference:
        return rows + reference_rows(fp, quantized, bits, steps, scorer, searches, refine_evaluations, pairs, objective)
    started = time.time()
    result = search_schedule(quantized, steps, scorer, "successive_halving", grid_points=GRID_POINTS, c_range=C_RANGE)
    searches.append(_search_record("JAQ, successive halving", bits, steps, result, started))
    rows.append((f"{bits} + Q-Sched JAQ, successive halving", quantized, result.best, None))
    started = time.time()
    result = search_schedule(quantized, steps, scorer, "paper_grid", grid_points=GRID_POINTS, c_range=C_RANGE)
    searches.append(_search_record("JAQ, Algorithm 1 grid", bits, steps, result, started))
    rows.append((f"{bits} + Q-Sched JAQ, Algorithm 1 grid", quantized, result.best, None))

    rows += reference_rows(fp, quantized, bits, steps, scorer, searches, refine_evaluations, pairs, objective)

    combined = ReferenceCalibration(fp, quantized, steps, scorer, objective="jaq_reference", pairs=pairs)
    started = time.time()
    result = combined.search(refine=refine_options(refine_evaluations))
    searches.append(_search_record(f"JAQ - {REFERENCE_WEIGHT:g} x reference error, grid + refinement", bits, steps,
                                   result, started))
    rows.append((f"{bits} + JAQ with reference penalty, per step free + offset", quantized, result.best, None))

    corrected = calibrate_ptqd(fp, quantized, steps)
    rows.append((f"{bits} + PTQD-style (testbed: gain, mean, noise variance)", corrected, identity,
                 corrected.noise_scale))
    fits = [{"k": float(k), "mean": float(m)} for k, m in zip(corrected.gain, corrected.bias)]
    rows.append((f"{bits} + PTQD-style schedule (gain, mean: the ComfyUI option)", quantized,
                 ptqd_schedule(fits, sampler="lcm"), None))
    return rows


def reference_rows(fp, quantized, bits, steps, scorer, searches, refine_evaluations, pairs, objective):
    """The reference objective's rows: its grid winner, that winner plus one offset per step, every step free."""
    calibration = ReferenceCalibration(fp, quantized, steps, scorer, objective=objective, pairs=pairs)
    started = time.time()
    result = calibration.search(refine=refine_options(refine_evaluations))
    searches.append(_search_record("reference, grid + per-step refinement", bits, steps, result, started))
    grid_winner = QSchedSchedule.from_dict(result.refinement["start"])
    return [(f"{bits} + reference, Algorithm 1 grid", quantized, grid_winner, None),
            (f"{bits} + reference, grid + scalar offset per step", quantized, warm_up_schedule(result), None),
            (f"{bits} + reference, per step free + offset", quantized, result.best, None)]


def main(argv=None):
    parser = Parser(prog="python -m qsched digits-reference", description=(
        "Calibration against the full-precision model on the digits testbed: naive, Q-Sched, reference-objective, "
        "per-step refined and PTQD-style rows per step count and bit width, through the pack's own code."))
    parser.add_argument("--steps", default="2,4,8", help="comma-separated LCM step counts (default 2,4,8)")
    parser.add_argument("--bits", default="W4A8,W4A4", help="comma-separated bit widths (default W4A8,W4A4)")
    parser.add_argument("--samples", type=integer(10), default=700, help="samples per seed (classes balanced)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated evaluation noise seeds (default 0,1,2)")
    parser.add_argument("--refine-evaluations", type=integer(0), default=REFINE_EVALUATIONS,
                        help=f"candidates the per-step refinement may score (default {REFINE_EVALUATIONS})")
    parser.add_argument("--reference-pairs", type=integer(2), default=REFERENCE_PAIRS,
                        help="class/noise pairs the reference objectives calibrate on")
    parser.add_argument("--reference-objective", choices=REFERENCE_ROW_OBJECTIVES,
                        default="reference_latent", help="what the reference rows calibrate on: pixel MSE to the FP "
                        "samples, or the cosine distance of their classifier features (as the pack's reference_clip)")
    parser.add_argument("--only-reference", action="store_true",
                        help="only FP32, naive and the reference objective's rows (e.g. to vary --reference-pairs)")
    parser.add_argument("--threads", type=integer(1), default=1,
                        help="torch threads (1 avoids OpenMP stalls on a busy 2-core machine)")
    parser.add_argument("--weights", default=None, help="weights folder (default: the shipped weights)")
    parser.add_argument("--out", default=os.path.join(HERE, "results_reference.json"), type=output_file,
                        help="results JSON (default: testbed/digits/results_reference.json)")
    args = parser.parse_args(argv)
    if args.reference_pairs < 2:
        parser.error(f"--reference-pairs must be at least 2, got {args.reference_pairs}")
    torch.set_num_threads(args.threads)
    steps_list = [check_steps(int(s)) for s in args.steps.split(",")]
    bits_list = [check_bits(b) for b in args.bits.split(",") if b]
    seeds = [int(s) for s in args.seeds.split(",")]
    unet, scorer = load_testbed(args.weights)
    fids = {"fid": FeatureFID(scorer), "fid_pixels": PixelFID()}
    results = {"weights": args.weights or "shipped", "samples_per_seed": args.samples, "seeds": seeds,
               "reference_pairs": args.reference_pairs, "reference_objective": args.reference_objective,
               "refine_evaluations": args.refine_evaluations,
               "refine_c_range": REFINE_C_RANGE, "grid_points": GRID_POINTS, "c_range": C_RANGE,
               "reference_weight": REFERENCE_WEIGHT, "cells": [], "searches": []}
    fp = quantized_student(unet, "FP32")[0]
    models = {bits: quantized_student(unet, bits)[0] for bits in bits_list}
    for steps in steps_list:
        plan = [("FP32", fp, QSchedSchedule.identity(steps), None)]
        for bits in bits_list:
            plan += plan_rows(fp, models[bits], bits, steps, scorer, results["searches"], args.refine_evaluations,
                              args.reference_pairs, args.only_reference, args.reference_objective)
            write_text_atomic(args.out, _dumps(results))
        for method, denoiser, schedule, noise_scale in plan:
            cell = evaluate_row(method, denoiser, steps, schedule, noise_scale, scorer, fids, seeds, args.samples)
            results["cells"].append(cell)
            per_seed = cell["per_seed"]
            write_text_atomic(args.out, _dumps(results))
            mean = lambda key: sum(r[key] for r in per_seed) / len(per_seed)   # noqa: E731
            print(f"{steps} steps {method}: FID {mean('fid'):.3f}, pixel FID {mean('fid_pixels'):.3f}", flush=True)
    from .reference_report import tables
    print(tables(args.out))
    return 0


def _dumps(results):
    import json
    return json.dumps(results, indent=1)
