"""Sampling nodes: Q-Sched KSampler, Q-Sched Sampler (SAMPLER), Q-Sched Coefficients, Q-Sched Few-Step Sigmas.

The sampler math lives in samplers/, ComfyUI's sampling path with it in comfy_adapter/sampling.py (shared with the
calibration): the sampler functions are wrapped by comfy.samplers.KSAMPLER (so CFG, previews, progress and
interrupts work as with native samplers) and the all-in-one KSampler repeats what ComfyUI's common_ksampler does,
with our sampler and sigma schedules.
"""

import comfy.utils

from ..comfy_adapter.sampling import (FEW_STEP_SCHEDULERS, SCHEDULERS, qsched_sampler, sample_with_schedule,
                                      sampler_options, scheduler_sigmas)
from ..samplers import SAMPLERS, QSchedSchedule, ScheduleError
from ..samplers.k_qsched import TCD_DEFAULT_GAMMA

SCHEDULE_TYPE = "QSCHED_SCHEDULE"
CATEGORY = "sampling/qsched"

SCHEDULE_TOOLTIP = ("Q-Sched coefficients (c_x, c_eps per step), from Q-Sched Coefficients or a preset; "
                    "unconnected = all 1, i.e. the plain sampler.")
GAMMA_TOOLTIP = (f"TCD stochasticity gamma (eta): 0 = deterministic, {TCD_DEFAULT_GAMMA} = the TCD default. "
                 "Used by tcd only.")


def parse_coefficients(text, name):
    """'1.1, 1.05,1' -> (1.1, 1.05, 1.0); names the bad entry."""
    values = []
    for position, item in enumerate(part.strip() for part in str(text).split(",")):
        if not item:
            raise ScheduleError(f"{name}: entry {position + 1} is empty in {text!r}")
        try:
            values.append(float(item))
        except ValueError:
            raise ScheduleError(f"{name}: entry {position + 1} ({item!r}) is not a number") from None
    return values


def build_schedule(steps, mode, c_x_start=1.0, c_eps_start=1.0, c_x_end=1.0, c_eps_end=1.0, c_x_list="",
                   c_eps_list="", tuned_for="any", label=""):
    sampler = None if tuned_for == "any" else tuned_for
    if mode == "linspace":
        return QSchedSchedule.linear(steps, c_x_start, c_eps_start, c_x_end, c_eps_end, sampler=sampler, label=label)
    if mode != "list":
        raise ScheduleError(f"unknown mode {mode!r}: use 'linspace' or 'list'")
    c_x, c_eps = parse_coefficients(c_x_list, "c_x_list"), parse_coefficients(c_eps_list, "c_eps_list")
    for name, values in (("c_x_list", c_x), ("c_eps_list", c_eps)):
        if len(values) != steps:
            raise ScheduleError(f"{name} has {len(values)} values but steps is {steps}: give one per step")
    return QSchedSchedule.from_lists(c_x, c_eps, sampler=sampler, label=label).check(steps)


class QSchedKSampler:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The (possibly quantized) model used for denoising."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True,
                                 "tooltip": "The random seed used for creating the noise."}),
                "steps": ("INT", {"default": 4, "min": 1, "max": 10000,
                                  "tooltip": "Sampling steps; must equal the schedule's length when one is connected."}),
                "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Classifier-free guidance scale (1.0 = no guidance, typical for few-step models)."}),
                "sampler_name": (list(SAMPLERS), {"default": "lcm",
                                                  "tooltip": "Q-Sched sampler: lcm, tcd (EPS models only), euler "
                                                             "(flow-matching Euler on flow models), euler_ancestral."}),
                "scheduler": (SCHEDULERS, {"default": "lcm_original",
                                           "tooltip": "Sigma schedule: ComfyUI's, or the few-step ones the "
                                                      "coefficients are tuned on: " + "; ".join(
                                                          f"{k}: {v}" for k, v in FEW_STEP_SCHEDULERS.items())}),
                "positive": ("CONDITIONING", {"tooltip": "What the image should contain."}),
                "negative": ("CONDITIONING", {"tooltip": "What the image should not contain (used when cfg != 1)."}),
                "latent_image": ("LATENT", {"tooltip": "The latent image to denoise."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                      "tooltip": "Amount of denoising; below 1 keeps the input's structure (img2img)."}),
            },
            "optional": {
                "schedule": (SCHEDULE_TYPE, {"tooltip": SCHEDULE_TOOLTIP}),
                "tcd_gamma": ("FLOAT", {"default": TCD_DEFAULT_GAMMA, "min": 0.0, "max": 1.0, "step": 0.01,
                                        "tooltip": GAMMA_TOOLTIP}),
            },
        }

    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The denoised latent.",)
    FUNCTION = "sample"
    CATEGORY = CATEGORY
    DESCRIPTION = ("KSampler with Q-Sched: scales the latent by c_x and the predicted noise by c_eps at every step "
                   "(quantization-aware few-step sampling, arXiv 2509.01624). No schedule = the plain sampler.")

    def sample(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
               denoise=1.0, schedule=None, tcd_gamma=TCD_DEFAULT_GAMMA):
        return (sample_with_schedule(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                     latent_image, schedule, denoise=denoise,
                                     sampler_options=sampler_options(sampler_name, tcd_gamma),
                                     disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED),)


