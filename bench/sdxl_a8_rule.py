"""auto's per-shape 8-bit decision from measured numbers: the (in, out) linear shapes whose FP8 path ran faster
than the same spec's weight-only path at every token count timed (bench/gpu_attention.py's sdxl section: eager
do_bench medians, launch included, as ComfyUI runs them), by at least MARGIN.

    python3 bench/sdxl_a8_rule.py bench/results/sdxl_linears_h100.jsonl   (prints quant/auto.py's A8_MEASURED_SHAPES)"""
import json
import sys

MARGIN = 0.95  # the FP8 path must take at most 95% of the weight-only time: below that, timing noise decides
PATHS = {"W8A8": ("W8A8 fp8", "W8A8 weight-only"), "W4A8": ("W4A8 fp8", "W4A8 weight-only")}


def linear_rows(path):
    with open(path, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [row for row in rows if row.get("section") == "sdxl_linear" and "error" not in row]


def measured_shapes(rows, margin=MARGIN):
    """{spec: frozenset of (in, out)} where FP8 beat weight-only by `margin` at every measured token count."""
    decided = {}
    for spec, (fast, weight_only) in PATHS.items():
        verdicts = {}
        for row in rows:
            shape = (row["in"], row["out"])
            pays = row[f"{fast} eager_ms"] <= margin * row[f"{weight_only} eager_ms"]
            verdicts[shape] = verdicts.get(shape, True) and pays
        decided[spec] = frozenset(shape for shape, pays in verdicts.items() if pays)
    return decided


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit(__doc__)
    shapes = measured_shapes(linear_rows(argv[0]))
    print("A8_MEASURED_SHAPES = {" + ", ".join(
        f'"{spec}": frozenset({{{", ".join(map(str, sorted(found)))}}})' if found else f'"{spec}": frozenset()'
        for spec, found in shapes.items()) + "}")


if __name__ == "__main__":
    main()
