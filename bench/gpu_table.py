"""The short table of one GPU session (bench/gpu_session.sh) from its JSON lines: speed ratios, host vs GPU time per
step, the kernel checks, the low-rank branch's cost and precision. No GPU or ComfyUI needed.

    python3 bench/gpu_table.py peers.jsonl kernels8.jsonl"""
import json
import sys

from peers_table import merged_rows


def load(paths):
    records = []
    for path in paths:
        try:
            with open(path) as handle:
                records += [json.loads(line) for line in handle if line.strip()]
        except FileNotFoundError:
            print(f"(no {path})")
    return records


def speed_table(records):
    rows = merged_rows(records)
    host = {(r["model"], r["host_profile"]): r for r in records if "host_profile" in r and "error" not in r}
    lines = ["| model | config | eager ms | ratio | compiled ms | ratio | rel L2 | host ms/step | GPU ms/step | host/GPU "
             "| 8-bit layer host us |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        base = next((r for r in rows if r["model"] == model and r["config"] == "bf16" and "error" not in r), {})
        for r in (r for r in rows if r["model"] == model):
            if "error" in r:
                lines.append(f"| {model} | {r['config']} | error: {r['error'][:80]} |||||||||")
                continue

            def ratio(key):
                return f"{r[key] / base[key]:.2f}" if key in r and key in base else "-"

            h = host.get((model, r["config"]), {})
            eight = [v for name, v in h.get("layers", {}).items() if "Fp8Linear" in name or "Int8Linear" in name]
            layer_us = "/".join(f"{v['median_us']:.0f}" for v in eight) or "-"
            lines.append(f"| {model} | {r['config']} | {r.get('eager_ms', 0):.1f} | {ratio('eager_ms')} | "
                         f"{r['compiled_ms']:.1f} | {ratio('compiled_ms')} | " if "compiled_ms" in r else
                         f"| {model} | {r['config']} | {r.get('eager_ms', 0):.1f} | {ratio('eager_ms')} | - | - | ")
            lines[-1] += (f"{r.get('rel_l2', float('nan')):.4f} | {h.get('host_ms', float('nan')):.1f} | "
                          f"{(h.get('gpu_ms') or float('nan')):.1f} | {h.get('host_over_gpu', float('nan')):.2f} | "
                          f"{layer_us} |")
    return lines


def main(argv=None):
    records = load((argv if argv is not None else sys.argv[1:]))
    device = next((r["device"] for r in records if "device" in r), "?")
    print(f"Device: {device}")
    print("\n".join(speed_table(records)))
    for r in records:
        if "kernel_checks8_failed" in r:
            print(f"kernel checks failed: {r['kernel_checks8_failed'] or 'none'}")
        if "branch_precision" in r:
            print("branch precision (rel L2 vs float64, 3072x3072, rank 32): " + ", ".join(
                f"{k} {v:.4f}" for k, v in r["branch_precision"].items()))
        if "host_pieces_us" in r:
            print("host us per call: " + ", ".join(f"{k} {v:.1f}" for k, v in r["host_pieces_us"].items()))
        if "kernel_totals_ms_full_flux_linears" in r:
            totals = r["kernel_totals_ms_full_flux_linears"]
            bf16 = totals.get("bf16", 1.0)
            print("full-FLUX linears GPU ms/step: " + ", ".join(
                f"{k} {v:.1f} ({v / bf16:.2f})" for k, v in totals.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
