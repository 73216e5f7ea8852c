"""`python -m qsched digits-trust`: can the calibration's answer be trusted? Per setting (bit width x steps) on the
digits testbed, through the pack's own search and held-out check (the code the node runs):

- Algorithm 1 (the full paper grid) and every strategy on the same search pairs: each one's pick, images used, the
  pick's rank in the grid's ranking and whether it is within the calibration set's noise of the grid's winner
  (paired interval of grid winner - pick on all search pairs includes 0);
- the held-out verdict of each pick (calibration.heldout.check_winner: winner vs identity on the kept-out pairs)
  and the FP control (the same coefficients on the FP32 model, same pairs);
- with --truth-pairs: JAQ on many fresh pairs for the top grid candidates (rank correlation between calibration
  and fresh JAQ) and each pick's fresh gain; with --fid-samples: FID of each pick on the quantized and on the FP32
  model over the evaluation seeds;
- repeated over --calibration-seeds (other search/held-out noise): how stable the picks are.

Images are memoised per (schedule, pair): a strategy's "images used" counts what it asked for, as if it ran alone.
"""
import json
import math
import os
import time

import torch

from ...atomic_files import write_text_atomic
from ...calibration.heldout import HOLDOUT_FRACTION, check_winner, split_pairs
from ...calibration.paired import paired_difference
from ...calibration.runlog import schedule_key
from ...calibration.search import run_search
from ...cli_args import Parser, integer, number, output_file
from ...samplers import QSchedSchedule
from .experiment import CALIBRATION_SEED, Calibration, evaluate_cell, load_testbed, quantized_student
from .generate import check_steps
from .scoring import FeatureFID

HERE = os.path.dirname(os.path.abspath(__file__))
GRID = "paper_grid"
STRATEGY_ROWS = (
    ("Algorithm 1 (paper_grid)", GRID, {}),
    ("successive_halving (1-prompt first rung)", "successive_halving", {}),
    ("coarse_to_fine (2-prompt first rungs)", "coarse_to_fine", {}),
    ("racing", "racing", {}),
    ("halving_floor", "halving_floor", {}),
    ("coarse_to_fine_racing", "coarse_to_fine_racing", {}),
)
GRID_OPTIONS = {GRID, "successive_halving", "racing", "halving_floor"}   # strategies that take grid_points
TRUTH_SEED = 90210            # fresh pairs for the "truth" JAQ: disjoint from calibration and evaluation noise
TOP_CANDIDATES = 15           # grid candidates whose calibration vs fresh JAQ ranks are correlated


class MemoisedPairs:
    """Per-pair JAQ of one model on one pair set, each (schedule, pair) generated once."""

    def __init__(self, denoiser, steps, scorer, count, seed):
        self.calibration = Calibration(denoiser, steps, scorer, pairs=count, seed=seed)
        self.labels = self.calibration.labels.tolist()
        self.cache = {}

    def __call__(self, schedule, pairs):
        key = schedule_key(schedule.c_x, schedule.c_eps)
        missing = [p for p in pairs if (key, p) not in self.cache]
        for start in range(0, len(missing), 500):
            chunk = missing[start:start + 500]
            self.cache.update({(key, p): s for p, s in zip(chunk, self.calibration(schedule, chunk))})
        return [self.cache[(key, p)] for p in pairs]


def _start(schedule):
    return [round(schedule.c_x[0], 4), round(schedule.c_eps[0], 4)]


def _spearman(a, b):
    from scipy.stats import spearmanr
    return float(spearmanr(a, b).statistic) if len(a) > 2 else math.nan


def run_setting(unet, scorer, bits, steps, args, fid):
    """Everything for one (bits, steps): a dict of per-calibration-seed rows plus truth/FID for the first seed."""
    quantized, _ = quantized_student(unet, bits)
    fp, _ = quantized_student(unet, "FP32")
    setting = {"bits": bits, "steps": steps, "seeds": []}
    identity = QSchedSchedule.identity(steps)
    for seed_index in range(args.calibration_seeds):
        seed = CALIBRATION_SEED + 1000 * seed_index
        pairs = MemoisedPairs(quantized, steps, scorer, args.pairs, seed)
        fp_pairs = MemoisedPairs(fp, steps, scorer, args.pairs, seed)
        search, held_out = split_pairs(args.pairs, args.holdout, strata=pairs.labels)
        search_evaluate = lambda schedule, idx: pairs(schedule, [search[i] for i in idx])
        strata = [pairs.labels[i] for i in search]
        results = {}
        for label, name, options in STRATEGY_ROWS:
            extra = {"grid_points": args.grid_points} if name in GRID_OPTIONS else {}
            results[label] = run_search(search_evaluate, steps, len(search), name, c_range=args.c_range,
                                        sampler="lcm", strata=strata, **extra, **options)
        grid = results[STRATEGY_ROWS[0][0]]
        order = [schedule_key(s.c_x, s.c_eps) for _, s in grid.ranking]
        grid_scores = search_evaluate(grid.best, range(len(search)))
        rows = []
        for label, result in results.items():
            key = schedule_key(result.best.c_x, result.best.c_eps)
            gap = paired_difference(grid_scores, search_evaluate(result.best, range(len(search))))
            report = check_winner(pairs, result, held_out, evaluate_fp=fp_pairs, fraction=args.holdout)
            rows.append({"strategy": label, "pick": _start(result.best), "schedule": result.best.to_dict(),
                         "images": result.images_generated, "search_score": result.best_score,
                         "identity_score": result.identity_score,
                         "grid_rank": order.index(key) + 1 if key in order else None,
                         "gap_to_grid": gap.to_dict(), "within_noise": gap.low <= 0, **report.to_dict()})
        entry = {"calibration_seed": seed, "search_pairs": len(search), "heldout_pairs": len(held_out),
                 "grid_candidates": len(grid.ranking), "rows": rows}
        if seed_index == 0 and args.truth_pairs:
            entry["truth"] = truth(quantized, fp, scorer, steps, grid, results, identity, args)
        setting["seeds"].append(entry)
        print(f"{bits} {steps} steps, calibration seed {seed}: " + "; ".join(
            f"{r['strategy'].split(' ')[0]} {r['pick']} {r['images']} img {r['heldout']['verdict']}"
            for r in rows), flush=True)
    if args.fid_samples:
        setting["fid"] = fid_rows(quantized, fp, scorer, steps, setting["seeds"][0]["rows"], args, fid)
    return setting


