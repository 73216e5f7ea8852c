"""The PTQD-style correction (He et al. 2023) measured in ComfyUI, shared by the Q-Sched PTQD Correction node.

For each calibration prompt (prompt i with seed + i) the quantized model is sampled with the identity schedule and
every model call's input and output are recorded; the full-precision model is then evaluated on exactly those
inputs (same conditioning and CFG). Per step, eps_Q = (1 + k) eps_FP + delta is fitted over all prompts
(calibration/ptqd.py) and returned as c_x = 1, c_eps = 1/(1+k), offset = mean(delta)/(1+k), one offset per step or
per latent channel. The re-injected noise's variance correction of PTQD is not applied (reported only).
"""
import math

import torch

import comfy.sample
import comfy.samplers

from ..calibration.closed_form import StepReached, step_recorder
from ..calibration.prompts import prompt_seed
from ..calibration.ptqd import eps_from_denoised, fit_step, ptqd_schedule
from ..samplers import SAMPLERS
from .comfy_compat import make_noise_sampler
from .conditioning import TextConditioning, quiet_step_progress
from .reference import check_reference_model
from .sampling import HOST_MATH, check_sampler_fits_model, sampler_options, scheduler_sigmas


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
                                                          **HOST_MATH, **options})


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


def fit_ptqd(model, reference_model, clip, config, per_channel=False, should_stop=None, progress=None):
    """Per-step PTQD fits along the quantized model's trajectories, with the sampler, scheduler, steps, cfg, seed,
    size and prompts of `config` (calibration.run.CalibrationConfig); returns (fits, schedule)."""
    sampler_name, scheduler, steps, cfg = config.sampler_name, config.scheduler, config.steps, config.cfg
    seed, width, height, prompts = config.seed, config.width, config.height, config.prompt_list()
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


def closed_form_trajectory(model, reference_model, clip, config, encode=None):
    """calibration.reference.ReferenceSampling.trajectory in ComfyUI: trajectory(schedule, step, prompt_indices) ->
    (x, sigma, D_q, D_fp) concatenated over the prompts: the quantized model sampled with `schedule` (prompt i with
    seed + i, config's sampler, scheduler, cfg and size) up to `step`, and the full-precision model's prediction
    at the latent it reached (same conditioning and CFG)."""
    sampler_name, steps, cfg = config.sampler_name, config.steps, config.cfg
    check_sampler_fits_model(sampler_name, model)
    encode = encode or TextConditioning(clip)
    prompts = config.prompt_list()
    sigmas = scheduler_sigmas(model, config.scheduler, steps)
    channels = model.get_model_object("latent_format").latent_channels
    options = sampler_options(sampler_name)
    function = SAMPLERS[sampler_name].function

    def one(schedule, step, index):
        record, reference_out = [], []

        def sample_to_step(inner, x, sigmas_, **kwargs):
            try:
                function(step_recorder(inner, step, record), x, sigmas_, **kwargs)
            except StepReached:
                pass
            return x
        sampler = comfy.samplers.KSAMPLER(sample_to_step, extra_options={
            "schedule": schedule, "make_noise_sampler": make_noise_sampler, **options})
        latent = torch.zeros([1, channels, config.height // 8, config.width // 8])
        positive, negative, seed = encode(prompts[index]), encode(""), prompt_seed(config.seed, index)
        _sample(model, sampler, sigmas, positive, negative, latent, seed, cfg)
        if not record:
            raise ValueError(f"the {sampler_name} sampler did not reach step {step + 1} of {steps}")
        x, sigma, denoised = (t.detach().float().cpu() for t in record[0])
        _sample(reference_model, _replaying_sampler([(x, sigma, denoised)], reference_out), sigmas, positive,
                negative, latent, seed, cfg)
        return x, sigma.reshape(-1)[:1], denoised, reference_out[0]

    def trajectory(schedule, step, indices):
        parts = [one(schedule, step, index) for index in indices]
        return tuple(torch.cat([part[k] for part in parts]) for k in range(4))
    return trajectory


def describe_fits(fits):
    lines = ["PTQD-style correction, eps = (eps_Q - mean) / (1 + k) per step:"]
    for i, fit in enumerate(fits):
        mean = fit["mean"]
        mean_text = ", ".join(f"{m:.4g}" for m in mean) if isinstance(mean, (tuple, list)) else f"{mean:.4g}"
        lines.append(f"step {i + 1}: k {fit['k']:.4g}, mean [{mean_text}], residual variance {fit['var']:.4g} "
                     "(not removed from re-injected noise)")
    return "\n".join(lines)

