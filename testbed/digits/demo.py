"""`python -m qsched demo`: Q-Sched on a real trained few-step model, on the CPU.

Loads the shipped digits LCM model, quantizes it with the pack's quantizer, searches Q-Sched coefficients with the
testbed's JAQ on 20 class/noise pairs (the paper grid raced with confidence intervals), calibrates a second schedule
against the full-precision model (reference objective, per-step coefficients and noise offsets fitted from the grid),
then prints FID / TC / IQ / JAQ of full precision, naive quantization, quantization + Q-Sched, quantization +
reference schedule and the best quantizer of issue 22 (group-wise scales, for W4A4 a 16-bit low-rank branch) with
the closed-form bias map on fresh samples, and saves an image grid and the searched score surface. Missing or corrupt
weights: `--retrain` rebuilds them (needs a GPU for a few minutes).
"""
import os
import sys
import time

import torch
from PIL import Image, ImageDraw

from ...calibration.search import DEFAULT_STRATEGY, STRATEGIES
from ...cli_args import Parser, choice_of, integer, output_folder
from ...samplers import QSchedSchedule
from .data import to_comfy_image
from .experiment import SUPPORTED_BITS, check_bits, evaluate_cell, load_testbed, quantized_student, search_schedule
from .generate import SUPPORTED_STEPS, check_steps, generate
from .scoring import FeatureFID
from .weights import WeightsError

CELL, ROW_LABEL = 4, 120
DESCRIPTION = ("Q-Sched on a real trained few-step model, on the CPU: quantize the shipped digits LCM model, "
               "calibrate Q-Sched and a schedule fitted to full precision, and compare FID / TC / IQ / JAQ with "
               "FP32 and naive quantization; saves an image grid and the score surface.")


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
    parser = Parser(prog="python -m qsched demo", description=DESCRIPTION)
    quantized_bits = [b for b in SUPPORTED_BITS if b != "FP32"]
    parser.add_argument("--bits", default="W4A4", type=choice_of(quantized_bits, str.upper),
                        help=f"quantization of the UNet, one of {', '.join(quantized_bits)} (default W4A4)")
    parser.add_argument("--steps", type=choice_of(list(map(str, SUPPORTED_STEPS))), default="4",
                        help=f"LCM steps, one of {', '.join(map(str, SUPPORTED_STEPS))} (default 4)")
    parser.add_argument("--samples", type=integer(10), default=300,
                        help="evaluation samples per row, classes balanced, at least 10 (default 300)")
    parser.add_argument("--seed", type=integer(0), default=0, help="noise seed of the evaluation samples (default 0)")
    parser.add_argument("--strategy", default=DEFAULT_STRATEGY, choices=list(STRATEGIES),
                        help=f"search strategy of the Q-Sched calibration (default {DEFAULT_STRATEGY})")
    parser.add_argument("--grid-points", type=integer(2), default=7,
                        help="grid points per coefficient of the searched start values (default 7)")
    parser.add_argument("--refine-evaluations", type=integer(0), default=60,
                        help="candidates the reference schedule's per-step refinement may score (default 60)")
    parser.add_argument("--out", default="qsched_demo", type=output_folder,
                        help="folder for the image grid and the search plot, made in the working folder "
                             "(default qsched_demo)")
    parser.add_argument("--threads", type=integer(1), default=1,
                        help="torch threads (default 1: avoids OpenMP stalls on a busy 2-core machine)")
    parser.add_argument("--retrain", action="store_true", help="retrain the shipped weights first (GPU advised)")
    args = parser.parse_args(argv)
    bits, steps = check_bits(args.bits), check_steps(int(args.steps))
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
    from .quantizer_experiment import BEST_QUANTIZER, calibration_moments, correction, quantize
    best_spec = BEST_QUANTIZER.get(bits, bits)
    best, best_bits = quantize(unet, best_spec, calibration_moments(unet, best_spec, steps))
    rows = [("FP32", fp, identity), (f"{bits} naive", quantized, identity), (f"{bits} + Q-Sched", quantized, result.best),
            (f"{bits} + reference+offset", quantized, reference.best),
            (f"{best_spec} GPTQ + map ({best_bits:.1f} b/w)", best, correction(fp, best, steps, "map")[0])]
    print(f"\n{steps}-step LCM, {args.samples} samples, seed {args.seed}; FID on classifier features vs "
          f"{fid.real_count} real digits")
    print(f"| {'method':<32} | FID ↓  | TC ↑  | IQ ↑  | JAQ ↑ |")
    print(f"|{'-' * 34}|--------|-------|-------|-------|")
    for label, denoiser, schedule in rows:
        cell = evaluate_cell(denoiser, steps, schedule, scorer, {"fid": fid}, args.seed, args.samples)
        print(f"| {label:<32} | {cell['fid']:6.2f} | {cell['tc']:.3f} | {cell['iq']:.3f} | {cell['jaq']:.3f} |")
    os.makedirs(args.out, exist_ok=True)
    labels = torch.arange(20) % 10
    grid = image_grid([(label, generate(d, labels, steps, args.seed + 99, schedule=s)) for label, d, s in rows])
    grid.save(os.path.join(args.out, "digits_grid.png"))
    from ...calibration.plot import plot_result
    surface = (plot_result(result)[0].numpy() * 255).round().astype("uint8")
    Image.fromarray(surface).save(os.path.join(args.out, "search_surface.png"))
    out = os.path.abspath(args.out)
    print(f"\nsaved {os.path.join(out, 'digits_grid.png')} and {os.path.join(out, 'search_surface.png')} "
          f"({time.time() - started:.0f} s)")
    return 0
