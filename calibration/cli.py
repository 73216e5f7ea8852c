"""`python -m qsched calibrate ...`: the Q-Sched Calibrate node's search, headless, for long jobs.

Needs a ComfyUI checkout to load the checkpoint and sample (--comfyui or env COMFYUI_DIR); ComfyUI is imported
only when the command runs, so this module stays importable without it. Resumes from the run log like the node.
"""
import argparse
import json
import math
import os
import sys
import time

from ..safe_files import UnsafeFileError, read_regular_file
from ..samplers.schedule import SAMPLER_NAMES
from .heldout import HOLDOUT_FRACTION, format_report
from .optimise import FORMS
from .pipeline import OBJECTIVES
from .reference import DEFAULT_REFERENCE_WEIGHT, REFERENCE_OBJECTIVES
from .strategies import DEFAULT_STRATEGY, STRATEGIES

MAX_PROMPTS_FILE_BYTES = 16 << 20


def _integer(minimum, maximum=None, multiple_of=1):
    """An argparse type: an integer in [minimum, maximum] (and a multiple of `multiple_of`), else a clear error."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum or (maximum is not None and value > maximum) or value % multiple_of:
            bounds = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
            multiple = f", a multiple of {multiple_of}" if multiple_of > 1 else ""
            raise argparse.ArgumentTypeError(f"{value} is out of range: give an integer {bounds}{multiple}")
        return value
    return parse


def _number(minimum=None, above=None, below=None):
    """An argparse type: a finite float, at least `minimum` or greater than `above` (and less than `below`)."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if ((minimum is not None and value < minimum) or (above is not None and value <= above)
                or (below is not None and value >= below)):
            bound = f">= {minimum}" if minimum is not None else f"> {above}"
            bound += f" and < {below}" if below is not None else ""
            raise argparse.ArgumentTypeError(f"{value} is out of range: give a number {bound}")
        return value
    return parse


def _quant_spec(text):
    """An argparse type: a quantization spec (W8A8, W4A8-g128, ...), written the way the pack names it."""
    from ..quant.spec import QuantSpec, QuantSpecError
    try:
        return QuantSpec.parse(text).name
    except QuantSpecError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parser():
    p = argparse.ArgumentParser(prog="python -m qsched calibrate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint .safetensors (model, CLIP and VAE)")
    p.add_argument("--scorer", default=None, help="CLIP checkpoint for the JAQ scorer (open_clip/HF/OpenAI file); "
                   "needed unless the objective is reference_latent or reference_image")
    p.add_argument("--scorer-k", type=_number(minimum=0.0), default=2.0, help="JAQ = TC + k * IQ (default 2)")
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR"), help="ComfyUI checkout (or COMFYUI_DIR)")
    p.add_argument("--quant", type=_quant_spec, default=None, help="quantize the diffusion model first, e.g. W4A8 or W8A8")
    p.add_argument("--sampler", default="lcm", choices=SAMPLER_NAMES)
    p.add_argument("--scheduler", default="lcm_original")
    p.add_argument("--steps", type=_integer(1, 1000), default=4)
    p.add_argument("--cfg", type=_number(minimum=0.0), default=1.0)
    p.add_argument("--strategy", default=DEFAULT_STRATEGY, choices=tuple(STRATEGIES))
    p.add_argument("--budget", type=_integer(0), default=0, help="most images to generate (0 = strategy default)")
    p.add_argument("--seed", type=_integer(0, 2**64 - 1), default=0)
    p.add_argument("--prompts-file", default=None, help="one prompt per line (default: the pack's 20 prompts)")
    p.add_argument("--n-prompts", type=_integer(0), default=0, help="use the first N prompts (0 = all)")
    p.add_argument("--width", type=_integer(8, 16384, multiple_of=8), default=512)
    p.add_argument("--height", type=_integer(8, 16384, multiple_of=8), default=512)
    p.add_argument("--objective", default="jaq", choices=OBJECTIVES + REFERENCE_OBJECTIVES,
                   help="jaq (the paper's, reference-free) or a term of it; the reference objectives compare with "
                        "the full-precision model (--reference-model)")
    p.add_argument("--reference-model", default=None, help="the full-precision model for the reference objectives "
                   "(and the FP control): 'same' = --checkpoint loaded again without --quant, or another checkpoint")
    p.add_argument("--reference-weight", type=_number(minimum=0.0), default=DEFAULT_REFERENCE_WEIGHT,
                   help="jaq_reference: weight of the relative latent error subtracted from JAQ")
    p.add_argument("--refine", default="off", choices=("off",) + tuple(FORMS),
                   help="fit per-step free coefficients (and offsets) from the grid's winner with scipy Powell")
    p.add_argument("--refine-evaluations", type=_integer(0), default=0,
                   help="candidates the refinement may score (0 = default)")
    p.add_argument("--c-min", type=_number(above=0.0), default=0.8)
    p.add_argument("--c-max", type=_number(above=0.0), default=1.2)
    p.add_argument("--model-name", default="")
    p.add_argument("--preset-name", default="")
    p.add_argument("--preset-folder", default=None, help="default: <ComfyUI user dir>/qsched_presets")
    p.add_argument("--runs-folder", default=None, help="default: <ComfyUI user dir>/qsched_runs")
    p.add_argument("--batch-size", type=_integer(1, 1024), default=16,
                   help="most images per model call (fewer when free memory is short); 1 = one at a time")
    p.add_argument("--plot", default=None, help="also save the plot as this PNG")
    p.add_argument("--gpu", action="store_true", help="let ComfyUI use the GPU (default: CPU)")
    p.add_argument("--holdout", type=_number(above=0.0, below=1.0), default=HOLDOUT_FRACTION,
                   help="share of the prompt/seed pairs kept out of the search for the held-out verdict")
    p.add_argument("--fp-control", action="store_true", help="with --quant: also apply the winner to the "
                   "unquantized model (loaded a second time) and say whether the gain is quantization-specific")
    return p


