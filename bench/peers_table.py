"""Markdown tables from bench/peers.py's JSON lines (no ComfyUI or GPU needed).

    python3 bench/peers_table.py rows.jsonl [--device-name "NVIDIA H200"]"""
import argparse
import json
import sys


def _ms(row, key):
    if key not in row:
        return "-"
    low, high = row[f"{key.replace('_ms', '')}_spread_ms"]
    return f"{row[key]:.1f} [{low:.1f}-{high:.1f}]"


def merged_rows(records):
    """One row per (model, config): the eager row with its compiled record folded in."""
    rows = [dict(r) for r in records if "config" in r and "compiled" not in r and "profile" not in r]
    for record in (r for r in records if r.get("compiled")):
        row = next((r for r in rows if r["model"] == record["model"] and r["config"] == record["config"]), None)
        if row is not None:
            row.update({key: value for key, value in record.items() if key not in ("model", "config", "compiled")})
    return rows


def peers_table(records, device_name):
    rows = merged_rows(records)
    lines = [f"Device: {device_name}. Batch 1, one backbone forward, BF16 activations; interleaved rounds, median "
             "[min-max]; ratios to BF16 of the same run.", "",
             "| model | config | weights GiB (ratio) | eager ms | eager ratio | compiled ms | compiled ratio | "
             "rel L2 vs bf16 (compiled) | how |", "|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["model"] for r in rows):
        base = next((r for r in rows if r["model"] == name and r["config"] == "bf16" and "error" not in r), {})
        for r in (r for r in rows if r["model"] == name):
            if "error" in r:
                lines.append(f"| {name} | {r['config']} | error: {r['error']} ||||||| ")
                continue
            weights = f"{r['weight_bytes'] / 2 ** 30:.2f}" + \
                (f" ({r['weight_bytes'] / base['weight_bytes']:.3f})" if base else "")
            ratio = {key: (f"{r[key] / base[key]:.2f}" if key in r and key in base else "-")
                     for key in ("eager_ms", "compiled_ms")}
            l2 = "-" if r["config"] == "bf16" else f"{r.get('rel_l2', float('nan')):.4f}" + \
                (f" ({r['rel_l2_compiled']:.4f})" if "rel_l2_compiled" in r else "")
            compiled = _ms(r, "compiled_ms") if "compile_error" not in r else f"error: {r['compile_error'][:60]}"
            lines.append(f"| {name} | {r['config']} | {weights} | {_ms(r, 'eager_ms')} | {ratio['eager_ms']} | "
                         f"{compiled} | {ratio['compiled_ms']} | {l2} | {r.get('how', '-')} |")
    return "\n".join(lines)


def kernel_tables(records):
    """Per model: every Linear shape's microseconds per path (count = calls per step), and the step totals."""
    lines = []
    gemms = [r["gemm"] for r in records if "gemm" in r]
    for name in dict.fromkeys(g["model"] for g in gemms):
        rows = [g for g in gemms if g["model"] == name]
        paths = [key for key in rows[0] if key not in ("model", "m", "k", "n", "count")]
        for row in rows[1:]:
            paths += [key for key in row if key not in paths and key not in ("model", "m", "k", "n", "count")]
        lines += ["", f"{name}: microseconds per call, each shape timed alone (back-to-back calls, launch cost "
                      "included)", "", "| M x K -> N | count | " + " | ".join(paths) + " |",
                  "|---|---|" + "---|" * len(paths)]
        for g in rows:
            cells = [f"{g[p]:.1f}" if isinstance(g.get(p), float) else ("-" if p not in g else "err") for p in paths]
            lines.append(f"| {g['m']} x {g['k']} -> {g['n']} | {g['count']} | " + " | ".join(cells) + " |")
        totals = next((r["gemm_totals_ms"] for r in records if r.get("gemm_totals_ms", {}).get("model") == name), None)
        if totals:
            lines.append("| step total (ms) | | " + " | ".join(
                f"{totals[p]:.2f}" if p in totals else "-" for p in paths) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log")
    parser.add_argument("--device-name", default="")
    args = parser.parse_args(argv)
    with open(args.log) as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    device = args.device_name or next((r["device"] for r in records if "device" in r), "unknown")
    print(peers_table(records, device))
    print(kernel_tables(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