class QSchedSampler:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "sampler_name": (list(SAMPLERS), {"default": "lcm",
                                                  "tooltip": "Q-Sched sampler: lcm, tcd (EPS models only), euler, "
                                                             "euler_ancestral."}),
            },
            "optional": {
                "schedule": (SCHEDULE_TYPE, {"tooltip": SCHEDULE_TOOLTIP + " Its length must equal the number of "
                                                                          "sigmas minus one."}),
                "tcd_gamma": ("FLOAT", {"default": TCD_DEFAULT_GAMMA, "min": 0.0, "max": 1.0, "step": 0.01,
                                        "tooltip": GAMMA_TOOLTIP}),
            },
        }

    RETURN_TYPES = ("SAMPLER",)
    OUTPUT_TOOLTIPS = ("A SAMPLER for SamplerCustom / SamplerCustomAdvanced.",)
    FUNCTION = "get_sampler"
    CATEGORY = CATEGORY
    DESCRIPTION = "A Q-Sched sampler for SamplerCustom / SamplerCustomAdvanced (schedule length = steps)."

    def get_sampler(self, sampler_name, schedule=None, tcd_gamma=TCD_DEFAULT_GAMMA):
        if schedule is not None and not isinstance(schedule, QSchedSchedule):
            raise ScheduleError(f"schedule must be a {SCHEDULE_TYPE}, got {type(schedule).__name__}")
        return (qsched_sampler(sampler_name, schedule, sampler_options(sampler_name, tcd_gamma)),)


class QSchedCoefficients:
    @classmethod
    def INPUT_TYPES(cls):
        coefficient = {"default": 1.0, "min": 0.01, "max": 10.0, "step": 0.005, "round": 0.0001}
        return {
            "required": {
                "steps": ("INT", {"default": 4, "min": 1, "max": 1000,
                                  "tooltip": "Number of sampling steps the schedule is for (one c_x, c_eps per step)."}),
                "mode": (["linspace", "list"], {"tooltip": "linspace: c = linspace(start, end, steps), the paper's "
                                                           "form (its search fixes end = 1). list: explicit values."}),
                "c_x_start": ("FLOAT", {**coefficient, "tooltip": "linspace: c_x at the first (noisiest) step."}),
                "c_eps_start": ("FLOAT", {**coefficient, "tooltip": "linspace: c_eps at the first step."}),
                "c_x_end": ("FLOAT", {**coefficient, "tooltip": "linspace: c_x at the last step."}),
                "c_eps_end": ("FLOAT", {**coefficient, "tooltip": "linspace: c_eps at the last step."}),
                "c_x_list": ("STRING", {"default": "1, 1, 1, 1",
                                        "tooltip": "list: comma-separated c_x, one per step."}),
                "c_eps_list": ("STRING", {"default": "1, 1, 1, 1",
                                          "tooltip": "list: comma-separated c_eps, one per step."}),
            },
            "optional": {
                "tuned_for": (["any"] + list(SAMPLERS), {"tooltip": "Sampler the values were tuned for (a warning "
                                                                    "is logged when used with another)."}),
            },
        }

    RETURN_TYPES = (SCHEDULE_TYPE,)
    OUTPUT_TOOLTIPS = ("Per-step Q-Sched coefficients for Q-Sched KSampler / Q-Sched Sampler.",)
    FUNCTION = "build"
    CATEGORY = CATEGORY
    DESCRIPTION = "Per-step Q-Sched coefficients c_x (latent) and c_eps (predicted noise), validated against steps."

    @classmethod
    def VALIDATE_INPUTS(cls, steps, mode, c_x_list, c_eps_list):
        # Lists are checked when the prompt is queued so a bad entry is a node error before anything runs.
        # Linked inputs arrive as None here: those are checked when the node runs.
        if None in (steps, mode, c_x_list, c_eps_list):
            return True
        if mode == "list":
            try:
                build_schedule(steps, mode, c_x_list=c_x_list, c_eps_list=c_eps_list)
            except ScheduleError as error:
                return str(error)
        elif not isinstance(steps, int) or steps < 1:
            return f"steps must be a positive integer, got {steps!r}"
        return True

    def build(self, steps, mode, c_x_start, c_eps_start, c_x_end, c_eps_end, c_x_list, c_eps_list, tuned_for="any"):
        return (build_schedule(steps, mode, c_x_start, c_eps_start, c_x_end, c_eps_end, c_x_list, c_eps_list,
                               tuned_for),)


class QSchedFewStepSigmas:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model whose sigma table the schedule is read from."}),
                "scheduler": (list(FEW_STEP_SCHEDULERS), {"tooltip": "; ".join(
                    f"{k}: {v}" for k, v in FEW_STEP_SCHEDULERS.items())}),
                "steps": ("INT", {"default": 4, "min": 1, "max": 1000, "tooltip": "Number of sampling steps."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                      "tooltip": "Amount of denoising (KSampler's rule: the tail of a longer schedule)."}),
            },
        }

    RETURN_TYPES = ("SIGMAS",)
    OUTPUT_TOOLTIPS = ("steps + 1 sigmas ending in 0.",)
    FUNCTION = "get_sigmas"
    CATEGORY = CATEGORY
    DESCRIPTION = "Few-step sigma schedules Q-Sched coefficients are tuned on (LCM/TCD, SDXL-Turbo, FLUX-schnell)."

    def get_sigmas(self, model, scheduler, steps, denoise=1.0):
        return (scheduler_sigmas(model, scheduler, steps, denoise),)


NODE_CLASS_MAPPINGS = {
    "QSchedKSampler": QSchedKSampler,
    "QSchedSampler": QSchedSampler,
    "QSchedCoefficients": QSchedCoefficients,
    "QSchedFewStepSigmas": QSchedFewStepSigmas,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "QSchedKSampler": "Q-Sched KSampler",
    "QSchedSampler": "Q-Sched Sampler",
    "QSchedCoefficients": "Q-Sched Coefficients",
    "QSchedFewStepSigmas": "Q-Sched Few-Step Sigmas",
}
