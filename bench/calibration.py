"""Calibration throughput, batch 1 vs batched: images per second of a whole Q-Sched calibration (sampling,
VAE decode, JAQ scoring, search, run log, held-out check, preset) through the node's and the command line's own
core (comfy_adapter.calibration.calibrate) in-process, with the same seeds at every batch size, and whether both
find the same best schedule.

    COMFYUI_DIR=/path/to/ComfyUI python3 bench/calibration.py [--models sdxl,tiny] [--batch-sizes 1,16]
                                                              [--out bench/results/calibration]

Models, random-initialised from ComfyUI's own classes and loaded through its own loaders:
- sdxl: SDXL UNet (2.6B), CLIP-L + CLIP-G text encoders, SD VAE; images 512x512 (64x64 latents).
- tiny: the test suite's SD1.5-layout fixture (UNet of 320 channels, one level; TAESD); images 64x64.
The scorer is the pack's JAQ (CLIPScore + 2 CLIP-IQA) on a random transformers CLIP (ViT-L/14 shapes for sdxl,
a tiny one for the fixture), tokenised with ComfyUI's CLIP tokenizer files. Writes <out>.jsonl (one line per run,
appended) and <out>.md (the table). --tiny: CPU smoke test of this script (the tiny model only, few images).
"""
import argparse
import json
import os
import sys
import tempfile
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
COMFYUI_DIR = os.environ.get("COMFYUI_DIR", os.path.join(ROOT, ".device", "comfyui"))
sys.path.insert(0, COMFYUI_DIR)   # first: ComfyUI's top-level `nodes` module, not the pack's nodes/ folder
import qsched  # noqa: E402,F401
import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = not torch.cuda.is_available()
import comfy.model_management  # noqa: E402
import comfy.sd  # noqa: E402

from comfyui_qsched.scoring import clip_scorer  # noqa: E402
from comfyui_qsched.calibration.pipeline import make_evaluate  # noqa: E402
from comfyui_qsched.calibration.prompts import DEFAULT_PROMPTS  # noqa: E402
from comfyui_qsched.calibration.run import CalibrationConfig  # noqa: E402
from comfyui_qsched.comfy_adapter.calibration import calibrate, make_generator  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quant import SDXL as SDXL_UNET  # noqa: E402  (bench/quant.py: the benchmarks' one SDXL UNet config)

SD_VAE_PROBE = {"decoder.conv_in.weight": torch.zeros(512, 4, 3, 3), "post_quant_conv.weight": torch.zeros(4, 4, 1, 1)}
SCORER_SHAPES = {  # transformers CLIPConfig arguments
    "vit-l-14": dict(projection_dim=768, text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                          num_attention_heads=12, max_position_embeddings=77),
                     vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                        num_attention_heads=16, image_size=224, patch_size=14)),
    "tiny": dict(projection_dim=32, text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                     num_attention_heads=2, max_position_embeddings=77),
                 vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                    image_size=224, patch_size=32)),
}


def init_random_(tensors, seed, device):
    """Weights N(0, 1/fan_in), 1-D weights (norm gains) 1, biases 0, other floats N(0, 0.02): bounded activations."""
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, tensor in tensors.items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("bias"):
                tensor.zero_()
            elif tensor.ndim == 1 and name.endswith("weight"):
                tensor.fill_(1.0)
            elif tensor.ndim >= 2 and name.endswith("weight") and "embedding" not in name:
                values = torch.randn(tensor.shape, generator=generator, device=device) / tensor[0].numel() ** 0.5
                tensor.copy_(values)
            else:
                tensor.copy_(0.02 * torch.randn(tensor.shape, generator=generator, device=device))
    return tensors


def random_state_dict(module, seed, device):
    """The module's tensors on `device`, floats random (ComfyUI's ops leave them uninitialised)."""
    return init_random_({k: v.to(device) for k, v in module.state_dict().items()}, seed, device)


