"""Markdown tables of a `digits-trust` JSON (testbed/digits/trust.py): picks and images per strategy, held-out
verdicts with the FP control, rank correlation and calibration-seed stability.
`python -m comfyui_qsched.testbed.digits.trust_report results_trust*.json` (after `import qsched`; several files
of one configuration are merged)."""
import json
import math
import sys


def _pick(pick):
    return f"({pick[0]:.2f}, {pick[1]:.2f})"


def _ci(difference, digits=3):
    low, high = difference["ci"]
    mean = difference["mean"]
    if mean is None:
        return "n/a"
    bounds = "" if low is None or high is None else f" [{low:+.{digits}f}, {high:+.{digits}f}]"
    return f"{mean:+.{digits}f}{bounds}"


def _mean(values):
    return sum(values) / len(values) if values else math.nan


def _setting(s):
    return f"{s['bits']}, {s['steps']} steps"


def picks_table(results):
    rows = results["settings"][0]["seeds"][0]["rows"]
    names = [r["strategy"] for r in rows[1:]]
    lines = ["| setting | Algorithm 1 pick, images | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]
    for s in results["settings"]:
        first = s["seeds"][0]
        grid, others = first["rows"][0], first["rows"][1:]
        cells = []
        for r in others:
            rank = f"rank {r['grid_rank']}" if r["grid_rank"] else "off grid"
            noise = "within noise" if r["within_noise"] else f"**worse** ({_ci(r['gap_to_grid'])})"
            cells.append(f"{_pick(r['pick'])}, {r['images']}, {rank}, {noise}")
        lines.append(f"| {_setting(s)} | {_pick(grid['pick'])}, {grid['images']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict_table(results):
    has_truth = any("truth" in s["seeds"][0] for s in results["settings"])
    has_fid = any("fid" in s for s in results["settings"])
    header = ["setting", "pick (strategies)", "held-out winner - identity [95% CI]", "better than identity",
              "FP gain [95% CI]", "specific to quantized"]
    if has_truth:
        header += [f"fresh gain ({results['truth_pairs']} pairs)", "fresh FP gain"]
    if has_fid:
        header += ["FID quantized: identity -> pick", "FID FP32: identity -> pick"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in results["settings"]:
        first = s["seeds"][0]
        by_pick = {}
        for r in first["rows"]:
            by_pick.setdefault(json.dumps(r["pick"]), []).append(r)
        for key, rows in by_pick.items():
            r = rows[0]
            names = ", ".join(x["strategy"].split(" ")[0] for x in rows)
            fp = r.get("fp_control")
            cells = [_setting(s), f"{_pick(r['pick'])} ({names})",
                     f"{_ci(r['heldout']['difference'])} (n={r['heldout']['difference']['n']})",
                     r["heldout"]["verdict"], _ci(fp["fp_gain"]) if fp else "-", fp["verdict"] if fp else "-"]
            if has_truth:
                picked = first.get("truth", {}).get("picks", {}).get(r["strategy"])
                cells += [_ci(picked["gain"], 4), _ci(picked["fp_gain"], 4)] if picked else ["-", "-"]
            if has_fid:
                fid = s.get("fid", {})
                base, mine = fid.get("identity"), fid.get(key)
                for model in ("quantized", "fp32"):
                    cells.append(f"{_mean(base[model]):.3f} -> {_mean(mine[model]):.3f}" if base and mine else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stability_table(results):
    lines = ["| setting | Spearman, calibration vs fresh JAQ (top grid candidates) | Algorithm 1 pick per calibration "
             "seed (held-out verdict) | racing pick per seed (verdict) | picks not within noise of Algorithm 1's "
             f"(strategy: seeds of {len(results['settings'][0]['seeds'])}) |", "|---|---|---|---|---|"]
    for s in results["settings"]:
        truth = s["seeds"][0].get("truth")
        rho = f"{truth['spearman_top']:+.2f} (top {truth['top']})" if truth else "-"
        per_seed = {name: [] for name in ("Algorithm 1 (paper_grid)", "racing")}
        agree = {}
        for entry in s["seeds"]:
            for r in entry["rows"][1:]:
                if r["strategy"] in per_seed:
                    per_seed[r["strategy"]].append(f"{_pick(r['pick'])} {r['heldout']['verdict']}")
                agree.setdefault(r["strategy"].split(" ")[0], []).append(r["within_noise"])
            per_seed["Algorithm 1 (paper_grid)"].append(
                f"{_pick(entry['rows'][0]['pick'])} {entry['rows'][0]['heldout']['verdict']}")
        seeds = len(s["seeds"])
        misses = ", ".join(f"{name} {seeds - sum(ok)}" for name, ok in agree.items() if not all(ok)) or "none"
        lines.append(f"| {_setting(s)} | {rho} | " + "; ".join(per_seed["Algorithm 1 (paper_grid)"]) + " | "
                     + "; ".join(per_seed["racing"]) + f" | {misses} |")
    return "\n".join(lines)


def trust_tables(results):
    first = results["settings"][0]["seeds"][0]
    intro = (f"{results['pairs']} calibration pairs per seed ({first['search_pairs']} searched, "
             f"{first['heldout_pairs']} held out), grid {results['grid_points']} x {results['grid_points']} on "
             f"[{results['c_range'][0]}, {results['c_range'][1]}] + identity.")
    return "\n\n".join([intro, "**Picks** (start coefficients c_x, c_eps; images used; rank in Algorithm 1's ranking; "
                        "grid winner - pick on the search pairs)", picks_table(results),
                        "**Held-out verdicts and FP control** (calibration seed 0)", verdict_table(results),
                        "**Rank correlation and calibration-seed stability**", stability_table(results)])


def merge(runs):
    """One result from several runs of the same configuration (e.g. one per bit width, run side by side)."""
    keys = ("pairs", "holdout", "grid_points", "c_range", "truth_pairs", "fid_samples", "eval_seeds")
    for run in runs[1:]:
        different = [k for k in keys if run.get(k) != runs[0].get(k)]
        if different:
            raise ValueError(f"cannot merge trust runs with different {', '.join(different)}")
    return {**runs[0], "settings": [s for run in runs for s in run["settings"]]}


if __name__ == "__main__":
    print(trust_tables(merge([json.load(open(path)) for path in sys.argv[1:]])))
