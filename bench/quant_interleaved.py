"""Robust step-latency ratios for a few configs of one backbone: every model is built and compiled first, then all
are timed in interleaved rounds (after a warm-up of a few seconds each), so clock ramps and drift hit every config
alike. Complements bench/quant.py, whose configs run one after another (its timings moved by up to 1.8x between two
runs on the same H100: SDXL BF16 compiled 62.2 then 34.7 ms).

    python3 bench/quant_interleaved.py --model sdxl --configs "bf16,W8A8 fp8" [--wait-for FILE] [--log rows.jsonl]

--wait-for: compile while another GPU job finishes, and start timing only once FILE exists."""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quant as bench  # noqa: E402  (bench/quant.py: model builders, inputs, compile scopes)

from comfyui_qsched.quant import module_bytes, quantize_module  # noqa: E402


def build_config(model_name, config, device, tiny):
    model = bench.build(model_name, device, tiny)
    bench.init_weights_(model, seed=0)
    bf16_bytes = module_bytes(model)
    if config != "bf16":
        spec, backend = config.split()
        quantize_module(model, spec, backend=backend, device=device)
    return model, module_bytes(model) / bf16_bytes


def timed(fn, batch, device):
    bench.sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = fn(**batch)
    bench.sync(device)
    return time.perf_counter() - start, out


def wait_for(path):
    while path and not os.path.exists(path):
        time.sleep(1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sdxl", choices=("sdxl", "flux"))
    parser.add_argument("--configs", default="bf16,W8A8 fp8")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--wait-for", default="")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--log", default="")
    parser.add_argument("--no-compile", action="store_true", help="time eager only (backends that need no compile)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch._dynamo.config.cache_size_limit = 64
    batch = bench.inputs(args.model, device, args.tiny)
    runs, rows = {}, {}
    for config in args.configs.split(","):
        model, weight_ratio = build_config(args.model, config, device, args.tiny)
        rows[config] = {"model": args.model, "config": config, "weight_ratio": weight_ratio}
        if args.no_compile:
            runs[(config, "eager")] = model
            rows[config]["out"] = timed(model, batch, device)[1].float()
            print("built", config, flush=True)
            continue
        compiled = bench.compile_model(args.model, model)
        seconds, out = timed(compiled, batch, device)
        rows[config]["compile_s"] = seconds
        runs[(config, "eager")] = model if compiled is not model else None
        runs[(config, "compiled")] = compiled
        rows[config]["out"] = out.float()
        print("compiled", config, f"{seconds:.0f} s", flush=True)
    if any(model is None for model in runs.values()):
        raise SystemExit("eager timing needs a whole-model compile scope (the compiled blocks replace the eager ones)")
    wait_for(args.wait_for)
    for key, fn in runs.items():
        deadline = time.perf_counter() + args.warmup_s
        while time.perf_counter() < deadline:
            timed(fn, batch, device)
    times = {key: [] for key in runs}
    for _ in range(args.rounds):
        for key, fn in runs.items():
            times[key].append(timed(fn, batch, device)[0] * 1e3)
    reference = rows[args.configs.split(",")[0]]
    for config, row in rows.items():
        for mode in ("eager",) if args.no_compile else ("eager", "compiled"):
            row[f"{mode}_ms"] = statistics.median(times[(config, mode)])
            row[f"{mode}_ratio"] = row[f"{mode}_ms"] / reference[f"{mode}_ms"]
            row[f"{mode}_spread_ms"] = [min(times[(config, mode)]), max(times[(config, mode)])]
        row["rel_l2"] = float((row["out"] - reference["out"]).norm() / reference["out"].norm())
    for row in rows.values():
        del row["out"]
        print("ROW", json.dumps(row), flush=True)
        if args.log:
            with open(args.log, "a") as handle:
                handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
