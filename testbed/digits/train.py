"""`python -m qsched train-digits [--device cuda] [--only metrics|models] [--out DIR]`: retrain the shipped
digits weights (metrics first, then teacher and student), then measure the generators with the fresh metrics.

Shipped run: metrics and teacher on one H100 (torch 2.11; 40 s and 260 s), student with `--only student` (55 s);
the generators then measured on the CPU (`--only measure`, 2,000 samples), written to weights/TRAINING.json:
teacher (Euler 50, CFG 2) FID 0.705 / TC 0.964 / IQ 0.980; LCM student 1/2/4/8 steps FID 0.968 / 0.554 / 0.635 /
0.623, TC 0.957-0.958, IQ 0.851 / 0.947 / 0.959 / 0.966. Compare a rerun with the shipped weights over several
sampling seeds with `--compare DIR` (testbed/digits/RESULTS.md reports one rerun on an H100).
"""
import json
import os
import time

import torch

from ...atomic_files import write_text_atomic
from ...cli_args import Parser, integer, output_folder
from . import train_metrics, train_models
from .data import load_digits_tensors
from .diffusion import EpsDenoiser, LCMDenoiser
from .generate import generate
from .networks import DigitsUNet
from .scoring import DigitsScorer, FeatureFID
from .weights import WEIGHTS_DIR, load_weights


@torch.no_grad()
def measure_generators(folder, device, count=2000, seed=1234):
    """FID (classifier features, `count` samples vs the 1,797 real digits), TC and IQ of teacher and student."""
    scorer = DigitsScorer.load(folder)
    fid = FeatureFID(scorer)
    labels = torch.arange(count) % 10
    report = {"samples": count, "real": {}}
    real, real_labels = load_digits_tensors()
    scores = scorer.score_tensors(real, real_labels)
    report["real"] = {"tc": round(scores.tc.mean().item(), 4), "iq": round(scores.iq.mean().item(), 4)}
    teacher_unet, _ = load_weights(DigitsUNet, "teacher", folder)
    student_unet, _ = load_weights(DigitsUNet, "student_lcm", folder)
    runs = {"teacher_euler50_cfg2": (EpsDenoiser(teacher_unet, guidance=train_models.GUIDANCE), 50, "euler")}
    runs.update({f"student_lcm{s}": (LCMDenoiser(student_unet), s, "lcm") for s in (1, 2, 4, 8)})
    for name, (denoiser, steps, sampler) in runs.items():
        x = generate(denoiser.to(device), labels, steps, seed, sampler=sampler, batch_size=1000)
        s = scorer.score_tensors(x, labels)
        report[name] = {"fid": round(fid(x), 3), "tc": round(s.tc.mean().item(), 4), "iq": round(s.iq.mean().item(), 4)}
        print(name, report[name], flush=True)
    return report


def compare_folders(shipped, other, device, seeds, count=2000):
    """Mean and spread over `seeds` sampling seeds of each generator's FID / TC / IQ, for two weights folders."""
    result = {}
    for label, folder in (("shipped", shipped), ("other", other)):
        runs = [measure_generators(folder, device, count, seed=1234 + index) for index in range(seeds)]
        result[label] = {name: {metric: [round(min(r[name][metric] for r in runs), 4),
                                         round(sum(r[name][metric] for r in runs) / seeds, 4),
                                         round(max(r[name][metric] for r in runs), 4)]
                                for metric in runs[0][name]}
                         for name in runs[0] if name not in ("samples", "real")}
    result["format"] = f"[min, mean, max] over {seeds} sampling seeds of {count} samples each"
    return result


def copy_metrics(source, folder):
    """Give `folder` the classifier and critic of `source` (checked against its manifest; kept if already there), so
    generators trained into `folder` are scored with the same features as those in `source`."""
    from .weights import MANIFEST, load_weights as _load, save_weights
    from .networks import DigitsCNN
    if os.path.abspath(source) == os.path.abspath(folder):
        return
    existing = {}
    if os.path.exists(os.path.join(folder, MANIFEST)):
        with open(os.path.join(folder, MANIFEST)) as f:
            existing = json.load(f)
    for name in ("classifier", "critic"):
        if name not in existing:
            module, record = _load(DigitsCNN, name, source)
            save_weights(module, name, {**record, "copied_from": os.path.basename(os.path.normpath(source))}, folder)


def main(argv=None):
    parser = Parser(prog="python -m qsched train-digits", description=(
        "Retrain the digits testbed's weights (metrics first, then teacher and student), then measure the "
        "generators with the fresh metrics."))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device to train on (default: cuda where available, else cpu)")
    parser.add_argument("--only", choices=("metrics", "models", "student", "measure"),
                        help="run one stage only (default: all)")
    parser.add_argument("--out", default=WEIGHTS_DIR, type=output_folder,
                        help="weights folder to write (default: the shipped weights folder)")
    parser.add_argument("--quick", action="store_true", help="a few iterations only (smoke test, useless weights)")
    parser.add_argument("--compare", metavar="DIR", help="train nothing: measure the weights in DIR and the shipped "
                        "ones over --seeds sampling seeds and print both (is a retrain within sampling noise?)")
    parser.add_argument("--seeds", type=integer(1), default=3, help="sampling seeds of --compare (default 3)")
    parser.add_argument("--width", type=integer(1), default=1, help="UNet channel multiplier; with --only models the "
                        "shipped classifier and critic are copied into --out so its FIDs compare with the shipped "
                        "weights' (4 = issue 22's wide variant)")
    args = parser.parse_args(argv)
    if args.compare:
        print(json.dumps(compare_folders(WEIGHTS_DIR, args.compare, args.device, args.seeds), indent=1))
        return 0
    common = ["--device", args.device, "--out", args.out]
    start = time.time()
    if args.only in (None, "metrics"):
        train_metrics.main(common + (["--iters", "20"] if args.quick else []))
    if args.only in (None, "models", "student"):
        if args.only in ("models", "student"):
            copy_metrics(WEIGHTS_DIR, args.out)
        train_models.main(common + (["--teacher-iters", "40", "--student-iters", "40"] if args.quick else [])
                          + (["--student-only"] if args.only == "student" else []) + ["--width", str(args.width)])
    report = measure_generators(args.out, args.device, count=200 if args.quick else 2000)
    report["total_seconds"] = round(time.time() - start, 1)
    write_text_atomic(os.path.join(args.out, "TRAINING.json"), json.dumps(report, indent=1))
    print("measured:", json.dumps(report), flush=True)
    return 0