def _import_comfyui(path, gpu):
    if not path or not os.path.isfile(os.path.join(path, "main.py")):
        raise SystemExit(f"calibrate needs a ComfyUI checkout: pass --comfyui or set COMFYUI_DIR (got {path!r})")
    path = os.path.abspath(path)
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)   # first, or its top-level `nodes` would resolve to the pack's nodes/ folder
    import comfy.cli_args
    comfy.cli_args.args.cpu = not gpu


def read_prompts(prompts_file, n_prompts):
    """The calibration prompts: the file's lines (or the pack's set), the first `n_prompts` of them if given."""
    from .prompts import parse_prompts

    text = ""
    if prompts_file:
        try:
            text = read_regular_file(prompts_file, MAX_PROMPTS_FILE_BYTES).decode("utf-8")
        except (OSError, UnsafeFileError, UnicodeDecodeError) as error:
            raise SystemExit(f"--prompts-file {prompts_file}: cannot be read: {error}") from None
    prompts = parse_prompts(text)
    if n_prompts > len(prompts):
        raise SystemExit(f"--n-prompts {n_prompts}: there are only {len(prompts)} prompts")
    return prompts[:n_prompts] if n_prompts else prompts


def main(argv):
    args = parser().parse_args(argv)
    if not args.c_min < args.c_max:
        raise SystemExit(f"--c-min {args.c_min} must be below --c-max {args.c_max}")
    if args.fp_control and not args.quant:
        raise SystemExit("--fp-control compares the quantized model with the full-precision one: give --quant too")
    if args.objective in REFERENCE_OBJECTIVES and not args.reference_model:
        raise SystemExit(f"--objective {args.objective} compares with the full-precision model: give "
                         "--reference-model same (the checkpoint without --quant) or another checkpoint")
    if not args.scorer and args.objective not in ("reference_latent", "reference_image"):
        raise SystemExit(f"--objective {args.objective} needs a scorer: give --scorer")
    prompts = read_prompts(args.prompts_file, args.n_prompts)
    _import_comfyui(args.comfyui, args.gpu)
    import comfy.sd

    from .metrics import load_scorer
    from ..nodes.calibrate import calibrate

    model, clip, vae = comfy.sd.load_checkpoint_guess_config(args.checkpoint)[:3]
    reference = None
    if args.reference_model or args.fp_control:
        path = args.checkpoint if args.reference_model in (None, "same") else args.reference_model
        reference = comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=False)[0]
    if args.quant:
        from ..nodes.quant_ops import with_comfy_patching
        from ..quant import QuantSpec, quantize_module
        report = quantize_module(model.model.diffusion_model, QuantSpec.parse(args.quant))
        with_comfy_patching(model.model.diffusion_model)
        print(f"quantized {args.quant}: {report}", file=sys.stderr)
    scorer = load_scorer(args.scorer, k=args.scorer_k) if args.scorer else None
    started = time.monotonic()

    def progress(done, total):
        print(f"\r{done}/{total} images, {time.monotonic() - started:.0f} s", end="", file=sys.stderr, flush=True)

    result, preset, path, report = calibrate(
        model, clip, vae, scorer, sampler_name=args.sampler, scheduler=args.scheduler, steps=args.steps,
        cfg=args.cfg, strategy=args.strategy, budget_images=args.budget, seed=args.seed, prompts=prompts,
        width=args.width, height=args.height, objective=args.objective, c_range=(args.c_min, args.c_max),
        model_name=args.model_name or os.path.splitext(os.path.basename(args.checkpoint))[0], quant=args.quant,
        preset_name=args.preset_name, preset_folder=args.preset_folder, runs_folder=args.runs_folder,
        progress=progress, scorer_k=args.scorer_k if scorer is not None else None, holdout=args.holdout,
        reference_model=reference, batch_size=args.batch_size, reference_weight=args.reference_weight,
        refine=args.refine, refine_evaluations=args.refine_evaluations)
    print(file=sys.stderr)
    print(format_report(report, result), file=sys.stderr)
    if args.plot:
        from PIL import Image
        from .plot import plot_result
        Image.fromarray((plot_result(result)[0].numpy() * 255).round().astype("uint8")).save(args.plot)
    print(json.dumps({"preset": path, "best": result.best.to_dict(), "best_score": result.best_score,
                      "objective": args.objective, "refinement": preset["search"].get("refinement"),
                      "identity_score": result.identity_score, "images_generated": result.images_generated,
                      "images_reused": result.images_reused, "failures": len(result.failures),
                      "better_than_identity": report.heldout.verdict, **report.to_dict(),
                      "seconds": round(time.monotonic() - started, 1)}, indent=2))
    return 0
