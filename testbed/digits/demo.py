"""`python -m qsched demo`: Q-Sched on a real trained few-step model, on the CPU in a couple of minutes.

Loads the shipped digits LCM model, quantizes it with the pack's quantizer, searches Q-Sched coefficients with the
testbed's JAQ on 20 class/noise pairs (the paper grid raced with confidence intervals), calibrates a second schedule
against the full-precision model (reference objective, per-step coefficients and noise offsets fitted from the grid),
then prints FID / TC / IQ / JAQ of full precision, naive quantization, quantization + Q-Sched and quantization +
reference schedule on fresh samples, and saves an image grid and the searched score surface. Missing or corrupt
weights: `--retrain` rebuilds them (needs a GPU for a few minutes).
"""
import argparse
import os
import sys
import time

import torch
from PIL import Image, ImageDraw

from ...calibration.search import DEFAULT_STRATEGY
from ...samplers import QSchedSchedule
from .data import to_comfy_image
from .experiment import SUPPORTED_BITS, check_bits, evaluate_cell, load_testbed, quantized_student, search_schedule
from .generate import SUPPORTED_STEPS, check_steps, generate
from .scoring import FeatureFID
from .weights import WeightsError

CELL, ROW_LABEL = 4, 120


def image_grid(rows, per_class=2):
    """PIL image: one block of `per_class` x 10 digits (classes 0-9 left to right) per (label, images) row."""
    height = 16 * CELL * per_class
    grid = Image.new("RGB", (ROW_LABEL + 10 * 16 * CELL, len(rows) * (height + 8)), (24, 24, 28))
    draw = ImageDraw.Draw(grid)
    for r, (label, x) in enumerate(rows):
        top = r * (height + 8)
        draw.text((6, top + height // 2 - 6), label, fill=(230, 230, 235))
        pixels = (to_comfy_image(x) * 255).round().byte().numpy()
        for i in range(min(len(x), 10 * per_class)):
            tile = Image.fromarray(pixels[i]).resize((16 * CELL, 16 * CELL), Image.NEAREST)
            grid.paste(tile, (ROW_LABEL + (i % 10) * 16 * CELL, top + (i // 10) * 16 * CELL))
    return grid


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m qsched demo", description=__doc__.splitlines()[0])
    parser.add_argument("--bits", default="W4A4", help=f"one of {', '.join(b for b in SUPPORTED_BITS if b != 'FP32')}")
    parser.add_argument("--steps", type=int, default=4, help=f"LCM steps, one of {list(SUPPORTED_STEPS)}")
    parser.add_argument("--samples", type=int, default=300, help="evaluation samples per row (classes balanced)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategy", default=DEFAULT_STRATEGY)
    parser.add_argument("--grid-points", type=int, default=7)
    parser.add_argument("--refine-evaluations", type=int, default=60,
                        help="candidates the reference schedule's per-step refinement may score")
    parser.add_argument("--out", default="qsched_demo", help="folder for the image grid and the search plot")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids OpenMP stalls on a busy 2-core machine)")
    parser.add_argument("--retrain", action="store_true", help="retrain the shipped weights first (GPU advised)")
    args = parser.parse_args(argv)
    try:
        bits, steps = check_bits(args.bits), check_steps(args.steps)
        if bits == "FP32":
            raise ValueError("--bits must name a quantized width (the demo compares it with FP32)")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    started = time.time()
    if args.retrain:
        from . import train
        train.main([])
    try:
        unet, scorer = load_testbed()
    except WeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    fid = FeatureFID(scorer)
    fp, _ = quantized_student(unet, "FP32")
    quantized, report = quantized_student(unet, bits)
    print(f"{bits}: UNet {report.bytes_before / 1e6:.2f} MB -> {report.bytes_after / 1e6:.2f} MB "
          f"(simulated packed storage; conv_in/conv_out/time embedding kept)")
    result = search_schedule(quantized, steps, scorer, args.strategy, grid_points=args.grid_points)
    print(f"search ({args.strategy}, {result.images_generated} images, {result.seconds:.0f} s): {result.best.label}; "
          f"calibration JAQ {result.best_score:.4f} vs identity {result.identity_score:.4f}")
    from .reference_experiment import ReferenceCalibration, refine_options
    reference = ReferenceCalibration(fp, quantized, steps, pairs=20).search(
        refine=refine_options(args.refine_evaluations), grid_points=args.grid_points)
    print(f"reference calibration ({reference.images_generated} images, {reference.seconds:.0f} s): "
          f"{reference.best.label}; pixel MSE to FP {-reference.best_score:.4f} vs identity "
          f"{-reference.identity_score:.4f}")
    identity = QSchedSchedule.identity(steps)
    rows = [("FP32", fp, identity), (f"{bits} naive", quantized, identity), (f"{bits} + Q-Sched", quantized, result.best),
            (f"{bits} + reference+offset", quantized, reference.best)]
    print(f"\n{steps}-step LCM, {args.samples} samples, seed {args.seed}; FID on classifier features vs "
          f"{fid.real_count} real digits")
    print(f"| {'method':<24} | FID ↓  | TC ↑  | IQ ↑  | JAQ ↑ |")
    print(f"|{'-' * 26}|--------|-------|-------|-------|")
    for label, denoiser, schedule in rows:
        cell = evaluate_cell(denoiser, steps, schedule, scorer, {"fid": fid}, args.seed, args.samples)
        print(f"| {label:<24} | {cell['fid']:6.2f} | {cell['tc']:.3f} | {cell['iq']:.3f} | {cell['jaq']:.3f} |")
    os.makedirs(args.out, exist_ok=True)
    labels = torch.arange(20) % 10
    grid = image_grid([(label, generate(d, labels, steps, args.seed + 99, schedule=s)) for label, d, s in rows])
    grid.save(os.path.join(args.out, "digits_grid.png"))
    from ...calibration.plot import plot_result
    surface = (plot_result(result)[0].numpy() * 255).round().astype("uint8")
    Image.fromarray(surface).save(os.path.join(args.out, "search_surface.png"))
    print(f"\nsaved {args.out}/digits_grid.png and {args.out}/search_surface.png ({time.time() - started:.0f} s)")
    return 0