def build_sdxl(device, unet_dtype=None):
    """(MODEL, CLIP, VAE) of SDXL's shapes through ComfyUI's loaders (its own dtype and device choices unless
    unet_dtype is given)."""
    return build_sdxl_unet(device, unet_dtype), build_sdxl_clip(device), build_sd_vae(device)


def build_sdxl_unet(device, dtype=None):
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    unet = UNetModel(**SDXL_UNET, dtype=torch.bfloat16, device=device, operations=comfy.ops.disable_weight_init)
    options = {} if dtype is None else {"dtype": getattr(torch, dtype)}
    return comfy.sd.load_diffusion_model_state_dict(random_state_dict(unet, 0, device), model_options=options)


def build_sdxl_clip(device):
    import comfy.clip_model
    import comfy.ops
    encoders = []
    for seed, config_name in ((1, "sd1_clip_config.json"), (2, "clip_config_bigg.json")):
        with open(os.path.join(os.path.dirname(comfy.clip_model.__file__), config_name)) as handle:
            config = json.load(handle)
        text = comfy.clip_model.CLIPTextModel(config, torch.float16, device, comfy.ops.disable_weight_init)
        encoders.append(random_state_dict(text, seed, device))
        del text
    return comfy.sd.load_text_encoder_state_dicts(encoders)


def build_sd_vae(device):
    """The SD/SDXL VAE (84M): ComfyUI's own module for these keys, random weights, loaded by comfy.sd.VAE."""
    return comfy.sd.VAE(sd=random_state_dict(comfy.sd.VAE(sd=SD_VAE_PROBE).first_stage_model, 3, device))


def build_tiny(workdir):
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from comfy_fixtures import build_sd15_checkpoint
    path = build_sd15_checkpoint(os.path.join(workdir, "qsched_tiny_sd15.safetensors"))
    return comfy.sd.load_checkpoint_guess_config(path)[:3]