def truth(quantized, fp, scorer, steps, grid, results, identity, args):
    """JAQ on many fresh pairs: the top grid candidates (rank correlation with calibration JAQ) and each pick's
    gain over identity, on the quantized and the FP32 model."""
    fresh = MemoisedPairs(quantized, steps, scorer, args.truth_pairs, TRUTH_SEED)
    fresh_fp = MemoisedPairs(fp, steps, scorer, args.truth_pairs, TRUTH_SEED)
    everything = list(range(args.truth_pairs))
    top = grid.ranking[:TOP_CANDIDATES]
    calibration = [score for score, _ in top]
    fresh_means = [sum(fresh(s, everything)) / len(everything) for _, s in top]
    base, base_fp = fresh(identity, everything), fresh_fp(identity, everything)
    picks = {}
    for label, result in results.items():
        gain = paired_difference(fresh(result.best, everything), base)
        fp_gain = paired_difference(fresh_fp(result.best, everything), base_fp)
        picks[label] = {"gain": gain.to_dict(), "fp_gain": fp_gain.to_dict()}
    return {"pairs": args.truth_pairs, "top": len(top), "spearman_top": _spearman(calibration, fresh_means),
            "calibration_top": calibration, "fresh_top": fresh_means, "picks": picks}


def fid_rows(quantized, fp, scorer, steps, rows, args, fid):
    """FID (classifier features) of identity and of every distinct pick, on the quantized and the FP32 model."""
    schedules = {"identity": QSchedSchedule.identity(steps)}
    for row in rows:
        schedule = QSchedSchedule.from_dict(row["schedule"])
        schedules.setdefault(json.dumps(row["pick"]), schedule)
    out = {}
    for name, schedule in schedules.items():
        cells = {model: [evaluate_cell(d, steps, schedule, scorer, {"fid": fid}, seed, args.fid_samples)["fid"]
                         for seed in args.eval_seeds] for model, d in (("quantized", quantized), ("fp32", fp))}
        out[name] = cells
    return out


def main(argv=None):
    parser = Parser(prog="python -m qsched digits-trust", description=(
        "Can the calibration's answer be trusted? Per bit width and step count on the digits testbed: every "
        "strategy's pick against the full grid, the held-out verdicts, the FP control and the picks' stability "
        "over calibration seeds."))
    parser.add_argument("--bits", default="W4A8,W4A8-paper,W4A4", help="comma-separated bit widths "
                        "(default W4A8,W4A8-paper,W4A4)")
    parser.add_argument("--steps", default="2,4,8", help="comma-separated LCM step counts (default 2,4,8)")
    parser.add_argument("--pairs", type=integer(2), default=40,
                        help="calibration pairs (classes balanced), search + held out")
    parser.add_argument("--holdout", type=number(0.01, 0.99), default=HOLDOUT_FRACTION,
                        help=f"fraction of the pairs held out of the search (default {HOLDOUT_FRACTION})")
    parser.add_argument("--grid-points", type=integer(2), default=9, help="grid points per coefficient (default 9)")
    parser.add_argument("--c-range", default="0.8,1.2", help="search range of the start coefficients, low,high")
    parser.add_argument("--calibration-seeds", type=integer(1), default=3,
                        help="repeats with other search/held-out noise (default 3)")
    parser.add_argument("--truth-pairs", type=integer(0), default=300, help="fresh pairs for the truth JAQ (0 = skip)")
    parser.add_argument("--fid-samples", type=integer(0), default=700, help="per evaluation seed (0 = skip FID)")
    parser.add_argument("--eval-seeds", default="0,1", help="comma-separated evaluation noise seeds (default 0,1)")
    parser.add_argument("--threads", type=integer(1), default=1, help="torch threads (default 1)")
    parser.add_argument("--weights", default=None, help="weights folder (default: the shipped weights)")
    parser.add_argument("--out", default=os.path.join(HERE, "results_trust.json"), type=output_file,
                        help="results JSON (default: testbed/digits/results_trust.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.c_range = tuple(float(c) for c in args.c_range.split(","))
    args.eval_seeds = [int(s) for s in args.eval_seeds.split(",")]
    unet, scorer = load_testbed(args.weights)
    fid = FeatureFID(scorer) if args.fid_samples else None
    results = {"pairs": args.pairs, "holdout": args.holdout, "grid_points": args.grid_points,
               "c_range": list(args.c_range), "truth_pairs": args.truth_pairs, "fid_samples": args.fid_samples,
               "eval_seeds": args.eval_seeds, "settings": []}
    for bits in [b for b in args.bits.split(",") if b]:
        for steps in [check_steps(int(s)) for s in args.steps.split(",")]:
            started = time.time()
            setting = run_setting(unet, scorer, bits, steps, args, fid)
            setting["seconds"] = round(time.time() - started, 1)
            results["settings"].append(setting)
            write_text_atomic(args.out, json.dumps(results, indent=1))
            print(f"{bits} {steps} steps done in {setting['seconds']:.0f} s", flush=True)
    from .trust_report import trust_tables
    print(trust_tables(results))
    return 0
