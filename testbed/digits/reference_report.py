"""Markdown tables of digits-reference JSONs (reference_experiment.py): per step count, every row's FID on the
classifier's features and on raw 8x8 pixels (mean ± std over seeds, and the ratio to FP32 with its per-seed
range, seeds paired), TC, IQ and the mean pixel; then issue 16's targets, met or missed.

`python -m qsched digits-reference-report FILE... [--merge OUT]`: runs split by step count or bit width (one
process each) are merged into one report, and with --merge into one JSON; they must share weights and settings.
"""
import json

from ...atomic_files import write_text_atomic
from ...cli_args import Parser, existing_file, output_file

TARGET_ROW = "reference, per step free + offset"
TARGETS = {"W4A8": 1.35, "W4A4": 2.0}     # FID at most this multiple of FP32's, at 2 and 4 steps
TARGET_STEPS = (2, 4)
FIDS = (("fid", "FID (classifier features)"), ("fid_pixels", "FID (raw 8x8 pixels)"))
# Settings every merged run must share: a row's numbers mean something else when one of these differs.
SHARED_SETTINGS = ("weights", "samples_per_seed", "seeds", "reference_pairs", "reference_objective",
                   "refine_evaluations", "grid_points", "c_range", "refine_c_range", "reference_weight")
SETTING_DEFAULTS = {"reference_objective": "reference_latent"}   # runs from before the setting existed


class MergeError(ValueError):
    """digits-reference runs that cannot be reported together."""


def merge_runs(runs, names=None):
    """One results dict from several runs: searches concatenated, cells in order with each (steps, method) once.
    A row two runs share (FP32, which every run draws) must have the same numbers in both."""
    names = names or [f"run {index + 1}" for index in range(len(runs))]
    merged = {key: value for key, value in runs[0].items() if key not in ("cells", "searches")}
    merged["cells"], merged["searches"] = [], []
    seen = {}
    for key, value in SETTING_DEFAULTS.items():
        merged.setdefault(key, value)
    for name, run in zip(names, runs):
        for key in SHARED_SETTINGS:
            value = run.get(key, SETTING_DEFAULTS.get(key))
            if value != merged.get(key):
                raise MergeError(f"{name} has {key} = {value!r} but {names[0]} has {merged.get(key)!r}; "
                                 "merge only runs of the same weights and settings")
        merged["searches"] += run.get("searches", [])
        for cell in run["cells"]:
            key = (cell["steps"], cell["method"])
            if key not in seen:
                seen[key] = (name, cell)
                merged["cells"].append(cell)
            elif seen[key][1]["per_seed"] != cell["per_seed"]:
                raise MergeError(f"'{cell['method']}' at {cell['steps']} steps differs between {seen[key][0]} and "
                                 f"{name}; merge only runs of the same weights and settings")
    return merged


def load_runs(paths):
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    return merge_runs(runs, list(paths))


def _mean_std(values):
    n = len(values)
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return mean, std


def _ratios(cell, fp, key):
    """Mean ratio to FP32 and the range of the per-seed ratios (same seed = same noise in both rows)."""
    per_seed = [c[key] / f[key] for c, f in zip(cell["per_seed"], fp["per_seed"])]
    mean = _mean_std([c[key] for c in cell["per_seed"]])[0] / _mean_std([f[key] for f in fp["per_seed"]])[0]
    return mean, min(per_seed), max(per_seed)


def tables(*paths):
    """One report of the cells and searches of every JSON given (e.g. a 2/4-step run and an 8-step run)."""
    return format_tables(load_runs(paths))


