"""Q-Sched PTQD Correction: the PTQD-style baseline (He et al. 2023) as a QSCHED_SCHEDULE, so the same Q-Sched
samplers can apply it and users can compare it with a Q-Sched calibration.

For each calibration prompt (prompt i with seed + i) the quantized model is sampled with the identity schedule and
every model call's input and output are recorded; the full-precision model (`reference_model`) is then evaluated
on exactly those inputs (same conditioning and CFG). Per step, eps_Q = (1 + k) eps_FP + delta is fitted over all
prompts (calibration/ptqd.py) and returned as c_x = 1, c_eps = 1/(1+k), offset = mean(delta)/(1+k), one offset per
step or per latent channel. The re-injected noise's variance correction of PTQD is not applied (reported only).
"""
import logging
import math

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils

from ..calibration.presets import check_name, make_preset, save_preset
from ..calibration.prompts import parse_prompts, prompt_seed, prompts_hash
from ..calibration.ptqd import eps_from_denoised, fit_step, ptqd_schedule
from ..samplers import SAMPLER_NAMES
from ..calibration.presets import safe_preset_name
from ..comfy_adapter.calibration import TextConditioning, quiet_step_progress
from .calibrate import describe_model
from .comfy_compat import make_noise_sampler
from .presets import model_hash, user_preset_folder
from .reference import check_reference_model
from .sampling import SCHEDULERS, check_sampler_fits_model, sampler_options, scheduler_sigmas

log = logging.getLogger("qsched.ptqd")
DEFAULT_PROMPTS = 8


class _RecordingModel:
    """Wraps the sampler's model callable: keeps (x, sigma, denoised) of every call (CPU copies)."""

    def __init__(self, model, record):
        self.model, self.record = model, record
        self.inner_model = getattr(model, "inner_model", None)   # where the samplers find model_sampling

    def __call__(self, x, sigma, **extra_args):
        denoised = self.model(x, sigma, **extra_args)
        self.record.append((x.detach().float().cpu(), sigma.detach().float().cpu(), denoised.detach().float().cpu()))
        return denoised


def _recording_sampler(function, record, options):
    def sample(model, x, sigmas, **kwargs):
        return function(_RecordingModel(model, record), x, sigmas, **kwargs)
    return comfy.samplers.KSAMPLER(sample, extra_options={"schedule": None, "make_noise_sampler": make_noise_sampler,
                                                          **options})


def _replaying_sampler(record, out):
    """A sampler that ignores its own trajectory: it evaluates the model at each recorded (x, sigma)."""
    def replay(model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
        for x_i, sigma_i, _ in record:
            out.append(model(x_i.to(x.device, x.dtype), sigma_i.to(x.device, x.dtype), **(extra_args or {}))
                       .detach().float().cpu())
        return x
    return comfy.samplers.KSAMPLER(replay)


def _sample(model, sampler, sigmas, positive, negative, latent, seed, cfg):
    samples = comfy.sample.fix_empty_latent_channels(model, latent)
    noise = comfy.sample.prepare_noise(samples, seed, None)
    with quiet_step_progress():
        return comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, samples,
                                          disable_pbar=True, seed=seed)


