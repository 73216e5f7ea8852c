"""Markdown tables of one or more digits-experiment JSON files: one table per step count (FID, TC, IQ, JAQ as
mean ± std over seeds) and the searched coefficients. `python -m qsched digits-experiment` writes the JSONs."""
import json
import sys

import torch


def mean_std(values):
    t = torch.tensor(values, dtype=torch.float64)
    return t.mean().item(), (t.std().item() if len(values) > 1 else 0.0)


def tables(paths):
    runs = [json.load(open(p)) for p in paths]
    cells = [c for r in runs for c in r["cells"]]
    searches = [dict(s, c_range=r.get("c_range", [0.8, 1.2])) for r in runs for s in r["searches"]]
    lines = []
    for steps in sorted({c["steps"] for c in cells}):
        lines += [f"\n**{steps} steps**\n", "| method | FID ↓ | TC ↑ | IQ ↑ | JAQ ↑ |", "|---|---|---|---|---|"]
        for c in sorted((c for c in cells if c["steps"] == steps), key=lambda c: _order(c["method"])):
            stats = [mean_std([r[k] for r in c["per_seed"]]) for k in ("fid", "tc", "iq", "jaq")]
            lines.append(f"| {c['method']} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in stats) + " |")
    lines += ["\n**Searched coefficients** (linear from start to 1; calibration JAQ on 20 class/noise pairs)\n",
              "| bits | steps | range | c_x start | c_eps start | JAQ best | JAQ identity | images |",
              "|---|---|---|---|---|---|---|---|"]
    for s in sorted(searches, key=lambda s: (s["bits"], s["steps"], s["c_range"][1])):
        b = s["best"]
        lines.append(f"| {s['bits']} | {s['steps']} | {s['c_range'][0]:g}-{s['c_range'][1]:g} | {b['c_x'][0]:.3f} | "
                     f"{b['c_eps'][0]:.3f} | {s['best_score']:.4f} | {s['identity_score']:.4f} | "
                     f"{s['images_generated']} |")
    return "\n".join(lines)


def _order(method):
    keys = ["FP32", "W8A8 naive", "W4A8 naive", "W4A8 + Q-Sched", "W4A8 + Q-Sched [", "W4A8 + PTQD",
            "W4A4 naive", "W4A4 + Q-Sched", "W4A4 + Q-Sched [", "W4A4 + PTQD"]
    return max((i for i, k in enumerate(keys) if method.startswith(k)), default=len(keys))


if __name__ == "__main__":
    print(tables(sys.argv[1:]))