def format_tables(results):
    cells = results["cells"]
    lines = [f"Weights: {results['weights']}; {results['reference_pairs']} reference pairs; reference objective "
             f"{results['reference_objective']}; "
             f"{results['samples_per_seed']} samples x {len(results['seeds'])} seeds "
             f"({', '.join(map(str, results['seeds']))}) per row; mean ± std over seeds; ratio = row / FP32 "
             "(per-seed range in brackets)."]
    for steps in sorted({c["steps"] for c in cells}):
        rows = [c for c in cells if c["steps"] == steps]
        fp = next((c for c in rows if c["method"] == "FP32"), None)
        lines += [f"\n**{steps} steps**\n",
                  "| method | FID ↓ | ratio | pixel FID ↓ | ratio | TC ↑ | IQ ↑ | mean pixel |",
                  "|---|---|---|---|---|---|---|---|"]
        for cell in rows:
            parts = [cell["method"]]
            for key, _ in FIDS:
                mean, std = _mean_std([r[key] for r in cell["per_seed"]])
                parts.append(f"{mean:.3f} ± {std:.3f}")
                if fp is None or cell is fp:
                    parts.append("1" if cell is fp else "-")
                else:
                    ratio, low, high = _ratios(cell, fp, key)
                    parts.append(f"{ratio:.2f} [{low:.2f}-{high:.2f}]")
            for key in ("tc", "iq", "mean_pixel"):
                parts.append(f"{_mean_std([r[key] for r in cell['per_seed']])[0]:.3f}")
            lines.append("| " + " | ".join(parts) + " |")
    lines += ["\n**Targets** (issue 16: " + TARGET_ROW + " within "
              + ", ".join(f"{b} {t:.2f}x" for b, t in TARGETS.items()) + " of FP32's FID at 2 and 4 steps)\n",
              "| bits | steps | feature set | ratio (per-seed range) | target | met |", "|---|---|---|---|---|---|"]
    for bits, limit in TARGETS.items():
        for steps in TARGET_STEPS:
            fp = next((c for c in cells if c["steps"] == steps and c["method"] == "FP32"), None)
            row = next((c for c in cells if c["steps"] == steps and c["method"] == f"{bits} + {TARGET_ROW}"), None)
            if fp is None or row is None:
                continue
            for key, name in FIDS:
                ratio, low, high = _ratios(row, fp, key)
                verdict = "yes" if ratio <= limit else f"**no** (by {100 * (ratio / limit - 1):.0f}%)"
                lines.append(f"| {bits} | {steps} | {name} | {ratio:.2f} ({low:.2f}-{high:.2f}) | {limit:.2f} | "
                             f"{verdict} |")
    searches = results["searches"]
    if searches:
        lines += ["\n**Calibrations** (scores on the calibration pairs; images generated)\n",
                  "| bits | steps | search | best | identity | images | result |", "|---|---|---|---|---|---|---|"]
        for s in searches:
            lines.append(f"| {s['bits']} | {s['steps']} | {s['method']} | {s['best_score']:.5g} | "
                         f"{s['identity_score']:.5g} | {s['images_generated']} | {_describe(s['best'])} |")
    return "\n".join(lines)


def _describe(schedule):
    text = "c_x " + ", ".join(f"{v:.3f}" for v in schedule["c_x"]) + "; c_eps " + ", ".join(
        f"{v:.3f}" for v in schedule["c_eps"])
    if schedule.get("offset"):
        text += "; b " + ", ".join(f"{row[0]:.4f}" for row in schedule["offset"])
    return text


def main(argv=None):
    parser = Parser(prog="python -m qsched digits-reference-report", description=(
        "Markdown tables of digits-reference JSON files: FID on classifier features and raw pixels, TC, IQ and "
        "the ratios to FP32 per step count; runs split by step count or bit width are merged."))
    parser.add_argument("files", nargs="+", type=existing_file, help="digits-reference JSON files")
    parser.add_argument("--merge", metavar="OUT", type=output_file, help="also write the merged runs to this JSON file")
    args = parser.parse_args(argv)
    try:
        merged = load_runs(args.files)
    except (OSError, json.JSONDecodeError, KeyError, MergeError) as error:
        parser.error(str(error) if isinstance(error, MergeError) else f"cannot read the runs: {error!r}")
    if args.merge:
        write_text_atomic(args.merge, json.dumps(merged, indent=1))
    print(format_tables(merged))
    return 0
