"""`python -m qsched calibrate ...`: the Q-Sched Calibrate node's search, headless, for long jobs.

Needs a ComfyUI checkout to load the checkpoint and sample (--comfyui or env COMFYUI_DIR); ComfyUI is imported
only when the command runs, so this module stays importable without it. Resumes from the run log like the node.
"""
import argparse
import json
import os
import sys
import time

from .optimise import FORMS
from .pipeline import OBJECTIVES
from .reference import DEFAULT_REFERENCE_WEIGHT, REFERENCE_OBJECTIVES


def parser():
    p = argparse.ArgumentParser(prog="python -m qsched calibrate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint .safetensors (model, CLIP and VAE)")
    p.add_argument("--scorer", default=None, help="CLIP checkpoint for the JAQ scorer (open_clip/HF/OpenAI file); "
                   "needed unless the objective is reference_latent or reference_image")
    p.add_argument("--scorer-k", type=float, default=2.0, help="JAQ = TC + k * IQ (default 2)")
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR"), help="ComfyUI checkout (or COMFYUI_DIR)")
    p.add_argument("--quant", default=None, help="quantize the diffusion model first, e.g. W4A8 or W8A8")
    p.add_argument("--sampler", default="lcm", help="lcm, tcd, euler, euler_ancestral")
    p.add_argument("--scheduler", default="lcm_original")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--cfg", type=float, default=1.0)
    p.add_argument("--strategy", default="coarse_to_fine")
    p.add_argument("--budget", type=int, default=0, help="most images to generate (0 = strategy default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompts-file", default=None, help="one prompt per line (default: the pack's 20 prompts)")
    p.add_argument("--n-prompts", type=int, default=0, help="use the first N prompts (0 = all)")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--objective", default="jaq", choices=OBJECTIVES + REFERENCE_OBJECTIVES,
                   help="jaq (the paper's, reference-free) or a term of it; the reference objectives compare with "
                        "the full-precision model (--reference-model)")
    p.add_argument("--reference-model", default=None, help="the full-precision model for the reference objectives: "
                   "'same' = --checkpoint loaded again without --quant, or another checkpoint file")
    p.add_argument("--reference-weight", type=float, default=DEFAULT_REFERENCE_WEIGHT,
                   help="jaq_reference: weight of the relative latent error subtracted from JAQ")
    p.add_argument("--refine", default="off", choices=("off",) + tuple(FORMS),
                   help="fit per-step free coefficients (and offsets) from the grid's winner with scipy Powell")
    p.add_argument("--refine-evaluations", type=int, default=0, help="candidates the refinement may score (0 = "
                   "default)")
    p.add_argument("--c-min", type=float, default=0.8)
    p.add_argument("--c-max", type=float, default=1.2)
    p.add_argument("--model-name", default="")
    p.add_argument("--preset-name", default="")
    p.add_argument("--preset-folder", default=None, help="default: <ComfyUI user dir>/qsched_presets")
    p.add_argument("--runs-folder", default=None, help="default: <ComfyUI user dir>/qsched_runs")
    p.add_argument("--plot", default=None, help="also save the plot as this PNG")
    p.add_argument("--gpu", action="store_true", help="let ComfyUI use the GPU (default: CPU)")
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


def main(argv):
    args = parser().parse_args(argv)
    _import_comfyui(args.comfyui, args.gpu)
    import comfy.sd

    from .metrics import load_scorer
    from .prompts import parse_prompts
    from ..nodes.calibrate import calibrate

    prompts = parse_prompts(open(args.prompts_file, encoding="utf-8").read() if args.prompts_file else "")
    prompts = prompts[: args.n_prompts] if args.n_prompts else prompts
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(args.checkpoint)[:3]
    reference_model = None
    if args.reference_model:
        path = args.checkpoint if args.reference_model == "same" else args.reference_model
        reference_model = comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=False)[0]
    if args.quant:
        from ..quant import QuantSpec, quantize_module
        report = quantize_module(model.model.diffusion_model, QuantSpec.parse(args.quant))
        print(f"quantized {args.quant}: {report}", file=sys.stderr)
    scorer = load_scorer(args.scorer, k=args.scorer_k) if args.scorer else None
    started = time.monotonic()

    def progress(done, total):
        print(f"\r{done}/{total} images, {time.monotonic() - started:.0f} s", end="", file=sys.stderr, flush=True)

    result, preset, path = calibrate(
        model, clip, vae, scorer, sampler_name=args.sampler, scheduler=args.scheduler, steps=args.steps,
        cfg=args.cfg, strategy=args.strategy, budget_images=args.budget, seed=args.seed, prompts=prompts,
        width=args.width, height=args.height, objective=args.objective, c_range=(args.c_min, args.c_max),
        model_name=args.model_name or os.path.splitext(os.path.basename(args.checkpoint))[0], quant=args.quant,
        preset_name=args.preset_name, preset_folder=args.preset_folder, runs_folder=args.runs_folder,
        progress=progress, scorer_k=args.scorer_k if scorer is not None else None, reference_model=reference_model,
        reference_weight=args.reference_weight, refine=args.refine, refine_evaluations=args.refine_evaluations)
    print(file=sys.stderr)
    if args.plot:
        from PIL import Image
        from .plot import plot_result
        Image.fromarray((plot_result(result)[0].numpy() * 255).round().astype("uint8")).save(args.plot)
    print(json.dumps({"preset": path, "best": result.best.to_dict(), "best_score": result.best_score,
                      "objective": args.objective, "refinement": preset["search"].get("refinement"),
                      "identity_score": result.identity_score, "images_generated": result.images_generated,
                      "images_reused": result.images_reused, "failures": len(result.failures),
                      "seconds": round(time.monotonic() - started, 1)}, indent=2))
    return 0