def fit_ptqd(model, reference_model, clip, *, sampler_name, scheduler, steps, cfg, seed, prompts, width, height,
             per_channel=False, should_stop=None, progress=None):
    """Per-step PTQD fits along the quantized model's trajectories; returns (fits, schedule)."""
    from ..samplers import SAMPLERS
    check_sampler_fits_model(sampler_name, model)
    check_reference_model(model, reference_model)
    encode = TextConditioning(clip)
    sigmas = scheduler_sigmas(model, scheduler, steps)
    if len(sigmas) != steps + 1:
        raise ValueError(f"scheduler {scheduler!r} gave {len(sigmas) - 1} steps for {steps}")
    channels = model.get_model_object("latent_format").latent_channels
    options = sampler_options(sampler_name)
    eps_fp, eps_q = [[] for _ in range(steps)], [[] for _ in range(steps)]
    for index, prompt in enumerate(prompts):
        if should_stop is not None:
            should_stop()
        latent = torch.zeros([1, channels, height // 8, width // 8])
        positive, negative = encode(prompt), encode("")
        record, reference_out = [], []
        seed_i = prompt_seed(seed, index)
        _sample(model, _recording_sampler(SAMPLERS[sampler_name].function, record, options), sigmas, positive,
                negative, latent, seed_i, cfg)
        _sample(reference_model, _replaying_sampler(record, reference_out), sigmas, positive, negative, latent,
                seed_i, cfg)
        if len(record) != steps:
            raise ValueError(f"the {sampler_name} sampler called the model {len(record)} times in {steps} steps")
        for i, ((x, sigma, denoised_q), denoised_fp) in enumerate(zip(record, reference_out)):
            eps_q[i].append(eps_from_denoised(x, sigma, denoised_q))
            eps_fp[i].append(eps_from_denoised(x, sigma, denoised_fp))
        if progress is not None:
            progress(index + 1, len(prompts))
    fits = [fit_step(torch.cat(fp), torch.cat(q), per_channel) for fp, q in zip(eps_fp, eps_q)]
    bad = [i for i, fit in enumerate(fits) if not math.isfinite(fit["k"]) or fit["k"] <= -1]
    if bad:
        raise ValueError(f"PTQD fit failed at step(s) {bad}: the quantized model's noise prediction does not follow "
                         "the full-precision model's (k <= -1 or not finite)")
    label = f"PTQD-style ({'per channel' if per_channel else 'scalar'}) {sampler_name} {steps} steps"
    return fits, ptqd_schedule(fits, sampler=sampler_name, label=label)


def describe_fits(fits):
    lines = ["PTQD-style correction, eps = (eps_Q - mean) / (1 + k) per step:"]
    for i, fit in enumerate(fits):
        mean = fit["mean"]
        mean_text = ", ".join(f"{m:.4g}" for m in mean) if isinstance(mean, (tuple, list)) else f"{mean:.4g}"
        lines.append(f"step {i + 1}: k {fit['k']:.4g}, mean [{mean_text}], residual variance {fit['var']:.4g} "
                     "(not removed from re-injected noise)")
    return "\n".join(lines)


class QSchedPTQDCorrection:
    CATEGORY = "sampling/qsched"
    RETURN_TYPES = ("QSCHED_SCHEDULE", "STRING", "STRING")
    RETURN_NAMES = ("schedule", "summary", "preset_name")
    FUNCTION = "run"
    DESCRIPTION = ("PTQD-style correction of a quantized model, for comparing with Q-Sched: fits eps_Q = (1 + k) "
                   "eps_FP + delta per step on calibration prompts (needs the full-precision model) and returns it "
                   "as a Q-Sched schedule (c_eps = 1/(1+k), offset = mean delta/(1+k)) for any Q-Sched sampler.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The quantized model to correct."}),
                "reference_model": ("MODEL", {"tooltip": "The full-precision model it was made from."}),
                "clip": ("CLIP", {"tooltip": "Text encoder for the calibration prompts."}),
                "sampler_name": (list(SAMPLER_NAMES), {"default": "lcm", "tooltip": "The sampler you will use."}),
                "scheduler": (SCHEDULERS, {"default": "lcm_original", "tooltip": "The sigma schedule you will use."}),
                "steps": ("INT", {"default": 4, "min": 1, "max": 50, "tooltip": "The step count you will use."}),
                "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 30.0, "step": 0.1}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF,
                                 "tooltip": "Prompt i uses seed + i."}),
                "prompts": ("STRING", {"multiline": True, "default": "", "tooltip":
                            "one prompt per line; empty = the first n_prompts of the pack's calibration prompts"}),
            },
            "optional": {
                "n_prompts": ("INT", {"default": DEFAULT_PROMPTS, "min": 0, "max": 10_000,
                                      "tooltip": "use the first N prompts; 0 = all"}),
                "width": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8}),
                "height": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8}),
                "per_channel": ("BOOLEAN", {"default": False, "tooltip":
                                "one mean per latent channel instead of one per step (our extension of PTQD)"}),
                "model_name": ("STRING", {"default": "", "tooltip": "recorded in the preset"}),
                "quant": ("STRING", {"default": "", "tooltip": "quantization recorded in the preset, e.g. W4A8"}),
                "preset_name": ("STRING", {"default": "", "tooltip": "save as this preset; empty = not saved"}),
            },
        }

    def run(self, model, reference_model, clip, sampler_name, scheduler, steps, cfg, seed, prompts,
            n_prompts=DEFAULT_PROMPTS, width=512, height=512, per_channel=False, model_name="", quant="",
            preset_name=""):
        prompt_list = parse_prompts(prompts)
        if n_prompts:
            prompt_list = prompt_list[:n_prompts]
        name = check_name(preset_name) if preset_name else None   # before the work, not after it
        bar = comfy.utils.ProgressBar(len(prompt_list))
        fits, schedule = fit_ptqd(
            model, reference_model, clip, sampler_name=sampler_name, scheduler=scheduler, steps=steps, cfg=cfg,
            seed=seed, prompts=prompt_list, width=width, height=height, per_channel=per_channel,
            should_stop=comfy.model_management.throw_exception_if_processing_interrupted,
            progress=lambda done, total: bar.update_absolute(done, total))
        summary = describe_fits(fits)
        if name is not None:
            family = describe_model(model)
            fingerprint = model_hash(model)
            preset = make_preset(schedule, model_name=model_name or safe_preset_name(f"{family}-{fingerprint[:8]}"),
                                 model_hash=fingerprint, family=family, quant=quant or None, sampler=sampler_name,
                                 prompts_hash=prompts_hash(prompt_list), n_prompts=len(prompt_list), seed=seed,
                                 cfg=cfg, search={"method": "ptqd", "per_channel": bool(per_channel),
                                                  "scheduler": scheduler, "width": width, "height": height,
                                                  "reference_model_sha256": model_hash(reference_model),
                                                  "fits": fits})
            save_preset(user_preset_folder(), name, preset)
        log.info("%s", summary)
        return (schedule, summary, name or "")


NODE_CLASS_MAPPINGS = {"QSchedPTQDCorrection": QSchedPTQDCorrection}
NODE_DISPLAY_NAME_MAPPINGS = {"QSchedPTQDCorrection": "Q-Sched PTQD Correction"}
