"""Calibrated rounding (GPTQ) inside ComfyUI, for the calibrated quantized loader: the full-precision backbone
samples the calibration prompts through ComfyUI (the calibration's own generator: prompt i with seed + i, identity
coefficients, latents only), with quant.gptq.InputMoments hooked on the layers whose moments fit the budget, once
per pass (quant/calibrated.py plans the passes and rounds each pass's layers right after it). The loader then
quantizes with those codes (comfy_adapter/loading.py). The math is quant/; this module only runs ComfyUI."""
import hashlib
import logging

import torch

import comfy.model_management
import comfy.utils

from ..calibration.prompts import prompts_hash
from ..calibration.run import CalibrationConfig
from ..quant import gptq, smoothing
from ..quant.calibrated import round_in_passes
from ..quant.spec import QuantSpec
from .calibration import make_generator
from .conditioning import TextConditioning

log = logging.getLogger("qsched.loaders")

# The CalibrationConfig settings that decide the calibration samples (shown on the node, keyed in the cache).
SAMPLING_SETTINGS = ("prompts", "n_prompts", "seed", "sampler_name", "scheduler", "steps", "cfg", "width", "height")
# batch_size decides how many samples share a model call: float rounding only, not part of the cache key.
BATCH_SETTING = "batch_size"
DEFAULT_PROMPT_COUNT = 4   # each pass samples every prompt: a few prompts x steps already give many tokens per layer
DEFAULT_BUDGET_GIB = 4.0   # input moments held at once (float32 [in, in] per layer on a GPU, float64 on the CPU)


def conditioning_digest(conditionings):
    """sha256 of encoded prompts (tensors bit for bit, other entries by repr): what the text encoder gave the
    backbone, so the cache key follows the encoder (its weights, a LoRA on it) without hashing its file."""
    digest = hashlib.sha256()
    for conditioning in conditionings:
        for tensor, extras in conditioning:
            for key, value in [("", tensor), *sorted(extras.items(), key=lambda item: item[0])]:
                digest.update(key.encode())
                if isinstance(value, torch.Tensor):
                    value = value.detach().cpu()
                    digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
                    digest.update(value.float().contiguous().numpy().tobytes())
                else:
                    digest.update(repr(value).encode())
    return digest.hexdigest()


class CalibrationSampling:
    """What the calibrated loader hands quantize_patcher: calibration(patcher, spec) -> (settings for the cache key,
    round_layers(layers) running the passes on that patcher's FP backbone). smoothing: one of quant.smoothing.MODES,
    resolved against the spec (a smoothed load's settings name the smoothing, so its cache key differs)."""

    def __init__(self, clip, budget_gib=DEFAULT_BUDGET_GIB, smoothing_mode=smoothing.DEFAULT_MODE, **settings):
        if clip is None:
            raise ValueError("calibrated rounding needs a CLIP (text encoder) to encode the calibration prompts")
        if not budget_gib > 0:
            raise ValueError(f"moments_budget_gib must be positive, got {budget_gib!r}")
        smoothing.check_mode(smoothing_mode)
        self.smoothing_mode, self.smooth = smoothing_mode, smoothing_mode == "on"
        self.config = CalibrationConfig(**settings)   # bounds and choices checked, one message per setting
        self.prompts = self.config.prompt_list()
        self.clip, self.budget_bytes = clip, int(budget_gib * 2**30)
        self.encode = TextConditioning(clip)
        self.passes = 0   # calibration passes the last rounding ran (0: none, a cache hit)
        self.undersampled = {}   # layers left to nearest rounding for too few calibration rows: name -> (rows, columns)

    def settings(self):
        config = self.config
        return {"prompts_sha256": prompts_hash(self.prompts), "prompt_count": len(self.prompts), "seed": config.seed,
                "sampler": config.sampler_name, "scheduler": config.scheduler, "steps": config.steps,
                "cfg": config.cfg, "width": config.width, "height": config.height,
                "text_encoding_sha256": conditioning_digest(self.encode(p) for p in self.prompts),
                **({"smoothing": smoothing.NAME} if self.smooth else {})}

    def __call__(self, patcher, spec=None):
        if spec is not None:
            self.smooth = smoothing.resolve(self.smoothing_mode, QuantSpec.parse(spec))
        config = self.config
        generate = make_generator(patcher, self.clip, None, sampler_name=config.sampler_name,
                                  scheduler=config.scheduler, steps=config.steps, cfg=config.cfg, seed=config.seed,
                                  width=config.width, height=config.height, prompts=self.prompts,
                                  max_batch=config.batch_size, encode=self.encode)
        items = [(None, index) for index in range(len(self.prompts))]
        return self.settings(), lambda layers: self.round_layers(patcher, generate, items, layers)

    def round_layers(self, patcher, generate, items, layers):
        backbone = patcher.model.diffusion_model
        bar = None

        def on_pass(index, count, names):
            nonlocal bar
            bar = bar or comfy.utils.ProgressBar(count)
            self.passes = count
            bar.update_absolute(index, count)
            log.info("Q-Sched calibrated rounding: pass %d of %d, %d layers", index + 1, count, len(names))

        with torch.no_grad():
            rounded = round_in_passes(backbone, layers, lambda: generate(items), self.budget_bytes,
                                      patcher.load_device, compute_device=comfy.model_management.get_torch_device(),
                                      on_pass=on_pass, undersampled=self.undersampled, smooth=self.smooth,
                                      should_stop=comfy.model_management.throw_exception_if_processing_interrupted)
        if self.undersampled:
            name, (rows, columns) = next(iter(self.undersampled.items()))
            log.warning("Q-Sched calibrated rounding: %d layers round to nearest, their calibration rows under %g per "
                        "input column (e.g. %s: %d rows, %d columns); more prompts or steps give them GPTQ",
                        len(self.undersampled), gptq.MIN_ROWS_PER_COLUMN, name, rows, columns)
        if bar is not None:
            bar.update_absolute(bar.total, bar.total)
        # The backbone is quantized in place next: ComfyUI must not hold it loaded with its float weights' size.
        comfy.model_management.unload_all_models()
        return rounded

    def describe(self):
        config = self.config
        return (f"{len(self.prompts)} prompts, {config.sampler_name}/{config.scheduler} {config.steps} steps, "
                f"{config.width}x{config.height}, cfg {config.cfg:g}, seed {config.seed}")
