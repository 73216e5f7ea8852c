"""Sampling with the Q-Sched samplers through ComfyUI, shared by the sampling nodes and the calibration: sigma
schedules (ComfyUI's and the few-step ones the coefficients are tuned on, through ComfyUI's own KSampler.set_steps),
checks before the first model call, the SAMPLER object, and ComfyUI's custom-sampler path with a Q-Sched sampler."""
import comfy.k_diffusion.sampling
import comfy.samplers
import torch

from ..samplers import SAMPLERS, QSchedSchedule, ScheduleError, is_flow
from ..samplers.k_qsched import TCD_DEFAULT_GAMMA
from ..samplers.model_sampling import flow_sigma_table
from ..samplers.sigmas import SCHEDULER_KINDS, few_step_sigmas
from .comfy_compat import make_noise_sampler, sample_custom_latent

# Few-step sigma schedules the Q-Sched coefficients are tuned on, where ComfyUI's own differ: name -> what for.
FEW_STEP_SCHEDULERS = {name: help for name, (_, help) in SCHEDULER_KINDS.items()}
SCHEDULERS = list(comfy.samplers.SCHEDULER_NAMES) + list(FEW_STEP_SCHEDULERS)
# What every Q-Sched sampler function gets inside ComfyUI: the host's k-diffusion helpers (to_d,
# get_ancestral_step) in place of the plain-torch copies in samplers/k_qsched.py.
HOST_MATH = {"k_diffusion": comfy.k_diffusion.sampling}


def _sampler_spec(sampler_name):
    spec = SAMPLERS.get(sampler_name)
    if spec is None:
        raise ValueError(f"unknown Q-Sched sampler {sampler_name!r}; known: {', '.join(SAMPLERS)}")
    return spec


def check_sampler_fits_model(sampler_name, model):
    """Refuse an EPS-only sampler (tcd) on a flow model before anything runs."""
    spec = _sampler_spec(sampler_name)
    if not spec.flow_ok and is_flow(model.get_model_object("model_sampling")):
        raise ValueError(f"sampler {sampler_name!r} works on EPS (noise-prediction) models only; "
                         "this model is a flow model: use euler or euler_ancestral")
    return spec


def resolve_schedule(schedule, steps, sampler_name):
    """None -> identity; otherwise the schedule checked against the step count and the sampler it was tuned for."""
    if schedule is None:
        return QSchedSchedule.identity(steps)
    if not isinstance(schedule, QSchedSchedule):
        raise ScheduleError(f"schedule must be a QSCHED_SCHEDULE, got {type(schedule).__name__}")
    return schedule.check(steps, sampler=sampler_name)


def sampler_options(sampler_name, tcd_gamma=TCD_DEFAULT_GAMMA):
    return {"gamma": float(tcd_gamma)} if sampler_name == "tcd" else {}


def qsched_sampler(sampler_name, schedule=None, options=None):
    """A comfy SAMPLER running our sampler with `schedule` (None = identity, length checked when it runs), drawing
    its noise with ComfyUI's own noise sampler, as the native samplers do."""
    spec = _sampler_spec(sampler_name)
    return comfy.samplers.KSAMPLER(spec.function, extra_options={"schedule": schedule,
                                                                 "make_noise_sampler": make_noise_sampler,
                                                                 **HOST_MATH, **(options or {})})


def few_step_scheduler_sigmas(model_sampling, scheduler, steps):
    kind = SCHEDULER_KINDS[scheduler][0]
    if kind == "flow":
        if not is_flow(model_sampling):
            raise ValueError(f"scheduler {scheduler!r} is for flow models (FLUX, SD3); this model is not one")
        return few_step_sigmas(kind, flow_sigma_table(1.0), steps)
    return few_step_sigmas(kind, model_sampling.sigmas.detach().float().cpu(), steps)


class _ScheduleSigmas(comfy.samplers.KSampler):
    """ComfyUI's KSampler, for its sigmas only: its own set_steps (the denoise rule) over its schedulers and the
    pack's few-step ones."""
    SCHEDULERS = SCHEDULERS

    def calculate_sigmas(self, steps):
        if self.scheduler in FEW_STEP_SCHEDULERS:
            return few_step_scheduler_sigmas(self.model.get_model_object("model_sampling"), self.scheduler, steps)
        return super().calculate_sigmas(steps)


def scheduler_sigmas(model, scheduler, steps, denoise=1.0):
    """steps + 1 sigmas on the CPU, with KSampler's denoise rule (ComfyUI's set_steps)."""
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; known: {', '.join(SCHEDULERS)}")
    return _ScheduleSigmas(model, steps, torch.device("cpu"), scheduler=scheduler, denoise=denoise).sigmas


def sample_with_schedule(model, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                         schedule, denoise=1.0, sampler_options=None):
    """ComfyUI's custom-sampler path (its SamplerCustom: empty-latent fix, seeded noise, mask, preview callback,
    the latent keys the host reads and drops) with a Q-Sched sampler; returns the LATENT dict. Every input is
    validated (sampler, model type, schedule length, scheduler) before the first model call."""
    check_sampler_fits_model(sampler_name, model)
    schedule = resolve_schedule(schedule, steps, sampler_name)
    sigmas = scheduler_sigmas(model, scheduler, steps, denoise)
    if len(sigmas) == 0:  # denoise 0: nothing to do, like KSampler
        return latent_image.copy()
    sampler = qsched_sampler(sampler_name, schedule, sampler_options)
    return sample_custom_latent(model, noise_seed, cfg, positive, negative, sampler, sigmas, latent_image)
