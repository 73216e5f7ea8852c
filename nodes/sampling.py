"""Sampling nodes: Q-Sched KSampler, Q-Sched Sampler (SAMPLER), Q-Sched Coefficients, Q-Sched Few-Step Sigmas.

The sampler math lives in samplers/, ComfyUI's sampling path with it in comfy_adapter/sampling.py (shared with the
calibration): the sampler functions are wrapped by comfy.samplers.KSAMPLER (so CFG, previews, progress and
interrupts work as with native samplers) and the all-in-one KSampler runs ComfyUI's own custom-sampler path
(SamplerCustom, with sigmas from its KSampler.set_steps) with our sampler and sigma schedules.
"""


from ..comfy_adapter.sampling import (FEW_STEP_SCHEDULERS, SCHEDULERS, qsched_sampler, sample_with_schedule,
                                      sampler_options, scheduler_sigmas)
from ..comfy_adapter.v3_api import io
from ..samplers import SAMPLERS, QSchedSchedule, ScheduleError
from ..samplers.k_qsched import TCD_DEFAULT_GAMMA
from . import categories
from .io_types import Schedule

MODES = ("linspace", "list")
MAX_COEFFICIENT_STEPS = 1000

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
        raise ScheduleError(f"unknown mode {mode!r}: use {' or '.join(map(repr, MODES))}")
    c_x, c_eps = parse_coefficients(c_x_list, "c_x_list"), parse_coefficients(c_eps_list, "c_eps_list")
    for name, values in (("c_x_list", c_x), ("c_eps_list", c_eps)):
        if len(values) != steps:
            raise ScheduleError(f"{name} has {len(values)} values but steps is {steps}: give one per step")
    return QSchedSchedule.from_lists(c_x, c_eps, sampler=sampler, label=label).check(steps)


def _gamma_input():
    return io.Float.Input("tcd_gamma", default=TCD_DEFAULT_GAMMA, min=0.0, max=1.0, step=0.01, optional=True,
                          tooltip=GAMMA_TOOLTIP)


class QSchedKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QSchedKSampler", display_name="Q-Sched KSampler", category=categories.SAMPLING,
            description=("KSampler with Q-Sched: scales the latent by c_x and the predicted noise by c_eps at every "
                         "step (quantization-aware few-step sampling, arXiv 2509.01624). No schedule = the plain "
                         "sampler."),
            inputs=[
                io.Model.Input("model", tooltip="The (possibly quantized) model used for denoising."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="The random seed used for creating the noise."),
                io.Int.Input("steps", default=4, min=1, max=10000,
                             tooltip="Sampling steps; must equal the schedule's length when one is connected."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale (1.0 = no guidance, typical for few-step "
                                       "models)."),
                io.Combo.Input("sampler_name", options=list(SAMPLERS), default="lcm",
                               tooltip="Q-Sched sampler: lcm, tcd (EPS models only), euler (flow-matching Euler on "
                                       "flow models), euler_ancestral."),
                io.Combo.Input("scheduler", options=SCHEDULERS, default="lcm_original",
                               tooltip="Sigma schedule: ComfyUI's, or the few-step ones the coefficients are tuned "
                                       "on: " + "; ".join(f"{k}: {v}" for k, v in FEW_STEP_SCHEDULERS.items())),
                io.Conditioning.Input("positive", tooltip="What the image should contain."),
                io.Conditioning.Input("negative", tooltip="What the image should not contain (used when cfg != 1)."),
                io.Latent.Input("latent_image", tooltip="The latent image to denoise."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Amount of denoising; below 1 keeps the input's structure (img2img)."),
                Schedule.Input("schedule", optional=True, tooltip=SCHEDULE_TOOLTIP),
                _gamma_input(),
            ],
            outputs=[io.Latent.Output(tooltip="The denoised latent.")],
        )

    @classmethod
    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                denoise=1.0, schedule=None, tcd_gamma=TCD_DEFAULT_GAMMA):
        return io.NodeOutput(sample_with_schedule(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                                  latent_image, schedule, denoise=denoise,
                                                  sampler_options=sampler_options(sampler_name, tcd_gamma)))


class QSchedSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QSchedSampler", display_name="Q-Sched Sampler", category=categories.SAMPLING,
            description="A Q-Sched sampler for SamplerCustom / SamplerCustomAdvanced (schedule length = steps).",
            inputs=[
                io.Combo.Input("sampler_name", options=list(SAMPLERS), default="lcm",
                               tooltip="Q-Sched sampler: lcm, tcd (EPS models only), euler, euler_ancestral."),
                Schedule.Input("schedule", optional=True, tooltip=SCHEDULE_TOOLTIP + " Its length must equal the "
                               "number of sigmas minus one."),
                _gamma_input(),
            ],
            outputs=[io.Sampler.Output(tooltip="A SAMPLER for SamplerCustom / SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, sampler_name, schedule=None, tcd_gamma=TCD_DEFAULT_GAMMA):
        if schedule is not None and not isinstance(schedule, QSchedSchedule):
            raise ScheduleError(f"schedule must be a {Schedule.io_type}, got {type(schedule).__name__}")
        return io.NodeOutput(qsched_sampler(sampler_name, schedule, sampler_options(sampler_name, tcd_gamma)))


class QSchedCoefficients(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        coefficient = {"default": 1.0, "min": 0.01, "max": 10.0, "step": 0.005, "round": 0.0001}
        return io.Schema(
            node_id="QSchedCoefficients", display_name="Q-Sched Coefficients", category=categories.SAMPLING,
            description="Per-step Q-Sched coefficients c_x (latent) and c_eps (predicted noise), validated against "
                        "steps.",
            inputs=[
                io.Int.Input("steps", default=4, min=1, max=MAX_COEFFICIENT_STEPS,
                             tooltip="Number of sampling steps the schedule is for (one c_x, c_eps per step)."),
                io.Combo.Input("mode", options=list(MODES), tooltip="linspace: c = linspace(start, end, steps), the "
                               "paper's form (its search fixes end = 1). list: explicit values."),
                io.Float.Input("c_x_start", **coefficient, tooltip="linspace: c_x at the first (noisiest) step."),
                io.Float.Input("c_eps_start", **coefficient, tooltip="linspace: c_eps at the first step."),
                io.Float.Input("c_x_end", **coefficient, tooltip="linspace: c_x at the last step."),
                io.Float.Input("c_eps_end", **coefficient, tooltip="linspace: c_eps at the last step."),
                io.String.Input("c_x_list", default="1, 1, 1, 1", tooltip="list: comma-separated c_x, one per step."),
                io.String.Input("c_eps_list", default="1, 1, 1, 1",
                                tooltip="list: comma-separated c_eps, one per step."),
                io.Combo.Input("tuned_for", options=["any"] + list(SAMPLERS), optional=True,
                               tooltip="Sampler the values were tuned for (a warning is logged when used with "
                                       "another)."),
            ],
            outputs=[Schedule.Output(tooltip="Per-step Q-Sched coefficients for Q-Sched KSampler / Q-Sched "
                                             "Sampler.")],
        )

    @classmethod
    def validate_inputs(cls, steps, mode, c_x_list, c_eps_list):
        # Checked when the prompt is queued, so a bad entry is a node error before anything runs. ComfyUI leaves
        # the inputs named here to this check (no range or choice check of its own); linked inputs arrive as None
        # and are checked when the node runs.
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                                  or not 1 <= steps <= MAX_COEFFICIENT_STEPS):
            return f"steps is {steps!r}: give a whole number from 1 to {MAX_COEFFICIENT_STEPS}"
        if mode is not None and mode not in MODES:
            return f"mode is {mode!r}: choose {' or '.join(MODES)}"
        if mode == "list" and None not in (steps, c_x_list, c_eps_list):
            try:
                build_schedule(steps, mode, c_x_list=c_x_list, c_eps_list=c_eps_list)
            except ScheduleError as error:
                return str(error)
        return True

    @classmethod
    def execute(cls, steps, mode, c_x_start, c_eps_start, c_x_end, c_eps_end, c_x_list, c_eps_list, tuned_for="any"):
        return io.NodeOutput(build_schedule(steps, mode, c_x_start, c_eps_start, c_x_end, c_eps_end, c_x_list,
                                            c_eps_list, tuned_for))


class QSchedFewStepSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="QSchedFewStepSigmas", display_name="Q-Sched Few-Step Sigmas", category=categories.SAMPLING,
            description="Few-step sigma schedules Q-Sched coefficients are tuned on (LCM/TCD, SDXL-Turbo, "
                        "FLUX-schnell).",
            inputs=[
                io.Model.Input("model", tooltip="The model whose sigma table the schedule is read from."),
                io.Combo.Input("scheduler", options=list(FEW_STEP_SCHEDULERS),
                               tooltip="; ".join(f"{k}: {v}" for k, v in FEW_STEP_SCHEDULERS.items())),
                io.Int.Input("steps", default=4, min=1, max=1000, tooltip="Number of sampling steps."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Amount of denoising (KSampler's rule: the tail of a longer schedule)."),
            ],
            outputs=[io.Sigmas.Output(tooltip="steps + 1 sigmas ending in 0.")],
        )

    @classmethod
    def execute(cls, model, scheduler, steps, denoise=1.0):
        return io.NodeOutput(scheduler_sigmas(model, scheduler, steps, denoise))


NODES = [QSchedKSampler, QSchedSampler, QSchedCoefficients, QSchedFewStepSigmas]
