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


def build_config(model_name, config, device, tiny):
    """(model, weight ratio to BF16) for a config name: 'bf16' or '<spec> <backend>'."""
    model, row = bench.build_config(model_name, *bench.split_config(config), device, tiny)
    return model, row["weight_ratio"]


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
    parser.add_argument("--mode", default=None, choices=("reduce-overhead", "max-autotune-no-cudagraphs"),
                        help="torch.compile mode (default: its default)")
    parser.add_argument("--profile", action="store_true", help="after timing, a kernel profile of each timed model")
    args = parser.parse_args(argv)
    if not args.no_compile and bench.COMPILE_SCOPE[args.model] != "whole model":
        raise SystemExit(f"{args.model} compiles block by block, which replaces the eager blocks: time it with "
                         "--no-compile, or compiled with bench/quant.py")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch._dynamo.config.cache_size_limit = 64
    batch = bench.inputs(args.model, device, args.tiny)
    runs, rows = {}, {}
    for config in args.configs.split(","):
        model, weight_ratio = build_config(args.model, config, device, args.tiny)
        rows[config] = {"model": args.model, "config": config, "weight_ratio": weight_ratio}
        if args.no_compile:
            runs[(config, "eager")] = model
            rows[config]["out"] = bench.timed_forward(model, batch, device)[1].float()
            print("built", config, flush=True)
            continue
        compiled = bench.compile_model(args.model, model, args.mode)
        rows[config]["compile_mode"] = args.mode or "default"
        seconds, out = bench.timed_forward(compiled, batch, device)
        rows[config]["compile_s"] = seconds
        runs[(config, "eager")] = model
        runs[(config, "compiled")] = compiled
        rows[config]["out"] = out.float()
        print("compiled", config, f"{seconds:.0f} s", flush=True)
    wait_for(args.wait_for)
    for key, fn in runs.items():
        deadline = time.perf_counter() + args.warmup_s
        while time.perf_counter() < deadline:
            bench.timed_forward(fn, batch, device)
    times = {key: [] for key in runs}
    for _ in range(args.rounds):
        for key, fn in runs.items():
            times[key].append(bench.timed_forward(fn, batch, device)[0] * 1e3)
    reference = rows[args.configs.split(",")[0]]
    for config, row in rows.items():
        for mode in ("eager",) if args.no_compile else ("eager", "compiled"):
            row[f"{mode}_ms"] = statistics.median(times[(config, mode)])
            row[f"{mode}_ratio"] = row[f"{mode}_ms"] / reference[f"{mode}_ms"]
            row[f"{mode}_spread_ms"] = [min(times[(config, mode)]), max(times[(config, mode)])]
        # the outputs kept are the compiled ones unless --no-compile
        row["rel_l2" if args.no_compile else "rel_l2_compiled"] = float(
            (row["out"] - reference["out"]).norm() / reference["out"].norm())
    if args.profile:
        from quant_profile import kernel_profile
        for (config, mode), fn in runs.items():
            record = {"config": config, "mode": mode, **kernel_profile(fn, batch)}
            print("PROFILE", json.dumps(record), flush=True)
            bench.append_jsonl(args.log, record)
    for row in rows.values():
        del row["out"]
        print("ROW", json.dumps(row), flush=True)
        bench.append_jsonl(args.log, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