class TransformersClipTowers(torch.nn.Module):
    """A random transformers CLIPModel behind the scorer's towers interface (scoring.towers)."""
    is_resnet, source = False, None   # source None: the scorer's identity hashes the weights' content
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, shapes, device, dtype):
        super().__init__()
        from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
        import comfy.sd1_clip
        torch.manual_seed(0)
        with torch.device(device):
            self.model = CLIPModel(CLIPConfig(**shapes)).to(dtype).eval().requires_grad_(False)
        self.tokenizer = CLIPTokenizer.from_pretrained(
            os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer"))
        self.image_size = shapes["vision_config"]["image_size"]
        self.logit_scale = float(self.model.logit_scale.exp())

    @property
    def device(self):
        return next(self.parameters()).device

    def tokenize(self, prompts):
        return self.tokenizer(list(prompts), padding="max_length", max_length=77, truncation=True,
                              return_tensors="pt").input_ids

    def encode_image(self, pixels, positional_embedding=True):
        return self.model.visual_projection(self.model.vision_model(pixel_values=pixels).pooler_output)

    def encode_text(self, tokens):
        return self.model.text_projection(self.model.text_model(input_ids=tokens).pooler_output)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class PhaseTimes:
    """Seconds spent in sampling (ComfyUI's sample_custom), VAE decoding and JAQ scoring, and the model calls,
    by wrapping those three for the duration of one calibration: where batching helps and where it cannot."""

    def __init__(self, vae, scorer):
        self.vae, self.scorer = vae, scorer
        self.seconds = {"sample": 0.0, "decode": 0.0, "score": 0.0}
        self.model_calls = 0

    def _timed(self, phase, function):
        def timed(*args, **kwargs):
            sync()
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                sync()
                self.seconds[phase] += time.perf_counter() - start
                self.model_calls += phase == "sample"
        return timed

    def __enter__(self):
        import comfy.sample
        self._saved = comfy.sample.sample_custom
        comfy.sample.sample_custom = self._timed("sample", self._saved)
        self.vae.decode = self._timed("decode", type(self.vae).decode.__get__(self.vae))
        self.scorer.score = self._timed("score", type(self.scorer).score.__get__(self.scorer))
        return self

    def __exit__(self, *exc):
        import comfy.sample
        comfy.sample.sample_custom = self._saved
        del self.vae.decode, self.scorer.score


def calibrate_once(name, models, scorer, prompts, batch_size, args, size):
    """One calibration from scratch (fresh run log and preset folder), timed as a whole and by phase."""
    config = CalibrationConfig(sampler_name="lcm", scheduler="lcm_original", steps=args.steps, cfg=1.0,
                               strategy=args.strategy, budget_images=args.budget, seed=args.seed,
                               prompts="\n".join(prompts), width=size, height=size, batch_size=batch_size,
                               preset_name=f"bench-{name}-{batch_size}")
    with tempfile.TemporaryDirectory() as folder:
        with PhaseTimes(models[2], scorer) as phases:
            sync()
            start = time.perf_counter()
            calibration = calibrate(config, *models, scorer, preset_folder=folder, runs_folder=folder,
                                    model_name=name)
            sync()
            seconds = time.perf_counter() - start
    return calibration, seconds, phases


def bench_model(name, models, scorer, size, args, log_path):
    prompts = list(DEFAULT_PROMPTS[:args.prompts])
    # Warm-up at every batch size (weights onto the device, kernels chosen): not timed.
    for batch_size in args.batch_sizes:
        from comfyui_qsched.samplers import QSchedSchedule
        items = [(QSchedSchedule.identity(args.steps), i % len(prompts)) for i in range(batch_size)]
        make_evaluate(make_generator(*models, sampler_name="lcm", scheduler="lcm_original", steps=args.steps, cfg=1.0,
                                     seed=args.seed + 10_000, width=size, height=size, prompts=prompts,
                                     max_batch=batch_size), scorer, prompts).score_many([(s, [i]) for s, i in items])
    rows, first = [], None
    for batch_size in args.batch_sizes:
        calibration, seconds, phases = calibrate_once(name, models, scorer, prompts, batch_size, args, size)
        result, images = calibration.search, calibration.search.images_generated + calibration.report.images
        scores = {(json.dumps(t["schedule"]["c_x"]), json.dumps(t["schedule"]["c_eps"]), t["prompts"]): t["score"]
                  for t in result.trace}
        row = {"model": name, "size": size, "batch_size": batch_size, "strategy": args.strategy,
               "prompts": len(prompts), "steps": args.steps, "images": images,
               "seconds": round(seconds, 3), "images_per_s": images / seconds,
               "heldout": calibration.report.heldout.verdict,
               "best": result.best.label, "best_score": result.best_score, "identity_score": result.identity_score,
               "unet_dtype": str(models[0].model.get_dtype()).replace("torch.", ""),
               "model_calls": phases.model_calls,
               **{f"{phase}_s": round(value, 3) for phase, value in phases.seconds.items()},
               "device": device_name(), "torch": torch.__version__, "comfyui": comfyui_version()}
        if first is None:
            first = (result, scores, row)
        else:
            row["speedup"] = row["images_per_s"] / first[2]["images_per_s"]
            row["same_best"] = result.best.label == first[0].best.label
            common = [(scores[k], first[1][k]) for k in scores.keys() & first[1].keys()]   # same candidate, prompts
            finite = [(a, b) for a, b in common if abs(a) != float("inf") and abs(b) != float("inf")]
            row["max_score_diff"] = max((abs(a - b) for a, b in finite), default=0.0)
            row["compared"] = len(finite)
            ranked = [s for _, s in first[0].ranking]
            row["batch1_margin"] = (first[0].ranking[0][0] - first[0].ranking[1][0]) if len(ranked) > 1 else None
        print("ROW", json.dumps(row), flush=True)
        if log_path:
            with open(log_path, "a") as handle:
                handle.write(json.dumps(row) + "\n")
        rows.append(row)
    return rows


def device_name():
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"


def comfyui_version():
    try:
        import comfyui_version as version
        return version.__version__
    except ImportError:
        return "unknown"


def _phases(row):
    if "sample_s" not in row:
        return "-"
    other = row["seconds"] - row["sample_s"] - row["decode_s"] - row["score_s"]
    return f"{row['sample_s']:.1f} / {row['decode_s']:.1f} / {row['score_s']:.1f} / {other:.1f}"


def table(rows):
    lines = [f"Device: {rows[0]['device'] if rows else '-'}; torch {torch.__version__}; ComfyUI {comfyui_version()}. "
             "Whole calibration (sample + decode + JAQ score + search + held-out check + preset), lcm, cfg 1, fresh "
             "run log; images/s = images generated / seconds.", "",
             "| model | UNet dtype | image | strategy | prompts x steps | batch | images | seconds | images/s | "
             "speedup | same best schedule | max score diff, same candidate (batch-1 best margin) | model calls | "
             "sample / decode / score / other s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        margin = "-" if r.get("batch1_margin") is None else f"{r['batch1_margin']:.2e}"
        diff = "-" if "max_score_diff" not in r else f"{r['max_score_diff']:.2e} ({margin})"
        same = "-" if "same_best" not in r else ("yes" if r["same_best"] else "NO")
        lines.append(f"| {r['model']} | {r['unet_dtype']} | {r['size']}² | {r['strategy']} | "
                     f"{r['prompts']} x {r['steps']} | {r['batch_size']} | {r['images']} | {r['seconds']:.1f} | "
                     f"{r['images_per_s']:.2f} | {r.get('speedup', 1.0):.2f}x | {same} | {diff} | "
                     f"{r.get('model_calls', '-')} | {_phases(r)} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="sdxl,tiny")
    parser.add_argument("--batch-sizes", default="1,8,16,32", help="the first is the baseline of the speedups")
    parser.add_argument("--strategy", default=CalibrationConfig().strategy, help="default: the calibration's")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--budget", type=int, default=0, help="most images per calibration (0 = the strategy's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=512, help="sdxl image side (the tiny model uses 64)")
    parser.add_argument("--unet-dtype", default=None, help="sdxl UNet dtype (default: ComfyUI's choice)")
    parser.add_argument("--out", default="", help="write <out>.jsonl (appended) and <out>.md")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--tiny", action="store_true",
                        help="CPU smoke test of this script: tiny model, 4 prompts, 2 steps, 24 images (and the "
                             "held-out check), batch 1 and 4")
    args = parser.parse_args(argv)
    if args.tiny:
        args.models, args.prompts, args.batch_sizes, args.steps, args.budget = "tiny", 4, "1,4", 2, 24
        args.threads = args.threads or 1
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    gpu = torch.cuda.is_available()
    device = comfy.model_management.get_torch_device()
    print(device_name(), torch.__version__, "ComfyUI", comfyui_version(), flush=True)
    log_path = args.out + ".jsonl" if args.out else ""
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models.split(","):
            if name not in ("sdxl", "tiny"):
                raise SystemExit(f"unknown model {name!r}: use sdxl or tiny")
            started = time.perf_counter()
            try:   # one model failing must not lose the other's rows
                if name == "sdxl":
                    models, shapes, size = build_sdxl(device, args.unet_dtype), "vit-l-14", args.size
                else:
                    models, shapes, size = build_tiny(workdir), "tiny", 64
                towers = TransformersClipTowers(SCORER_SHAPES[shapes], device, torch.float16 if gpu else torch.float32)
                print(f"{name}: built in {time.perf_counter() - started:.1f} s", flush=True)
                rows += bench_model(name, models, clip_scorer(towers), size, args, log_path)
            except Exception as error:
                traceback.print_exc()
                print(f"ERROR {name}: {type(error).__name__}: {error}", flush=True)
            models = towers = None
            comfy.model_management.unload_all_models()
            comfy.model_management.soft_empty_cache()
    text = table(rows)
    print(text)
    if args.out:
        with open(args.out + ".md", "w") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
